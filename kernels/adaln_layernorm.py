"""AdaLN input: LayerNorm(x) * (1 + scale) + shift, one fused row kernel.

The diffusion head's blocks use LayerNorm(eps 1e-6) with an affine weight/bias, its final layer
one without (weight=None, bias=None). shift/scale are the AdaLN modulations, one row per row of x
(views into the precomputed modulation tensor work: only the last dim must be contiguous).
Statistics are fp32 and two-pass (mean, then the centred sum of squares), as torch's LayerNorm.
"""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, check_dtype, next_pow2, require_usable


def adaln_modulate_layernorm_reference(x, weight, bias, shift, scale, eps: float = 1e-6) -> torch.Tensor:
    """F.layer_norm in fp32, then modulate; result in x's dtype."""
    h = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(),
                                       None if bias is None else bias.float(), eps)
    return (h * (1 + scale.float()) + shift.float()).to(x.dtype)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import row_norm_stats

    @triton.jit
    def _adaln_ln_kernel(X, Y, LNW, LNB, SHIFT, SCALE, W, sx, sy, ssh, ssc, eps,
                         BLOCK: tl.constexpr, AFFINE: tl.constexpr):
        row = tl.program_id(0)
        _, rstd, xc, cols, valid = row_norm_stats(X, row, sx, W, BLOCK, eps)
        h = xc * rstd
        if AFFINE:
            h = h * tl.load(LNW + cols, mask=valid, other=0.0).to(tl.float32) + \
                tl.load(LNB + cols, mask=valid, other=0.0).to(tl.float32)
        sc = tl.load(SCALE + row * ssc + cols, mask=valid, other=0.0).to(tl.float32)
        sh = tl.load(SHIFT + row * ssh + cols, mask=valid, other=0.0).to(tl.float32)
        tl.store(Y + row * sy + cols, (h * (1.0 + sc) + sh).to(Y.dtype.element_ty), mask=valid)


def _rows(name: str, t: torch.Tensor, M: int, W: int, what: str) -> torch.Tensor:
    if t.shape != (M, W):
        raise ValueError(f"{name}: {what} must be ({M}, {W}), got {tuple(t.shape)}")
    return t if t.stride(-1) == 1 else t.contiguous()


def adaln_modulate_layernorm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm(x; weight, bias, eps) * (1 + scale) + shift for x, shift, scale (M, W)."""
    name = "adaln_modulate_layernorm"
    if x.dim() != 2:
        raise ValueError(f"{name}: x must be (M, W), got {tuple(x.shape)}")
    M, W = x.shape
    if (weight is None) != (bias is None):
        raise ValueError(f"{name}: give both LayerNorm weight and bias, or neither")
    if weight is not None and (weight.shape != (W,) or bias.shape != (W,)):
        raise ValueError(f"{name}: weight/bias must be ({W},), got {tuple(weight.shape)}, {tuple(bias.shape)}")
    x = _rows(name, x, M, W, "x")
    shift, scale = _rows(name, shift, M, W, "shift"), _rows(name, scale, M, W, "scale")
    check_dtype(name, x, shift, scale)
    require_usable(name, x, shift, scale)
    y = torch.empty(M, W, device=x.device, dtype=x.dtype) if out is None else out
    if M == 0:
        return y
    affine = weight is not None
    block = next_pow2(W)
    _adaln_ln_kernel[(M,)](x, y, weight if affine else x, bias if affine else x, shift, scale, W,
                           x.stride(0), y.stride(0), shift.stride(0), scale.stride(0), float(eps),
                           BLOCK=block, AFFINE=affine, num_warps=max(1, min(16, block // 256)))
    return y


__all__ = ["adaln_modulate_layernorm", "adaln_modulate_layernorm_reference"]
