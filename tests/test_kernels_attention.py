"""QK-Norm + RoPE attention kernels (motionstreamer.kernels.qknorm_attention / qknorm_decode) vs
their plain-PyTorch references.

On CPU they run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
the kernels are imported); small shapes keep that fast. The `gpu` tests repeat them at the
official sizes (12 heads x 64, T up to 156, 2/64/512 streams) and skip without CUDA.

Tolerances, relative to the largest reference magnitude (atol = tol * max(1, max|ref|), rtol = tol):
fp32 1e-5 (IEEE dots, the reference is fp32), fp16 2e-3, bf16 1.6e-2 (a few units in the last
place of the input dtype: the kernel rounds the softmax weights to the input dtype before the
PV product, as flash attention does); gradients get twice that (they sum over more products).
"""
import pytest
import torch
from _kernel_testing import CUDA, DEV, DTYPES, TOL, assert_close, gpu, pytestmark  # noqa: F401

from motionstreamer.kernels import (
    qknorm_decode_attention,
    qknorm_decode_attention_reference,
    qknorm_rope_attention,
    qknorm_rope_attention_reference,
    rope_tables,
)


def _qkv(B, H, T, D, dtype, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    # q, k at varied norms (the kernel normalises them); as strided views of one QKV projection
    qkv = torch.randn(B, T, 3, H, D, generator=g) * torch.rand(B, T, 3, H, 1, generator=g).add(0.2) * 4
    qkv = qkv.to(device, dtype)
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]   # (B, H, T, D), non-contiguous


def _fwd_bwd(fn, q, k, v, scale, cos, sin, lengths, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    s = torch.tensor(float(scale), device=q.device, requires_grad=True)
    o = fn(q, k, v, s, cos, sin, lengths=lengths)
    (o.float() * do.float()).sum().backward()
    return o.detach(), q.grad, k.grad, v.grad, s.grad


# ----------------------------------------------------------------------------- prefill / training
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_forward_matches_reference(dtype, D, T):
    q, k, v = _qkv(2, 3, T, D, dtype, seed=T)
    cos, sin = rope_tables(40, D, device=DEV)
    o = qknorm_rope_attention(q, k, v, 3.5, cos, sin)
    ref = qknorm_rope_attention_reference(q, k, v, 3.5, cos, sin)
    assert o.shape == (2, 3, T, D) and o.dtype == dtype
    assert_close(o, ref, TOL[dtype], "output")


@pytest.mark.parametrize("dtype,D,T", [(torch.float32, 64, 1), (torch.float32, 64, 7), (torch.float32, 128, 33),
                                       (torch.float16, 64, 33), (torch.float16, 128, 7), (torch.bfloat16, 64, 33)],
                         ids=str)
def test_backward_matches_autograd_through_reference(dtype, D, T):
    q, k, v = _qkv(2, 2, T, D, dtype, seed=10 + T)
    cos, sin = rope_tables(T, D, device=DEV)
    do = torch.randn(2, 2, T, D, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
    got = _fwd_bwd(qknorm_rope_attention, q, k, v, 2.7, cos, sin, None, do)
    ref = _fwd_bwd(qknorm_rope_attention_reference, q, k, v, 2.7, cos, sin, None, do)
    for name, a, b in zip(["o", "dq", "dk", "dv", "dscale"], got, ref):
        assert a is not None and torch.isfinite(a.float()).all(), name
        assert_close(a, b, 2 * TOL[dtype], name)
    assert got[1].dtype == dtype and got[4].shape == ()


@pytest.mark.parametrize("dtype,D", [(torch.float32, 64), (torch.float16, 128)], ids=str)
def test_lengths_mask_in_a_batch_of_different_lengths(dtype, D):
    """Key padding: row b attends keys < lengths[b] only (a row with none outputs 0, gradient 0)."""
    T, lengths = 33, torch.tensor([33, 20, 1, 0], device=DEV)
    q, k, v = _qkv(4, 2, T, D, dtype, seed=3)
    cos, sin = rope_tables(T, D, device=DEV)
    do = torch.randn(4, 2, T, D, generator=torch.Generator().manual_seed(2)).to(DEV, dtype)
    got = _fwd_bwd(qknorm_rope_attention, q, k, v, 2.0, cos, sin, lengths, do)
    ref = _fwd_bwd(qknorm_rope_attention_reference, q, k, v, 2.0, cos, sin, lengths, do)
    for name, a, b in zip(["o", "dq", "dk", "dv", "dscale"], got, ref):
        assert_close(a, b, 2 * TOL[dtype], name)
    o, dq, dk, dv, _ = got
    assert (o[3] == 0).all() and (dq[3] == 0).all() and (dk[3] == 0).all()
    assert (dk[1, :, 20:] == 0).all() and (dv[1, :, 20:] == 0).all()   # padding keys get no gradient
    # a row's valid outputs equal the unpadded row's
    alone = qknorm_rope_attention(q[1:2, :, :20], k[1:2, :, :20], v[1:2, :, :20], 2.0, cos, sin)
    assert_close(o[1:2, :, :20], alone, TOL[dtype], "padded vs unpadded row")


def test_return_k_scale_float_and_plain_attention():
    q, k, v = _qkv(2, 2, 9, 64, torch.float32, seed=5)
    cos, sin = rope_tables(9, 64, device=DEV)
    o, k_rot = qknorm_rope_attention(q, k, v, 1.5, cos, sin, return_k=True)
    from motionstreamer.kernels import qknorm_rope_reference
    assert_close(k_rot, qknorm_rope_reference(k, cos, sin), 1e-6, "k_rot")
    assert_close(o, qknorm_rope_attention_reference(q, k, v, 1.5, cos, sin), 1e-5, "o")
    # norm_rope=False: plain causal attention on the inputs as given, and non-causal
    from motionstreamer.kernels import attention_reference
    for causal in (True, False):
        got = qknorm_rope_attention(q, k, v, 0.125, None, None, causal=causal, norm_rope=False)
        assert_close(got, attention_reference(q, k, v, 0.125, causal=causal), 1e-5, f"plain causal={causal}")


def test_bad_inputs_are_named():
    q, k, v = _qkv(1, 2, 4, 48, torch.float32)
    cos, sin = rope_tables(4, 48, device=DEV)
    with pytest.raises(ValueError, match="head size 48"):
        qknorm_rope_attention(q, k, v, 1.0, cos, sin)
    q, k, v = _qkv(2, 2, 8, 64, torch.float32)
    cos, sin = rope_tables(8, 64, device=DEV)
    with pytest.raises(ValueError, match="lengths must be"):
        qknorm_rope_attention(q, k, v, 1.0, cos, sin, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="cos/sin"):
        qknorm_rope_attention(q, k, v, 1.0, cos[:4], sin[:4])
    with pytest.raises(TypeError, match="share one dtype"):
        qknorm_rope_attention(q, k.half(), v, 1.0, cos, sin)


# ----------------------------------------------------------------------------- decode
def _decode_case(dtype, D, rows, append, B=6, H=2, L=40, R=4, device=DEV, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos, sin = rope_tables(L, D, device=device)
    k_cache = torch.randn(B, H, L, D, generator=g).to(device, dtype)
    v_cache = torch.randn(B, H, L, D, generator=g).to(device, dtype)
    qkv = (torch.randn(R, 3, H, D, generator=g) * 3).to(device, dtype)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                     # strided views, as the model's
    pos = torch.randint(0, L, (R,), generator=g)
    pos[0], pos[-1] = 0, L - 1                                     # first and last slot
    if rows:
        rows = torch.randperm(B, generator=g)[:R].to(device)
    else:
        rows = None
    kc1, vc1, kc2, vc2 = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    pos = pos.to(device)
    o = qknorm_decode_attention(q, k, v, kc1, vc1, pos, 2.7, cos, sin, rows=rows, append=append)
    ref = qknorm_decode_attention_reference(q, k, v, kc2, vc2, pos, 2.7, cos, sin, rows=rows, append=append)
    return o, ref, (kc1, vc1), (kc2, vc2), k_cache, v_cache, rows


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("rows", [False, True], ids=["all_rows", "rows"])
@pytest.mark.parametrize("append", [True, False], ids=["append", "no_append"])
def test_decode_matches_reference_and_appends(dtype, D, rows, append):
    o, ref, (kc, vc), (kc_ref, vc_ref), k0, v0, r = _decode_case(dtype, D, rows, append)
    assert o.shape == (4, 2, D) and o.dtype == dtype
    assert_close(o, ref, TOL[dtype], "decode output")
    # the fused append wrote exactly what the reference wrote (k normalised + rotated), nothing else
    assert_close(kc, kc_ref, TOL[dtype], "k cache")
    assert torch.equal(vc, vc_ref)
    if not append:
        assert torch.equal(kc, k0) and torch.equal(vc, v0)
    else:
        assert int((vc != v0).any(dim=3).any(dim=1).sum()) == 4   # one (row, slot) per new token


def test_decode_full_row_is_not_written_and_bad_shapes_named():
    D, L = 64, 8
    cos, sin = rope_tables(L, D, device=DEV)
    kc = torch.zeros(2, 2, L, D, device=DEV)
    vc = torch.zeros(2, 2, L, D, device=DEV)
    q = torch.randn(2, 2, D, device=DEV)
    pos = torch.tensor([L, 3], device=DEV)
    qknorm_decode_attention(q, q, q, kc, vc, pos, 1.0, cos, sin)
    assert (kc[0] == 0).all() and (kc[1, :, 3] != 0).any()
    with pytest.raises(ValueError, match="KV cache full"):
        qknorm_decode_attention(q, q, q, kc, vc, pos, 1.0, cos, sin, check=True)
    with pytest.raises(ValueError, match="positions must be"):
        qknorm_decode_attention(q, q, q, kc, vc, pos[:1], 1.0, cos, sin)
    with pytest.raises(ValueError, match="caches must be"):
        qknorm_decode_attention(q, q, q, kc[:, :1], vc[:, :1], pos, 1.0, cos, sin)


# ----------------------------------------------------------------------------- GPU, official sizes
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("T", [78, 156])
def test_gpu_official_attention_forward_backward(dtype, T):
    B, H, D = 8, 12, 64
    q, k, v = _qkv(B, H, T, D, dtype, seed=T, device="cuda")
    cos, sin = rope_tables(T, D, device="cuda")
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0)).cuda()
    do = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    for lens in (None, lengths):
        got = _fwd_bwd(qknorm_rope_attention, q, k, v, 3.3, cos, sin, lens, do)
        ref = _fwd_bwd(qknorm_rope_attention_reference, q, k, v, 3.3, cos, sin, lens, do)
        for name, a, b in zip(["o", "dq", "dk", "dv", "dscale"], got, ref):
            assert_close(a, b, 2 * TOL[dtype], f"{name} lengths={lens is not None}")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("streams", [2, 64, 512])
def test_gpu_official_decode(dtype, streams):
    R = 2 * streams   # [cond; uncond] rows
    o, ref, (kc, vc), (kc_ref, vc_ref), *_ = _decode_case(dtype, 64, True, True, B=R + 3, H=12, L=78, R=R,
                                                          device="cuda")
    assert_close(o, ref, TOL[dtype], "decode output")
    assert_close(kc, kc_ref, TOL[dtype], "k cache")
    assert torch.equal(vc, vc_ref)
