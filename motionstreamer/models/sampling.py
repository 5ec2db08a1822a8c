"""How a latent is sampled, one definition for every implementation: the noise schedules and their
respacing (GaussianDiffusion), the DDPM / DDIM update as an (S, 6) coefficient table
(`GaussianDiffusion.step_coefficients`), one update (`denoise_step`), classifier-free guidance
(`guide`) and the loop over the steps S-1..0 (`sample_loop`). The PyTorch head (models/diffusion.py),
the fused Triton loop (motionstreamer.kernels) and its reference, and the ONNX head graphs all run from
these. `SamplerSettings` is how a latent is sampled (steps, sampler, guidance, temperature); whether
guidance runs, and so how many condition rows a stream needs, is decided there and nowhere else.

Facts (spec reference-model §3): cosine schedule over 50 training steps (beta clipped at 0.999),
epsilon prediction, FIXED_SMALL variance (posterior variance, log clipped at step 1), ancestral sampling
with mean + exp(0.5 logvar) * noise * temperature (no noise at t=0), no x0 clipping; guidance on
[cond; uncond] rows where both halves share the cond half's x_t and noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("cosine", "linear")
SAMPLERS = ("ddpm", "ddim")
# which network samples: the guided teacher (DiffLoss) or a bundle's few-step student (models/few_step.py)
HEADS = ("teacher", "student")

# The numbers a sampler takes. Beyond them nothing useful happens, only overflow: a guidance scale of
# 1e30 or a temperature of 1e30 turns every latent into inf/NaN. The original uses cfg_scale 4 and
# temperature 1; 0 < cfg_scale < 1 and negative scales (anti-guidance) are legitimate experiments.
SAMPLER_RANGES = {"cfg_scale": (-100.0, 100.0), "temperature": (0.0, 10.0), "eta": (0.0, 1.0)}


@dataclass(frozen=True)
class SamplerSettings:
    """How the head samples one latent. Frozen and hashable: a CUDA graph of the sampling loop is
    captured per settings (runtime/cuda_graph.py), an ONNX head graph exported per (sampler, steps).

    sampling_steps: respaced steps (1..num_train_steps; the original: 50). sampler: "ddpm" (ancestral,
    the original) or "ddim" (eta-scaled noise; eta 0 is deterministic given x_T). cfg_scale:
    classifier-free guidance, eps = eps_u + cfg_scale (eps_c - eps_u); 1 turns guidance off.
    temperature scales the step noise. skip_terminal_step: start one step after the degenerate
    terminal step (DiffLoss.sampling_process). head: "teacher" (the model's guided head, the
    original algorithm) or "student" (the bundle's distilled few-step head: one condition row, no
    guidance, so cfg_scale is not used; ancestral DDPM only, as it was trained)."""
    sampling_steps: int = 50
    sampler: str = "ddpm"
    cfg_scale: float = 4.0
    temperature: float = 1.0
    skip_terminal_step: bool = False
    eta: float = 0.0
    head: str = "teacher"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "student" and self.sampler != "ddpm":
            raise ValueError("the few-step student head samples with 'ddpm' (what it was trained for), "
                             f"not {self.sampler!r}")
        if isinstance(self.sampling_steps, bool) or not isinstance(self.sampling_steps, int) or self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be an int >= 1, got {self.sampling_steps!r}")
        for name, (low, high) in SAMPLER_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {v!r}")

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs (the teacher with cfg_scale != 1): the one place this is decided.
        A student reproduces the guided distribution from the conditional row alone."""
        return self.head == "teacher" and self.cfg_scale != 1.0

    @property
    def condition_rows(self) -> int:
        """Condition rows per stream, hence KV-cache rows: [cond; uncond] when guided, else [cond]."""
        return 2 if self.guided else 1


# ----------------------------------------------------------------------------- the process
def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas discretising alpha_bar(t) = cos((t + 0.008) / 1.008 * pi/2)^2 (Nichol & Dhariwal)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def named_betas(schedule: str, num_steps: int) -> np.ndarray:
    """The original's get_named_beta_schedule ('cosine' is the released models')."""
    if schedule == "cosine":
        return cosine_betas(num_steps)
    if schedule == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}; known: {SCHEDULES}")


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The original's respacing: the process is cut into equally sized sections, each strided
    (fractional stride, Python rounding) to its count; 'ddimN' takes an integer stride. Sorted."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[4:])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == want:
                    return list(range(0, num_timesteps, i))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


class GaussianDiffusion:
    """A (possibly respaced) discrete diffusion process; arrays in float64 as the original.

    Respacing keeps the base process's alpha_bar at the kept timesteps: the new betas are
    1 - alpha_bar[t_k] / alpha_bar[t_{k-1}], and `timestep_map[k]` is the base timestep the network
    sees for respaced index k.
    """

    def __init__(self, base_betas: np.ndarray, use_timesteps: list[int] | None = None):
        base_betas = np.asarray(base_betas, dtype=np.float64)
        if base_betas.ndim != 1 or not ((base_betas > 0).all() and (base_betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        base_ac = np.cumprod(1.0 - base_betas)
        if use_timesteps is None:
            use_timesteps = list(range(len(base_betas)))
        self.timestep_map = np.array(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
        if len(self.timestep_map) == 0 or self.timestep_map[0] < 0 or self.timestep_map[-1] >= len(base_betas):
            raise ValueError(f"use_timesteps must be a non-empty subset of [0, {len(base_betas)})")
        last, betas = 1.0, []
        for i in self.timestep_map:
            betas.append(1 - base_ac[i] / last)
            last = base_ac[i]
        self.betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        a = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(a)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the posterior variance is 0 at t=0: its log takes step 1's value (t=0 adds no noise anyway);
        # a one-step process has no step 1 and never uses it (the original leaves it empty)
        pv = np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_timesteps > 1 \
            else np.ones(1)
        self.posterior_log_variance_clipped = np.log(pv)
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(a) / (1.0 - self.alphas_cumprod)

    @staticmethod
    def _at(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(arr, device=like.device)[t].to(like.dtype)[:, None]

    def q_sample(self, x0, t, noise):
        """x_t ~ q(x_t | x_0) for respaced indices t (N,)."""
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def predict_x0(self, x_t, t, eps):
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def posterior_mean(self, x0, x_t, t):
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t

    def step_coefficients(self, sampler: str = "ddpm", eta: float = 0.0) -> np.ndarray:
        """The sampling update as a table (S, 6), float64; row i is respaced step i (the loop runs
        S-1..0): x0 = c0 x - c1 eps;  x' = c2 x0 + c3 x + c4 eps + c5 temperature noise.

        ddpm (ancestral, as the original): the posterior mean, plus its standard deviation at every
        step but the last. ddim: x0 sqrt(a_prev) + sqrt(1 - a_prev - sigma^2) eps, sigma =
        eta sqrt((1 - a_prev) / (1 - a) (1 - a / a_prev)), noise only when eta > 0."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        c = np.zeros((self.num_timesteps, 6), dtype=np.float64)
        c[:, 0] = self.sqrt_recip_alphas_cumprod
        c[:, 1] = self.sqrt_recipm1_alphas_cumprod
        if sampler == "ddpm":
            c[:, 2] = self.posterior_mean_coef1
            c[:, 3] = self.posterior_mean_coef2
            c[1:, 5] = np.exp(0.5 * self.posterior_log_variance_clipped[1:])    # no noise at t=0
            return c
        for i in range(self.num_timesteps):
            a_bar, a_prev = float(self.alphas_cumprod[i]), float(self.alphas_cumprod_prev[i])
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_bar) * (1 - a_bar / a_prev))
            c[i, 2] = math.sqrt(a_prev)
            c[i, 4] = math.sqrt(max(1 - a_prev - sigma ** 2, 0.0))
            if i > 0 and eta > 0:
                c[i, 5] = sigma
        return c


def denoise_step(x: torch.Tensor, eps: torch.Tensor, c, noise: torch.Tensor | None = None,
                 temperature=1.0) -> torch.Tensor:
    """One sampling update with a row `c` of step_coefficients (terms with a zero coefficient are
    skipped, so DDPM and DDIM run exactly their own arithmetic). temperature may be a tensor (ONNX)."""
    x0 = float(c[0]) * x - float(c[1]) * eps
    out = float(c[2]) * x0
    if c[3] != 0:
        out = out + float(c[3]) * x
    if c[4] != 0:
        out = out + float(c[4]) * eps
    if c[5] != 0:
        out = out + float(c[5]) * noise * temperature
    return out


def guide(eps: torch.Tensor, cfg_scale) -> torch.Tensor:
    """Classifier-free guidance on eps of rows [cond; uncond]: eps_u + cfg_scale (eps_c - eps_u)."""
    e_c, e_u = eps.chunk(2)
    return e_u + cfg_scale * (e_c - e_u)


def sample_loop(eps_at, x: torch.Tensor, coefs: np.ndarray, step_noise: torch.Tensor | None,
                cfg_scale=None, temperature=1.0) -> torch.Tensor:
    """The sampling loop over steps S-1..0 from x = x_T (B, latent). eps_at(rows, i) is the head's eps
    at respaced step i; with cfg_scale (a float, or a tensor in the ONNX graphs) the rows are
    [x; x] for conditions [cond; uncond] (both halves share x and the noise) and eps is guided.
    step_noise (>= S, B, latent): index i is used at step i (None when coefs add no noise)."""
    for i in reversed(range(coefs.shape[0])):
        eps = eps_at(torch.cat([x, x]) if cfg_scale is not None else x, i)
        if cfg_scale is not None:
            eps = guide(eps, cfg_scale)
        x = denoise_step(x, eps, coefs[i], None if step_noise is None else step_noise[i], temperature)
    return x


def draw_sampling_noise(generator: torch.Generator | None, batch: int, steps: int, dim: int,
                        device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """All randomness of one sampling call, in a fixed order: x_T (batch, dim), then one noise draw
    per step (steps, batch, dim), drawn on the generator's device (CPU when none) in float32.
    Two implementations given the same tensors give the same result; step_noise[i] is used at
    respaced index i (the loop runs i = steps-1 .. 0; index 0 is never used by DDPM)."""
    gen_device = generator.device if generator is not None else "cpu"
    x_T = torch.randn(batch, dim, generator=generator, device=gen_device)
    step_noise = torch.randn(steps, batch, dim, generator=generator, device=gen_device)
    return x_T.to(device, dtype), step_noise.to(device, dtype)
