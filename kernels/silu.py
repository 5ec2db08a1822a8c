"""SiLU(x + bias): the first linear's epilogue of a head block, for when the matmul runs in cuBLAS."""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, check_dtype, require_usable


def bias_silu_reference(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    h = x.float() if bias is None else x.float() + bias.float()
    return torch.nn.functional.silu(h).to(x.dtype)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import load_plus_bias

    @triton.jit
    def _bias_silu_kernel(X, B, Y, W, sx, sy, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = cols < W
        h = load_plus_bias(X, B, row, sx, cols, valid, HAS_BIAS)
        tl.store(Y + row * sy + cols, (h / (1.0 + tl.exp(-h))).to(Y.dtype.element_ty), mask=valid)


def bias_silu(x: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x + bias) for x (M, W), bias (W,) or None; `out` may be x (in place)."""
    name = "bias_silu"
    if x.dim() != 2:
        raise ValueError(f"{name}: x must be (M, W), got {tuple(x.shape)}")
    M, W = x.shape
    if bias is not None and bias.shape != (W,):
        raise ValueError(f"{name}: bias must be ({W},), got {tuple(bias.shape)}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    check_dtype(name, x)
    require_usable(name, x)
    y = torch.empty_like(x) if out is None else out
    if M == 0:
        return y
    block = 1024
    _bias_silu_kernel[(M, triton.cdiv(W, block))](x, bias if bias is not None else x, y, W, x.stride(0), y.stride(0),
                                                  BLOCK=block, HAS_BIAS=bias is not None, num_warps=4)
    return y


__all__ = ["bias_silu", "bias_silu_reference"]
