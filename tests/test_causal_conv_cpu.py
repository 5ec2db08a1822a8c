"""Native CPU causal conv1d (motionstreamer._C) against the plain PyTorch reference (F.pad + F.conv1d).

Tolerance: fp32 native vs fp32 torch, |diff| <= 1e-5 * max|reference| + 1e-5 relative per element (both
accumulate ~Cin*k products in fp32 in different orders). Streaming == full pass to the same tolerance.
"""
from __future__ import annotations

import os
import random
import shutil
import zlib

import pytest
import torch
import torch.nn.functional as F

from motionstreamer.ops import causal_conv as cc

pytestmark = pytest.mark.skipif(not cc.available(), reason="motionstreamer._C is not built")


def assert_close_rel(actual, expected, rel=1e-5):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-6))


def _case(rng: random.Random):
    k = rng.choice([1, 3, 4])
    stride = rng.choice([1, 2])
    dilation = rng.choice([1, 3, 9])
    return dict(B=rng.choice([1, 2, 3]), cin=rng.choice([1, 3, 8, 17]), cout=rng.choice([1, 5, 16]),
                T=rng.choice([1, 7, 13, 31, 33]), k=k, stride=stride, dilation=dilation,
                bias=rng.random() < 0.7, pre_relu=rng.random() < 0.5, post_relu=rng.random() < 0.5,
                residual=rng.random() < 0.5)


CASES = [_case(random.Random(i)) for i in range(48)]


def _make(c, gen, dtype=torch.float32):
    x = torch.randn(c["B"], c["cin"], c["T"], generator=gen, dtype=dtype)
    w = torch.randn(c["cout"], c["cin"], c["k"], generator=gen, dtype=dtype)
    b = torch.randn(c["cout"], generator=gen, dtype=dtype) if c["bias"] else None
    tout = cc.out_len(c["T"], c["k"], c["stride"], c["dilation"])
    r = torch.randn(c["B"], c["cout"], tout, generator=gen, dtype=dtype) if c["residual"] else None
    return x, w, b, r


@pytest.mark.parametrize("c", CASES, ids=lambda c: "B{B}-ci{cin}-co{cout}-T{T}-k{k}-s{stride}-d{dilation}".format(**c))
def test_native_matches_reference(c):
    x, w, b, r = _make(c, torch.Generator().manual_seed(zlib.crc32(str(c).encode())))
    kw = dict(stride=c["stride"], dilation=c["dilation"], pre_relu=c["pre_relu"], post_relu=c["post_relu"], residual=r)
    ref = cc.causal_conv1d(x, w, b, conv_backend="torch", **kw)
    out = cc.causal_conv1d(x, w, b, conv_backend="native", **kw)
    assert out.shape == ref.shape == (c["B"], c["cout"], c["T"] // c["stride"])
    assert_close_rel(out, ref)


def test_reference_is_the_tae_causal_conv():
    # The reference equals the spec's CausalConv1d: left pad (k-1)*d + (1-stride), then an unpadded Conv1d.
    g = torch.Generator().manual_seed(0)
    for k, s, d in [(3, 1, 1), (4, 2, 1), (3, 1, 9)]:
        conv = torch.nn.Conv1d(6, 5, k, stride=s, dilation=d)
        x = torch.randn(2, 6, 16, generator=g)
        want = conv(F.pad(x, ((k - 1) * d + 1 - s, 0)))
        assert_close_rel(cc.conv_forward_full(conv, x, conv_backend="torch").detach(), want.detach(), 1e-6)
        assert_close_rel(cc.conv_forward_full(conv, x, conv_backend="native").detach(), want.detach())


@pytest.mark.parametrize("pad", [0, 1, 5, -1, -3])
def test_explicit_pad(pad):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 4, 11, generator=g), torch.randn(3, 4, 3, generator=g), torch.randn(3, generator=g)
    for s in (1, 2):
        ref = cc.causal_conv1d(x, w, b, stride=s, dilation=2, pad=pad, conv_backend="torch")
        out = cc.causal_conv1d(x, w, b, stride=s, dilation=2, pad=pad, conv_backend="native")
        assert out.shape[2] == cc.out_len(11, 3, s, 2, pad)
        assert_close_rel(out, ref)


def test_empty_output_and_large_layer():
    g = torch.Generator().manual_seed(2)
    # pad 0 and T shorter than the receptive field -> no outputs
    y = cc.causal_conv1d(torch.randn(1, 3, 4, generator=g), torch.randn(2, 3, 3, generator=g), dilation=3, pad=0,
                         conv_backend="native")
    assert y.shape == (1, 2, 0)
    # one official-width layer (several reduction chunks, row/column blocks with remainders)
    x, w, b = torch.randn(1, 1024, 6, generator=g), torch.randn(1023, 1024, 3, generator=g) * 0.03, torch.randn(1023)
    assert_close_rel(cc.causal_conv1d(x, w, b, dilation=3, conv_backend="native"),
                     cc.causal_conv1d(x, w, b, dilation=3, conv_backend="torch"))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_cpu_instruction_set(isa, monkeypatch):
    if isa != "generic" and isa not in _usable_isas():
        pytest.skip(f"{isa} is not available on this CPU")
    monkeypatch.setattr(cc, "_CPU_ISA", isa)
    for i in range(6):  # remainders of every register block (rows 1..6, columns 1..4) and several chunks
        c = _case(random.Random(100 + i))
        c.update(cout=[1, 5, 7, 13, 16, 23][i], T=[1, 2, 3, 5, 9, 70][i], cin=[3, 17, 400, 8, 1, 700][i])
        x, w, b, r = _make(c, torch.Generator().manual_seed(i))
        kw = dict(stride=c["stride"], dilation=c["dilation"], pre_relu=c["pre_relu"], post_relu=c["post_relu"],
                  residual=r)
        assert_close_rel(cc.causal_conv1d(x, w, b, conv_backend="native", **kw),
                         cc.causal_conv1d(x, w, b, conv_backend="torch", **kw))


def _usable_isas():
    best = cc._native().cpu_isa()
    return {"avx512": ["avx512", "avx2"], "avx2": ["avx2"]}.get(best, [])


def test_unknown_isa_is_an_error(monkeypatch):
    monkeypatch.setattr(cc, "_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="instruction set 'sse9' is not available"):
        cc.causal_conv1d(torch.zeros(1, 2, 3), torch.zeros(2, 2, 1), conv_backend="native")


def test_threads_and_noncontiguous_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 64, 40, generator=g).transpose(1, 2)  # (3, 40, 64), non-contiguous view
    w = torch.randn(64, 3, 40, generator=g).permute(0, 2, 1)  # (64, 40, 3) non-contiguous
    b = torch.randn(128, generator=g)[::2]
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    ref = cc.causal_conv1d(x, w, b, dilation=3, pre_relu=True, conv_backend="torch")
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert_close_rel(cc.causal_conv1d(x, w, b, dilation=3, pre_relu=True, conv_backend="native"), ref)
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- streaming
def _chunks(rng, total, stride):
    out, left = [], total
    while left:
        n = min(left, stride * rng.choice([0, 1, 1, 2, 3, 5]))
        out.append(n)
        left -= n
    return out


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 1, 3), (3, 1, 9), (4, 2, 1), (1, 1, 1), (2, 2, 1),
                                               (5, 2, 3)])
def test_streaming_chunks_equal_full_pass(backend, k, stride, dilation):
    rng = random.Random(k * 100 + stride * 10 + dilation)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    B, cin, cout, T = 2, 6, 5, 36
    x, w, b = (torch.randn(B, cin, T, generator=g), torch.randn(cout, cin, k, generator=g),
               torch.randn(cout, generator=g))
    for pre_relu, post_relu, with_res in [(False, False, False), (True, True, False), (True, False, True)]:
        res = torch.randn(B, cout, T // stride, generator=g) if with_res else None
        full = cc.causal_conv1d(x, w, b, stride, dilation, pre_relu, post_relu, res, conv_backend="torch")
        state = cc.init_state(B, cin, k, stride, dilation)
        assert state.shape == (B, cin, (k - 1) * dilation + 1 - stride)
        ys, t = [], 0
        for n in _chunks(rng, T, stride):
            r = None if res is None else res[:, :, t // stride:(t + n) // stride]
            y, new_state = cc.causal_conv1d_update(x[:, :, t:t + n], state, w, b, stride, dilation, pre_relu,
                                                   post_relu, r, conv_backend=backend)
            assert y.shape == (B, cout, n // stride) and new_state.shape == state.shape
            ys.append(y)
            state, t = new_state, t + n
        assert_close_rel(torch.cat(ys, dim=2), full)
        # the final state is the last S inputs the convolution saw
        seen = F.relu(x) if pre_relu else x
        S = state.shape[2]
        torch.testing.assert_close(state, F.pad(seen, (S, 0))[:, :, T:], rtol=0, atol=0)


def test_native_update_equals_torch_update_from_any_state():
    g = torch.Generator().manual_seed(4)
    x, state = torch.randn(3, 8, 4, generator=g), torch.randn(3, 8, 18, generator=g)  # raw (negative) values too
    w, b = torch.randn(8, 8, 3, generator=g), torch.randn(8, generator=g)
    for pre in (False, True):
        y0, s0 = cc.causal_conv1d_update(x, state, w, b, dilation=9, pre_relu=pre, conv_backend="torch")
        y1, s1 = cc.causal_conv1d_update(x, state, w, b, dilation=9, pre_relu=pre, conv_backend="native")
        assert_close_rel(y1, y0)
        torch.testing.assert_close(s1, s0, rtol=0, atol=0)
    # the state argument is not modified
    before = state.clone()
    cc.causal_conv1d_update(x, state, w, b, dilation=9, pre_relu=True, conv_backend="native")
    assert torch.equal(state, before)


# ----------------------------------------------------------------------------- autograd
def test_gradcheck_reference_float64():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b, r: cc.causal_conv1d(x, w, b, dilation=2, pre_relu=True, post_relu=True, residual=r,
                                             conv_backend="auto")  # float64 -> torch path
    assert torch.autograd.gradcheck(fn, (x, w, b, r))


@pytest.mark.parametrize("pre_relu,post_relu,with_res,with_bias,stride,pad", [
    (False, False, False, True, 1, None), (True, True, False, True, 1, None), (True, False, True, True, 1, None),
    (False, True, True, False, 1, None), (True, True, True, True, 2, None), (False, False, False, True, 2, -1),
    (True, False, False, True, 1, 0)])
def test_native_gradients_match_reference(pre_relu, post_relu, with_res, with_bias, stride, pad):
    g = torch.Generator().manual_seed(7)
    B, cin, cout, T, k, d = 2, 5, 6, 14, 3, 2
    x0, w0 = torch.randn(B, cin, T, generator=g), torch.randn(cout, cin, k, generator=g)
    b0 = torch.randn(cout, generator=g) if with_bias else None
    tout = cc.out_len(T, k, stride, d, pad)
    r0 = torch.randn(B, cout, tout, generator=g) if with_res else None
    gy = torch.randn(B, cout, tout, generator=g)
    grads = {}
    for backend in ("torch", "native"):
        leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x0, w0, b0, r0)]
        y = cc.causal_conv1d(leaves[0], leaves[1], leaves[2], stride, d, pre_relu, post_relu, leaves[3],
                             conv_backend=backend, pad=pad)
        (y * gy).sum().backward()
        grads[backend] = (y.detach(), [t.grad for t in leaves if t is not None])
    assert_close_rel(grads["native"][0], grads["torch"][0])
    for a, e in zip(grads["native"][1], grads["torch"][1]):
        assert_close_rel(a, e)


def test_update_with_grad_uses_differentiable_path():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 4, 4, generator=g, requires_grad=True)
    state = torch.randn(1, 4, 6, generator=g)
    w = torch.randn(4, 4, 3, generator=g, requires_grad=True)
    y, s = cc.causal_conv1d_update(x, state, w, dilation=3, pre_relu=True, conv_backend="native")
    y.sum().backward()
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    yr, sr = cc.causal_conv1d_update(xr, state, wr, dilation=3, pre_relu=True, conv_backend="torch")
    yr.sum().backward()
    assert_close_rel(y.detach(), yr.detach())
    assert_close_rel(x.grad, xr.grad)
    assert_close_rel(w.grad, wr.grad)


# ----------------------------------------------------------------------------- switch, TAE, errors
def test_backend_switch_and_resolution(monkeypatch):
    old = cc.get_conv_backend()
    try:
        cc.set_conv_backend("auto")
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1)) == "native"
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1, dtype=torch.float64)) == "torch"
        limit = cc.AUTO_NATIVE_MAX_COLUMNS["cpu"]
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1), columns=limit) == "native"
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1), columns=limit + 1) == "torch"
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1), "native", columns=limit + 1) == "native"
        cc.set_conv_backend("torch")
        assert cc.resolve_conv_backend(torch.zeros(1, 1, 1)) == "torch"
        with pytest.raises(ValueError, match="must be one of"):
            cc.set_conv_backend("cudnn")
        with pytest.raises(RuntimeError, match="float32 only, got torch.float64"):
            cc.resolve_conv_backend(torch.zeros(1, 1, 1, dtype=torch.float64), "native")
    finally:
        cc.set_conv_backend(old)


def test_tae_decoder_native_equals_torch():
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig(hidden=32, width=32)).eval()
    z = torch.randn(2, 5, 16)
    x = torch.randn(2, 12, 272)
    old = cc.get_conv_backend()
    out = {}
    try:
        for backend in ("torch", "native"):
            cc.set_conv_backend(backend)
            with torch.no_grad():
                full = tae.decode(z)
                st = tae.init_decode_state(2)
                steps = torch.cat([tae.decode_step(z[:, i:i + 1], st) for i in range(5)], 1)
                mu = tae.encode(x, sample=False)[1]
            out[backend] = (full, steps, mu)
    finally:
        cc.set_conv_backend(old)
    for a, e in zip(out["native"], out["torch"]):
        assert_close_rel(a, e, 1e-4)  # through 20 stacked convs
    assert_close_rel(out["native"][1], out["native"][0], 1e-4)


def test_clear_errors():
    x, w = torch.zeros(1, 4, 8), torch.zeros(3, 4, 3)
    with pytest.raises(ValueError, match="x has 5 channels but weight expects 4"):
        cc.causal_conv1d(torch.zeros(1, 5, 8), w)
    with pytest.raises(ValueError, match=r"x must be \(batch, channels, time\)"):
        cc.causal_conv1d(torch.zeros(4, 8), w)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        cc.causal_conv1d(x, w, torch.zeros(4))
    with pytest.raises(TypeError, match="weight dtype torch.float64 != x dtype torch.float32"):
        cc.causal_conv1d(x, w.double())
    with pytest.raises(ValueError, match=r"residual must have the output shape \(1, 3, 8\)"):
        cc.causal_conv1d(x, w, residual=torch.zeros(1, 3, 7))
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        cc.causal_conv1d(x, w, dilation=0)
    with pytest.raises(ValueError, match=r"state must have shape \(1, 4, 2\)"):
        cc.causal_conv1d_update(x, torch.zeros(1, 4, 3), w)
    with pytest.raises(ValueError, match="not a multiple of stride 2"):
        cc.causal_conv1d_update(torch.zeros(1, 4, 3), torch.zeros(1, 4, 1), torch.zeros(3, 4, 3), stride=2)
    with pytest.raises(ValueError, match="streaming needs"):
        cc.causal_conv1d_update(x, torch.zeros(1, 4, 0), torch.zeros(3, 4, 1), stride=2)
    with pytest.raises(ValueError, match="groups=1 and padding=0"):
        cc.conv_forward_full(torch.nn.Conv1d(4, 4, 3, padding=1), x)
    # the C++ layer validates too (a caller bypassing the Python checks gets a named error)
    m = cc._native()
    with pytest.raises(ValueError, match="Tout=5 but the geometry gives 8"):
        m.causal_conv1d_f32(x.data_ptr(), w.data_ptr(), 0, 0, torch.empty(15).data_ptr(), 0, 0,
                            1, 4, 8, 3, 3, 1, 1, 2, 5, False, False)


def test_extension_reports_cuda_build():
    """CUDA objects are compiled whenever nvcc was found at build time (unless MOTIONSTREAMER_CUDA=off)."""
    m = cc._native()
    assert m.with_cuda() == hasattr(m, "causal_conv1d_cuda")
    if shutil.which("nvcc") and os.environ.get("MOTIONSTREAMER_CUDA", "auto").lower() not in ("off", "0"):
        assert cc.with_cuda()


def test_benchmark_cases_run_both_backends(monkeypatch):
    """benchmarks/bench_causal_conv.py times one layer and the TAE itself (full decode and encode, the
    streaming decode step) for both conv backends."""
    import importlib.util
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    before = cc.get_conv_backend()
    spec = importlib.util.spec_from_file_location("bench_causal_conv", folder / "bench_causal_conv.py")
    bench = importlib.util.module_from_spec(spec)
    # it imports benchmarks/timing.py as a top-level module (run directly or from run.py); alone in a
    # pytest run nothing else has put that folder on sys.path
    monkeypatch.syspath_prepend(str(folder))
    spec.loader.exec_module(bench)
    res = bench.bench_layer("cpu", batch=1, frames=8, width=16, repeats=2)
    assert set(res) == {"layer_w16_k3_d9_b1_t8/native", "layer_w16_k3_d9_b1_t8/torch"}
    res = bench.bench_tae("cpu", batch=2, latents=3, width=16, repeats=2)
    assert {k.rsplit("/", 1)[0] for k in res} == {"decode_full_w16_b2_l3", "encode_full_w16_b2_t12",
                                                  "decode_step_w16_b2"}
    assert {k.rsplit("/", 1)[1] for k in res} == {"native", "torch"}
    assert all(v["min"] <= v["median"] <= v["max"] for v in res.values())
    assert cc.get_conv_backend() == before          # the bench restores the switch


@pytest.mark.parametrize("backend", ["torch", None])   # None: auto (the native CPU op is fp32-only)
def test_autocast_casts_operands_like_conv1d(backend):
    # mixed-precision training: activations arrive in bf16 while the weights stay fp32; the op casts
    # as F.conv1d does under autocast instead of refusing the dtype mix
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, generator=g)
    w, b = torch.randn(8, 16, 3, generator=g) * 0.2, torch.randn(8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cc.causal_conv1d(x.bfloat16(), w, b, conv_backend=backend)
        want = F.conv1d(F.pad(x.bfloat16(), (2, 0)), w, b)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)   # bf16 rounding
    # outside autocast the dtype rule still holds
    with pytest.raises(TypeError, match="weight dtype torch.float32 != x dtype torch.bfloat16"):
        cc.causal_conv1d(x.bfloat16(), w, b, conv_backend=backend)


def test_auto_runs_torch_while_tracing_so_exports_record_the_ops():
    """The default backend ("auto") picks the native op for a streaming step, but never while tracing:
    a trace would not record the native call (the graph would hold its output as a constant)."""
    if not cc.available():
        pytest.skip("motionstreamer._C not built")
    x = torch.randn(1, 8, 1)
    w, state = torch.randn(8, 8, 3), torch.zeros(1, 8, 2)
    assert cc.resolve_conv_backend(x, "auto", 1) == "native"
    seen = []

    def fn(x, state):
        seen.append(cc.resolve_conv_backend(x, "auto", 1))
        return cc.causal_conv1d_update(x, state, w, conv_backend="auto")[0]
    traced = torch.jit.trace(fn, (x, state), check_trace=False)
    assert seen == ["torch"]
    x2 = torch.randn(1, 8, 1)
    torch.testing.assert_close(traced(x2, state), cc.causal_conv1d_reference(torch.cat([state, x2], 2), w, pad=0))
