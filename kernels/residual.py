"""x + gate * (h + bias): the second linear's epilogue of a head block (AdaLN gate + residual)."""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, check_dtype, require_usable


def gated_residual_reference(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    hf = h.float() if bias is None else h.float() + bias.float()
    return (x.float() + gate.float() * hf).to(x.dtype)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import load_plus_bias

    @triton.jit
    def _gated_residual_kernel(X, H, G, B, Y, W, sx, sh, sg, sy, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = cols < W
        h = load_plus_bias(H, B, row, sh, cols, valid, HAS_BIAS)
        x = tl.load(X + row * sx + cols, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(G + row * sg + cols, mask=valid, other=0.0).to(tl.float32)
        tl.store(Y + row * sy + cols, (x + g * h).to(Y.dtype.element_ty), mask=valid)


def gated_residual(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """x + gate * (h + bias) for x, h, gate (M, W), bias (W,) or None; `out` may be x (in place)."""
    name = "gated_residual"
    if x.dim() != 2 or h.shape != x.shape or gate.shape != x.shape:
        raise ValueError(f"{name}: x, h, gate must share one (M, W) shape, got {tuple(x.shape)}, "
                         f"{tuple(h.shape)}, {tuple(gate.shape)}")
    M, W = x.shape
    if bias is not None and bias.shape != (W,):
        raise ValueError(f"{name}: bias must be ({W},), got {tuple(bias.shape)}")
    x, h, gate = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, h, gate))
    check_dtype(name, x, h, gate)
    require_usable(name, x, h, gate)
    y = torch.empty_like(x) if out is None else out
    if M == 0:
        return y
    block = 1024
    _gated_residual_kernel[(M, triton.cdiv(W, block))](x, h, gate, bias if bias is not None else x, y, W,
                                                       x.stride(0), h.stride(0), gate.stride(0), y.stride(0),
                                                       BLOCK=block, HAS_BIAS=bias is not None, num_warps=4)
    return y


__all__ = ["gated_residual", "gated_residual_reference"]
