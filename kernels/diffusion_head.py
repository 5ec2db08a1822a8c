"""The diffusion head's sampling step (and the whole sampling loop) with the fewest launches.

Head (spec reference-model §3, SimpleMLPAdaLN): h = input_proj(x); per block, with (shift, scale,
gate) from the precomputed AdaLN modulations: h = h + gate * W2 silu(W1 (LN(h) (1 + scale) + shift)
+ b1) + b2; then eps = final_linear(LN_noaffine(h) (1 + scale_f) + shift_f).

Launches per step: two per block (fused_linear with the AdaLN LayerNorm prologue and bias+SiLU
epilogue, then fused_linear with the bias+gate+residual epilogue), plus ONE "io" kernel that does
the final layer for the [cond; uncond] rows, the CFG mix, the DDPM/DDIM update of the latent and
the next step's input projection. So a step is 2*depth + 1 launches (19 for the official head)
and the 50-step loop about 950, each reading its weights once; the eager reference issues ~10
launches per block. Captured in a CUDA graph (as the runtime does) the loop has no host work.

For many rows the block matmuls are compute-bound and run in cuBLAS with the separate
elementwise kernels (adaln_modulate_layernorm, bias_silu, gated_residual) around them.

The latent x is kept in fp32 across the loop (it is 16 numbers per row); the hidden state and all
matmul operands stay in the weights' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from motionstreamer.models.sampling import sample_loop

from ._common import HAS_TRITON, check_dtype, next_pow2, require_usable
from .adaln_layernorm import adaln_modulate_layernorm
from .linear import fused_linear
from .residual import gated_residual
from .silu import bias_silu

# Up to this many rows the block matmuls run as fused GEMV-like kernels; above it, cuBLAS + fused
# elementwise kernels. A guess to be tuned on the GPU (benchmarks/bench_kernels.py measures both).
FUSED_MAX_ROWS = 64


@dataclass
class BlockWeights:
    ln_w: torch.Tensor     # (W,) LayerNorm affine
    ln_b: torch.Tensor
    w1: torch.Tensor       # (W, W) nn.Linear weight
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


@dataclass
class HeadWeights:
    """Explicit tensors of a SimpleMLPAdaLN head (everything but the AdaLN and embedding MLPs)."""
    input_w: torch.Tensor  # (W, L)
    input_b: torch.Tensor  # (W,)
    blocks: list           # [BlockWeights] * depth
    final_w: torch.Tensor  # (L, W)
    final_b: torch.Tensor  # (L,)
    eps: float = 1e-6

    @property
    def width(self) -> int:
        return self.input_w.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.input_w.shape[1]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.input_w.dtype

    def step_bytes(self) -> int:
        """Bytes of weights one sampling step must read (the memory-bound limit at small batch)."""
        ts = [self.input_w, self.input_b, self.final_w, self.final_b]
        for b in self.blocks:
            ts += [b.ln_w, b.ln_b, b.w1, b.b1, b.w2, b.b2]
        return sum(t.numel() * t.element_size() for t in ts)

    def validate(self) -> None:
        W, L = self.input_w.shape
        want = {"input_b": (W,), "final_w": (L, W), "final_b": (L,)}
        for k, shape in want.items():
            if tuple(getattr(self, k).shape) != shape:
                raise ValueError(f"HeadWeights.{k} must be {shape}, got {tuple(getattr(self, k).shape)}")
        for i, b in enumerate(self.blocks):
            for k, shape in (("ln_w", (W,)), ("ln_b", (W,)), ("w1", (W, W)), ("b1", (W,)), ("w2", (W, W)),
                             ("b2", (W,))):
                if tuple(getattr(b, k).shape) != shape:
                    raise ValueError(f"HeadWeights.blocks[{i}].{k} must be {shape}, got {tuple(getattr(b, k).shape)}")


# ----------------------------------------------------------------------------- references
def head_blocks_reference(h, weights: HeadWeights, block_mods) -> torch.Tensor:
    """The residual blocks as the model writes them, in h's dtype. block_mods (depth, N, 3, W)."""
    for blk, m in zip(weights.blocks, block_mods):
        a = F.layer_norm(h, (h.shape[-1],), blk.ln_w, blk.ln_b, weights.eps) * (1 + m[:, 1]) + m[:, 0]
        h = h + m[:, 2] * F.linear(F.silu(F.linear(a, blk.w1, blk.b1)), blk.w2, blk.b2)
    return h


def head_step_reference(x, weights: HeadWeights, block_mods, final_mods) -> torch.Tensor:
    """eps for rows x (N, L) at one step: block_mods (depth, N, 3, W), final_mods (N, 2, W)."""
    h = head_blocks_reference(F.linear(x, weights.input_w, weights.input_b), weights, block_mods)
    a = F.layer_norm(h, (h.shape[-1],), None, None, weights.eps) * (1 + final_mods[:, 1]) + final_mods[:, 0]
    return F.linear(a, weights.final_w, weights.final_b)


def head_sample_loop_reference(weights: HeadWeights, mods: dict, x_T, step_noise, coefs: np.ndarray,
                               cfg_scale: float | None = None, temperature: float = 1.0) -> torch.Tensor:
    """The sampling loop over steps S-1..0 in plain PyTorch: the model's sample_loop with the eps of
    head_step_reference (the model's fast sampler, unfused).

    mods {"blocks": (depth, S, N, 3, W), "final": (S, N, 2, W)}; N = 2B rows [cond; uncond] when
    cfg_scale is not None (both halves start from the same x), else B. x_T (B, L); step_noise (S, B, L);
    coefs (S, 6) from GaussianDiffusion.step_coefficients."""
    return sample_loop(lambda x, i: head_step_reference(x, weights, mods["blocks"][:, i], mods["final"][i]),
                       x_T, coefs, step_noise, cfg_scale, temperature)


# ----------------------------------------------------------------------------- kernels
if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import row_norm_stats

    @triton.jit
    def _final_row(HIN, row, sh, MODF, smr, smp, WF, swf, BF, ln_eps,
                   WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BW: tl.constexpr, LAT: tl.constexpr, LATP: tl.constexpr):
        """eps of one row: LayerNorm (no affine) -> modulate -> final linear (fp32)."""
        mean, rstd, _, _, _ = row_norm_stats(HIN, row, sh, WIDTH, BLOCK_W, ln_eps)
        li = tl.arange(0, LATP)
        acc = tl.zeros([LATP, BW], dtype=tl.float32)
        for w0 in tl.static_range(0, WIDTH, BW):
            c = w0 + tl.arange(0, BW)
            v = c < WIDTH
            hv = (tl.load(HIN + row * sh + c, mask=v, other=0.0).to(tl.float32) - mean) * rstd
            sc = tl.load(MODF + row * smr + smp + c, mask=v, other=0.0).to(tl.float32)
            sf = tl.load(MODF + row * smr + c, mask=v, other=0.0).to(tl.float32)
            hv = tl.where(v, hv * (1.0 + sc) + sf, 0.0)
            wf = tl.load(WF + li[:, None] * swf + c[None, :], mask=(li < LAT)[:, None] & v[None, :], other=0.0)
            acc += wf.to(tl.float32) * hv[None, :]
        return tl.sum(acc, 1) + tl.load(BF + li, mask=li < LAT, other=0.0).to(tl.float32)

    @triton.jit
    def _head_io_kernel(HIN, sh, MODF, smr, smp, WF, swf, BF, XS, NOISE, EPS, HOUT, sho, WI, swi, BI,
                        B, cfg_scale, c0, c1, c2, c3, c4, c5, ln_eps,
                        WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BW: tl.constexpr, LAT: tl.constexpr,
                        LATP: tl.constexpr, GUIDED: tl.constexpr, FINAL: tl.constexpr, STORE_EPS: tl.constexpr,
                        UPDATE: tl.constexpr, HAS_NOISE: tl.constexpr, PROJECT: tl.constexpr):
        """Program b: [final layer of rows b (and b+B) -> CFG -> update x_b] -> next input projection."""
        b = tl.program_id(0)
        li = tl.arange(0, LATP)
        lv = li < LAT
        x = tl.load(XS + b * LAT + li, mask=lv, other=0.0).to(tl.float32)
        if FINAL:
            eps = _final_row(HIN, b, sh, MODF, smr, smp, WF, swf, BF, ln_eps, WIDTH, BLOCK_W, BW, LAT, LATP)
            if GUIDED:
                eps_u = _final_row(HIN, b + B, sh, MODF, smr, smp, WF, swf, BF, ln_eps, WIDTH, BLOCK_W, BW, LAT, LATP)
                eps = eps_u + cfg_scale * (eps - eps_u)
            if STORE_EPS:
                tl.store(EPS + b * LAT + li, eps.to(EPS.dtype.element_ty), mask=lv)
            if UPDATE:
                x0 = c0 * x - c1 * eps
                x = c2 * x0 + c3 * x + c4 * eps
                if HAS_NOISE:
                    x += c5 * tl.load(NOISE + b * LAT + li, mask=lv, other=0.0).to(tl.float32)
                tl.store(XS + b * LAT + li, x, mask=lv)
        if PROJECT:
            for w0 in tl.static_range(0, WIDTH, BW):
                c = w0 + tl.arange(0, BW)
                v = c < WIDTH
                wi = tl.load(WI + c[:, None] * swi + li[None, :], mask=v[:, None] & lv[None, :], other=0.0)
                h = tl.sum(wi.to(tl.float32) * x[None, :], 1) + tl.load(BI + c, mask=v, other=0.0).to(tl.float32)
                h = h.to(HOUT.dtype.element_ty)
                tl.store(HOUT + b * sho + c, h, mask=v)
                if GUIDED:
                    tl.store(HOUT + (b + B) * sho + c, h, mask=v)


def _io(weights: HeadWeights, n_prog: int, h_in, final_mods, xs, noise, eps_out, h_out, cfg_scale, coefs,
        final: bool, store_eps: bool, update: bool, project: bool, guided: bool):
    W, L = weights.width, weights.latent_dim
    dummy = weights.final_b
    c = [float(v) for v in coefs] if coefs is not None else [0.0] * 6
    fm = final_mods if final_mods is not None else None
    bw = min(256, next_pow2(W))
    _head_io_kernel[(n_prog,)](
        h_in if h_in is not None else dummy, h_in.stride(0) if h_in is not None else 0,
        fm if fm is not None else dummy, fm.stride(0) if fm is not None else 0, fm.stride(1) if fm is not None else 0,
        weights.final_w, weights.final_w.stride(0), weights.final_b, xs,
        noise if noise is not None else xs, eps_out if eps_out is not None else xs,
        h_out if h_out is not None else dummy, h_out.stride(0) if h_out is not None else 0,
        weights.input_w, weights.input_w.stride(0), weights.input_b,
        n_prog, float(cfg_scale) if cfg_scale is not None else 1.0, *c, float(weights.eps),
        WIDTH=W, BLOCK_W=next_pow2(W), BW=bw, LAT=L, LATP=max(2, next_pow2(L)), GUIDED=guided, FINAL=final,
        STORE_EPS=store_eps, UPDATE=update, HAS_NOISE=noise is not None and coefs is not None and c[5] != 0.0,
        PROJECT=project, num_warps=8 if W >= 1024 else 4)


class _Buffers:
    """Hidden-state buffers for one batch size: h ping-pong, the SiLU output, and a cuBLAS scratch."""

    def __init__(self, N: int, W: int, device, dtype, fused: bool):
        self.h = [torch.empty(N, W, device=device, dtype=dtype) for _ in range(2)]
        self.u = torch.empty(N, W, device=device, dtype=dtype)
        self.a = None if fused else torch.empty(N, W, device=device, dtype=dtype)


def _blocks(weights: HeadWeights, block_mods, buf: _Buffers, src: int, fused: bool) -> int:
    """Run every block on buf.h[src]; returns the index of the buffer holding the result."""
    for blk, m in zip(weights.blocks, block_mods):
        h, out = buf.h[src], buf.h[1 - src]
        shift, scale, gate = m[:, 0], m[:, 1], m[:, 2]
        if fused:
            fused_linear(h, blk.w1, blk.b1, ln={"weight": blk.ln_w, "bias": blk.ln_b, "shift": shift, "scale": scale,
                                                "eps": weights.eps}, epilogue="silu", out=buf.u)
            fused_linear(buf.u, blk.w2, blk.b2, epilogue="gated_residual", residual=h, gate=gate, out=out)
        else:
            adaln_modulate_layernorm(h, blk.ln_w, blk.ln_b, shift, scale, weights.eps, out=buf.a)
            torch.mm(buf.a, blk.w1.t(), out=buf.u)
            bias_silu(buf.u, blk.b1, out=buf.u)
            torch.mm(buf.u, blk.w2.t(), out=buf.a)
            gated_residual(h, buf.a, gate, blk.b2, out=out)
        src = 1 - src
    return src


def _check_mods(name, weights, block_mods, final_mods, N):
    D, W = weights.depth, weights.width
    if block_mods.shape != (D, N, 3, W):
        raise ValueError(f"{name}: block modulations must be (depth, N, 3, W) = {(D, N, 3, W)}, "
                         f"got {tuple(block_mods.shape)}")
    if final_mods.shape != (N, 2, W):
        raise ValueError(f"{name}: final modulations must be (N, 2, W) = {(N, 2, W)}, got {tuple(final_mods.shape)}")
    if block_mods.stride(-1) != 1 or final_mods.stride(-1) != 1:
        raise ValueError(f"{name}: modulations need a contiguous last dim")


@torch.no_grad()   # inference only: the kernels are not differentiable (training uses the model's forward)
def head_step(x: torch.Tensor, weights: HeadWeights, block_mods: torch.Tensor, final_mods: torch.Tensor,
              fused: bool | None = None) -> torch.Tensor:
    """eps for rows x (N, L) at one sampling step, given that step's AdaLN modulations.

    block_mods (depth, N, 3, W) [shift, scale, gate]; final_mods (N, 2, W) [shift, scale] (views
    of the model's precomputed modulations, e.g. mods["blocks"][:, i], work as they are).
    fused: GEMV-style fused kernels (default for N <= FUSED_MAX_ROWS) or cuBLAS + fused elementwise."""
    name = "head_step"
    weights.validate()
    N, L = x.shape
    if L != weights.latent_dim:
        raise ValueError(f"{name}: x must be (N, {weights.latent_dim}), got {tuple(x.shape)}")
    _check_mods(name, weights, block_mods, final_mods, N)
    check_dtype(name, weights.input_w, block_mods, final_mods)
    require_usable(name, x, weights.input_w, block_mods)
    fused = N <= FUSED_MAX_ROWS if fused is None else fused
    buf = _Buffers(N, weights.width, x.device, weights.dtype, fused)
    xs = x.float().contiguous()
    eps = torch.empty(N, L, device=x.device, dtype=x.dtype)
    if N == 0:
        return eps
    _io(weights, N, None, None, xs, None, None, buf.h[0], None, None, final=False, store_eps=False, update=False,
        project=True, guided=False)
    src = _blocks(weights, block_mods, buf, 0, fused)
    _io(weights, N, buf.h[src], final_mods, xs, None, eps, None, None, None, final=True, store_eps=True, update=False,
        project=False, guided=False)
    return eps


@torch.no_grad()
def head_sample_loop(weights: HeadWeights, mods: dict, x_T: torch.Tensor, step_noise: torch.Tensor | None,
                     coefs: np.ndarray, cfg_scale: float | None = None, temperature: float = 1.0,
                     fused: bool | None = None) -> torch.Tensor:
    """The whole sampling loop (steps S-1..0) with 2*depth + 1 launches per step.

    mods: {"blocks": (depth, S, N, 3, W), "final": (S, N, 2, W)} as SimpleMLPAdaLN.modulations
    returns; with cfg_scale (a float), N = 2B rows [cond; uncond] sharing x, eps = eps_u + cfg_scale
    (eps_c - eps_u); without, N = B. x_T (B, L); step_noise (S, B, L) or None (then coefs[:, 5] must be 0);
    coefs (S, 6) from GaussianDiffusion.step_coefficients (the model's update, the same table),
    the noise term scaled by temperature. Returns x_0 (B, L) in x_T's dtype.
    No host sync: safe to capture in a CUDA graph."""
    name = "head_sample_loop"
    weights.validate()
    B, L = x_T.shape
    S = coefs.shape[0]
    guided = cfg_scale is not None
    N = 2 * B if guided else B
    if L != weights.latent_dim:
        raise ValueError(f"{name}: x_T must be (B, {weights.latent_dim}), got {tuple(x_T.shape)}")
    if coefs.shape != (S, 6):
        raise ValueError(f"{name}: coefs must be (S, 6), got {coefs.shape}")
    if mods["blocks"].shape[:3] != (weights.depth, S, N) or mods["final"].shape[:2] != (S, N):
        raise ValueError(f"{name}: modulations for {S} steps x {N} rows expected, got {tuple(mods['blocks'].shape)}, "
                         f"{tuple(mods['final'].shape)}")
    if step_noise is not None and step_noise.shape != (S, B, L):
        raise ValueError(f"{name}: step_noise must be (S, B, L) = {(S, B, L)}, got {tuple(step_noise.shape)}")
    if step_noise is None and np.any(coefs[:, 5] != 0):
        raise ValueError(f"{name}: these coefficients add noise; pass step_noise")
    check_dtype(name, weights.input_w, mods["blocks"], mods["final"])
    require_usable(name, x_T, weights.input_w, mods["blocks"])
    fused = N <= FUSED_MAX_ROWS if fused is None else fused
    buf = _Buffers(N, weights.width, x_T.device, weights.dtype, fused)
    xs = x_T.float().contiguous().clone()
    if B == 0:
        return xs.to(x_T.dtype)
    noise = step_noise.contiguous() if step_noise is not None else None
    coefs = coefs.copy()
    coefs[:, 5] *= temperature     # the kernel takes the noise term's coefficient whole
    _io(weights, B, None, None, xs, None, None, buf.h[0], None, None, final=False, store_eps=False, update=False,
        project=True, guided=guided)
    src = 0
    for i in reversed(range(S)):
        _check_mods(name, weights, mods["blocks"][:, i], mods["final"][i], N)
        src = _blocks(weights, mods["blocks"][:, i], buf, src, fused)
        # the next step's input goes to the other buffer: no program reads rows another writes
        _io(weights, B, buf.h[src], mods["final"][i], xs, noise[i] if noise is not None else None, None,
            buf.h[1 - src], cfg_scale, coefs[i], final=True, store_eps=False, update=True, project=i > 0, guided=guided)
        src = 1 - src
    return xs.to(x_T.dtype)


__all__ = ["BlockWeights", "HeadWeights", "head_step", "head_step_reference", "head_blocks_reference",
           "head_sample_loop", "head_sample_loop_reference", "FUSED_MAX_ROWS"]
