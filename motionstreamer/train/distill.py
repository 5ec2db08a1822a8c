"""Distil the guided 50-step diffusion head into a few-step student that needs no guidance rows.

What is reproduced: the runtime's teacher sampler, i.e. the ancestral DDPM loop over the head's
respaced process (the bundle's skip_terminal_step included) with classifier-free guidance on
[cond; uncond] rows. For each condition it defines a distribution over the next latent; the student
(models/few_step.py: the head's architecture, initialised from the teacher's weights) must draw from
the same distribution in k in {1, 2, 4} ancestral steps from the conditional row alone.

Method: energy-score distillation of the sampler's output distribution. For a batch of training
conditions, the student draws m samples per condition through its whole k-step sampler
(differentiably; every supported k each step, one network for all), and the loss is the energy
score against n samples of the teacher's guided sampler for the same condition:

    S = E|X - Y| - 1/2 E|X - X'|      (X: student samples, Y: teacher samples, distinct pairs)

The energy score is a strictly proper scoring rule (Gneiting & Raftery 2007; Szekely & Rizzo's
energy distance is 2 S - E|Y - Y'|): its expectation is minimised exactly when the student's
distribution equals the teacher's, with no density, no discriminator and no ODE. De Bortoli et al.
2025 ("Distributional diffusion models with scoring rules") use it to train few-step diffusion
samplers; the same loss is Shen & Meinshausen's "engression" and a generative MMD (energy kernel).

Why not the methods the field usually picks: progressive distillation (Salimans & Ho 2022, after
guidance distillation, Meng et al. 2023) and consistency distillation (Song et al. 2023) both
distil the deterministic probability-flow ODE (DDIM) of the guided model. That is not the
distribution the runtime samples: on the embedded model, on held-out conditions, the guided 50-step
DDIM sampler is at energy distance 0.069 ± 0.029 from the guided 50-step ancestral sampler, against
a teacher-vs-teacher noise floor of -0.001 ± 0.002 and 0.022 ± 0.009 for the ancestral teacher
respaced to 10 steps (`motionstreamer evaluate head`, 32 conditions x 256 samples): an ODE student
would start from a bias larger than a 10-step teacher's. The energy score targets the ancestral
distribution itself, needs only samples of it, and trains every step count of one network at once.

Limit (measured, scripts/student_guidance_probe.py, docs/student.md): one row per
stream means the student sees the conditional condition c but never u, the empty caption's condition
over the same history, and guidance is a function of both. The embedded student is closer to the
teacher than the 4-step respaced teacher by energy distance yet reproduces ~1/5 of the guidance mean
shift (its R-precision is the unguided teacher's); the teacher's own network on u + cfg (c - u) with
the true u reproduces it all, with u predicted from c about 2/3. Closing the gap needs a cheap view of u.

Data: the conditions are the frozen transformer's outputs over the training set's latent sequences
with teacher forcing ([caption, history A, target B], every position that predicts a latent of B,
the end latent included), once with the caption and once with the empty caption for the teacher's
guidance row: the conditions the runtime gives the head. A bank of `conditions` of them, drawn
uniformly, with `teacher_samples` teacher draws each, is computed once (shared among DDP
processes, cached in the run folder so a resumed run reuses it); training draws batches from it.
The run uses the shared loop (train/common.py): AdamW, warm-up + cosine, EMA, bf16 autocast on GPU,
atomic checkpoints, resume, TensorBoard, torchrun DDP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from motionstreamer.models.few_step import StudentHead, StudentHeadConfig, teacher_top_timestep
from motionstreamer.train.common import TrainConfig

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
def teacher_samples(diff_loss, pairs: torch.Tensor, per_condition: int, cfg: float, steps: int,
                    skip_terminal: bool, seed: int, chunk: int = 512, rank: int = 0,
                    world_size: int = 1) -> torch.Tensor:
    """per_condition draws of the guided teacher sampler (the runtime's: ancestral DDPM, [cond; uncond]
    rows sharing their noise) for each [cond, uncond] pair (N, 2, E) -> (N, per_condition, latent),
    on the CPU in float32. Chunk j of conditions draws from its own generator (seed, j) in process
    j % world_size and the chunks are gathered, so the result does not depend on the process count."""
    import torch.distributed as dist

    from motionstreamer.models.diffusion import SamplerSettings, draw_sampling_noise

    p = next(diff_loss.parameters())
    settings = SamplerSettings(sampling_steps=steps, cfg_scale=cfg, skip_terminal_step=skip_terminal)
    n_steps = diff_loss.sampling_process(steps, skip_terminal).num_timesteps
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
    eps_u + cfg (eps_c - eps_u) on x_t noised from a teacher sample. It makes the student a one-row
    guided eps model, the starting point of the few-step stage."""

    def __init__(self, student, steps: tuple, samples: int, teacher_net=None, cfg: float = 4.0,
                 guidance_steps: int = 0, guidance_weight: float = 0.0):
        super().__init__()
        self.student, self.steps, self.samples = student, tuple(steps), samples
        self.cfg, self.guidance_steps, self.guidance_weight = cfg, guidance_steps, guidance_weight
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
        from motionstreamer.models.diffusion import GaussianDiffusion

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
            guided = e_u + self.cfg * (e_c - e_u)
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
    cfg: float = 4.0                   # the teacher's guidance scale to reproduce
    teacher_steps: int = 50            # the teacher's sampling steps
    skip_terminal: bool | None = None  # None: the teacher bundle's sampler setting
    conditions: int = 16384            # teacher-forced training conditions in the bank
    teacher_samples: int = 8           # teacher draws per condition in the bank
    student_samples: int = 8           # student draws per condition per step
    all_captions: bool = True          # every caption of a clip makes its own condition sequence
    bank_chunk: int = 16               # conditions per teacher sampling call (its AdaLN tables grow with it)
    guidance_steps: int = 0            # first steps: guidance distillation (see EnergyDistillObjective)
    guidance_weight: float = 0.0       # then: weight of the guidance-distillation loss beside the energy score

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
        if not math.isfinite(self.cfg):
            raise ValueError(f"{name}.cfg must be finite, got {self.cfg}")
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
        from motionstreamer.utils import atomic_torch_save
        atomic_torch_save(path, {"format": BANK_FORMAT, "pairs": self.pairs, "samples": self.samples,
                                 "meta": self.meta})

    @classmethod
    def load(cls, path, meta: dict) -> "TeacherBank | None":
        """The bank saved at path when it was built with the same `meta`, else None."""
        from motionstreamer.train.common import load_checkpoint
        d = load_checkpoint(path)
        if not isinstance(d, dict) or d.get("format") != BANK_FORMAT or d.get("meta") != meta:
            return None
        return cls(d["pairs"], d["samples"], meta)


def bank_meta(cfg: DistillConfig, skip_terminal: bool, teacher: str) -> dict:
    return {"teacher": teacher, "cfg": cfg.cfg, "teacher_steps": cfg.teacher_steps, "skip_terminal": skip_terminal,
            "conditions": cfg.conditions, "teacher_samples": cfg.teacher_samples, "seed": cfg.seed,
            "all_captions": cfg.all_captions}


def student_config(cfg: DistillConfig, bundle, skip_terminal: bool) -> StudentHeadConfig:
    head = bundle.t2m.config.head
    return StudentHeadConfig(steps=tuple(cfg.student_steps), default_steps=cfg.default_steps or max(cfg.student_steps),
                             top_timestep=teacher_top_timestep(head, skip_terminal), teacher_cfg=cfg.cfg,
                             teacher_steps=cfg.teacher_steps, teacher_skip_terminal=skip_terminal, method=METHOD)


def teacher_skip_terminal(cfg: DistillConfig, bundle) -> bool:
    if cfg.skip_terminal is not None:
        return cfg.skip_terminal
    return bool((bundle.config or {}).get("sampler", {}).get("skip_terminal_step", False))


def distill_head(bundle, examples, text_embeddings: dict, cfg: DistillConfig, resume=None, stop_after=None,
                 teacher_name: str = "", progress: bool = True):
    """Train a student head for a loaded teacher bundle. Returns (student, TrainResult); in the main
    process the student holds the EMA weights when EMA is on (what a bundle should get). The bank
    (conditions + teacher samples) is cached in cfg.out_dir and reused by a resumed run."""
    from pathlib import Path

    from motionstreamer.train.common import Dist, ema_or_model_state, load_checkpoint, setup_distributed, train_loop

    env: Dist = setup_distributed(cfg.device)
    t2m = bundle.t2m.to(env.device, torch.float32).eval()
    for q in t2m.parameters():
        q.requires_grad_(False)
    skip = teacher_skip_terminal(cfg, bundle)
    scfg = student_config(cfg, bundle, skip)
    meta = bank_meta(cfg, skip, teacher_name)
    bank_path = Path(cfg.out_dir) / "teacher_bank.pt"
    bank = TeacherBank.load(bank_path, meta) if bank_path.is_file() else None
    if bank is None:
        pairs = teacher_forced_conditions(t2m, examples, text_embeddings, cfg.conditions, cfg.seed,
                                          all_captions=cfg.all_captions)
        samples = teacher_samples(t2m.diff_loss, pairs, cfg.teacher_samples, cfg.cfg, cfg.teacher_steps, skip,
                                  cfg.seed, cfg.bank_chunk, env.rank, env.world_size)
        bank = TeacherBank(pairs, samples, meta)
        if env.is_main:
            bank.save(bank_path)
    student = StudentHead(t2m.config.head, scfg)
    student.net.load_state_dict(t2m.diff_loss.net.state_dict())     # initialised from the teacher
    objective = EnergyDistillObjective(student, scfg.steps, cfg.student_samples, t2m.diff_loss.net, cfg.cfg,
                                       cfg.guidance_steps, cfg.guidance_weight)
    res = train_loop(objective, cfg, bank.sample_batch, lambda m, batch, step: m(batch, step), name="distill",
                     resume=resume, stop_after=stop_after, dist_env=env,
                     extra_config={"student_head": scfg.to_dict(), "head": t2m.config.head.to_dict(),
                                   "teacher": teacher_name, "bank": {k: v for k, v in meta.items()}})
    if cfg.ema_decay and res.checkpoint is not None and env.is_main:   # the main process writes the checkpoint
        state = ema_or_model_state(load_checkpoint(res.checkpoint))
        student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    return student.cpu().eval(), res
