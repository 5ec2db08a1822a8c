"""Diffusion head (MAR/DiT-style MLP with AdaLN) and its loss (DiffLoss), sampled by models/sampling.py.

Facts (spec reference-model §3): SimpleMLPAdaLN(in 16, width 1792, 9 blocks, cond 768), epsilon
prediction, MSE loss; the process and the sampler are in models/sampling.py.

Fast path used by the runtime: the AdaLN modulations depend only on (timestep, condition), so
`modulations()` computes them for every sampling step with one batched matmul per block, and the
sequential loop then runs only the per-step MLPs (`forward_with_modulations`). The plain
`forward()` is the reference.

Sampling has one definition, in models/sampling.py (schedules, the update table, guidance, the loop,
SamplerSettings); DiffLoss runs it with this network, or with the fused Triton loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from motionstreamer.config import ConfigDict, check_positive_ints
from motionstreamer.models.sampling import (
    SCHEDULES,
    GaussianDiffusion,
    SamplerSettings,
    draw_sampling_noise,
    named_betas,
    sample_loop,
    space_timesteps,
)

# sampling: "auto" = "triton" (the fused loop, motionstreamer.kernels) on CUDA when the kernels run there, else
# "torch"; "torch" = the PyTorch loop below; "triton" = the fused loop wherever the kernels run (CPU
# under the Triton interpreter too), else "torch"
HEAD_BACKENDS = ("auto", "torch", "triton")


@dataclass
class DiffusionHeadConfig(ConfigDict):
    latent_dim: int = 16
    width: int = 1792
    depth: int = 9
    cond_dim: int = 768            # width of the condition z (the transformer's n_embd)
    num_train_steps: int = 50
    schedule: str = "cosine"

    def __post_init__(self):
        check_positive_ints(self, ("latent_dim", "width", "depth", "cond_dim", "num_train_steps"))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"DiffusionHeadConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")


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

    def _fused_sampler(self, cond: torch.Tensor):
        """motionstreamer.kernels.integration when this call should run the fused loop, else None."""
        device = cond.device
        if self.head_backend == "torch" or (self.head_backend == "auto" and device.type != "cuda"):
            return None
        if cond.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return None
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return None   # the kernels cannot be traced
        try:
            from motionstreamer.kernels import integration
        except ImportError:
            return None
        return integration if integration.available(device) else None

    def sampling_process(self, sampling_steps: int, skip_terminal_step: bool = False) -> GaussianDiffusion:
        """The respaced process for `sampling_steps` steps (the original's respacing).

        skip_terminal_step drops the last training timestep from the spacing. With the cosine schedule's
        beta clipped at 0.999, alpha_bar at that step is ~1e-6, so the first sampling step divides
        the eps error by ~1e-3; a well-trained model (the released one) predicts eps there precisely
        enough, a briefly trained one does not, and its samples drift off the data. Starting from
        pure noise one step later (alpha_bar ~4e-3) avoids that. Off by default (exact original).
        """
        steps = sampling_steps
        key = (steps, skip_terminal_step)
        if key not in self._sampling:
            n = self.config.num_train_steps - (1 if skip_terminal_step else 0)
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.config.num_train_steps:
                raise ValueError(f"sampling steps must be an int in [1, {self.config.num_train_steps}], got {steps!r}")
            if n < 1:
                raise ValueError("skip_terminal_step needs at least 2 training steps")
            steps_n = min(steps, n)   # skip_terminal_step: "all steps" means the n remaining timesteps
            self._sampling[key] = GaussianDiffusion(self.base_betas[:n], space_timesteps(n, str(steps_n)))
        return self._sampling[key]

    def model_timesteps(self, sampling_steps: int, device, skip_terminal_step: bool = False) -> torch.Tensor:
        """The model-input timesteps of a respaced process, cached per device (no host copy in the
        sampling loop, which CUDA-graph capture forbids)."""
        key = (sampling_steps, skip_terminal_step, str(device))
        if key not in self._timesteps:
            proc = self.sampling_process(sampling_steps, skip_terminal_step)
            self._timesteps[key] = torch.as_tensor(proc.timestep_map, device=device)
        return self._timesteps[key]

    # ---- training
    def _check_rows(self, name: str, x: torch.Tensor, width: int, rows: int | None = None) -> None:
        if x.dim() != 2 or x.shape[1] != width or (rows is not None and x.shape[0] != rows):
            want = f"({rows if rows is not None else 'N'}, {width})"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")

    def loss(self, target: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
             diffmlps_batch_mul: int = 1) -> torch.Tensor:
        """Epsilon MSE at random timesteps, as the original's training_losses + masked mean.

        target (N, latent), cond (N, cond_dim). diffmlps_batch_mul repeats the rows (tiled, like the original's
        `.repeat(diffmlps_batch_mul, 1)`) so each token is trained at that many timesteps; the default 1
        is for callers that repeat themselves (the t2m objective). t (diffmlps_batch_mul*N,) and noise
        (diffmlps_batch_mul*N, latent) may be given explicitly (reproducible/DDP-splittable batches).
        mask (N,), bool: only rows where it is True count (they are selected before the network, as
        the original's trainer does, so padded rows cannot leak NaNs into the gradients); float:
        weights, loss = sum(row_mse * mask) / sum(mask). row_mse is the mean over latent dims. With
        no selected row the loss is 0 (still attached to the graph). Returns a scalar.
        """
        d = self.train_diffusion
        self._check_rows("target", target, self.config.latent_dim)
        self._check_rows("cond", cond, self.config.cond_dim, target.shape[0])
        mul = diffmlps_batch_mul
        if isinstance(mul, bool) or not isinstance(mul, int) or mul < 1:
            raise ValueError(f"diffmlps_batch_mul must be a positive int, got {mul!r}")
        if mask is not None and tuple(mask.shape) != (target.shape[0],):
            raise ValueError(f"mask must have shape ({target.shape[0]},), got {tuple(mask.shape)}")
        if mul > 1:
            target, cond = target.repeat(mul, 1), cond.repeat(mul, 1)
            mask = mask.repeat(mul) if mask is not None else None
        n = target.shape[0]
        if t is None:
            t = torch.randint(0, d.num_timesteps, (n,), device=target.device)
        elif tuple(t.shape) != (n,):
            raise ValueError(f"t must have shape ({n},) (diffmlps_batch_mul x rows), got {tuple(t.shape)}")
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

    # ---- sampling
    def eps_function(self, c: torch.Tensor, model_t: torch.Tensor, fast: bool = True):
        """eps_at(x, i) for condition rows c at the model timesteps model_t (S,): with fast, the
        AdaLN modulations of every step precomputed (forward_with_modulations), else the plain
        net.forward (the reference)."""
        if fast:
            mods = self.net.modulations(c, model_t)
            return lambda x, i: self.net.forward_with_modulations(x, mods, i)
        return lambda x, i: self.net(x, model_t[i].expand(x.shape[0]), c)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, uncond: torch.Tensor | None = None, settings: SamplerSettings | None = None,
               *, noise: tuple[torch.Tensor, torch.Tensor] | None = None, generator: torch.Generator | None = None,
               fast: bool = True) -> torch.Tensor:
        """Latents (B, latent_dim) for conditions cond (B, cond_dim), sampled as `settings` says
        (default SamplerSettings(): the original's 50 DDPM steps, guidance 4).

        Guidance runs when settings.guided and uncond (B, cond_dim) is given: the network sees rows
        [cond; uncond] sharing x_T and the step noise (the original discards the uncond half's x every
        step too); otherwise B rows. noise: (x_T (B, latent), step_noise (n, B, latent)) from
        draw_sampling_noise, drawn from `generator` when None. fast: precomputed AdaLN modulations (same
        math as the reference net.forward); with the "triton" head backend ("auto" on CUDA) the whole
        loop runs in the fused kernels."""
        s = settings or SamplerSettings()
        proc = self.sampling_process(s.sampling_steps, s.skip_terminal_step)
        x, step_noise = self._sampling_inputs(cond, uncond, proc.num_timesteps, noise, generator)
        guided = uncond is not None and s.guided
        c = torch.cat([cond, uncond]) if guided else cond
        cfg_scale = s.cfg_scale if guided else None
        model_t = self.model_timesteps(s.sampling_steps, cond.device, s.skip_terminal_step)
        coefs = proc.step_coefficients(s.sampler, s.eta)
        kernels = self._fused_sampler(cond) if fast else None
        if kernels is not None:
            return kernels.sample_loop_fused(self.net, c, model_t, x, step_noise, coefs, cfg_scale, s.temperature)
        return sample_loop(self.eps_function(c, model_t, fast), x, coefs, step_noise, cfg_scale, s.temperature)

    def _sampling_inputs(self, cond, uncond, n_steps: int, noise, generator):
        """Checked shapes; (x_T, step_noise) as given, or drawn."""
        self._check_rows("cond", cond, self.config.cond_dim)
        B, dim = cond.shape[0], self.config.latent_dim
        if uncond is not None:
            self._check_rows("uncond", uncond, self.config.cond_dim, B)
        if noise is None:
            noise = draw_sampling_noise(generator, B, n_steps, dim, cond.device, cond.dtype)
        x, step_noise = noise
        if tuple(x.shape) != (B, dim):
            raise ValueError(f"noise x_T must have shape ({B}, {dim}), got {tuple(x.shape)}")
        if step_noise.dim() != 3 or step_noise.shape[0] < n_steps or tuple(step_noise.shape[1:]) != (B, dim):
            raise ValueError(f"step noise must have shape (>= {n_steps}, {B}, {dim}), got {tuple(step_noise.shape)}")
        return x, step_noise
