"""Few-step student head: the diffusion head's network sampled in 1-4 steps from the conditional row.

A student has the teacher head's architecture (SimpleMLPAdaLN, same widths, keys `net.*`) and is
trained by `motionstreamer distill-head` (train/distill.py) to reproduce the teacher's guided
sampling distribution. It samples with the same ancestral DDPM update as the teacher
(models/diffusion.py: x0 from the eps prediction, posterior mean of the process, plus
exp(0.5 logvar) * noise * temperature, no noise at the last step), on a process respaced to k
timesteps, with NO guidance: one row per latent, no unconditional condition.

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

from motionstreamer.models.diffusion import (DiffusionHeadConfig, GaussianDiffusion, SimpleMLPAdaLN,
                                             draw_sampling_noise, named_betas)

HEAD_KIND = "few-step"
STUDENT_FILE = "student_head.safetensors"


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
    teacher_cfg: float = 4.0           # the guidance scale whose distribution it reproduces
    teacher_steps: int = 50
    teacher_skip_terminal: bool = True
    method: str = "energy-distance distillation of the guided ancestral sampler (train/distill.py)"

    def __post_init__(self):
        if self.kind != HEAD_KIND:
            raise ValueError(f"student_head.kind must be {HEAD_KIND!r}, got {self.kind!r}")
        self.steps = tuple(self.steps) if isinstance(self.steps, (list, tuple)) else self.steps
        if not isinstance(self.top_timestep, int) or isinstance(self.top_timestep, bool) or self.top_timestep < 1:
            raise ValueError(f"student_head.top_timestep must be a positive int, got {self.top_timestep!r}")
        if (not isinstance(self.steps, tuple) or not self.steps or len(set(self.steps)) != len(self.steps)
                or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.top_timestep
                       for k in self.steps)):
            raise ValueError(f"student_head.steps must be distinct ints in [1, {self.top_timestep}], got {self.steps!r}")
        self.steps = tuple(sorted(self.steps))
        if self.default_steps not in self.steps:
            raise ValueError(f"student_head.default_steps {self.default_steps!r} is not one of steps {list(self.steps)}")
        if not isinstance(self.teacher_cfg, (int, float)) or isinstance(self.teacher_cfg, bool) \
                or not np.isfinite(self.teacher_cfg):
            raise ValueError(f"student_head.teacher_cfg must be a finite number, got {self.teacher_cfg!r}")
        self.teacher_cfg = float(self.teacher_cfg)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudentHeadConfig":
        if not isinstance(d, dict):
            raise ValueError(f"student_head must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown student_head field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def check_steps(self, steps: int) -> int:
        """`steps` if this student supports it, else a ValueError naming the supported counts."""
        if steps not in self.steps:
            raise ValueError(f"this distilled head samples in {', '.join(map(str, self.steps))} steps, not {steps!r} "
                             f"(use --teacher for the original {self.teacher_steps}-step guided sampler)")
        return steps


def teacher_top_timestep(head: DiffusionHeadConfig, skip_terminal: bool) -> int:
    """The first timestep the teacher's sampler evaluates."""
    return head.num_train_steps - (2 if skip_terminal else 1)


class StudentHead(nn.Module):
    """The student network and its k-step processes. State dict: `net.*` (the head's keys)."""

    def __init__(self, head: DiffusionHeadConfig, config: StudentHeadConfig):
        super().__init__()
        if config.top_timestep >= head.num_train_steps:
            raise ValueError(f"student_head.top_timestep {config.top_timestep} must be < the head's "
                             f"num_train_steps {head.num_train_steps}")
        self.head_config, self.config = head, config
        self.net = SimpleMLPAdaLN(head)
        self.base_betas = named_betas(head.schedule, head.num_train_steps)
        self._processes, self._timesteps = {}, {}

    def process(self, steps: int) -> GaussianDiffusion:
        """The k-step process (any k in [1, top]; the bundle's supported counts are what it was trained for)."""
        if steps not in self._processes:
            top = self.config.top_timestep
            self._processes[steps] = GaussianDiffusion(self.base_betas[:top + 1], student_timesteps(top, steps))
        return self._processes[steps]

    def model_timesteps(self, steps: int, device) -> torch.Tensor:
        key = (steps, str(device))
        if key not in self._timesteps:
            self._timesteps[key] = torch.as_tensor(self.process(steps).timestep_map, device=device)
        return self._timesteps[key]

    def sample(self, cond: torch.Tensor, steps: int, temperature: float = 1.0,
               noise: tuple[torch.Tensor, torch.Tensor] | None = None, generator: torch.Generator | None = None,
               fast: bool = True, differentiable: bool = False, repeats: int = 1) -> torch.Tensor:
        """Latents (B, latent) for conditions (B, cond_dim) in `steps` steps, one row each.

        noise: (x_T (B, latent), step_noise (>= steps, B, latent)) as draw_sampling_noise gives them;
        step_noise[i] is used at index i (never at 0). fast: precomputed AdaLN modulations (the
        runtime's path); fast=False is the reference loop with the plain module forward.
        differentiable: keep the graph (training); otherwise runs under no_grad.
        repeats: draw that many samples per condition (rows i*repeats .. (i+1)*repeats - 1 of the
        (B * repeats, latent) result), the AdaLN modulations computed once per condition (training).
        """
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            return self._sample(cond, steps, temperature, noise, generator, fast, repeats)

    def _sample(self, cond, steps, temperature, noise, generator, fast, repeats):
        hc = self.head_config
        if cond.dim() != 2 or cond.shape[1] != hc.cond_dim:
            raise ValueError(f"cond must have shape (B, {hc.cond_dim}), got {tuple(cond.shape)}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        proc = self.process(steps)
        B, dim = cond.shape[0] * repeats, hc.latent_dim
        if noise is None:
            noise = draw_sampling_noise(generator, B, proc.num_timesteps, dim, cond.device, cond.dtype)
        x, step_noise = noise
        if tuple(x.shape) != (B, dim) or step_noise.dim() != 3 or step_noise.shape[0] < proc.num_timesteps \
                or tuple(step_noise.shape[1:]) != (B, dim):
            raise ValueError(f"noise must be x_T ({B}, {dim}) and step noise (>= {proc.num_timesteps}, {B}, {dim}), "
                             f"got {tuple(x.shape)} and {tuple(step_noise.shape)}")
        model_t = self.model_timesteps(steps, cond.device)
        mods = self.net.modulations(cond, model_t) if fast else None
        if repeats > 1:
            cond = cond.repeat_interleave(repeats, 0)
            if fast:
                mods = {"blocks": mods["blocks"].repeat_interleave(repeats, 2),
                        "final": mods["final"].repeat_interleave(repeats, 1)}
        for i in reversed(range(proc.num_timesteps)):
            eps = self.net.forward_with_modulations(x, mods, i) if fast else \
                self.net(x, model_t[i].expand(B), cond)
            x0 = float(proc.sqrt_recip_alphas_cumprod[i]) * x - float(proc.sqrt_recipm1_alphas_cumprod[i]) * eps
            x = float(proc.posterior_mean_coef1[i]) * x0 + float(proc.posterior_mean_coef2[i]) * x
            if i > 0:
                x = x + float(np.exp(0.5 * proc.posterior_log_variance_clipped[i])) * step_noise[i] * temperature
        return x
