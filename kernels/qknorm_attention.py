"""QK-Norm + RoPE causal attention for prefill and training, in one flash-attention kernel.

Math (spec reference-model §2): per head, q and k are L2-normalised over the head dim (eps 1e-12,
as F.normalize), rotated by RoPE over ADJACENT pairs (2i, 2i+1) at their absolute positions, and
logits = scale * q.k with the learnable scalar `scale` (not 1/sqrt(D)); causal softmax; optional
key-padding lengths. The kernel never forms the T x T matrix: online softmax over key blocks.

Layout trick: a head vector is handled as its even and odd halves (x[0::2], x[1::2]), so the pair
rotation is elementwise (e' = e cos - o sin, o' = e sin + o cos) and q.k = qe.ke + qo.ko is two
dots of width D/2. The backward pass recomputes the normalised, rotated q and k from the raw
inputs (nothing T x T or rotated is stored) and chains the gradients back through RoPE and the
normalisation, so autograd sees the raw q, k, v of the QKV projection.

Rounding mirrors the model: the rotated q and k are rounded to the input dtype before the dots
(the model stores them in its dtype), logits and softmax are fp32.
"""
from __future__ import annotations

import math

import torch

from ._common import HAS_TRITON, as_scale_tensor, check_dtype, dot_flags, interpreting, require_usable

NORM_EPS = 1e-12  # F.normalize's default


# ----------------------------------------------------------------------------- reference
def rope_tables(max_len: int, head_dim: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_len, head_dim/2) for angle = pos / base^(2i/head_dim)."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), freqs)
    return torch.cos(ang), torch.sin(ang)


def qknorm_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """F.normalize over the last dim, then RoPE on adjacent pairs; fp32 math, result in x's dtype.

    x (..., T, D); cos/sin broadcastable to (..., T, D/2)."""
    xf = torch.nn.functional.normalize(x.float(), p=2.0, dim=-1, eps=NORM_EPS)
    e, o = xf[..., 0::2], xf[..., 1::2]
    cos, sin = cos.float(), sin.float()
    return torch.stack([e * cos - o * sin, e * sin + o * cos], dim=-1).flatten(-2).to(x.dtype)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, lengths=None,
                        causal: bool = True) -> torch.Tensor:
    """softmax(scale * q k^T) v in fp32, masked causally and by key lengths; rows with no key get 0.

    q (B, H, Tq, D), k/v (B, H, Tk, D); causal aligns the last query with the last key."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    keep = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        keep = keep.tril(diagonal=Tk - Tq)
    keep = keep.expand(q.shape[0], 1, Tq, Tk)
    if lengths is not None:
        keep = keep & (torch.arange(Tk, device=q.device)[None, :] < lengths.to(q.device)[:, None])[:, None, None, :]
    logits = logits.masked_fill(~keep, float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)   # a row with no key -> zeros, not NaN
    return (p @ v.float()).to(q.dtype)


def qknorm_rope_attention_reference(q, k, v, scale, cos, sin, lengths=None, causal: bool = True) -> torch.Tensor:
    """The plain-PyTorch path the kernel is tested against (differentiable, fp32 math).

    q, k, v (B, H, T, D) raw projections; cos/sin (T, D/2) at each position; scale a float or a
    scalar tensor (gets a gradient when it requires one); lengths (B,) valid keys per row."""
    T = q.shape[-2]
    qr = qknorm_rope_reference(q, cos[:T], sin[:T])
    kr = qknorm_rope_reference(k, cos[:T], sin[:T])
    return attention_reference(qr, kr, v, scale, lengths, causal)


# ----------------------------------------------------------------------------- kernels
if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import autotune, mm

    @triton.jit
    def _load_halves(ptr, rows, stride_t, row_mask, HALF_D: tl.constexpr):
        """Rows of a (T, D) slice as fp32 even and odd halves (rows, D/2); masked rows are 0."""
        j = tl.arange(0, HALF_D)
        p = ptr + rows[:, None] * stride_t + 2 * j[None, :]
        e = tl.load(p, mask=row_mask[:, None], other=0.0).to(tl.float32)
        o = tl.load(p + 1, mask=row_mask[:, None], other=0.0).to(tl.float32)
        return e, o

    @triton.jit
    def _norm_den(e, o):
        """max(|x|, eps) per row; x / den is F.normalize."""
        return tl.maximum(tl.sqrt(tl.sum(e * e, 1) + tl.sum(o * o, 1)), 1e-12)

    @triton.jit
    def _cos_sin(COS, SIN, stride_c, pos, row_mask, HALF_D: tl.constexpr):
        j = tl.arange(0, HALF_D)
        off = pos[:, None] * stride_c + j[None, :]
        c = tl.load(COS + off, mask=row_mask[:, None], other=1.0).to(tl.float32)
        s = tl.load(SIN + off, mask=row_mask[:, None], other=0.0).to(tl.float32)
        return c, s

    @triton.jit
    def _load_rotated(ptr, rows, stride_t, row_mask, COS, SIN, stride_c, HALF_D: tl.constexpr,
                      NORM_ROPE: tl.constexpr):
        """Normalised and rotated even/odd halves (fp32) of rows at positions `rows`."""
        e, o = _load_halves(ptr, rows, stride_t, row_mask, HALF_D)
        if NORM_ROPE:
            den = _norm_den(e, o)
            e = e / den[:, None]
            o = o / den[:, None]
            c, s = _cos_sin(COS, SIN, stride_c, rows, row_mask, HALF_D)
            e, o = e * c - o * s, e * s + o * c
        return e, o

    @triton.jit
    def _unrotate_unnormalise(ptr, rows, stride_t, row_mask, ge, go, COS, SIN, stride_c, HALF_D: tl.constexpr):
        """Gradient w.r.t. the raw rows, given the gradient (ge, go) w.r.t. their rotated normalised form."""
        c, s = _cos_sin(COS, SIN, stride_c, rows, row_mask, HALF_D)
        gne = ge * c + go * s            # R^T g
        gno = go * c - ge * s
        e, o = _load_halves(ptr, rows, stride_t, row_mask, HALF_D)
        nrm = tl.sqrt(tl.sum(e * e, 1) + tl.sum(o * o, 1))
        den = tl.maximum(nrm, 1e-12)
        ne = e / den[:, None]
        no = o / den[:, None]
        # d(x/|x|) = (g - y (y.g)) / |x|; where the eps clamp is active x/eps is linear: g/eps
        proj = tl.where(nrm > 1e-12, tl.sum(ne * gne, 1) + tl.sum(no * gno, 1), 0.0)
        return (gne - ne * proj[:, None]) / den[:, None], (gno - no * proj[:, None]) / den[:, None]

    @triton.jit
    def _store_halves(ptr, rows, stride_t, row_mask, e, o, HALF_D: tl.constexpr):
        j = tl.arange(0, HALF_D)
        p = ptr + rows[:, None] * stride_t + 2 * j[None, :]
        tl.store(p, e.to(ptr.dtype.element_ty), mask=row_mask[:, None])
        tl.store(p + 1, o.to(ptr.dtype.element_ty), mask=row_mask[:, None])

    @triton.jit
    def _row_length(LENS, b, T, HAS_LENS: tl.constexpr):
        if HAS_LENS:
            return tl.minimum(tl.maximum(tl.load(LENS + b), 0), T)
        else:
            return T + 0 * b

    _FWD_CONFIGS = [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s)
                    for bm, bn, w, s in [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (128, 64, 8, 2),
                                         (64, 64, 8, 2), (32, 64, 4, 2), (16, 32, 4, 2)]]

    @autotune(_FWD_CONFIGS, triton.Config({"BM": 16, "BN": 16}), key=["T", "D", "CAUSAL", "NORM_ROPE"])
    @triton.jit
    def _attn_fwd_kernel(Q, K, V, O, LSE, KOUT, COS, SIN, SCALE, LENS,
                         sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, skob, skoh, skot, sct,
                         H, T,
                         D: tl.constexpr, HALF_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, NORM_ROPE: tl.constexpr,
                         STORE_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        dt = Q.dtype.element_ty
        L = _row_length(LENS, b, T, HAS_LENS)
        q_base = Q + b * sqb + h * sqh
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh

        offs_m = pid_m * BM + tl.arange(0, BM)
        m_valid = offs_m < T
        qe, qo = _load_rotated(q_base, offs_m, sqt, m_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
        qe = qe.to(dt)
        qo = qo.to(dt)
        if STORE_K:  # the cache wants k normalised and rotated: each program writes its own rows
            kre, kro = _load_rotated(k_base, offs_m, skt, m_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
            _store_halves(KOUT + b * skob + h * skoh, offs_m, skot, m_valid, kre, kro, HALF_D)

        qk_scale = tl.load(SCALE).to(tl.float32) * 1.4426950408889634   # exp -> exp2
        m_i = tl.zeros([BM], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, D], dtype=tl.float32)
        zero = tl.zeros([BM, BN], dtype=tl.float32)
        d_idx = tl.arange(0, D)
        hi = L
        if CAUSAL:
            hi = tl.minimum(hi, (pid_m + 1) * BM)
        for n0 in range(0, hi, BN):
            offs_n = n0 + tl.arange(0, BN)
            n_valid = offs_n < hi
            ke, ko = _load_rotated(k_base, offs_n, skt, n_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
            s = mm(qe, tl.trans(ke.to(dt)), zero, UPCAST, PRECISION)
            s = mm(qo, tl.trans(ko.to(dt)), s, UPCAST, PRECISION) * qk_scale
            keep = n_valid[None, :] & m_valid[:, None]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # a row with no key yet
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * svt + d_idx[None, :], mask=n_valid[:, None], other=0.0)
            acc = mm(p.to(dt), v, acc * alpha[:, None], UPCAST, PRECISION)
            m_i = m_new

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + d_idx[None, :], out.to(O.dtype.element_ty),
                 mask=m_valid[:, None])
        # base-2 log-sum-exp of the scaled logits; +inf for a row with no key (backward gives 0 there)
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("inf"))
        tl.store(LSE + bh * T + offs_m, lse, mask=m_valid)

    _BWD_CONFIGS = [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s)
                    # 8 warps: with 4, ptxas spills the backward's accumulators (checked with cuobjdump, sm_90)
                    for bm, bn, w, s in [(64, 64, 8, 2), (32, 32, 8, 2), (64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2),
                                         (16, 32, 4, 2)]]

    @autotune(_BWD_CONFIGS, triton.Config({"BM": 16, "BN": 16}), key=["T", "D", "CAUSAL", "NORM_ROPE"])
    @triton.jit
    def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, COS, SIN, SCALE, LENS,
                              sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                              sdkb, sdkh, sdkt, sdvb, sdvh, sdvt, sct, H, T,
                              D: tl.constexpr, HALF_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                              CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, NORM_ROPE: tl.constexpr,
                              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """One key block: dV = P^T dO, dK = scale dS^T q, over the query blocks that see it."""
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        dt = Q.dtype.element_ty
        L = _row_length(LENS, b, T, HAS_LENS)
        q_base = Q + b * sqb + h * sqh
        k_base = K + b * skb + h * skh
        do_base = DO + b * sdob + h * sdoh
        d_idx = tl.arange(0, D)

        offs_n = pid_n * BN + tl.arange(0, BN)
        n_valid = offs_n < L
        ke, ko = _load_rotated(k_base, offs_n, skt, n_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
        ke = ke.to(dt)
        ko = ko.to(dt)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svt + d_idx[None, :], mask=n_valid[:, None], other=0.0)
        scale = tl.load(SCALE).to(tl.float32)
        qk_scale = scale * 1.4426950408889634
        dv = tl.zeros([BN, D], dtype=tl.float32)
        dke = tl.zeros([BN, HALF_D], dtype=tl.float32)
        dko = tl.zeros([BN, HALF_D], dtype=tl.float32)
        zero = tl.zeros([BN, BM], dtype=tl.float32)
        lo = 0
        if CAUSAL:
            lo = (pid_n * BN // BM) * BM
        hi = tl.where(pid_n * BN >= L, 0, T)   # padding keys: no query sees them
        for m0 in range(lo, hi, BM):
            offs_m = m0 + tl.arange(0, BM)
            m_valid = offs_m < T
            qe, qo = _load_rotated(q_base, offs_m, sqt, m_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
            qe = qe.to(dt)
            qo = qo.to(dt)
            do = tl.load(do_base + offs_m[:, None] * sdot + d_idx[None, :], mask=m_valid[:, None], other=0.0)
            lse = tl.load(LSE + bh * T + offs_m, mask=m_valid, other=float("inf"))
            delta = tl.load(DELTA + bh * T + offs_m, mask=m_valid, other=0.0)
            st = mm(ke, tl.trans(qe), zero, UPCAST, PRECISION)
            st = mm(ko, tl.trans(qo), st, UPCAST, PRECISION)                   # (BN, BM) = (q k^T)^T
            keep = n_valid[:, None] & m_valid[None, :]
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pt = tl.where(keep, tl.exp2(st * qk_scale - lse[None, :]), 0.0)
            dv = mm(pt.to(dt), do, dv, UPCAST, PRECISION)
            dpt = mm(v, tl.trans(do), zero, UPCAST, PRECISION)
            dst = (pt * (dpt - delta[None, :])).to(dt)                           # d logits, transposed
            dke = mm(dst, qe, dke, UPCAST, PRECISION)
            dko = mm(dst, qo, dko, UPCAST, PRECISION)
        dke = dke * scale
        dko = dko * scale
        if NORM_ROPE:
            dke, dko = _unrotate_unnormalise(k_base, offs_n, skt, n_valid, dke, dko, COS, SIN, sct, HALF_D)
        all_rows = offs_n < T   # padding rows get explicit zeros
        _store_halves(DK + b * sdkb + h * sdkh, offs_n, sdkt, all_rows, dke, dko, HALF_D)
        tl.store(DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvt + d_idx[None, :], dv.to(DV.dtype.element_ty),
                 mask=all_rows[:, None])

    @autotune(_BWD_CONFIGS, triton.Config({"BM": 16, "BN": 16}), key=["T", "D", "CAUSAL", "NORM_ROPE"])
    @triton.jit
    def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, DSCALE, COS, SIN, SCALE, LENS,
                            sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                            sdqb, sdqh, sdqt, sct, H, T, n_dscale,
                            D: tl.constexpr, HALF_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, NORM_ROPE: tl.constexpr,
                            UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """One query block: dQ = scale dS k, and this block's share of d scale = sum(dS * q.k)."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        dt = Q.dtype.element_ty
        L = _row_length(LENS, b, T, HAS_LENS)
        q_base = Q + b * sqb + h * sqh
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        d_idx = tl.arange(0, D)

        offs_m = pid_m * BM + tl.arange(0, BM)
        m_valid = offs_m < T
        qe, qo = _load_rotated(q_base, offs_m, sqt, m_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
        qe = qe.to(dt)
        qo = qo.to(dt)
        do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + d_idx[None, :], mask=m_valid[:, None],
                     other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=m_valid, other=float("inf"))
        delta = tl.load(DELTA + bh * T + offs_m, mask=m_valid, other=0.0)
        scale = tl.load(SCALE).to(tl.float32)
        qk_scale = scale * 1.4426950408889634
        dqe = tl.zeros([BM, HALF_D], dtype=tl.float32)
        dqo = tl.zeros([BM, HALF_D], dtype=tl.float32)
        dsc = tl.zeros([BM, BN], dtype=tl.float32)
        zero = tl.zeros([BM, BN], dtype=tl.float32)
        hi = L
        if CAUSAL:
            hi = tl.minimum(hi, (pid_m + 1) * BM)
        for n0 in range(0, hi, BN):
            offs_n = n0 + tl.arange(0, BN)
            n_valid = offs_n < hi
            ke, ko = _load_rotated(k_base, offs_n, skt, n_valid, COS, SIN, sct, HALF_D, NORM_ROPE)
            ke = ke.to(dt)
            ko = ko.to(dt)
            v = tl.load(v_base + offs_n[:, None] * svt + d_idx[None, :], mask=n_valid[:, None], other=0.0)
            s = mm(qe, tl.trans(ke), zero, UPCAST, PRECISION)
            s = mm(qo, tl.trans(ko), s, UPCAST, PRECISION)
            keep = n_valid[None, :] & m_valid[:, None]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
            dp = mm(do, tl.trans(v), zero, UPCAST, PRECISION)
            ds = p * (dp - delta[:, None])
            dsc += ds * s
            ds = ds.to(dt)
            dqe = mm(ds, ke, dqe, UPCAST, PRECISION)
            dqo = mm(ds, ko, dqo, UPCAST, PRECISION)
        dqe = dqe * scale
        dqo = dqo * scale
        if NORM_ROPE:
            dqe, dqo = _unrotate_unnormalise(q_base, offs_m, sqt, m_valid, dqe, dqo, COS, SIN, sct, HALF_D)
        _store_halves(DQ + b * sdqb + h * sdqh, offs_m, sdqt, m_valid, dqe, dqo, HALF_D)
        tl.store(DSCALE + bh * n_dscale + pid_m, tl.sum(tl.sum(dsc, 1), 0))


def _check_inputs(name, q, k, v, cos, sin, lengths, norm_rope):
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{name}: q, k, v must share one (B, H, T, D) shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, D = q.shape
    if D < 32 or D & (D - 1):
        raise ValueError(f"{name}: head size {D} must be a power of two >= 32")
    if not norm_rope:
        pass
    elif (cos is None or sin is None or cos.dim() != 2 or cos.shape[0] < T or cos.shape[1] != D // 2
            or sin.shape != cos.shape):
        raise ValueError(f"{name}: cos/sin must be (>= T, D/2) = (>= {T}, {D // 2}), "
                         f"got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if lengths is not None and (lengths.dim() != 1 or lengths.shape[0] != B):
        raise ValueError(f"{name}: lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
    check_dtype(name, q, k, v)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _fwd(q, k, v, scale_t, cos, sin, lens, causal, norm_rope, store_k):
    B, H, T, D = q.shape
    # (B, T, H, D) memory seen as (B, H, T, D): merging the heads afterwards is a free view
    o = torch.empty(B, T, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
    kout = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype) if store_k else o
    lens_arg = lens if lens is not None else lse
    grid = lambda meta: (triton.cdiv(T, meta["BM"]), B * H)   # noqa: E731
    _attn_fwd_kernel[grid](q, k, v, o, lse, kout, cos, sin, scale_t, lens_arg,
                           *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *kout.stride()[:3],
                           cos.stride(0), H, T, D=D, HALF_D=D // 2, CAUSAL=causal, HAS_LENS=lens is not None,
                           NORM_ROPE=norm_rope, STORE_K=store_k, **dot_flags(q.dtype))
    return o, lse, (kout if store_k else None)


def _bwd(do, q, k, v, o, lse, scale_t, cos, sin, lens, causal, norm_rope):
    B, H, T, D = q.shape
    do = _last_dim_contiguous(do.to(q.dtype))   # autocast may hand back a gradient in another dtype
    delta = (do.float() * o.float()).sum(-1).reshape(B * H, T)
    dq, dk, dv = (torch.empty(B, H, T, D, device=q.device, dtype=q.dtype) for _ in range(3))
    n_dscale = triton.cdiv(T, 16)   # enough slots for the smallest query block
    dscale = torch.zeros(B * H, n_dscale, device=q.device, dtype=torch.float32)
    lens_arg = lens if lens is not None else lse
    common = dict(D=D, HALF_D=D // 2, CAUSAL=causal, HAS_LENS=lens is not None, NORM_ROPE=norm_rope,
                  **dot_flags(q.dtype))
    _attn_bwd_dkdv_kernel[lambda meta: (triton.cdiv(T, meta["BN"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, cos, sin, scale_t, lens_arg,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        cos.stride(0), H, T, **common)
    _attn_bwd_dq_kernel[lambda meta: (triton.cdiv(T, meta["BM"]), B * H)](
        q, k, v, do, lse, delta, dq, dscale, cos, sin, scale_t, lens_arg,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        cos.stride(0), H, T, n_dscale, **common)
    return dq, dk, dv, dscale.sum()


class _QKNormRopeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, scale_t, cos, sin, lens, causal, norm_rope, store_k):
        o, lse, kout = _fwd(q, k, v, scale_t, cos, sin, lens, causal, norm_rope, store_k)
        ctx.save_for_backward(q, k, v, o, lse, scale_t, cos, sin, lens)
        ctx.flags = (causal, norm_rope, isinstance(scale, torch.Tensor))
        if isinstance(scale, torch.Tensor):
            ctx.scale_shape, ctx.scale_dtype = scale.shape, scale.dtype
        if kout is None:
            return o
        ctx.mark_non_differentiable(kout)
        return o, kout

    @staticmethod
    def backward(ctx, do, *_):
        q, k, v, o, lse, scale_t, cos, sin, lens = ctx.saved_tensors
        causal, norm_rope, scale_is_tensor = ctx.flags
        dq, dk, dv, dscale = _bwd(do, q, k, v, o, lse, scale_t, cos, sin, lens, causal, norm_rope)
        scale_grad = None
        if scale_is_tensor and ctx.needs_input_grad[3]:
            scale_grad = dscale.reshape(ctx.scale_shape).to(ctx.scale_dtype)
        return dq, dk, dv, scale_grad, None, None, None, None, None, None, None


def qknorm_rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, cos: torch.Tensor,
                          sin: torch.Tensor, lengths: torch.Tensor | None = None, causal: bool = True,
                          return_k: bool = False, norm_rope: bool = True):
    """Fused QK-Norm + RoPE + (causal) attention; differentiable in q, k, v and a tensor `scale`.

    q, k, v: (B, H, T, D) raw projections, any strides with a contiguous last dim (a view of the
    QKV projection output works without a copy); D a power of two >= 32. scale: float or scalar
    tensor. cos/sin: (>= T, D/2) tables at positions 0..T-1 (rope_tables). lengths: (B,) valid keys
    per row (key-padding mask); a row with no valid key outputs 0. return_k: also return k
    normalised and rotated (B, H, T, D), for a KV cache. norm_rope=False gives plain attention
    (cos/sin unused, may be None). Returns o (B, H, T, D) in q's dtype, stored as (B, T, H, D) so
    o.transpose(1, 2).reshape(B, T, H * D) is free (and k_rot)."""
    _check_inputs("qknorm_rope_attention", q, k, v, cos, sin, lengths, norm_rope)
    require_usable("qknorm_rope_attention", q, k, v)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if not norm_rope:
        cos = sin = torch.zeros(1, q.shape[-1] // 2, device=q.device)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    scale_t = as_scale_tensor(scale, q.device)
    lens = lengths.to(device=q.device, dtype=torch.int32).contiguous() if lengths is not None else None
    out = _QKNormRopeAttention.apply(q, k, v, scale, scale_t, cos, sin, lens, bool(causal), bool(norm_rope),
                                     bool(return_k))
    return out


__all__ = ["rope_tables", "qknorm_rope_reference", "attention_reference", "qknorm_rope_attention_reference",
           "qknorm_rope_attention", "NORM_EPS", "interpreting", "math"]
