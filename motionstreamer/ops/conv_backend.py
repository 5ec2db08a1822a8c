"""Which implementation runs the TAE's causal convolutions.

"torch" is the reference (explicit left pad + torch.nn.functional.conv1d, cuDNN on GPU); "native"
is motionstreamer._C's causal conv (CPU fp32, CUDA fp32/fp16/bf16); "auto" picks native when it is
built and supports the tensor, else torch. Set with set_backend() or MOTIONSTREAMER_CONV_BACKEND.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

_BACKEND = os.environ.get("MOTIONSTREAMER_CONV_BACKEND", "torch")


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("auto", "native", "torch"):
        raise ValueError(f"conv backend must be 'auto', 'native' or 'torch', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def conv1d(x: torch.Tensor, conv: torch.nn.Conv1d, pad: int) -> torch.Tensor:
    """Left-pad x (B, C, T) by `pad` zeros and apply `conv` (no padding of its own)."""
    if _BACKEND != "torch":
        try:
            from motionstreamer.ops import causal_conv
        except ImportError:
            causal_conv = None
        if causal_conv is not None and (_BACKEND == "native" or causal_conv.supports(x)):
            return causal_conv.causal_conv1d(x, conv.weight, conv.bias, stride=conv.stride[0],
                                             dilation=conv.dilation[0], pad=pad,
                                             backend="native" if _BACKEND == "native" else "auto")
    if pad:
        x = F.pad(x, (pad, 0))
    return F.conv1d(x, conv.weight, conv.bias, stride=conv.stride, dilation=conv.dilation)
