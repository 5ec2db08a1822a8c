"""What every kernel file shares: is Triton usable for a tensor, how to run tl.dot, launch configs.

A kernel runs on CUDA tensors when Triton is installed, and on CPU tensors under the Triton
interpreter (TRITON_INTERPRET=1 set before triton is imported), which is how the tests check them
without a GPU. Two interpreter gaps shape the code: bf16 tl.dot is wrong there, so dots are done
in fp32 when interpreting (UPCAST), and autotuning is not run there (one config).
"""
from __future__ import annotations

import os

import torch

try:  # Triton is optional: the package works without it (reference paths only)
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_usable(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels can run on these tensors (CUDA, or CPU under the interpreter)."""
    if not HAS_TRITON or not tensors:
        return False
    devs = {t.device.type for t in tensors if t is not None}
    if devs == {"cuda"}:
        return not interpreting()
    return devs == {"cpu"} and interpreting()


def require_usable(name: str, *tensors: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{name}: triton is not installed (pip install 'motionstreamer[triton]')")
    if not kernels_usable(*tensors):
        devs = sorted({str(t.device) for t in tensors if t is not None})
        raise RuntimeError(f"{name}: Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set "
                           f"before triton is imported); got tensors on {devs}")


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(name: str, *tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors:
        if t.dtype != dtype:
            raise TypeError(f"{name}: all inputs must share one dtype, got {[str(x.dtype) for x in tensors]}")
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: dtype {dtype} is not supported (float32, float16, bfloat16)")
    return dtype


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexprs for `mm`: UPCAST under the interpreter (its bf16 dot is wrong), IEEE fp32 dots
    for fp32 inputs (the reference is exact fp32, TF32 would miss 1e-4)."""
    return {"UPCAST": interpreting(), "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def as_scale_tensor(scale, device) -> torch.Tensor:
    """A scalar (float or 0-d/1-element tensor) as a 1-element fp32 tensor on `device`.

    Kernels read the scale from memory, so a learnable scale needs no host sync (CUDA graphs)."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a scalar, got a tensor of shape {tuple(scale.shape)}")
        return scale.detach().reshape(1).to(device=device, dtype=torch.float32)
    return torch.full((1,), float(scale), device=device, dtype=torch.float32)


if HAS_TRITON:
    @triton.jit
    def row_norm_stats(X, row, stride, W, BLOCK: tl.constexpr, eps):
        """LayerNorm statistics of row `row` (width W <= BLOCK) in fp32: (mean, 1/std, x - mean with 0
        beyond W, columns, their mask)."""
        cols = tl.arange(0, BLOCK)
        valid = cols < W
        x = tl.load(X + row * stride + cols, mask=valid, other=0.0).to(tl.float32)
        mean = tl.sum(x, 0) / W
        xc = tl.where(valid, x - mean, 0.0)
        return mean, 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / W + eps), xc, cols, valid

    @triton.jit
    def load_plus_bias(X, B, row, stride, cols, valid, HAS_BIAS: tl.constexpr):
        """Row `row` of X at `cols` in fp32, plus the bias B[cols] when HAS_BIAS."""
        h = tl.load(X + row * stride + cols, mask=valid, other=0.0).to(tl.float32)
        if HAS_BIAS:
            h += tl.load(B + cols, mask=valid, other=0.0).to(tl.float32)
        return h

    @triton.jit
    def mm(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """acc + a @ b with fp32 accumulation; operands already in the input dtype."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc, input_precision=PRECISION)

    def autotune(gpu_configs: list, interpreter_config, key: list, **kw):
        """triton.autotune over `gpu_configs` on GPU; `interpreter_config` alone under the interpreter,
        where autotuning cannot run (small blocks keep the CPU tests fast)."""
        if interpreting():
            return triton.autotune(configs=[interpreter_config], key=key)
        return triton.autotune(configs=gpu_configs, key=key, **kw)
