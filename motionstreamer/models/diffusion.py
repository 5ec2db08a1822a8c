"""Diffusion head (MAR/DiT-style MLP with AdaLN) and its Gaussian diffusion, one sampler.

Facts (spec reference-model §3): SimpleMLPAdaLN(in 16, width 1792, 9 blocks, cond 768); cosine
schedule over 50 training steps (beta clipped at 0.999), epsilon prediction, MSE loss, FIXED_SMALL
variance (posterior variance, log clipped at step 1), ancestral sampling with
mean + exp(0.5 logvar) * noise * temperature (no noise at t=0), no x0 clipping; classifier-free
guidance on [cond; uncond] rows where both halves share the cond half's x_t and noise.

Fast path used by the runtime: the AdaLN modulations depend only on (timestep, condition), so
`modulations()` computes them for every sampling step with one batched matmul per block, and the
sequential loop then runs only the per-step MLPs (`forward_with_modulations`). The plain
`forward()` is the reference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEDULES = ("cosine", "linear")
METHODS = ("ddpm", "ddim")
# sampling: "auto" = "triton" (the fused loop, motionstreamer.kernels) on CUDA when the kernels run there, else
# "torch"; "torch" = the PyTorch loop below; "triton" = the fused loop wherever the kernels run (CPU
# under the Triton interpreter too), else "torch"
HEAD_BACKENDS = ("auto", "torch", "triton")


@dataclass
class DiffusionHeadConfig:
    latent_dim: int = 16
    width: int = 1792
    depth: int = 9
    cond_dim: int = 768            # width of the condition z (the transformer's n_embd)
    num_train_steps: int = 50
    schedule: str = "cosine"

    def __post_init__(self):
        for name in ("latent_dim", "width", "depth", "cond_dim", "num_train_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DiffusionHeadConfig.{name} must be a positive int, got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"DiffusionHeadConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionHeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DiffusionHeadConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- the network
def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim), cos half first then sin (as the original)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return self.forward_modulated(x, shift, scale, gate)

    def forward_modulated(self, x, shift, scale, gate):
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.forward_modulated(x, shift, scale)

    def forward_modulated(self, x, shift, scale):
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    def __init__(self, config: DiffusionHeadConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.time_embed = TimestepEmbedder(w)
        self.cond_embed = nn.Linear(config.cond_dim, w)
        self.input_proj = nn.Linear(config.latent_dim, w)
        self.res_blocks = nn.ModuleList(ResBlock(w) for _ in range(config.depth))
        self.final_layer = FinalLayer(w, config.latent_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As the original: xavier linears, N(0, 0.02) time MLP, zeroed AdaLN and output layers."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for b in self.res_blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Reference: eps prediction for x (N, latent), model timesteps t (N,), condition c (N, cond)."""
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    # ---- fast path: modulations for all steps at once
    def modulations(self, c: torch.Tensor, timesteps: torch.Tensor) -> dict:
        """AdaLN outputs for every (step, row): c (N, cond), timesteps (S,) model-input timesteps.

        Returns {"blocks": (depth, S, N, 3, width) [shift, scale, gate], "final": (S, N, 2, width)}.
        One matmul per block over all S*N rows instead of S small ones inside the loop.
        """
        S, N, w = timesteps.shape[0], c.shape[0], self.config.width
        y = self.time_embed(timesteps)[:, None, :] + self.cond_embed(c)[None, :, :]   # (S, N, w)
        sy = F.silu(y).reshape(S * N, w)
        blocks = torch.stack([F.linear(sy, b.adaLN_modulation[1].weight, b.adaLN_modulation[1].bias)
                              for b in self.res_blocks])                               # (depth, S*N, 3w)
        final = F.linear(sy, self.final_layer.adaLN_modulation[1].weight, self.final_layer.adaLN_modulation[1].bias)
        return {"blocks": blocks.reshape(len(self.res_blocks), S, N, 3, w), "final": final.reshape(S, N, 2, w)}

    def forward_with_modulations(self, x: torch.Tensor, mods: dict, step: int) -> torch.Tensor:
        """eps for sampling-loop index `step` (an index into the S axis of `mods`)."""
        h = self.input_proj(x)
        blocks = mods["blocks"][:, step]
        for i, block in enumerate(self.res_blocks):
            m = blocks[i]
            h = block.forward_modulated(h, m[:, 0], m[:, 1], m[:, 2])
        f = mods["final"][step]
        return self.final_layer.forward_modulated(h, f[:, 0], f[:, 1])


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
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x_t, t, eps):
        return self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def posterior_mean(self, x0, x_t, t):
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t


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


class DiffLoss(nn.Module):
    """The head (`net`) plus its training process and its (respaced) sampling processes."""

    def __init__(self, config: DiffusionHeadConfig):
        super().__init__()
        self.config = config
        self.net = SimpleMLPAdaLN(config)
        self.base_betas = named_betas(config.schedule, config.num_train_steps)
        self.train_diffusion = GaussianDiffusion(self.base_betas)
        self._sampling = {}
        self._timesteps = {}
        self.head_backend = "auto"   # a runtime choice (HEAD_BACKENDS), not part of the checkpoint

    def set_head_backend(self, backend: str) -> None:
        if backend not in HEAD_BACKENDS:
            raise ValueError(f"head backend must be one of {HEAD_BACKENDS}, got {backend!r}")
        self.head_backend = backend

    def _fused_sampler(self, cond: torch.Tensor, cfg):
        """motionstreamer.kernels.integration when this call should run the fused loop, else None."""
        device = cond.device
        if self.head_backend == "torch" or (self.head_backend == "auto" and device.type != "cuda"):
            return None
        if cond.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return None
        if not isinstance(cfg, (int, float)) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return None   # a tensor cfg means ONNX export: trace the PyTorch loop
        try:
            from motionstreamer.kernels import integration
        except ImportError:
            return None
        return integration if integration.available(device) else None

    def sampling_process(self, steps: int, skip_terminal: bool = False) -> GaussianDiffusion:
        """The respaced process for `steps` sampling steps (the original's respacing).

        skip_terminal drops the last training timestep from the spacing. With the cosine schedule's
        beta clipped at 0.999, alpha_bar at that step is ~1e-6, so the first sampling step divides
        the eps error by ~1e-3; a well-trained model (the released one) predicts eps there precisely
        enough, a briefly trained one does not, and its samples drift off the data. Starting from
        pure noise one step later (alpha_bar ~4e-3) avoids that. Off by default (exact original).
        """
        key = (steps, skip_terminal)
        if key not in self._sampling:
            n = self.config.num_train_steps - (1 if skip_terminal else 0)
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.config.num_train_steps:
                raise ValueError(f"sampling steps must be an int in [1, {self.config.num_train_steps}], got {steps!r}")
            if n < 1:
                raise ValueError("skip_terminal needs at least 2 training steps")
            steps_n = min(steps, n)   # skip_terminal: "all steps" means the n remaining timesteps
            self._sampling[key] = GaussianDiffusion(self.base_betas[:n], space_timesteps(n, str(steps_n)))
        return self._sampling[key]

    def model_timesteps(self, steps: int, device, skip_terminal: bool = False) -> torch.Tensor:
        """The model-input timesteps of a respaced process, cached per device (no host copy in the
        sampling loop, which CUDA-graph capture forbids)."""
        key = (steps, skip_terminal, str(device))
        if key not in self._timesteps:
            proc = self.sampling_process(steps, skip_terminal)
            self._timesteps[key] = torch.as_tensor(proc.timestep_map, device=device)
        return self._timesteps[key]

    # ---- training
    def _check_rows(self, name: str, x: torch.Tensor, width: int, rows: int | None = None) -> None:
        if x.dim() != 2 or x.shape[1] != width or (rows is not None and x.shape[0] != rows):
            want = f"({rows if rows is not None else 'N'}, {width})"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")

    def loss(self, target: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
             batch_mul: int = 1) -> torch.Tensor:
        """Epsilon MSE at random timesteps, as the original's training_losses + masked mean.

        target (N, latent), cond (N, cond_dim). batch_mul repeats the rows (tiled, like the original's
        `.repeat(diffmlps_batch_mul, 1)`) so each token is trained at batch_mul timesteps; the default 1
        is for callers that repeat themselves (the t2m objective). t (batch_mul*N,) and noise
        (batch_mul*N, latent) may be given explicitly (reproducible/DDP-splittable batches).
        mask (N,), bool: only rows where it is True count (they are selected before the network, as
        the original's trainer does, so padded rows cannot leak NaNs into the gradients); float:
        weights, loss = sum(row_mse * mask) / sum(mask). row_mse is the mean over latent dims. With
        no selected row the loss is 0 (still attached to the graph). Returns a scalar.
        """
        d = self.train_diffusion
        self._check_rows("target", target, self.config.latent_dim)
        self._check_rows("cond", cond, self.config.cond_dim, target.shape[0])
        if isinstance(batch_mul, bool) or not isinstance(batch_mul, int) or batch_mul < 1:
            raise ValueError(f"batch_mul must be a positive int, got {batch_mul!r}")
        if mask is not None and tuple(mask.shape) != (target.shape[0],):
            raise ValueError(f"mask must have shape ({target.shape[0]},), got {tuple(mask.shape)}")
        if batch_mul > 1:
            target, cond = target.repeat(batch_mul, 1), cond.repeat(batch_mul, 1)
            mask = mask.repeat(batch_mul) if mask is not None else None
        n = target.shape[0]
        if t is None:
            t = torch.randint(0, d.num_timesteps, (n,), device=target.device)
        elif tuple(t.shape) != (n,):
            raise ValueError(f"t must have shape ({n},) (batch_mul x rows), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn_like(target)
        elif noise.shape != target.shape:
            raise ValueError(f"noise must have shape {tuple(target.shape)}, got {tuple(noise.shape)}")
        weight = None
        if mask is not None and mask.dtype == torch.bool:
            keep = mask.to(target.device)
            target, cond, t, noise = target[keep], cond[keep], t[keep], noise[keep]
        elif mask is not None:
            weight = mask.to(target.device, target.dtype)
        x_t = d.q_sample(target, t, noise)
        row = ((noise - self.net(x_t, t, cond)) ** 2).mean(dim=-1)
        if weight is not None:
            return (row * weight).sum() / weight.sum().clamp_min(torch.finfo(row.dtype).tiny)
        return row.mean() if row.shape[0] else row.sum()

    @torch.no_grad()
    def predict_x0(self, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x0 predicted from a noised target at a random t (the Two-Forward first pass)."""
        d = self.train_diffusion
        t = torch.randint(0, d.num_timesteps, (target.shape[0],), device=target.device)
        x_t = d.q_sample(target, t, torch.randn_like(target))
        return d.predict_x0(x_t, t, self.net(x_t, t, cond))

    # ---- sampling: one loop, parameterised
    @torch.no_grad()
    def sample(self, cond: torch.Tensor, uncond: torch.Tensor | None = None, cfg: float = 4.0,
               temperature: float = 1.0, steps: int = 50, method: str = "ddpm",
               noise: tuple[torch.Tensor, torch.Tensor] | None = None, generator: torch.Generator | None = None,
               fast: bool = True, eta: float = 0.0, skip_terminal: bool = False) -> torch.Tensor:
        """Latents (B, latent_dim) for conditions cond (B, cond_dim).

        Guidance: with uncond (B, cond_dim) and cfg != 1 the network runs on rows [cond; uncond]
        (2B) and eps = eps_u + cfg * (eps_c - eps_u) for both halves; both halves share x_T and the
        step noise, so only the cond half is carried (the original discards the uncond half's x every
        step too). cfg == 1 or uncond None: B rows, no guidance.
        method 'ddpm': ancestral step of the respaced process (the original), mean + exp(0.5 logvar)
        * noise * temperature, no noise at the last step. 'ddim': x0 * sqrt(a_prev) + direction
        * eps (+ eta-scaled noise * temperature); eta 0 is deterministic given x_T.
        steps: respaced sampling steps (1..num_train_steps). noise: (x_T (B, latent), step_noise
        (n, B, latent)) from draw_sampling_noise; drawn from `generator` when None.
        fast: precomputed AdaLN modulations (same math as the reference `net.forward`); with the
        "triton" backend (self.backend, "auto" on CUDA) the whole loop runs in the fused kernels.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self._check_rows("cond", cond, self.config.cond_dim)
        B, dim = cond.shape[0], self.config.latent_dim
        if uncond is not None:
            self._check_rows("uncond", uncond, self.config.cond_dim, B)
        proc = self.sampling_process(steps, skip_terminal)
        if noise is None:
            noise = draw_sampling_noise(generator, B, proc.num_timesteps, dim, cond.device, cond.dtype)
        x, step_noise = noise
        if tuple(x.shape) != (B, dim):
            raise ValueError(f"noise x_T must have shape ({B}, {dim}), got {tuple(x.shape)}")
        if step_noise.dim() != 3 or step_noise.shape[0] < proc.num_timesteps or tuple(step_noise.shape[1:]) != (B, dim):
            raise ValueError(f"step noise must have shape (>= {proc.num_timesteps}, {B}, {dim}), "
                             f"got {tuple(step_noise.shape)}")
        kernels = self._fused_sampler(cond, cfg) if fast else None
        if kernels is not None:
            return kernels.sample_fused(self, cond, uncond, cfg=cfg, temperature=temperature, steps=steps,
                                        method=method, noise=(x, step_noise), eta=eta, skip_terminal=skip_terminal)
        # cfg may be a tensor (ONNX export); guidance is off only for a plain 1.0
        guided = uncond is not None and not (isinstance(cfg, (int, float)) and cfg == 1.0)
        c = torch.cat([cond, uncond]) if guided else cond
        model_t = self.model_timesteps(steps, cond.device, skip_terminal)
        mods = self.net.modulations(c, model_t) if fast else None
        for i in reversed(range(proc.num_timesteps)):
            # every row is at the same step: the schedule coefficients are plain floats
            xin = torch.cat([x, x]) if guided else x
            if fast:
                eps = self.net.forward_with_modulations(xin, mods, i)
            else:
                eps = self.net(xin, model_t[i].expand(xin.shape[0]), c)
            if guided:
                e_c, e_u = eps.chunk(2)
                eps = e_u + cfg * (e_c - e_u)
            x0 = float(proc.sqrt_recip_alphas_cumprod[i]) * x - float(proc.sqrt_recipm1_alphas_cumprod[i]) * eps
            if method == "ddpm":
                x = float(proc.posterior_mean_coef1[i]) * x0 + float(proc.posterior_mean_coef2[i]) * x
                if i > 0:
                    x = x + float(np.exp(0.5 * proc.posterior_log_variance_clipped[i])) * step_noise[i] * temperature
            else:
                a_bar, a_prev = float(proc.alphas_cumprod[i]), float(proc.alphas_cumprod_prev[i])
                sigma = eta * math.sqrt((1 - a_prev) / (1 - a_bar) * (1 - a_bar / a_prev))
                x = x0 * math.sqrt(a_prev) + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
                if i > 0 and eta > 0:
                    x = x + sigma * step_noise[i] * temperature
        return x
