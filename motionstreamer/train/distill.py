"""Distil the guided 50-step diffusion head into a few-step student that needs no guidance rows.

Target: the runtime's teacher sampler (ancestral DDPM over the head's respaced process, the bundle's
skip_terminal_step, classifier-free guidance on [cond; uncond] rows). For each condition it defines a
distribution over the next latent; the student (models/few_step.py: the head's architecture,
initialised from the teacher's weights) must draw from it in k in {1, 2, 4} ancestral steps from the
conditional row alone.

Method: energy-score distillation of the sampler's output distribution. Per training condition the
student draws m samples through its whole k-step sampler (differentiably; every supported k each
step), and the loss is the energy score against n samples of the guided teacher for that condition:

    S = E|X - Y| - 1/2 E|X - X'|      (X: student samples, Y: teacher samples, distinct pairs)

a strictly proper scoring rule (Gneiting & Raftery 2007): its expectation is minimal exactly when the
student's distribution is the teacher's (De Bortoli et al. 2025 train few-step samplers with it).
Progressive and consistency distillation were not used: they distil the deterministic DDIM ODE, which
is not the distribution the runtime samples.

Data: the frozen transformer's outputs over the training set's latent sequences with teacher forcing,
once with the caption and once with the empty caption (the guidance row). A bank of `conditions` of
them with `teacher_samples` teacher draws each is computed once (shared among DDP processes, cached in
the run folder for resumes); training draws batches from it on the shared loop (train/common.py).

Measured quality, speed and the student's known limit (it sees c, never u, so it misses most of the
guidance shift): docs/student.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from motionstreamer.checkpoints import bundle_config_of, ema_or_model_state, load_training_checkpoint
from motionstreamer.models.few_step import StudentHead, StudentHeadConfig, teacher_top_timestep
from motionstreamer.models.sampling import GaussianDiffusion, SamplerSettings, draw_sampling_noise
from motionstreamer.train.common import Dist, TrainConfig, atomic_torch_save, setup_distributed, train_loop

METHOD = "energy-score distillation of the guided ancestral sampler (motionstreamer.train.distill)"


# ----------------------------------------------------------------------------- conditions
@torch.no_grad()
def teacher_forced_conditions(t2m, examples, text_embeddings: dict, count: int | None = None, seed: int = 0,
                              batch: int = 64, all_captions: bool = True) -> torch.Tensor:
    """Conditions the runtime gives the head, from the dataset with teacher forcing: for every
    (example, caption) sequence [caption token, latents of A, latents of B] the frozen transformer's
    outputs at the positions that predict B's latents (the end latent included), once with the
    caption and once with the empty caption (the guidance row). Returns (N, 2, n_embd) pairs
    [cond, uncond], float32 on the CPU; `count` of them drawn uniformly at random (seeded) from all
    positions, or all when None. The window is the model's (block_size - 1 latents)."""
    p = next(t2m.parameters())
    L_max = t2m.config.block_size - 1
    empty = text_embeddings[""]
    seqs = []   # (latents (L, d), first target position, caption)
    for ex in examples:
        for cap in (ex.all_captions() if all_captions else (ex.caption,)):
            a, b = ex.latents_a, ex.latents_b
            seq = np.concatenate([a, b])[:L_max] if len(a) else b[:L_max]
            if len(seq) > len(a):
                seqs.append((seq, len(a), cap))
    counts = np.array([len(s) - a for s, a, _ in seqs])
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no target positions in the examples")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    keep = np.ones(total, dtype=bool)
    if count is not None and count < total:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(total, size=count, replace=False)] = True
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for s in range(0, len(seqs), batch):
        chunk = [i for i in range(s, min(s + batch, len(seqs))) if keep[offsets[i]:offsets[i + 1]].any()]
        if not chunk:
            continue
        L = max(len(seqs[i][0]) for i in chunk)
        lat = torch.zeros(len(chunk), L, seqs[chunk[0]][0].shape[1])
        for r, i in enumerate(chunk):
            lat[r, :len(seqs[i][0])] = torch.from_numpy(np.ascontiguousarray(seqs[i][0], dtype=np.float32))
        text = torch.stack([text_embeddings[seqs[i][2]] for i in chunk])
        lat, text = lat.to(p.device, p.dtype), text.to(p.device, p.dtype)
        cond = t2m(lat, text)
        uncond = t2m(lat, empty.to(p.device, p.dtype).expand_as(text))
        for r, i in enumerate(chunk):
            a = seqs[i][1]
            n = len(seqs[i][0])
            sel = torch.from_numpy(keep[offsets[i]:offsets[i + 1]])
            pos = torch.arange(a, n)[sel]
            out.append(torch.stack([cond[r, pos], uncond[r, pos]], dim=1).float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- the teacher's samples
BANK_FORMAT = "motionstreamer-distill-bank"


@torch.no_grad()
def teacher_samples(diff_loss, pairs: torch.Tensor, per_condition: int, cfg_scale: float, sampling_steps: int,
                    skip_terminal_step: bool, seed: int, chunk: int = 512, rank: int = 0,
                    world_size: int = 1) -> torch.Tensor:
    """per_condition draws of the guided teacher sampler (the runtime's: ancestral DDPM, [cond; uncond]
    rows sharing their noise) for each [cond, uncond] pair (N, 2, E) -> (N, per_condition, latent),
    on the CPU in float32. Chunk j of conditions draws from its own generator (seed, j) in process
    j % world_size and the chunks are gathered, so the result does not depend on the process count."""

    p = next(diff_loss.parameters())
    settings = SamplerSettings(sampling_steps=sampling_steps, cfg_scale=cfg_scale,
                               skip_terminal_step=skip_terminal_step)
    n_steps = diff_loss.sampling_process(sampling_steps, skip_terminal_step).num_timesteps
    starts = list(range(0, pairs.shape[0], chunk))
    parts = {}
    for j, s in enumerate(starts):
        if j % world_size != rank:
            continue
        c = pairs[s:s + chunk].to(p.device, p.dtype)
        cond, unc = c[:, 0].repeat_interleave(per_condition, 0), c[:, 1].repeat_interleave(per_condition, 0)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + j)
        noise = draw_sampling_noise(gen, cond.shape[0], n_steps, diff_loss.config.latent_dim, p.device, p.dtype)
        z = diff_loss.sample(cond, unc, settings, noise=noise)
        parts[j] = z.float().cpu().reshape(c.shape[0], per_condition, -1)
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, parts)
        parts = {j: t for part in gathered for j, t in part.items()}
    return torch.cat([parts[j] for j in range(len(starts))])


# ----------------------------------------------------------------------------- the objective
def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (..., n, m) with a finite gradient at 0 (equal samples)."""
    return ((a[..., :, None, :] - b[..., None, :, :]) ** 2).sum(-1).add(1e-12).sqrt()


def energy_score(samples: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Energy score of the model samples (B, m, d) against target samples (B, n, d), averaged over B:
    E|X - Y| - 1/2 E|X - X'| (distinct pairs). Its expectation is minimised exactly when X has Y's
    distribution (a strictly proper scoring rule); 2 * score - E|Y - Y'| estimates the energy distance."""
    m = samples.shape[-2]
    if m < 2:
        raise ValueError(f"the energy score needs >= 2 model samples per condition, got {m}")
    xy = _pairwise(samples, targets).mean(dim=(-1, -2))
    xx = _pairwise(samples, samples).sum(dim=(-1, -2)) / (m * (m - 1))
    return (xy - 0.5 * xx).mean()


class EnergyDistillObjective(torch.nn.Module):
    """The student's k-step samples against the teacher's for the same conditions, every supported k
    each step (one network serves them all). A module so DDP wraps one forward using every parameter.

    guidance_steps > 0 first runs that many steps of guidance distillation (Meng et al. 2023, stage
    one): the student's eps at a random timestep regresses the teacher's guided eps
    eps_u + cfg_scale (eps_c - eps_u) on x_t noised from a teacher sample. It makes the student a one-row
    guided eps model, the starting point of the few-step stage."""

    def __init__(self, student, steps: tuple, samples: int, teacher_net=None,
                 cfg_scale: float = SamplerSettings.cfg_scale, guidance_steps: int = 0, guidance_weight: float = 0.0):
        super().__init__()
        self.student, self.steps, self.samples = student, tuple(steps), samples
        self.cfg_scale, self.guidance_steps, self.guidance_weight = cfg_scale, guidance_steps, guidance_weight
        object.__setattr__(self, "teacher_net", teacher_net)   # frozen, not part of the trained state
        if (guidance_steps or guidance_weight) and teacher_net is None:
            raise ValueError("guidance distillation needs the teacher's network")

    def forward(self, batch: dict, step: int):
        if step < self.guidance_steps:
            return self.guidance_loss(batch)
        w = self.student.net.final_layer.linear.weight
        cond = batch["cond"].to(w.device, w.dtype)
        target = batch["target"].to(w.device, torch.float32)
        B, m, d = cond.shape[0], self.samples, target.shape[-1]
        # E|Y - Y'| of the teacher's samples: turns the logged scores into energy distances (-> 0)
        n = target.shape[1]
        yy = (_pairwise(target, target).sum(dim=(-1, -2)) / (n * (n - 1))).mean()
        total, logs = 0.0, {}
        for k in self.steps:
            k_noise = self.student.sampling_process(k).num_timesteps
            noise = (torch.randn(B * m, d, device=w.device, dtype=w.dtype),
                     torch.randn(k_noise, B * m, d, device=w.device, dtype=w.dtype))
            x = self.student.rollout(cond, k, noise, repeats=m).float().reshape(B, m, d)
            score = energy_score(x, target)
            total = total + score
            logs[f"energy_distance_{k}"] = (2 * score - yy).detach()
        total = total / len(self.steps)
        if self.guidance_weight:
            g, glog = self.guidance_loss(batch)
            total = total + self.guidance_weight * g
            logs.update(glog)
        return total, logs

    def guidance_loss(self, batch: dict):
        w = self.student.net.final_layer.linear.weight
        cond, uncond = batch["cond"].to(w.device, w.dtype), batch["uncond"].to(w.device, w.dtype)
        target = batch["target"].to(w.device, w.dtype)
        B = cond.shape[0]
        x0 = target[torch.arange(B, device=w.device), torch.randint(target.shape[1], (B,), device=w.device)]
        top = self.student.student_config.top_timestep
        proc = GaussianDiffusion(self.student.base_betas)
        t = torch.randint(0, top + 1, (B,), device=w.device)
        x_t = proc.q_sample(x0, t, torch.randn_like(x0))
        with torch.no_grad():
            e_c, e_u = self.teacher_net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
            guided = e_u + self.cfg_scale * (e_c - e_u)
        loss = ((self.student.net(x_t, t, cond) - guided) ** 2).mean()
        return loss, {"guidance_mse": loss.detach()}


# ----------------------------------------------------------------------------- config and training
@dataclass
class DistillConfig(TrainConfig):
    out_dir: str = "runs/distill"
    steps: int = 3000
    batch_size: int = 64               # conditions per optimiser step (global)
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.995
    save_every: int = 500
    log_every: int = 50
    student_steps: tuple = (1, 2, 4)   # step counts the student is trained for (and supports)
    default_steps: int | None = None   # the runtime's default among them (None: the largest)
    cfg_scale: float = SamplerSettings.cfg_scale   # the teacher's guidance scale to reproduce
    teacher_steps: int = 50            # the teacher's sampling steps
    skip_terminal_step: bool | None = None   # None: the teacher bundle's sampler setting
    conditions: int = 16384            # teacher-forced training conditions in the bank
    teacher_samples: int = 8           # teacher draws per condition in the bank
    student_samples: int = 8           # student draws per condition per step
    all_captions: bool = True          # every caption of a clip makes its own condition sequence
    bank_chunk: int = 16               # conditions per teacher sampling call (its AdaLN tables grow with it)
    guidance_steps: int = 0            # first steps: guidance distillation (see EnergyDistillObjective)
    guidance_weight: float = 0.0       # then: weight of the guidance-distillation loss beside the energy score

    LEGACY_KEYS = {"cfg": "cfg_scale", "skip_terminal": "skip_terminal_step"}   # before the one sampler vocabulary

    def check(self) -> None:
        super().check()
        name = type(self).__name__
        if not self.student_steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                         for k in self.student_steps) \
                or len(set(self.student_steps)) != len(self.student_steps):
            raise ValueError(f"{name}.student_steps must be distinct positive ints, got {list(self.student_steps)}")
        if self.default_steps is not None and self.default_steps not in self.student_steps:
            raise ValueError(f"{name}.default_steps {self.default_steps} is not one of student_steps "
                             f"{list(self.student_steps)}")
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"{name}.cfg_scale must be finite, got {self.cfg_scale}")
        if self.guidance_steps < 0 or self.guidance_steps >= self.steps:
            raise ValueError(f"{name}.guidance_steps must be in [0, steps), got {self.guidance_steps}")
        for k in ("teacher_steps", "conditions", "bank_chunk"):
            if getattr(self, k) < 1:
                raise ValueError(f"{name}.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("teacher_samples", "student_samples"):
            if getattr(self, k) < 2:
                raise ValueError(f"{name}.{k} must be >= 2 (the energy score compares pairs), got {getattr(self, k)}")


class TeacherBank:
    """Training conditions (N, 2, E) [cond, uncond] and the teacher's samples for them (N, m, latent).
    Batches draw conditions uniformly with the data generator."""

    def __init__(self, pairs: torch.Tensor, samples: torch.Tensor, meta: dict):
        if pairs.dim() != 3 or pairs.shape[1] != 2 or samples.dim() != 3 or samples.shape[0] != pairs.shape[0]:
            raise ValueError(f"bank shapes do not fit: pairs {tuple(pairs.shape)}, samples {tuple(samples.shape)}")
        if not (torch.isfinite(pairs).all() and torch.isfinite(samples).all()):
            raise ValueError("the teacher bank holds NaN/inf (the teacher diverged on these conditions?)")
        self.pairs, self.samples, self.meta = pairs, samples, meta

    def sample_batch(self, gen: torch.Generator, batch_size: int) -> dict:
        idx = torch.randint(self.pairs.shape[0], (batch_size,), generator=gen)
        return {"cond": self.pairs[idx, 0], "uncond": self.pairs[idx, 1], "target": self.samples[idx]}

    def save(self, path) -> None:
        atomic_torch_save(path, {"format": BANK_FORMAT, "pairs": self.pairs, "samples": self.samples,
                                 "meta": self.meta})

    @classmethod
    def load(cls, path, meta: dict) -> "TeacherBank | None":
        """The bank saved at path when it was built with the same `meta`, else None."""
        d = load_training_checkpoint(path)
        if not isinstance(d, dict) or d.get("format") != BANK_FORMAT or d.get("meta") != meta:
            return None
        return cls(d["pairs"], d["samples"], meta)


def bank_meta(config: DistillConfig, skip_terminal_step: bool, teacher: str) -> dict:
    return {"teacher": teacher, "cfg_scale": config.cfg_scale, "teacher_steps": config.teacher_steps,
            "skip_terminal_step": skip_terminal_step, "conditions": config.conditions,
            "teacher_samples": config.teacher_samples, "seed": config.seed, "all_captions": config.all_captions}


def student_config(config: DistillConfig, bundle, skip_terminal_step: bool) -> StudentHeadConfig:
    head = bundle.t2m.config.head
    return StudentHeadConfig(steps=tuple(config.student_steps),
                             default_steps=config.default_steps or max(config.student_steps),
                             top_timestep=teacher_top_timestep(head, skip_terminal_step),
                             teacher_cfg_scale=config.cfg_scale, teacher_steps=config.teacher_steps,
                             teacher_skip_terminal_step=skip_terminal_step, distillation=METHOD)


def teacher_skip_terminal_step(config: DistillConfig, bundle) -> bool:
    if config.skip_terminal_step is not None:
        return config.skip_terminal_step
    return bool(bundle_config_of(bundle).sampler.skip_terminal_step)


def distill_head(bundle, examples, text_embeddings: dict, config: DistillConfig, resume=None, stop_after=None,
                 teacher_name: str = "", progress: bool = True):
    """Train a student head for a loaded teacher bundle. Returns (student, TrainResult); in the main
    process the student holds the EMA weights when EMA is on (what a bundle should get). The bank
    (conditions + teacher samples) is cached in config.out_dir and reused by a resumed run."""

    env: Dist = setup_distributed(config.device)
    t2m = bundle.t2m.to(env.device, torch.float32).eval()
    for q in t2m.parameters():
        q.requires_grad_(False)
    skip = teacher_skip_terminal_step(config, bundle)
    scfg = student_config(config, bundle, skip)
    meta = bank_meta(config, skip, teacher_name)
    bank_path = Path(config.out_dir) / "teacher_bank.pt"
    bank = TeacherBank.load(bank_path, meta) if bank_path.is_file() else None
    if bank is None:
        pairs = teacher_forced_conditions(t2m, examples, text_embeddings, config.conditions, config.seed,
                                          all_captions=config.all_captions)
        samples = teacher_samples(t2m.diff_loss, pairs, config.teacher_samples, config.cfg_scale, config.teacher_steps,
                                  skip, config.seed, config.bank_chunk, env.rank, env.world_size)
        bank = TeacherBank(pairs, samples, meta)
        if env.is_main:
            bank.save(bank_path)
    student = StudentHead(t2m.config.head, scfg)
    student.net.load_state_dict(t2m.diff_loss.net.state_dict())     # initialised from the teacher
    objective = EnergyDistillObjective(student, scfg.steps, config.student_samples, t2m.diff_loss.net, config.cfg_scale,
                                       config.guidance_steps, config.guidance_weight)
    res = train_loop(objective, config, bank.sample_batch, lambda m, batch, step: m(batch, step), name="distill",
                     resume=resume, stop_after=stop_after, dist_env=env,
                     extra_config={"student_head": scfg.to_dict(), "head": t2m.config.head.to_dict(),
                                   "teacher": teacher_name, "bank": {k: v for k, v in meta.items()}})
    if config.ema_decay and res.checkpoint is not None and env.is_main:   # the main process writes the checkpoint
        state = ema_or_model_state(load_training_checkpoint(res.checkpoint))
        student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    return student.cpu().eval(), res
