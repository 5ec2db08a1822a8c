"""Which implementation runs the TAE's causal convolutions (one switch, kept in ops.causal_conv).

"torch" is the reference (explicit left pad + torch.nn.functional.conv1d, cuDNN on GPU); "native"
is motionstreamer._C's causal conv (CPU fp32, CUDA fp32/fp16/bf16); "auto" picks native when it is
built and supports the tensor, else torch. Set with set_backend() or MOTIONSTREAMER_CONV_BACKEND.
"""
from __future__ import annotations

import torch

from motionstreamer.ops import causal_conv
from motionstreamer.ops.causal_conv import get_backend, set_backend  # noqa: F401  (the one global switch)


def conv1d(x: torch.Tensor, conv: torch.nn.Conv1d, pad: int) -> torch.Tensor:
    """Left-pad x (B, C, T) by `pad` zeros and apply `conv` (no padding of its own)."""
    return causal_conv.conv_forward_full(conv, x, pad=pad)
