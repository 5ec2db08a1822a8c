"""Few-step student head: the diffusion head's network sampled in 1-4 steps from the conditional row.

A student has the teacher head's architecture (SimpleMLPAdaLN, same widths, keys `net.*`) and is
trained by `motionstreamer distill-head` (train/distill.py) to reproduce the teacher's guided
sampling distribution. It is a DiffLoss whose sampling processes are its own, so it samples with the
one sampler of models/diffusion.py (step_coefficients "ddpm" + sample_loop: the ancestral update,
no noise at the last step; the fused Triton loop on CUDA; CUDA graphs; the ONNX head graph), with
SamplerSettings(head="student"): one row per latent, no unconditional condition, no guidance.

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

from motionstreamer.config import current_keys
from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
from motionstreamer.models.sampling import GaussianDiffusion, SamplerSettings, sample_loop

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


def student_settings(steps: int, temperature: float = 1.0) -> SamplerSettings:
    """How a student samples in `steps` steps."""
    return SamplerSettings(sampling_steps=steps, temperature=temperature, head="student")


class StudentHead(DiffLoss):
    """The student network and its k-step processes. `config`: the head's DiffusionHeadConfig (the
    teacher's); `student_config`: what the bundle records. State dict: `net.*` (the head's keys)."""

    def __init__(self, head: DiffusionHeadConfig, config: StudentHeadConfig):
        if config.top_timestep >= head.num_train_steps:
            raise ValueError(f"student_head.top_timestep {config.top_timestep} must be < the head's "
                             f"num_train_steps {head.num_train_steps}")
        super().__init__(head)
        self.student_config = config

    def sampling_process(self, sampling_steps: int, skip_terminal_step: bool = False) -> GaussianDiffusion:
        """The k-step process (any k in [1, top]; student_config.steps are what it was trained for).
        skip_terminal_step is the teacher's and already in student_config.top_timestep."""
        key = ("student", sampling_steps)
        if key not in self._sampling:
            top = self.student_config.top_timestep
            self._sampling[key] = GaussianDiffusion(self.base_betas[:top + 1], student_timesteps(top, sampling_steps))
        return self._sampling[key]

    def rollout(self, cond: torch.Tensor, steps: int, noise: tuple[torch.Tensor, torch.Tensor],
                repeats: int = 1) -> torch.Tensor:
        """The k-step sampler with gradients (training): `repeats` samples per condition (rows
        i*repeats .. (i+1)*repeats - 1 of the (B * repeats, latent) result), the AdaLN modulations
        computed once per condition. noise as for sample(), for B * repeats rows."""
        if cond.dim() != 2 or cond.shape[1] != self.config.cond_dim:
            raise ValueError(f"cond must have shape (B, {self.config.cond_dim}), got {tuple(cond.shape)}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        proc = self.sampling_process(steps)
        x, step_noise = self._sampling_inputs(cond.repeat_interleave(repeats, 0), None, proc.num_timesteps, noise, None)
        mods = self.net.modulations(cond, self.model_timesteps(steps, cond.device))
        if repeats > 1:
            mods = {"blocks": mods["blocks"].repeat_interleave(repeats, 2),
                    "final": mods["final"].repeat_interleave(repeats, 1)}
        return sample_loop(lambda x, i: self.net.forward_with_modulations(x, mods, i), x,
                           proc.step_coefficients("ddpm"), step_noise)
