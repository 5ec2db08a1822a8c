"""The original inference algorithm, kept as the plain reference and the benchmark baseline.

What it does, as the released sampling loops do: every latent recomputes the whole prefix
[text token, latents so far] with a full forward (no KV cache), runs the conditional and the
unconditional context as two separate forwards, samples the head with the plain module forward
(AdaLN recomputed every diffusion step, Python loop), and re-decodes the whole latent sequence with
the TAE whenever frames are needed. Only the prompt schedule, the context-window slide and the
noise source are shared with the engine (runtime/policy.py, the engine's GenerationConfig and
per-stream generator), so that the two can be compared latent by latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from motionstreamer.checkpoints import BundleConfig
from motionstreamer.models.sampling import draw_sampling_noise
from motionstreamer.runtime import policy
from motionstreamer.runtime.engine import GenerationConfig, resolve_config


@dataclass
class ReferenceResult:
    latents: torch.Tensor        # (N, 16)
    features: torch.Tensor       # (4N, 272) normalised, from the full re-decode after the last latent
    ended_early: bool


@torch.no_grad()
def reference_stream(t2m, tae, schedule, uncond_emb: torch.Tensor, generator: torch.Generator,
                     config=None, end_latent: torch.Tensor | None = None, decode_every_latent: bool = True,
                     context: torch.Tensor | None = None, student=None) -> ReferenceResult:
    """schedule: list of (text_emb (text_dim,), n_latents). Latents are generated prompt after prompt,
    sampled as `config` (a GenerationConfig, the engine's; fields left None take the original's
    values) says; when end_latent is given, a prompt's action may end early as in the original t2m
    demo (its end latent is dropped and generation moves to the next prompt).

    context (N, latent), optional (teacher forcing): latent k is sampled after context[:k] instead of
    after the reference's own samples, so another implementation's stream can be checked latent by
    latent without the differences compounding through the autoregressive loop.

    student: a bundle's few-step head (models.few_step.StudentHead), sampled when the config's head
    is "student" (plain module forward too; no unconditional forward then)."""

    resolved = resolve_config(config or GenerationConfig(),
                              BundleConfig(student_head=student.student_config) if student is not None else None)
    settings = resolved.sampler_settings()
    head = student if settings.head == "student" else t2m.diff_loss
    block = t2m.config.block_size
    keep = resolved.history_keep or block // 2
    p = next(t2m.parameters())
    n_steps = head.sampling_process(settings.sampling_steps, settings.skip_terminal_step).num_timesteps
    latents, window = [], []
    features = None
    ended_early = False
    for text_emb, n_latents in schedule:
        text = text_emb.reshape(1, -1).to(p)
        empty = uncond_emb.reshape(1, -1).to(p)
        k = 0
        while k < n_latents:
            window = policy.slide(window, block, keep)
            ctx = (torch.stack(window)[None] if window else torch.zeros(1, 0, t2m.config.latent_dim).to(p))
            cond = t2m(ctx, text)[:, -1]                      # full prefix, conditional
            uncond = t2m(ctx, empty)[:, -1] if settings.guided else None   # unconditional, separately
            noise = draw_sampling_noise(generator, 1, n_steps, t2m.config.latent_dim)
            z = head.sample(cond, uncond, settings, noise=(noise[0].to(p), noise[1].to(p)), fast=False)[0]
            if end_latent is not None and policy.is_action_end(z, end_latent.reshape(-1), resolved.end_threshold, k,
                                                                resolved.min_action_latents):
                ended_early = True
                break
            latents.append(z)
            window.append(z if context is None else context[len(latents) - 1].to(z))
            k += 1
            if decode_every_latent:  # the original re-decodes everything whenever frames are needed
                features = tae.decode(torch.stack(latents)[None])[0]
    if not decode_every_latent and latents:
        features = tae.decode(torch.stack(latents)[None])[0]
    out = torch.stack(latents) if latents else torch.zeros(0, t2m.config.latent_dim)
    return ReferenceResult(out, features, ended_early)
