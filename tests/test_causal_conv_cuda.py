"""Native CUDA causal conv1d against a float64 CPU reference (skipped without a CUDA device).

The inputs are rounded to the tested dtype first, the reference runs on those rounded values in float64,
so the tolerance covers only accumulation order and the final rounding of the output:
  fp32: 1e-4 x max|ref| (fp32 accumulation over up to 3072 products)
  fp16: 2e-3 x max|ref| (one fp16 rounding, 2^-11 relative, plus fp32 accumulation)
  bf16: 1e-2 x max|ref| (one bf16 rounding, 2^-8 relative, plus fp32 accumulation)
Shapes cover the GEMV path (B*Tout <= 64 in groups of 8; 16-byte and scalar weight loads), both GEMM tiles, all fused
options, strides, dilations and the streaming update.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from motionstreamer.ops import causal_conv as cc

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (torch.cuda.is_available() and cc.with_cuda()), reason="needs a CUDA device and the CUDA build of _C")]

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = list(TOL)


def _ref64(x, w, b, r, **kw):
    d = lambda t: None if t is None else t.detach().double().cpu()
    return cc.causal_conv1d_reference(d(x), d(w), d(b), residual=d(r), **kw)


def _assert_close(out, ref, dtype):
    scale = max(ref.abs().max().item(), 1e-6) if ref.numel() else 1.0
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=TOL[dtype] * scale)


def _rand(shape, gen, dtype, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to("cuda", dtype)


SHAPES = [  # (B, Cin, Cout, T, k, stride, dilation)
    (1, 1024, 1024, 1, 3, 1, 1), (1, 1024, 1024, 4, 3, 1, 9), (2, 1024, 1024, 4, 3, 1, 3),  # GEMV, 16-byte loads
    (1, 1024, 272, 4, 3, 1, 1), (1, 5, 7, 3, 3, 1, 2),                                         # GEMV, scalar loads
    (1, 1024, 1024, 16, 4, 2, 1),                                                             # GEMV, stride 2
    (4, 1024, 1024, 4, 3, 1, 9), (16, 256, 256, 4, 3, 1, 1), (3, 5, 7, 7, 3, 2, 3),           # GEMV, column groups
    (1, 256, 256, 200, 3, 1, 9), (4, 64, 96, 77, 3, 2, 1), (3, 17, 33, 50, 1, 1, 1),          # GEMM, small tile
    (8, 512, 1024, 128, 3, 1, 3),                                                             # GEMM, big tile
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-ci{}-co{}-T{}-k{}-s{}-d{}".format(*s))
def test_cuda_matches_reference(shape, dtype):
    B, cin, cout, T, k, s, d = shape
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    rng = random.Random(sum(shape))
    x, w, b = _rand((B, cin, T), g, dtype), _rand((cout, cin, k), g, dtype, (cin * k) ** -0.5), _rand((cout,), g, dtype)
    for pre, post, with_res in [(False, False, False), (True, True, False), (True, False, True),
                                (rng.random() < 0.5, True, True)]:
        r = _rand((B, cout, T // s), g, dtype) if with_res else None
        kw = dict(stride=s, dilation=d, pre_relu=pre, post_relu=post)
        out = cc.causal_conv1d(x, w, b, residual=r, conv_backend="native", **kw)
        assert out.dtype == dtype and out.shape == (B, cout, T // s)
        _assert_close(out, _ref64(x, w, b, r, **kw), dtype)
        # and against cuDNN in the same dtype (which rounds intermediate results too: 2x the tolerance;
        # TF32 off so cuDNN's fp32 is fp32)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            cudnn = cc.causal_conv1d(x, w, b, residual=r, conv_backend="torch", **kw).double().cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        torch.testing.assert_close(out.double().cpu(), cudnn, rtol=0,
                                   atol=2 * TOL[dtype] * max(cudnn.abs().max().item(), 1e-6))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_cuda_streaming_equals_full_pass(dtype, batch):
    g = torch.Generator().manual_seed(batch)
    C, T = 256, 24
    for k, s, d in [(3, 1, 9), (4, 2, 1), (3, 1, 1)]:
        x, w, b = _rand((batch, C, T), g, dtype), _rand((C, C, k), g, dtype, (C * k) ** -0.5), _rand((C,), g, dtype)
        full = cc.causal_conv1d(x, w, b, s, d, pre_relu=True, conv_backend="native")
        state, ys, t = cc.init_state(batch, C, k, s, d, device="cuda", dtype=dtype), [], 0
        for n in [s, 2 * s, s, 4 * s, T - 8 * s]:
            y, state = cc.causal_conv1d_update(x[:, :, t:t + n], state, w, b, s, d, pre_relu=True,
                                               conv_backend="native")
            ys.append(y)
            t += n
        # same kernels and accumulation order per output: streaming equals the full pass closely
        _assert_close(torch.cat(ys, 2), full.double().cpu(), dtype)
        S = state.shape[2]
        torch.testing.assert_close(state, F.pad(F.relu(x), (S, 0))[:, :, T:], rtol=0, atol=0)


def test_cuda_resblock_and_gradients():
    g = torch.Generator().manual_seed(0)
    C = 128
    x = _rand((2, C, 40), g, torch.float32).requires_grad_(True)
    w1, b1 = _rand((C, C, 3), g, torch.float32, 0.05).requires_grad_(True), _rand((C,), g, torch.float32)
    w2, b2 = _rand((C, C, 1), g, torch.float32, 0.05).requires_grad_(True), _rand((C,), g, torch.float32)
    outs = {}
    for backend in ("torch", "native"):
        x.grad = w1.grad = w2.grad = None
        h = cc.causal_conv1d(x, w1, b1, dilation=3, pre_relu=True, post_relu=True, conv_backend=backend)
        y = cc.causal_conv1d(h, w2, b2, residual=x, conv_backend=backend)   # the TAE's ResBlock
        y.square().sum().backward()
        outs[backend] = [y.detach(), x.grad.clone(), w1.grad.clone(), w2.grad.clone()]
    for a, e in zip(outs["native"], outs["torch"]):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-3 * e.abs().max().item())


def test_cuda_graph_capture_of_update():
    g = torch.Generator().manual_seed(1)
    C, dtype = 1024, torch.bfloat16
    w, b = _rand((C, C, 3), g, dtype, C ** -0.5), _rand((C,), g, dtype)
    x = _rand((1, C, 4), g, dtype)
    state = torch.zeros(1, C, 18, device="cuda", dtype=dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (shared-memory opt-in, caches) outside capture
        cc.causal_conv1d_update(x, state, w, b, dilation=9, conv_backend="native")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, new_state = cc.causal_conv1d_update(x, state, w, b, dilation=9, conv_backend="native")
        state.copy_(new_state)
    want_states, want_ys = [state.clone()], []
    for i in range(3):
        x.copy_(_rand((1, C, 4), g, dtype))
        yy, ns = cc.causal_conv1d_update(x, want_states[-1], w, b, dilation=9, conv_backend="native")
        want_ys.append(yy)
        want_states.append(ns)
        graph.replay()
        torch.testing.assert_close(y, yy, rtol=0, atol=0)
        torch.testing.assert_close(state, ns, rtol=0, atol=0)


def test_tae_official_width_decode_step_bf16():
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig.official()).to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 6, 16, device="cuda", dtype=torch.bfloat16)
    old = cc.get_conv_backend()
    out = {}
    try:
        for backend in ("torch", "native"):
            cc.set_conv_backend(backend)
            with torch.no_grad():
                st = tae.init_decode_state(1)
                out[backend] = torch.cat([tae.decode_step(z[:, i:i + 1], st) for i in range(6)], 1).float()
    finally:
        cc.set_conv_backend(old)
    scale = out["torch"].abs().max().item()
    # 20 stacked bf16 convs: each path rounds every layer to bf16, differently
    torch.testing.assert_close(out["native"], out["torch"], rtol=0, atol=0.05 * scale)
