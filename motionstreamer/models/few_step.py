"""Few-step student: the diffusion head's network sampled in 1-4 steps, and the conditional path that
may feed it.

A student has the teacher head's architecture (SimpleMLPAdaLN, same widths, keys `net.*`) and is
trained by `motionstreamer distill-head` (train/distill.py) to reproduce the teacher's guided
sampling distribution. It is a DiffLoss whose sampling processes are its own, so it samples with the
one sampler of models/diffusion.py (step_coefficients "ddpm" + sample_loop: the ancestral update,
no noise at the last step; the fused Triton loop on CUDA; CUDA graphs; the ONNX head graph), with
SamplerSettings(head="student", cfg_scale=StudentHeadConfig.cfg_scale): a student that keeps guidance
(cfg_scale != 1, the embedded model's) samples on [cond; uncond] rows as the teacher does, from its
own network; one with cfg_scale 1 samples from one row per latent, no unconditional condition.

Guidance needs the unconditional row u (the transformer over the same history with the empty
caption), which one row per stream never computes. So a student may own its conditional path
(`condition_blocks` = K, keys `condition.*`): copies of the teacher's last K transformer blocks, ln_f
and out_proj, trained with the head so that its single condition row carries what guidance adds
(guidance-free training, Chen et al. 2025; model-guidance, Tang et al. 2025, done by distillation
here). A student stream runs `StudentHead.model(t2m)`: the teacher's embeddings and first
n_layer - K blocks, then the student's; its KV cache rows hold the student's keys in those K layers.
The teacher's tensors are shared, never changed. condition_blocks None (bundles distilled before
it): the student conditions on the teacher's transformer.

Timesteps: the teacher samples from `top` (the last training timestep, or the one before it with
the bundle's skip_terminal_step) down to 0. The original respacing always keeps timestep 0, so at
k = 1 it would start from pure noise at alpha_bar(0) ~ 0.998 (a broken sampler); a student uses the
k timesteps round(top * j / k), j = k..1, which start where the teacher starts and nest across k
({48} c {24, 48} c {12, 24, 36, 48} for top 48), so one network serves every supported count. Its
last step goes to a clean sample (alpha_bar_prev = 1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn

from motionstreamer.config import current_keys
from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
from motionstreamer.models.sampling import SAMPLER_RANGES, GaussianDiffusion, SamplerSettings, sample_loop
from motionstreamer.models.transformer import Block, RMSNorm, T2MConfig, TextToMotionModel

HEAD_KIND = "few-step"


def student_timesteps(top: int, steps: int) -> list[int]:
    """The k sampling timesteps of a student, ascending: round(top * j / k) for j = 1..k."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= top:
        raise ValueError(f"student steps must be an int in [1, {top}], got {steps!r}")
    return sorted({round(top * j / steps) for j in range(1, steps + 1)})


@dataclass
class StudentHeadConfig:
    """What a bundle's config.json records about its student head ("student_head")."""
    kind: str = HEAD_KIND
    steps: tuple = (1, 2, 4)           # supported step counts
    default_steps: int = 4
    top_timestep: int = 48             # first timestep sampled (the teacher's, skip_terminal_step included)
    teacher_cfg_scale: float = SamplerSettings.cfg_scale   # the guidance scale whose distribution it reproduces
    teacher_steps: int = 50
    teacher_skip_terminal_step: bool = True
    distillation: str = "energy-distance distillation of the guided ancestral sampler (train/distill.py)"
    # the last transformer blocks the student owns, with ln_f and out_proj (its conditional path);
    # None: it conditions on the teacher's transformer
    condition_blocks: int | None = None
    # the guidance scale the student samples with: 1 = one condition row, no guidance (the student's
    # row carries it); else rows [cond; uncond] and eps_u + cfg_scale (eps_c - eps_u), both from the
    # student's network: the teacher's guidance kept, its 50 steps distilled into `steps`
    cfg_scale: float = 1.0

    # the names bundles written before the one sampler vocabulary use (read, never written)
    LEGACY_KEYS = {"teacher_cfg": "teacher_cfg_scale", "teacher_skip_terminal": "teacher_skip_terminal_step",
                   "method": "distillation"}

    def __post_init__(self):
        if self.kind != HEAD_KIND:
            raise ValueError(f"student_head.kind must be {HEAD_KIND!r}, got {self.kind!r}")
        self.steps = tuple(self.steps) if isinstance(self.steps, (list, tuple)) else self.steps
        if not isinstance(self.top_timestep, int) or isinstance(self.top_timestep, bool) or self.top_timestep < 1:
            raise ValueError(f"student_head.top_timestep must be a positive int, got {self.top_timestep!r}")
        if (not isinstance(self.steps, tuple) or not self.steps or len(set(self.steps)) != len(self.steps)
                or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.top_timestep
                       for k in self.steps)):
            raise ValueError(f"student_head.steps must be distinct ints in [1, {self.top_timestep}], "
                             f"got {self.steps!r}")
        self.steps = tuple(sorted(self.steps))
        if self.default_steps not in self.steps:
            raise ValueError(f"student_head.default_steps {self.default_steps!r} "
                             f"is not one of steps {list(self.steps)}")
        if not isinstance(self.teacher_cfg_scale, (int, float)) or isinstance(self.teacher_cfg_scale, bool) \
                or not np.isfinite(self.teacher_cfg_scale):
            raise ValueError(f"student_head.teacher_cfg_scale must be a finite number, got {self.teacher_cfg_scale!r}")
        self.teacher_cfg_scale = float(self.teacher_cfg_scale)
        low, high = SAMPLER_RANGES["cfg_scale"]
        if not isinstance(self.cfg_scale, (int, float)) or isinstance(self.cfg_scale, bool) \
                or not low <= self.cfg_scale <= high:
            raise ValueError(f"student_head.cfg_scale must be a finite number in [{low:g}, {high:g}], "
                             f"got {self.cfg_scale!r}")
        self.cfg_scale = float(self.cfg_scale)
        k = self.condition_blocks
        if k is not None and self.cfg_scale != 1.0:
            raise ValueError("a guided student (student_head.cfg_scale != 1) conditions on the teacher's transformer "
                             f"rows; it cannot own a conditional path (condition_blocks {k})")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"student_head.condition_blocks must be null or an int >= 0, got {k!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudentHeadConfig":
        if not isinstance(d, dict):
            raise ValueError(f"student_head must be a mapping, got {type(d).__name__}")
        d = current_keys(d, cls.LEGACY_KEYS, "student_head")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown student_head field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def check_steps(self, steps: int) -> int:
        """`steps` if this student supports it, else a ValueError naming the supported counts."""
        if steps not in self.steps:
            raise ValueError(f"this distilled head samples in {', '.join(map(str, self.steps))} steps, not {steps!r} "
                             f"(use --head teacher for the original {self.teacher_steps}-step guided sampler)")
        return steps


def teacher_top_timestep(head: DiffusionHeadConfig, skip_terminal_step: bool) -> int:
    """The first timestep the teacher's sampler evaluates."""
    return head.num_train_steps - (2 if skip_terminal_step else 1)


def student_settings(steps: int, temperature: float = 1.0, cfg_scale: float = 1.0) -> SamplerSettings:
    """How a student samples in `steps` steps (cfg_scale: its StudentHeadConfig's)."""
    return SamplerSettings(sampling_steps=steps, temperature=temperature, cfg_scale=cfg_scale, head="student")


class ConditionPath(nn.Module):
    """A student's own conditional path: `blocks` transformer blocks (replacing the teacher's last ones),
    ln_f and out_proj, shaped as the teacher's (T2MConfig)."""

    def __init__(self, config: T2MConfig, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(blocks))
        self.ln_f = RMSNorm(config.n_embd)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd)

    def init_from(self, t2m: TextToMotionModel) -> None:
        """The teacher's weights: its last len(blocks) blocks, ln_f, out_proj."""
        n = len(self.blocks)
        for mine, theirs in zip(self.blocks, list(t2m.transformer.h)[len(t2m.transformer.h) - n:]):
            mine.load_state_dict(theirs.state_dict())
            mine.attn.attn_backend = theirs.attn.attn_backend
        self.ln_f.load_state_dict(t2m.transformer.ln_f.state_dict())
        self.out_proj.load_state_dict(t2m.out_proj.state_dict())


class StudentHead(DiffLoss):
    """The student network, its k-step processes and (condition_blocks set) its conditional path.
    `config`: the head's DiffusionHeadConfig (the teacher's); `student_config`: what the bundle records;
    `transformer`: the teacher's T2MConfig, needed for a conditional path. State dict: `net.*` (the
    head's keys), `condition.*`."""

    def __init__(self, head: DiffusionHeadConfig, config: StudentHeadConfig, transformer: T2MConfig | None = None):
        if config.top_timestep >= head.num_train_steps:
            raise ValueError(f"student_head.top_timestep {config.top_timestep} must be < the head's "
                             f"num_train_steps {head.num_train_steps}")
        super().__init__(head)
        self.student_config = config
        self.condition = None
        k = config.condition_blocks
        if k is not None:
            if transformer is None:
                raise ValueError("a student with its own conditional path (condition_blocks) needs the teacher's "
                                 "transformer config")
            if k > transformer.n_layer:
                raise ValueError(f"student_head.condition_blocks {k} exceeds the transformer's {transformer.n_layer} "
                                 f"blocks")
            if transformer.head != head:
                raise ValueError(f"the transformer's head {transformer.head.to_dict()} differs from the student's "
                                 f"{head.to_dict()}")
            self.condition = ConditionPath(transformer, k)

    def init_from(self, t2m: TextToMotionModel) -> "StudentHead":
        """The teacher's weights everywhere: head network and conditional path."""
        self.net.load_state_dict(t2m.diff_loss.net.state_dict())
        if self.condition is not None:
            self.condition.init_from(t2m)
        return self

    def model(self, t2m: TextToMotionModel) -> TextToMotionModel:
        """The text-to-motion model a student stream runs (sharing t2m's tensors): the teacher's
        embeddings and first blocks, this student's last blocks, ln_f and out_proj, and this head."""
        if self.condition is None:
            return t2m.assembled(diff_loss=self)
        c = self.condition
        kept = list(t2m.transformer.h)[:t2m.config.n_layer - len(c.blocks)]
        return t2m.assembled(blocks=kept + list(c.blocks), ln_f=c.ln_f, out_proj=c.out_proj, diff_loss=self)

    def sampling_process(self, sampling_steps: int, skip_terminal_step: bool = False) -> GaussianDiffusion:
        """The k-step process (any k in [1, top]; student_config.steps are what it was trained for).
        skip_terminal_step is the teacher's and already in student_config.top_timestep."""
        key = ("student", sampling_steps)
        if key not in self._sampling:
            top = self.student_config.top_timestep
            self._sampling[key] = GaussianDiffusion(self.base_betas[:top + 1], student_timesteps(top, sampling_steps))
        return self._sampling[key]

    def rollout(self, cond: torch.Tensor, steps: int, noise: tuple[torch.Tensor, torch.Tensor],
                repeats: int = 1, uncond: torch.Tensor | None = None) -> torch.Tensor:
        """The k-step sampler with gradients (training): `repeats` samples per condition (rows
        i*repeats .. (i+1)*repeats - 1 of the (B * repeats, latent) result), the AdaLN modulations
        computed once per condition. noise as for sample(), for B * repeats rows. A guided student
        (student_config.cfg_scale != 1) needs `uncond` (B, cond_dim), the rows sampling pairs with cond."""
        if cond.dim() != 2 or cond.shape[1] != self.config.cond_dim:
            raise ValueError(f"cond must have shape (B, {self.config.cond_dim}), got {tuple(cond.shape)}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        cfg_scale = self.student_config.cfg_scale
        guided = cfg_scale != 1.0
        if guided and (uncond is None or uncond.shape != cond.shape):
            raise ValueError(f"a guided student needs uncond rows shaped as cond {tuple(cond.shape)}, got "
                             f"{None if uncond is None else tuple(uncond.shape)}")
        proc = self.sampling_process(steps)
        x, step_noise = self._sampling_inputs(cond.repeat_interleave(repeats, 0), None, proc.num_timesteps, noise, None)
        rows = torch.cat([cond, uncond]) if guided else cond
        mods = self.net.modulations(rows, self.model_timesteps(steps, cond.device))
        if repeats > 1:
            mods = {"blocks": mods["blocks"].repeat_interleave(repeats, 2),
                    "final": mods["final"].repeat_interleave(repeats, 1)}
        return sample_loop(lambda x, i: self.net.forward_with_modulations(x, mods, i), x,
                           proc.step_coefficients("ddpm"), step_noise, cfg_scale if guided else None)
