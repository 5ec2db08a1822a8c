"""Distil the guided 50-step teacher into a few-step student.

Target: the runtime's teacher sampler (ancestral DDPM over the head's respaced process, the bundle's
skip_terminal_step, classifier-free guidance on [cond; uncond] rows). For each context (a caption and
the latents so far) it defines a distribution over the next latent; the student (models/few_step.py:
the head's architecture, initialised from the teacher) must draw from it in k ancestral steps.

The method (numbers, and what did not work: docs/student.md):

1. Where guidance lives. Guidance needs u, the transformer's output for the empty caption over the same
   history. `keep_guidance` (the default, the embedded model's student): the student keeps the
   teacher's [cond; uncond] rows and its guidance scale, eps_u + s (eps_c - eps_u) from its own
   network, so only the steps are distilled (the teacher's transformer, two KV rows per stream). Else
   the student samples from one row: its own conditional path (`condition_blocks`: copies of the
   transformer's last blocks, ln_f and out_proj, trained with the head) must carry what guidance adds
   (guidance-free training, Chen et al. 2025; model-guidance, Tang et al. 2025); measured, such
   students stayed near the unguided teacher's R-precision.
2. Loss, per training context: the energy score of the student's k-step samples (its whole sampler
   run differentiably, every supported k) against n samples of the guided teacher,

       S = E|X - Y| - 1/2 E|X - X'|      (X: student samples, Y: teacher samples, distinct pairs),

   a strictly proper scoring rule (Gneiting & Raftery 2007; De Bortoli et al. 2025 train few-step
   samplers with it), plus `guidance_weight` times the regression of the student's eps at a random
   timestep on the teacher's guided eps eps_u + cfg_scale (eps_c - eps_u) (guidance distillation,
   Meng et al. 2023): the mean shift guidance adds is small next to the spread, a distribution
   distance barely sees it, the guided eps carries it at every noise level.
3. Contexts the student meets at run time. Training starts on teacher-forced contexts (the dataset's
   latent sequences); then, `rollout_rounds` times, the student streams the training prompts (each
   caption at its length, and every stream pair's two prompts in a row) with its default step
   count, the teacher labels those same histories (its c and u rows over the student's latents, its
   guided samples), and the new contexts join the training mix (`rollout_fraction` of each batch):
   DAgger (Ross et al. 2011) with the teacher as the expert, the contexts of Self Forcing (Huang et
   al. 2025) and CausVid's causal student (Yin et al. 2025) without backpropagating through the rollout.
4. Selection by end-to-end metrics: after every round (and at the end) a `select` callback (e.g.
   eval.selection.StudentSelector: `evaluate t2m` and `evaluate stream` with the student) scores the
   EMA student; the best one is returned, not the last.

A bank (contexts, targets, the teacher's [c, u] rows and samples) is computed once per round, shared
among DDP processes and cached in the run folder for resumes; training draws batches from the banks on
the shared loop (train/common.py).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from motionstreamer.checkpoints import bundle_config_of, ema_or_model_state, load_training_checkpoint
from motionstreamer.models.few_step import StudentHead, StudentHeadConfig, teacher_top_timestep
from motionstreamer.models.sampling import GaussianDiffusion, SamplerSettings, draw_sampling_noise
from motionstreamer.runtime.batch import run_schedules
from motionstreamer.runtime.engine import GenerationConfig
from motionstreamer.train.common import Dist, TrainConfig, atomic_torch_save, setup_distributed, train_loop
from motionstreamer.utils import atomic_write_json

METHOD = ("energy-score distillation of the guided ancestral sampler with a learned conditional path and the "
          "student's own rollouts (motionstreamer.train.distill)")
METHOD_GUIDED = ("energy-score distillation of the guided ancestral sampler, guidance kept on [cond; uncond] rows, "
                 "with the student's own rollouts (motionstreamer.train.distill)")


# ----------------------------------------------------------------------------- contexts
SWITCH_LATENTS = 3   # positions after a prompt change that count as the switch (0.4 s at 30 fps)


@dataclass
class Contexts:
    """Latent sequences and the caption each runs under: sequence i is [text[i] token, latents[i,
    :lengths[i]]], and the conditions at its positions first[i] .. lengths[i] - 1 are training targets
    (position p conditions latent p, so it sees latents 0 .. p-1)."""
    latents: torch.Tensor   # (S, L, latent) zero-padded, float32
    lengths: torch.Tensor   # (S,) long
    first: torch.Tensor     # (S,) long
    text: torch.Tensor      # (S, text_dim)

    def __post_init__(self):
        S = self.latents.shape[0]
        if not (self.lengths.shape == self.first.shape == (S,) and self.text.shape[0] == S):
            raise ValueError(f"contexts do not fit: latents {tuple(self.latents.shape)}, lengths "
                             f"{tuple(self.lengths.shape)}, first {tuple(self.first.shape)}, "
                             f"text {tuple(self.text.shape)}")
        if S and not bool(((0 <= self.first) & (self.first < self.lengths)).all()):
            raise ValueError("every context needs a target position (0 <= first < length)")

    @classmethod
    def from_sequences(cls, seqs: list, latent_dim: int) -> "Contexts":
        """seqs: [(latents (L, d) array or tensor, first target position, text embedding)]."""
        if not seqs:
            raise ValueError("no context sequences")
        L = max(len(s) for s, _, _ in seqs)
        lat = torch.zeros(len(seqs), L, latent_dim)
        for i, (s, _, _) in enumerate(seqs):
            lat[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.float32))
        return cls(lat, torch.tensor([len(s) for s, _, _ in seqs]), torch.tensor([a for _, a, _ in seqs]),
                   torch.stack([torch.as_tensor(t).float() for _, _, t in seqs]))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def targets(self, count: int | None = None, seed: int = 0, switch_share: float = 0.0,
                switch_latents: int = SWITCH_LATENTS) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence, position) of every target, or `count` of them drawn without replacement (seeded),
        in sequence order: uniformly, or with `switch_share` of them (as far as there are) among the
        first `switch_latents` positions after a prompt change (a context whose targets start after a
        history: where the new text must take over, and where guidance moves the teacher most)."""
        n = (self.lengths - self.first).tolist()
        seq = torch.repeat_interleave(torch.arange(len(self)), torch.tensor(n, dtype=torch.long))
        pos = torch.cat([torch.arange(a, b) for a, b in zip(self.first.tolist(), self.lengths.tolist())])
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if not 0.0 <= switch_share <= 1.0:
            raise ValueError(f"switch_share must be in [0, 1], got {switch_share}")
        if count is not None and count < len(seq):
            rng = np.random.default_rng(seed)
            first = self.first[seq]
            switch = ((first > 0) & (pos < first + switch_latents)).numpy()
            near, rest = np.flatnonzero(switch), np.flatnonzero(~switch)
            k = min(len(near), round(switch_share * count)) if switch_share else 0
            keep = np.concatenate([rng.choice(near, size=k, replace=False),
                                   rng.choice(rest, size=min(len(rest), count - k), replace=False)]) if k else \
                rng.choice(len(seq), size=count, replace=False)
            keep = np.sort(keep)
            seq, pos = seq[keep], pos[keep]
        return seq, pos

    def cat(self, other: "Contexts") -> "Contexts":
        L = max(self.latents.shape[1], other.latents.shape[1])
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, L - x.shape[1]))  # noqa: E731
        return Contexts(torch.cat([pad(self.latents), pad(other.latents)]), torch.cat([self.lengths, other.lengths]),
                        torch.cat([self.first, other.first]), torch.cat([self.text, other.text]))

    def gather(self, seq: torch.Tensor) -> dict:
        """The sequences `seq` (B,) as a batch: unique sequences, trimmed to their longest, and the row of
        each target among them."""
        uniq, row = torch.unique(seq, return_inverse=True)
        L = int(self.lengths[uniq].max())
        return {"latents": self.latents[uniq, :L], "text": self.text[uniq], "lengths": self.lengths[uniq], "row": row}


def dataset_contexts(examples, text_embeddings: dict, block_size: int, all_captions: bool = True) -> Contexts:
    """Teacher forcing: for every (example, caption) the sequence [latents of A, latents of B] (the
    model's window, block_size - 1 latents) under the caption, B's positions the targets."""
    L_max = block_size - 1
    seqs = []
    for ex in examples:
        for cap in (ex.all_captions() if all_captions else (ex.caption,)):
            a, b = ex.latents_a, ex.latents_b
            seq = np.concatenate([a, b])[:L_max] if len(a) else b[:L_max]
            if len(seq) > len(a):
                seqs.append((seq, len(a), text_embeddings[cap]))
    if not seqs:
        raise ValueError("no target positions in the examples")
    return Contexts.from_sequences(seqs, examples[0].latents_b.shape[-1])


@torch.no_grad()
def context_conditions(t2m, contexts: Contexts, seq: torch.Tensor, pos: torch.Tensor, empty: torch.Tensor,
                       batch: int = 64) -> torch.Tensor:
    """The teacher's rows at the targets (seq, pos): (N, 2, n_embd) [cond, uncond], float32 on the CPU,
    in the targets' order; uncond is the same history under the empty caption `empty`."""
    p = next(t2m.parameters())
    out = torch.zeros(len(seq), 2, t2m.config.n_embd)
    needed = torch.unique(seq)
    for s in range(0, len(needed), batch):
        ids = needed[s:s + batch]
        L = int(contexts.lengths[ids].max())
        lat = contexts.latents[ids, :L].to(p.device, p.dtype)
        text = contexts.text[ids].to(p.device, p.dtype)
        lengths = contexts.lengths[ids].to(p.device)
        cond = t2m(lat, text, lengths=lengths).float().cpu()
        uncond = t2m(lat, empty.to(p.device, p.dtype).expand_as(text), lengths=lengths).float().cpu()
        where = {int(i): r for r, i in enumerate(ids)}
        for j in torch.nonzero(torch.isin(seq, ids)).flatten().tolist():
            r, q = where[int(seq[j])], int(pos[j])
            out[j, 0], out[j, 1] = cond[r, q], uncond[r, q]
    return out


def teacher_forced_conditions(t2m, examples, text_embeddings: dict, count: int | None = None, seed: int = 0,
                              batch: int = 64, all_captions: bool = True) -> torch.Tensor:
    """[cond, uncond] rows (N, 2, n_embd) of the frozen transformer at the dataset's teacher-forced
    targets (dataset_contexts), `count` of them drawn at random (seeded), or all when None."""
    contexts = dataset_contexts(examples, text_embeddings, t2m.config.block_size, all_captions)
    seq, pos = contexts.targets(count, seed)
    return context_conditions(t2m, contexts, seq, pos, text_embeddings[""], batch)


# ----------------------------------------------------------------------------- the student's own rollouts
class EmbeddingTable:
    """A text encoder over known embeddings (the training captions'): what the engine needs to stream
    the training prompts during distillation."""

    def __init__(self, embeddings: dict):
        self.embeddings = embeddings
        self.dim = next(iter(embeddings.values())).shape[-1]

    def encode(self, texts):
        return torch.stack([self.embeddings[t] for t in texts])


def rollout_schedules(examples) -> list[list[tuple[str, int]]]:
    """What the student streams: each plain example's first caption for its length in latents, and each
    stream pair's two prompts in a row (A for its length, then B), as `evaluate t2m` / `stream` do."""
    out = []
    for ex in examples:
        if len(ex.latents_a) and ex.history_caption:
            out.append([(ex.history_caption, len(ex.latents_a)), (ex.caption, len(ex.latents_b))])
        elif not len(ex.latents_a):
            out.append([(ex.caption, len(ex.latents_b))])
    return out


@torch.no_grad()
def rollout_contexts(bundle, student: StudentHead, text_embeddings: dict, schedules: list, steps: int, seed: int,
                     block_size: int, batch: int = 256) -> Contexts:
    """Stream `schedules` with the student (its default sampler at `steps` steps, no end detection) and
    return the contexts its prompts ran in: per schedule entry j, the stream's latents up to the end of
    prompt j under prompt j's caption, its targets the latents that prompt produced (a prompt change
    re-prefills [caption, history], so these are the histories the student conditioned on)."""
    config = dataclasses.replace(bundle_config_of(bundle), student_head=student.student_config)
    runner = dataclasses.replace(bundle, student=student, config=config)
    encoder = EmbeddingTable(text_embeddings)
    gen = GenerationConfig(head="student", sampling_steps=steps)
    seqs = []
    for s in range(0, len(schedules), batch):
        chunk = schedules[s:s + batch]
        lats = run_schedules(runner, encoder, chunk, gen, seed=seed + s, latents=True)
        for sched, z in zip(chunk, lats):
            end = 0
            for caption, n in sched:
                start, end = end, end + n
                hist = z[:end][-(block_size - 1):]          # the window (longer ones slid at run time)
                first = max(0, start - (end - len(hist)))
                if first < len(hist):
                    seqs.append((hist.float().cpu(), first, text_embeddings[caption]))
    return Contexts.from_sequences(seqs, student.config.latent_dim)


# ----------------------------------------------------------------------------- the teacher's samples
BANK_FORMAT = "motionstreamer-distill-bank-v2"


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


class TeacherBank:
    """Training targets: contexts, the (sequence, position) of each target, the teacher's [cond, uncond]
    rows there (N, 2, E) and its samples (N, m, latent). `source` (N,) names the round each target
    came from (0: teacher forcing, r: rollout round r); batches draw rounds by `weights`."""

    def __init__(self, contexts: Contexts, seq: torch.Tensor, pos: torch.Tensor, pairs: torch.Tensor,
                 samples: torch.Tensor, meta: dict, source: torch.Tensor | None = None):
        N = seq.shape[0]
        if pos.shape != (N,) or pairs.dim() != 3 or pairs.shape[:2] != (N, 2) or samples.dim() != 3 \
                or samples.shape[0] != N:
            raise ValueError(f"bank shapes do not fit: {N} targets, pos {tuple(pos.shape)}, pairs "
                             f"{tuple(pairs.shape)}, samples {tuple(samples.shape)}")
        if not (torch.isfinite(pairs).all() and torch.isfinite(samples).all()):
            raise ValueError("the teacher bank holds NaN/inf (the teacher diverged on these conditions?)")
        if N and (int(seq.max()) >= len(contexts) or bool((pos >= contexts.lengths[seq]).any())):
            raise ValueError("bank targets point outside their contexts")
        self.contexts, self.seq, self.pos, self.meta = contexts, seq, pos, meta
        self.pairs, self.samples = pairs, samples
        self.source = torch.zeros(N, dtype=torch.long) if source is None else source
        self.weights = torch.ones(N)

    def __len__(self) -> int:
        return self.seq.shape[0]

    def merged(self, other: "TeacherBank", other_share: float) -> "TeacherBank":
        """This bank and `other` (a new round) in one: `other_share` of each batch is drawn from other's
        targets, the rest from this bank's as they were weighted."""
        out = TeacherBank(self.contexts.cat(other.contexts), torch.cat([self.seq, other.seq + len(self.contexts)]),
                          torch.cat([self.pos, other.pos]), torch.cat([self.pairs, other.pairs]),
                          torch.cat([self.samples, other.samples]), self.meta,
                          torch.cat([self.source, other.source]))
        out.weights = torch.cat([self.weights / self.weights.sum() * (1 - other_share),
                                 torch.full((len(other),), other_share / len(other))])
        return out

    def sample_batch(self, gen: torch.Generator, batch_size: int) -> dict:
        idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen)
        return {**self.contexts.gather(self.seq[idx]), "pos": self.pos[idx], "cond": self.pairs[idx, 0],
                "uncond": self.pairs[idx, 1], "target": self.samples[idx]}

    def save(self, path) -> None:
        c = self.contexts
        atomic_torch_save(path, {"format": BANK_FORMAT, "meta": self.meta, "latents": c.latents, "lengths": c.lengths,
                                 "first": c.first, "text": c.text, "seq": self.seq, "pos": self.pos,
                                 "pairs": self.pairs, "samples": self.samples, "source": self.source})

    @classmethod
    def load(cls, path, meta: dict) -> "TeacherBank | None":
        """The bank saved at path when it was built with the same `meta`, else None."""
        d = load_training_checkpoint(path)
        if not isinstance(d, dict) or d.get("format") != BANK_FORMAT or d.get("meta") != meta:
            return None
        return cls(Contexts(d["latents"], d["lengths"], d["first"], d["text"]), d["seq"], d["pos"], d["pairs"],
                   d["samples"], meta, d["source"])


def build_bank(t2m, contexts: Contexts, count: int, config: "DistillConfig", skip: bool, empty: torch.Tensor,
               seed: int, meta: dict, env: Dist, source: int = 0) -> TeacherBank:
    """`count` targets of the contexts with the teacher's rows and guided samples."""
    seq, pos = contexts.targets(count, seed, config.switch_share)
    pairs = context_conditions(t2m, contexts, seq, pos, empty)
    samples = teacher_samples(t2m.diff_loss, pairs, config.teacher_samples, config.cfg_scale, config.teacher_steps,
                              skip, seed, config.bank_chunk, env.rank, env.world_size)
    return TeacherBank(contexts, seq, pos, pairs, samples, meta, torch.full((len(seq),), source, dtype=torch.long))


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
    """The student's k-step samples against the teacher's for the same contexts, every supported k each
    step (one network serves them all), plus guidance_weight x the guided-eps regression. A module so
    DDP wraps one forward using every trained parameter (the student: head and conditional path).

    teacher: the t2m model (its head's network gives the guided eps), frozen here, not part of the
    trained state. With a conditional path the student's condition is computed from the batch's contexts
    through StudentHead.model(teacher); without one it is the teacher's cond row.
    guidance_steps > 0: the first steps train the guided-eps regression alone (the student becomes a
    one-row guided eps model before the few-step stage)."""

    def __init__(self, student: StudentHead, steps: tuple, samples: int, teacher=None,
                 cfg_scale: float = SamplerSettings.cfg_scale, guidance_steps: int = 0, guidance_weight: float = 0.0):
        super().__init__()
        self.student, self.steps, self.samples = student, tuple(steps), samples
        self.cfg_scale, self.guidance_steps, self.guidance_weight = cfg_scale, guidance_steps, guidance_weight
        if student.condition is not None and teacher is None:
            raise ValueError("a student with its own conditional path needs the teacher model")
        if (guidance_steps or guidance_weight) and teacher is None:
            raise ValueError("guidance distillation needs the teacher's network")
        object.__setattr__(self, "teacher", teacher)   # frozen, not part of the trained state
        for q in teacher.parameters() if teacher is not None else ():
            q.requires_grad_(False)
        object.__setattr__(self, "model", student.model(teacher) if student.condition is not None else None)

    def conditions(self, batch: dict) -> torch.Tensor:
        """The student's condition row at each target (B, E)."""
        w = self.student.net.final_layer.linear.weight
        if self.model is None:
            return batch["cond"].to(w.device, w.dtype)
        out = self.model(batch["latents"].to(w.device, w.dtype), batch["text"].to(w.device, w.dtype),
                         lengths=batch["lengths"].to(w.device))
        return out[batch["row"].to(w.device), batch["pos"].to(w.device)]

    def unconditions(self, batch: dict, cond: torch.Tensor) -> torch.Tensor | None:
        """The teacher's uncond rows for a guided student (it samples on [cond; uncond]), else None."""
        if self.student.student_config.cfg_scale == 1.0:
            return None
        return batch["uncond"].to(cond.device, cond.dtype)

    def forward(self, batch: dict, step: int):
        cond = self.conditions(batch)
        if step < self.guidance_steps:
            return self.guidance_loss(batch, cond)
        w = self.student.net.final_layer.linear.weight
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
            x = self.student.rollout(cond, k, noise, repeats=m, uncond=self.unconditions(batch, cond)
                                     ).float().reshape(B, m, d)
            score = energy_score(x, target)
            total = total + score
            logs[f"energy_distance_{k}"] = (2 * score - yy).detach()
        total = total / len(self.steps)
        if self.guidance_weight:
            g, glog = self.guidance_loss(batch, cond)
            total = total + self.guidance_weight * g
            logs.update(glog)
        return total, logs

    def guidance_loss(self, batch: dict, cond: torch.Tensor):
        """MSE of the student's eps (its condition row) to the teacher's guided eps at a random timestep,
        on x_t noised from a teacher sample."""
        w = self.student.net.final_layer.linear.weight
        c, u = batch["cond"].to(w.device, w.dtype), batch["uncond"].to(w.device, w.dtype)
        target = batch["target"].to(w.device, w.dtype)
        B = cond.shape[0]
        x0 = target[torch.arange(B, device=w.device), torch.randint(target.shape[1], (B,), device=w.device)]
        top = self.student.student_config.top_timestep
        proc = GaussianDiffusion(self.student.base_betas)
        t = torch.randint(0, top + 1, (B,), device=w.device)
        x_t = proc.q_sample(x0, t, torch.randn_like(x0))
        with torch.no_grad():
            e_c, e_u = self.teacher.diff_loss.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, u])).chunk(2)
            guided = e_u + self.cfg_scale * (e_c - e_u)
        uncond = self.unconditions(batch, cond)
        if uncond is None:
            mine = self.student.net(x_t, t, cond)
        else:   # a guided student's eps as it samples: its own guidance on [cond; uncond]
            e_c, e_u = self.student.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
            mine = e_u + self.student.student_config.cfg_scale * (e_c - e_u)
        loss = ((mine - guided) ** 2).mean()
        return loss, {"guidance_mse": loss.detach()}


# ----------------------------------------------------------------------------- config and training
@dataclass
class DistillConfig(TrainConfig):
    """The defaults are the embedded model's recipe (run I, docs/student.md): the student keeps the
    teacher's guidance and distils its 50 steps into 4, on teacher-forced contexts and two rounds of its
    own rollouts."""
    out_dir: str = "runs/distill"
    steps: int = 1200
    batch_size: int = 64               # targets per optimiser step (global)
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.995
    save_every: int = 500
    log_every: int = 50
    student_steps: tuple = (4,)        # step counts the student is trained for (and supports)
    default_steps: int | None = None   # the runtime's default among them (None: the largest)
    cfg_scale: float = SamplerSettings.cfg_scale   # the teacher's guidance scale to reproduce
    teacher_steps: int = 50            # the teacher's sampling steps
    skip_terminal_step: bool | None = None   # None: the teacher bundle's sampler setting
    conditions: int = 4096             # teacher-forced training targets in the first bank
    teacher_samples: int = 8           # teacher draws per target
    student_samples: int = 8           # student draws per target per step
    all_captions: bool = True          # every caption of a clip makes its own context sequence
    bank_chunk: int = 16               # targets per teacher sampling call (its AdaLN tables grow with it)
    condition_blocks: int | None = None   # transformer blocks the student owns (+ ln_f, out_proj); None: none
    guidance_steps: int = 0            # first steps: guided-eps regression alone (see EnergyDistillObjective)
    guidance_weight: float = 0.0       # then: its weight beside the energy score
    rollout_rounds: int = 2            # banks of the student's own rollouts, built after equal shares of steps
    rollout_conditions: int = 2048     # targets per rollout bank
    rollout_fraction: float = 0.5      # share of each batch drawn from the newest rollout bank
    rollout_steps: int | None = None   # the student's step count while rolling out (None: its default)
    switch_share: float = 0.3          # share of each bank's targets right after a prompt change
    # keep guidance at run time: the student samples on [cond; uncond] rows with cfg_scale (two rows
    # per stream, as the teacher), so only the step count is distilled; needs condition_blocks None
    keep_guidance: bool = True

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
        if self.rollout_steps is not None and self.rollout_steps not in self.student_steps:
            raise ValueError(f"{name}.rollout_steps {self.rollout_steps} is not one of student_steps "
                             f"{list(self.student_steps)}")
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"{name}.cfg_scale must be finite, got {self.cfg_scale}")
        if self.guidance_steps < 0 or self.guidance_steps >= self.steps:
            raise ValueError(f"{name}.guidance_steps must be in [0, steps), got {self.guidance_steps}")
        if not (math.isfinite(self.guidance_weight) and self.guidance_weight >= 0):
            raise ValueError(f"{name}.guidance_weight must be a finite number >= 0, got {self.guidance_weight}")
        if self.keep_guidance and self.condition_blocks is not None:
            raise ValueError(f"{name}.keep_guidance samples on the teacher's [cond; uncond] rows: set condition_blocks "
                             f"to null, not {self.condition_blocks}")
        if self.condition_blocks is not None and self.condition_blocks < 0:
            raise ValueError(f"{name}.condition_blocks must be >= 0 or null, got {self.condition_blocks}")
        if self.rollout_rounds < 0 or self.rollout_rounds >= self.steps:
            raise ValueError(f"{name}.rollout_rounds must be in [0, steps), got {self.rollout_rounds}")
        if not (math.isfinite(self.switch_share) and 0 <= self.switch_share <= 1):
            raise ValueError(f"{name}.switch_share must be in [0, 1], got {self.switch_share}")
        if not 0 < self.rollout_fraction <= 1:
            raise ValueError(f"{name}.rollout_fraction must be in (0, 1], got {self.rollout_fraction}")
        for k in ("teacher_steps", "conditions", "bank_chunk", "rollout_conditions"):
            if getattr(self, k) < 1:
                raise ValueError(f"{name}.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("teacher_samples", "student_samples"):
            if getattr(self, k) < 2:
                raise ValueError(f"{name}.{k} must be >= 2 (the energy score compares pairs), got {getattr(self, k)}")

    def round_ends(self) -> list[int]:
        """The step at which each round of training ends: rollout banks are built after all but the last."""
        n = self.rollout_rounds + 1
        return [round(self.steps * (r + 1) / n) for r in range(n)]


def bank_meta(config: DistillConfig, skip_terminal_step: bool, teacher: str) -> dict:
    return {"teacher": teacher, "cfg_scale": config.cfg_scale, "teacher_steps": config.teacher_steps,
            "skip_terminal_step": skip_terminal_step, "conditions": config.conditions,
            "teacher_samples": config.teacher_samples, "seed": config.seed, "all_captions": config.all_captions,
            "switch_share": config.switch_share}


def student_config(config: DistillConfig, bundle, skip_terminal_step: bool) -> StudentHeadConfig:
    head = bundle.t2m.config.head
    return StudentHeadConfig(steps=tuple(config.student_steps),
                             default_steps=config.default_steps or max(config.student_steps),
                             top_timestep=teacher_top_timestep(head, skip_terminal_step),
                             teacher_cfg_scale=config.cfg_scale, teacher_steps=config.teacher_steps,
                             teacher_skip_terminal_step=skip_terminal_step,
                             distillation=METHOD_GUIDED if config.keep_guidance else METHOD,
                             condition_blocks=config.condition_blocks,
                             cfg_scale=config.cfg_scale if config.keep_guidance else 1.0)


def teacher_skip_terminal_step(config: DistillConfig, bundle) -> bool:
    if config.skip_terminal_step is not None:
        return config.skip_terminal_step
    return bool(bundle_config_of(bundle).sampler.skip_terminal_step)


def _load_student(student: StudentHead, checkpoint, ema: bool) -> StudentHead:
    """A copy of `student` with a training checkpoint's (EMA) weights."""
    ck = load_training_checkpoint(checkpoint)
    state = ema_or_model_state(ck) if ema else ck["model"]
    out = copy.deepcopy(student).cpu()
    out.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    return out


SELECTION_FILE = "selection.json"
BEST_FILE = "best_student.pt"


def distill_head(bundle, examples, text_embeddings: dict, config: DistillConfig, resume=None, stop_after=None,
                 teacher_name: str = "", progress: bool = True, select: Callable | None = None):
    """Train a student for a loaded teacher bundle. Returns (student, TrainResult); in the main process
    the student holds the EMA weights when EMA is on (what a bundle should get), and with `select` the
    weights of the round the callback scored best.

    select(student) -> {"score": lower is better, ...}: called in the main process at the end of every
    round with the EMA student (e.g. eval.selection.StudentSelector); its results are written to the
    run folder's selection.json. Banks (contexts, targets, the teacher's rows and samples) are cached in
    config.out_dir and reused by a resumed run; stop_after stops after that many steps in this call."""

    env: Dist = setup_distributed(config.device)
    t2m = bundle.t2m.to(env.device, torch.float32).eval()
    for q in t2m.parameters():
        q.requires_grad_(False)
    skip = teacher_skip_terminal_step(config, bundle)
    scfg = student_config(config, bundle, skip)
    meta = bank_meta(config, skip, teacher_name)
    out_dir = Path(config.out_dir)
    empty = text_embeddings[""]
    bank_path = out_dir / "teacher_bank.pt"
    bank = TeacherBank.load(bank_path, meta) if bank_path.is_file() else None
    if bank is None:
        contexts = dataset_contexts(examples, text_embeddings, t2m.config.block_size, config.all_captions)
        bank = build_bank(t2m, contexts, config.conditions, config, skip, empty, config.seed, meta, env)
        if env.is_main:
            bank.save(bank_path)
    student = StudentHead(t2m.config.head, scfg, t2m.config).init_from(t2m).to(env.device)
    objective = EnergyDistillObjective(student, scfg.steps, config.student_samples, t2m, config.cfg_scale,
                                       config.guidance_steps, config.guidance_weight)
    extra = {"student_head": scfg.to_dict(), "head": t2m.config.head.to_dict(), "teacher": teacher_name,
             "bank": dict(meta)}
    schedules = rollout_schedules(examples)
    history = []
    if resume is not None and (out_dir / SELECTION_FILE).is_file():
        history = json.loads((out_dir / SELECTION_FILE).read_text())
    step = int(load_training_checkpoint(resume)["step"]) if resume is not None else 0
    res, left = None, stop_after
    for r, end in enumerate(config.round_ends()):
        if left is not None and left <= 0:
            break
        if r > 0:   # a bank of the student's own rollouts, built from the EMA weights at the round's start
            rmeta = {**meta, "round": r, "rollout_conditions": config.rollout_conditions,
                     "rollout_steps": config.rollout_steps, "built_at": config.round_ends()[r - 1]}
            path = out_dir / f"rollout_bank_{r}.pt"
            rbank = TeacherBank.load(path, rmeta) if path.is_file() else None
            if rbank is None:
                if env.world_size > 1:
                    dist.barrier()      # the main process has written the checkpoint
                current = _load_student(student, resume, bool(config.ema_decay)).to(env.device).eval()
                ctx = rollout_contexts(bundle, current, text_embeddings, schedules,
                                       config.rollout_steps or scfg.default_steps, config.seed + 7919 * r,
                                       t2m.config.block_size)
                rbank = build_bank(t2m, ctx, config.rollout_conditions, config, skip, empty, config.seed + r,
                                   rmeta, env, source=r)
                if env.is_main:
                    rbank.save(path)
            bank = bank.merged(rbank, config.rollout_fraction)
        if step >= end:
            continue
        n = end - step if left is None else min(end - step, left)
        res = train_loop(objective, config, bank.sample_batch, lambda m, batch, s: m(batch, s), name="distill",
                         resume=resume, stop_after=n, dist_env=env, extra_config=extra)
        resume, step = res.checkpoint, res.step
        left = None if left is None else left - n
        if step == end and select is not None and env.is_main:
            candidate = _load_student(student, resume, bool(config.ema_decay)).to(env.device).eval()
            scored = {"round": r, "step": step, **select(candidate)}
            history.append(scored)
            atomic_write_json(out_dir / SELECTION_FILE, history)
            if min(h["score"] for h in history) == scored["score"]:
                atomic_torch_save(out_dir / BEST_FILE, {"step": step, "student": candidate.state_dict()})
    if env.is_main and resume is not None:
        if select is not None and (out_dir / BEST_FILE).is_file():
            student.load_state_dict(load_training_checkpoint(out_dir / BEST_FILE)["student"])
        else:
            student.load_state_dict(_load_student(student, resume, bool(config.ema_decay)).state_dict())
    return student.cpu().eval(), res
