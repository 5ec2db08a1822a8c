"""Head-level quality: how far one latent sampler's distribution is from another's, per condition.

A head maps a condition (the transformer's output for one position) to a distribution over the next
latent. Comparing a few-step student with its teacher there isolates the head from everything the
end-to-end metrics mix in (the autoregressive feedback, the TAE, the evaluator). For each held-out
condition both samplers draw n samples (n >= 256 in the reported numbers), and two distances are
computed per condition, then averaged:

- energy distance (Szekely & Rizzo): 2 E|X - Y| - E|X - X'| - E|Y - Y'|, with the within-sample
  terms over distinct pairs (U-statistics), so it is unbiased: two samples of one distribution give
  values scattered around 0. It is 0 only for equal distributions (in any dimension).
- sliced Wasserstein-2: the root mean squared difference of sorted 1-D projections over random unit
  directions; biased upward by the finite sample, so it is read against the noise floor.

The noise floor is the same teacher sampled with other seeds: a sampler within it is as close to the
teacher as the teacher is to itself at this sample size.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from motionstreamer.checkpoints import bundle_config_of
from motionstreamer.models.few_step import student_settings
from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise
from motionstreamer.train.distill import teacher_forced_conditions
from motionstreamer.train.t2m import embed_captions, load_latent_examples

# sampler(cond (C, E), n, generator) -> samples (C, n, latent)
Sampler = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased energy distance per leading index: x (..., n, d), y (..., m, d) -> (...)."""
    n, m = x.shape[-2], y.shape[-2]
    if n < 2 or m < 2:
        raise ValueError(f"energy distance needs >= 2 samples on each side, got {n} and {m}")
    x, y = x.double(), y.double()
    xy = torch.cdist(x, y).mean(dim=(-1, -2))
    xx = torch.cdist(x, x).sum(dim=(-1, -2)) / (n * (n - 1))
    yy = torch.cdist(y, y).sum(dim=(-1, -2)) / (m * (m - 1))
    return 2 * xy - xx - yy


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 128,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sliced W2 per leading index: x, y (..., n, d) with the same n -> (...)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced Wasserstein needs equal sample counts, got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.shape[-1]
    dirs = torch.randn(d, projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px = torch.sort(x.double() @ dirs, dim=-2).values
    py = torch.sort(y.double() @ dirs, dim=-2).values
    return ((px - py) ** 2).mean(dim=(-1, -2)).sqrt()


def mean_ci(v: torch.Tensor) -> dict:
    """{mean, ci95} of per-condition values (normal approximation, 1.96 standard errors)."""
    a = v.double().cpu().numpy()
    ci = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "ci95": float(ci)}


@torch.no_grad()
def compare_samplers(conditions: torch.Tensor, reference: Sampler, candidates: dict[str, Sampler],
                     samples: int = 256, seed: int = 0, chunk: int = 16, projections: int = 128) -> dict:
    """Distance of every candidate sampler to `reference` over the conditions (C, E).

    The reference draws once (seed); each candidate draws with its own seed stream. Returns
    {name: {"energy": {mean, ci95}, "swd": {mean, ci95}, "energy_rel": ...}} where energy_rel divides
    by the reference's mean pairwise distance E|Y - Y'| (a scale-free number), CIs over conditions.
    Include the reference sampler itself among the candidates to get the noise floor.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    out = {name: {"energy": [], "swd": [], "scale": []} for name in candidates}
    for s in range(0, conditions.shape[0], chunk):
        c = conditions[s:s + chunk]
        ref = reference(c, samples, torch.Generator().manual_seed(seed * 1_000_003 + s)).float().cpu()
        n = ref.shape[-2]
        scale = torch.cdist(ref.double(), ref.double()).sum(dim=(-1, -2)) / (n * (n - 1))
        for j, (name, sampler) in enumerate(candidates.items()):
            gen = torch.Generator().manual_seed((seed + 1 + j) * 1_000_003 + 7 * s + 1)
            got = sampler(c, samples, gen).float().cpu()
            out[name]["energy"].append(energy_distance(got, ref))
            out[name]["swd"].append(sliced_wasserstein(got, ref, projections, torch.Generator().manual_seed(s)))
            out[name]["scale"].append(scale)
    result = {}
    for name, r in out.items():
        e, w, sc = (torch.cat(r[k]) for k in ("energy", "swd", "scale"))
        result[name] = {"energy": mean_ci(e), "energy_rel": mean_ci(e / sc), "swd": mean_ci(w),
                        "conditions": int(e.numel()), "samples": samples}
    return result


def format_comparison(result: dict, title: str = "") -> str:
    rows = [(name, f"{r['energy']['mean']:.4f} ± {r['energy']['ci95']:.4f}",
             f"{r['energy_rel']['mean']:.4f} ± {r['energy_rel']['ci95']:.4f}",
             f"{r['swd']['mean']:.4f} ± {r['swd']['ci95']:.4f}") for name, r in result.items()]
    head = ("sampler", "energy distance", "energy / E|Y-Y'|", "sliced W2")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    fmt = lambda r: " | ".join(c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join(([title] if title else []) + [fmt(head), "-+-".join("-" * x for x in w)] + [fmt(r) for r in rows])


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(C, ...) -> (C * n, ...), each row repeated n times consecutively."""
    return x.repeat_interleave(n, dim=0)


def grouped(samples: torch.Tensor, conditions: int) -> torch.Tensor:
    """(C * n, d) -> (C, n, d) (the inverse of repeat_rows' layout)."""
    return samples.reshape(conditions, -1, samples.shape[-1])


def teacher_sampler(diff_loss, cfg_scale: float, sampling_steps: int, skip_terminal_step: bool, sampler: str = "ddpm",
                    max_rows: int = 1024) -> Sampler:
    """A Sampler for the guided teacher head (DiffLoss): conditions are (C, 2, E) pairs [cond, uncond].
    At most max_rows rows per sampling call (the AdaLN tables of all steps grow with the rows)."""
    settings = SamplerSettings(sampling_steps=sampling_steps, sampler=sampler, cfg_scale=cfg_scale,
                               skip_terminal_step=skip_terminal_step)

    def sample(c: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        cond, unc = repeat_rows(c[:, 0], n), repeat_rows(c[:, 1], n)
        proc = diff_loss.sampling_process(sampling_steps, skip_terminal_step)
        x, step_noise = draw_sampling_noise(gen, cond.shape[0], proc.num_timesteps, diff_loss.config.latent_dim,
                                            cond.device, cond.dtype)
        z = torch.cat([diff_loss.sample(cond[s:s + max_rows], unc[s:s + max_rows], settings,
                                        noise=(x[s:s + max_rows], step_noise[:, s:s + max_rows]))
                       for s in range(0, cond.shape[0], max_rows)])
        return grouped(z, c.shape[0])
    return sample


def student_sampler(student, steps: int) -> Sampler:
    """A Sampler for a StudentHead at `steps` steps: a student that keeps guidance samples on both rows of
    the (C, 2, E) pairs [cond, uncond] with its guidance scale, a one-row student on the cond row alone."""
    cfg_scale = student.student_config.cfg_scale
    settings = student_settings(steps, cfg_scale=cfg_scale)

    def sample(c: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        cond = repeat_rows(c[:, 0], n)
        uncond = repeat_rows(c[:, 1], n) if settings.guided else None
        return grouped(student.sample(cond, uncond, settings=settings, generator=gen), c.shape[0])
    return sample


def extrapolated_sampler(diff_loss, cfg_scale: float, sampling_steps: int, skip_terminal_step: bool,
                         predict_uncond: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Sampler:
    """The teacher head's network with ONE row per sample, unguided, on the extrapolated condition
    u + cfg_scale (c - u) of each [c, u] pair: guidance moved from the output (eps) into the condition,
    which a one-row head could run. predict_uncond(c) -> u replaces the true u (what a one-row student
    would have to do: it never sees u). A probe of what a one-row head can reach, not a runtime sampler."""
    one_row = teacher_sampler(diff_loss, 1.0, sampling_steps, skip_terminal_step)

    def sample(c: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        u = c[:, 1] if predict_uncond is None else predict_uncond(c[:, 0])
        e = u + cfg_scale * (c[:, 0] - u)
        return one_row(torch.stack([e, e], dim=1), n, gen)
    return sample


def guidance_capture(samples: torch.Tensor, guided_mean: torch.Tensor, unguided_mean: torch.Tensor) -> float:
    """Share of the guidance shift a sampler's per-condition mean reproduces: sum <m - u, g - u> over
    sum |g - u|^2, m the samples' mean (C, n, d) -> (C, d), g / u the guided / unguided teacher's means
    (C, d). 1: all of the shift classifier-free guidance adds, 0: none (an unguided sampler)."""
    shift = guided_mean - unguided_mean
    return float(((samples.mean(dim=-2) - unguided_mean) * shift).sum() / (shift * shift).sum())


def summarize_floor(result: dict, floor: str) -> dict:
    """Each sampler's energy distance as a multiple of the floor's CI half-width (how many noise-floor
    widths it sits above zero): a compact 'within the noise floor' check."""
    width = result[floor]["energy"]["ci95"]
    return {name: float(np.float64(r["energy"]["mean"]) / width) if width > 0 else float("nan")
            for name, r in result.items()}


def head_report(bundle, text_encoder, data, latents, split: str = "test", conditions: int = 64,
                samples: int = 256, seed: int = 0, student_steps=None, respaced=(1, 2, 4, 10),
                cfg_scale: float | None = None) -> dict:
    """The head-level comparison on held-out conditions: teacher-forced conditions of `split` (the
    dataset's clips and their latents), the bundle's guided teacher (cfg_scale: default the one its
    student reproduces, else the sampler's default; 50 steps; the bundle's skip_terminal_step) as the
    reference, against: the teacher with other seeds (the noise floor), the student at each of its step
    counts (when the bundle has one), and the teacher respaced to fewer steps (the original respacing,
    still guided)."""
    examples = load_latent_examples(latents, data, split)
    emb = embed_captions(examples, text_encoder)
    pairs = teacher_forced_conditions(bundle.t2m, examples, emb, count=conditions, seed=seed)
    student = bundle.student
    skip = bool(bundle_config_of(bundle).sampler.skip_terminal_step)
    if cfg_scale is None:
        cfg_scale = student.student_config.teacher_cfg_scale if student is not None else SamplerSettings.cfg_scale
    diff = bundle.t2m.diff_loss
    candidates = {"teacher, other seeds (noise floor)": teacher_sampler(diff, cfg_scale, 50, skip)}
    if student is not None:
        for k in (student_steps or student.student_config.steps):
            candidates[f"student {k} steps"] = student_sampler(student, k)
    for k in respaced:
        candidates[f"respaced teacher {k} steps"] = teacher_sampler(diff, cfg_scale, k, skip)
    p = next(bundle.t2m.parameters())
    result = compare_samplers(pairs.to(p.device, p.dtype), teacher_sampler(diff, cfg_scale, 50, skip), candidates,
                              samples=samples, seed=seed)
    return {"split": split, "conditions": int(pairs.shape[0]), "samples": samples, "cfg_scale": cfg_scale,
            "skip_terminal_step": skip, "reference": "teacher, 50 steps, guided", "samplers": result}
