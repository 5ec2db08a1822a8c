"""Causal dilated/strided conv1d: full sequence and streaming update, native (C++/CUDA) or torch.

    y = conv1d(leftpad(a(x), pad), weight, bias, stride, dilation);  y = relu(y) if post_relu;  y += residual
    a = relu if pre_relu else identity;  pad defaults to (k-1)*dilation + 1 - stride (the TAE's CausalConv1d)

Backends: "torch" is the reference (F.pad + F.conv1d: cuDNN on GPU, oneDNN on CPU); "native" is
motionstreamer._C (CPU fp32; CUDA fp32/fp16/bf16 with fp32 accumulation, on torch's current stream);
"auto" uses native when the extension is built and supports the tensor's device and dtype, else torch
(only up to AUTO_NATIVE_MAX_COLUMNS output columns, where it is measured faster than oneDNN / cuDNN, and
never while tracing: an ONNX export records the torch ops). The global switch is set_conv_backend() or the
environment variable MOTIONSTREAMER_CONV_BACKEND (default "auto": the streaming TAE step runs native, a
whole-sequence decode or training batch torch); every function also takes conv_backend= to override it
per call. The CPU kernels pick AVX-512,
AVX2+FMA or generic vector code at run time (MOTIONSTREAMER_CPU_ISA forces one).

Streaming (causal_conv1d_update) follows causal-conv1d's conv_state design: the state (B, Cin, S) with
S = (k-1)*dilation + 1 - stride holds the last S inputs the convolution saw (after the pre-ReLU), zeros at
the start of a stream (== the causal left padding). An update takes n new inputs (n a multiple of stride;
a strided conv consumes its input in whole strides), returns their n/stride outputs and the new state, the
last S entries of [state | inputs]. Feeding a sequence in any such chunks equals one full pass.

Autograd: the native forward is wrapped in an autograd.Function whose backward uses PyTorch's convolution
gradients (aten.convolution_backward); without grad the native op is called directly.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from motionstreamer.ops import native

CONV_BACKENDS = ("auto", "native", "torch")
# CPU kernel instruction set: "" = the fastest this CPU has; "avx512" | "avx2" | "generic" to force one.
_CPU_ISA = os.environ.get("MOTIONSTREAMER_CPU_ISA", "").strip().lower()
_CUDA_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _check_backend(name) -> str:
    if name not in CONV_BACKENDS:
        raise ValueError(f"conv backend must be one of {CONV_BACKENDS}, got {name!r}")
    return name


_backend = _check_backend(os.environ.get("MOTIONSTREAMER_CONV_BACKEND", "auto").strip().lower() or "auto")


def set_conv_backend(name: str) -> None:
    """Set the global conv backend: 'auto', 'native' or 'torch'."""
    global _backend
    _backend = _check_backend(name)


def get_conv_backend() -> str:
    return _backend


# ----------------------------------------------------------------------------- extension
_ext = None
_ext_error: str | None = None


def _native():
    """motionstreamer._C, or None when it is not built (the reason is kept for error messages)."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            _ext = native.load()
            if not hasattr(_ext, "causal_conv1d_f32"):
                _ext, _ext_error = None, "motionstreamer._C is out of date (no causal_conv1d_f32): rebuild it"
        except ImportError as e:
            _ext_error = str(e)
    return _ext


def available() -> bool:
    """True when the compiled extension with the causal-conv ops is importable."""
    return _native() is not None


def with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    m = _native()
    return bool(m is not None and m.with_cuda() and hasattr(m, "causal_conv1d_cuda"))


def _unsupported_reason(x: torch.Tensor) -> str | None:
    if _native() is None:
        return _ext_error or "motionstreamer._C is not built"
    if x.device.type == "cpu":
        return None if x.dtype == torch.float32 else f"the native CPU op is float32 only, got {x.dtype}"
    if x.device.type == "cuda":
        if not with_cuda():
            return "motionstreamer._C was built without CUDA (MOTIONSTREAMER_CUDA=off or no nvcc at build time)"
        if x.dtype not in _CUDA_DTYPE_CODES:
            return f"the native CUDA op supports float32/float16/bfloat16, got {x.dtype}"
        major, minor = torch.cuda.get_device_capability(x.device)
        if major < 8:
            return f"the native CUDA kernels are built for sm_80/sm_90, device is sm_{major}{minor}"
        return None
    return f"no native op for device type {x.device.type!r}"


def supports(x: torch.Tensor) -> bool:
    """Whether the native op can run on tensors like x (device, dtype, build)."""
    return _unsupported_reason(x) is None


# "auto": the library conv (oneDNN / cuDNN) is faster for many output columns (B*Tout), the native kernel
# for few (the streaming step, short sequences); see benchmarks/bench_causal_conv.py. On an H200 (bf16 and
# fp32, width 1024) the native streaming step at batch 1 (<= 4 columns a layer) ran 2.2x faster than
# cuDNN (2.8x under CUDA graphs), while at 64 columns (a 16-latent decode) and at batch 256 cuDNN won by
# 1.3-5x; the limit sits inside that unmeasured gap. None = native at any size.
AUTO_NATIVE_MAX_COLUMNS = {"cpu": 64, "cuda": 16}


def resolve_conv_backend(x: torch.Tensor, conv_backend: str | None = None, columns: int | None = None) -> str:
    """The conv backend that will run for x: 'native' or 'torch' (errors when 'native' cannot run).

    'auto' picks native when it supports x and, on devices listed in AUTO_NATIVE_MAX_COLUMNS with a limit,
    when the op has at most that many output columns (batch * output frames)."""
    b = _check_backend(conv_backend) if conv_backend is not None else _backend
    if b == "torch" or (b == "auto" and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())):
        return "torch"
    reason = _unsupported_reason(x)
    if b == "native" and reason is not None:
        raise RuntimeError(f"conv backend 'native' cannot run here: {reason}")
    if reason is not None:
        return "torch"
    limit = AUTO_NATIVE_MAX_COLUMNS.get(x.device.type)
    if b == "auto" and limit is not None and columns is not None and columns > limit:
        return "torch"
    return "native"


# ----------------------------------------------------------------------------- geometry + validation
def default_pad(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """The TAE's causal left padding: (k-1)*dilation + 1 - stride (T inputs -> T // stride outputs)."""
    return (kernel_size - 1) * dilation + 1 - stride


def state_size(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Length S of the streaming state: the inputs kept between updates."""
    s = default_pad(kernel_size, stride, dilation)
    if s < 0:
        raise ValueError(f"streaming needs (k-1)*dilation + 1 - stride >= 0, got k={kernel_size}, "
                         f"stride={stride}, dilation={dilation}")
    return s


def out_len(length: int, kernel_size: int, stride: int = 1, dilation: int = 1, pad: int | None = None) -> int:
    """Output length for `length` inputs after `pad` left zeros."""
    pad = default_pad(kernel_size, stride, dilation) if pad is None else pad
    span = pad + length - (kernel_size - 1) * dilation - 1
    return 0 if span < 0 else span // stride + 1


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _check(fn, x, weight, bias, residual, stride, dilation, pad, xname="x"):
    """Validate shapes/dtypes/devices; returns Tout."""
    for name, t in ((xname, x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: {xname} must be (batch, channels, time), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"{fn}: weight must be (out_channels, in_channels, kernel), got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{fn}: {xname} has {x.shape[1]} channels but weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if weight.shape[0] < 1 or weight.shape[2] < 1:
        raise ValueError(f"{fn}: empty weight shape {tuple(weight.shape)}")
    _check_int("stride", stride, 1)
    _check_int("dilation", dilation, 1)
    _check_int("pad", pad, -(1 << 62))
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {xname} must be floating point, got {x.dtype}")
    tout = out_len(x.shape[2], weight.shape[2], stride, dilation, pad)
    others = [("weight", weight), ("bias", bias), ("residual", residual)]
    for name, t in others:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != x.dtype:
            raise TypeError(f"{fn}: {name} dtype {t.dtype} != {xname} dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but {xname} is on {x.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{fn}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    want = (x.shape[0], weight.shape[0], tout)
    if residual is not None and tuple(residual.shape) != want:
        raise ValueError(f"{fn}: residual must have the output shape {want}, got {tuple(residual.shape)}")
    return tout


# ----------------------------------------------------------------------------- reference (torch)
def causal_conv1d_reference(x, weight, bias=None, stride=1, dilation=1, pad=None, pre_relu=False, post_relu=False,
                            residual=None):
    """The plain PyTorch definition every native path is tested against."""
    pad = default_pad(weight.shape[2], stride, dilation) if pad is None else pad
    if out_len(x.shape[2], weight.shape[2], stride, dilation, pad) == 0:  # F.conv1d rejects an empty output
        y = x.new_zeros(x.shape[0], weight.shape[0], 0) + (weight.sum() * 0 if weight.requires_grad else 0)
        return y if residual is None else y + residual
    if pre_relu:
        x = F.relu(x)
    if pad:
        x = F.pad(x, (pad, 0))
    y = F.conv1d(x, weight, bias, stride=stride, dilation=dilation)
    if post_relu:
        y = F.relu(y)
    if residual is not None:
        y = y + residual
    return y


# ----------------------------------------------------------------------------- native call
def _ptr(t) -> int:
    return t.data_ptr() if t is not None and t.numel() else 0


def _native_call(x, weight, bias, residual, state, stride, dilation, pre, pre_relu, post_relu, want_state):
    """Run the native op on contiguous copies; returns (y, new_state or None). `pre` = pad or state length."""
    m = _native()
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    residual = None if residual is None else residual.contiguous()
    state = None if state is None else state.contiguous()
    B, cin, T = x.shape
    cout, _, k = weight.shape
    tout = out_len(T, k, stride, dilation, pre)
    y = torch.empty(B, cout, tout, dtype=x.dtype, device=x.device)
    new_state = torch.empty(B, cin, pre, dtype=x.dtype, device=x.device) if want_state else None
    args = (_ptr(x), _ptr(weight), _ptr(bias), _ptr(residual), _ptr(y), _ptr(state), _ptr(new_state),
            B, cin, T, cout, k, stride, dilation, pre, tout, bool(pre_relu), bool(post_relu))
    if x.device.type == "cpu":
        m.causal_conv1d_f32(*args, num_threads=torch.get_num_threads(), isa=_CPU_ISA)
    else:
        stream = torch.cuda.current_stream(x.device).cuda_stream
        m.causal_conv1d_cuda(_CUDA_DTYPE_CODES[x.dtype], *args, stream=stream, device=x.device.index)
    return y, new_state


def native_update_unchecked(x, weight, bias, state, dilation: int, pre: int, pre_relu: bool = False,
                            post_relu: bool = False, residual=None):
    """The native stride-1 op with no checks: (y, new state, None when pre == 0). Only for a caller that has
    verified once what causal_conv1d_update checks per call (a prepared chain: models/tae.py's streaming
    decoder step, gated by resolve_conv_backend); shapes that disagree read out of bounds."""
    return _native_call(x, weight, bias, residual, state, 1, dilation, pre, pre_relu, post_relu, pre > 0)


class _NativeCausalConv1d(torch.autograd.Function):
    """Native forward; backward from PyTorch's convolution gradients (no double backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, dilation, pad, pre_relu, post_relu):
        y, _ = _native_call(x, weight, bias, residual, None, stride, dilation, pad, pre_relu, post_relu, False)
        # The post-ReLU mask is y > 0 when nothing was added after it; otherwise it is recomputed.
        keep_y = post_relu and residual is None
        ctx.save_for_backward(x, weight, bias, y if keep_y else None)
        ctx.conf = (stride, dilation, pad, pre_relu, post_relu, residual is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, weight, bias, y = ctx.saved_tensors
        stride, dilation, pad, pre_relu, post_relu, has_res = ctx.conf
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        g_res = gy if (has_res and need_r) else None
        gz = gy
        if post_relu:
            if y is None:
                y, _ = _native_call(x, weight, bias, None, None, stride, dilation, pad, pre_relu, True, False)
            gz = gy * (y > 0).to(gy.dtype)
        gx = gw = gb = None
        if need_x or need_w or need_b:
            xin = F.relu(x) if pre_relu else x
            xpad = F.pad(xin, (pad, 0)) if pad else xin
            gi, gw, gb = torch.ops.aten.convolution_backward(
                gz.contiguous(), xpad, weight, [weight.shape[0]] if bias is not None else None, [stride], [0],
                [dilation], False, [0], 1, [need_x, need_w, need_b and bias is not None])
            if need_x:
                gx = F.pad(gi, (-pad, 0)) if pad else gi
                if pre_relu:
                    gx = gx * (x > 0).to(gx.dtype)
        return gx, gw, gb if need_b else None, g_res, None, None, None, None, None


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# ----------------------------------------------------------------------------- public API
def _autocast_inputs(x, weight, bias, residual):
    """Under torch.autocast, cast the operands as F.conv1d would (to the autocast dtype), so the
    fused op drops into mixed-precision training like the layer it replaces (a bf16 TAE step on
    CUDA otherwise met fp32 weights and bf16 activations)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x, weight, bias, residual
    dev = x.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return x, weight, bias, residual
    dt = torch.get_autocast_dtype(dev)
    cast = lambda t: t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return cast(x), cast(weight), cast(bias), cast(residual)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
                  dilation: int = 1, pre_relu: bool = False, post_relu: bool = False,
                  residual: torch.Tensor | None = None, conv_backend: str | None = None,
                  pad: int | None = None) -> torch.Tensor:
    """Full-sequence causal conv1d: x (B, Cin, T), weight (Cout, Cin, k) -> (B, Cout, Tout).

    pad = left zero padding, default (k-1)*dilation + 1 - stride; Tout = (pad + T - (k-1)*dilation - 1)//stride + 1.
    Fused: optional ReLU on the input, bias, optional ReLU on the output, then + residual (B, Cout, Tout)."""
    pad = default_pad(weight.shape[2], stride, dilation) if pad is None and isinstance(weight, torch.Tensor) \
        and weight.dim() == 3 else pad
    x, weight, bias, residual = _autocast_inputs(x, weight, bias, residual)
    tout = _check("causal_conv1d", x, weight, bias, residual, stride, dilation, pad)
    if resolve_conv_backend(x, conv_backend, x.shape[0] * tout) == "torch":
        return causal_conv1d_reference(x, weight, bias, stride, dilation, pad, pre_relu, post_relu, residual)
    if _needs_grad(x, weight, bias, residual):
        return _NativeCausalConv1d.apply(x, weight, bias, residual, stride, dilation, pad, bool(pre_relu),
                                         bool(post_relu))
    return _native_call(x, weight, bias, residual, None, stride, dilation, pad, pre_relu, post_relu, False)[0]


def init_state(batch: int, in_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1, device=None,
               dtype=None) -> torch.Tensor:
    """Zero streaming state (batch, in_channels, (k-1)*dilation + 1 - stride): the start of a stream."""
    return torch.zeros(batch, in_channels, state_size(kernel_size, stride, dilation), device=device, dtype=dtype)


def causal_conv1d_update(x_new: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, stride: int = 1, dilation: int = 1,
                         pre_relu: bool = False, post_relu: bool = False, residual: torch.Tensor | None = None,
                         conv_backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming step: new inputs x_new (B, Cin, n) with n % stride == 0 and the state (B, Cin, S) ->
    (y (B, Cout, n // stride), new_state (B, Cin, S)), S = (k-1)*dilation + 1 - stride. The state is not
    modified (copy new_state into it to keep one buffer, e.g. for CUDA graphs)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError("causal_conv1d_update: weight must be a (out_channels, in_channels, kernel) tensor")
    S = state_size(int(weight.shape[2]), stride, dilation)   # int(): a traced size (ONNX export) is a tensor
    _check("causal_conv1d_update", x_new, weight, bias, residual, stride, dilation, S, xname="x_new")
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"causal_conv1d_update: state must be a torch.Tensor, got {type(state).__name__}")
    want = (x_new.shape[0], x_new.shape[1], S)
    if tuple(state.shape) != want:
        raise ValueError(f"causal_conv1d_update: state must have shape {want} (batch, in_channels, "
                         f"(k-1)*dilation + 1 - stride), got {tuple(state.shape)}")
    if state.dtype != x_new.dtype or state.device != x_new.device:
        raise ValueError(f"causal_conv1d_update: state is {state.dtype} on {state.device}, x_new is "
                         f"{x_new.dtype} on {x_new.device}")
    if x_new.shape[2] % stride:
        raise ValueError(f"causal_conv1d_update: {x_new.shape[2]} new inputs is not a multiple of stride {stride}")
    if resolve_conv_backend(x_new, conv_backend, x_new.shape[0] * (x_new.shape[2] // stride)) == "native" and \
            not _needs_grad(x_new, state, weight, bias, residual):
        return _native_call(x_new, weight, bias, residual, state, stride, dilation, S, pre_relu, post_relu, True)
    # Same maths through the full op on [state | x_new] (differentiable; torch or native per backend).
    xx = torch.cat([state, x_new], dim=2)
    if pre_relu:
        xx = F.relu(xx)
    y = causal_conv1d(xx, weight, bias, stride, dilation, post_relu=post_relu, residual=residual,
                      conv_backend=conv_backend, pad=0)
    return y, xx[:, :, xx.shape[2] - S:].contiguous()


# ----------------------------------------------------------------------------- nn.Conv1d adapters
def _conv_params(conv: torch.nn.Conv1d):
    if conv.groups != 1 or conv.padding not in ((0,), 0, "valid") or conv.padding_mode != "zeros":
        raise ValueError("causal conv ops need an nn.Conv1d with groups=1 and padding=0 (padding is applied "
                         f"causally), got groups={conv.groups}, padding={conv.padding}")
    return conv.weight, conv.bias, conv.stride[0], conv.dilation[0]


def conv_forward_full(conv: torch.nn.Conv1d, x: torch.Tensor, pad: int | None = None, pre_relu: bool = False,
                      post_relu: bool = False, residual: torch.Tensor | None = None,
                      conv_backend: str | None = None) -> torch.Tensor:
    """causal_conv1d with the weights of an unpadded nn.Conv1d `conv` (the TAE's full-sequence call)."""
    w, b, stride, dilation = _conv_params(conv)
    return causal_conv1d(x, w, b, stride, dilation, pre_relu, post_relu, residual, conv_backend, pad=pad)


def conv_forward_step(conv: torch.nn.Conv1d, x: torch.Tensor, state: torch.Tensor, pre_relu: bool = False,
                      post_relu: bool = False, residual: torch.Tensor | None = None,
                      conv_backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """causal_conv1d_update with the weights of `conv`: (new inputs, state) -> (outputs, new state) (the
    TAE's streaming call)."""
    w, b, stride, dilation = _conv_params(conv)
    return causal_conv1d_update(x, state, w, b, stride, dilation, pre_relu, post_relu, residual, conv_backend)

