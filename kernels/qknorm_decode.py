"""QK-Norm + RoPE attention for one new token per row against a KV cache, with the cache append fused.

One program per (row, head): it normalises and rotates the new q and k at the row's own position,
writes k (normalised, rotated) and v into the cache at that position, and attends over the cached
keys 0..pos-1 plus the new key held in registers (no read-after-write through memory). Rows are
independent streams (and the 2 guidance rows of each), each at its own position, so one launch per
layer serves every stream. Only positions <= pos are read, not the whole cache.

Rounding mirrors the model: the new k and v are rounded to the cache dtype before they are used,
exactly as if they had been written and read back; q is rounded to its own dtype after RoPE.
"""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, as_scale_tensor, check_dtype, next_pow2, require_usable
from .qknorm_attention import attention_reference, qknorm_rope_reference


# ----------------------------------------------------------------------------- reference
def qknorm_decode_attention_reference(q_new, k_new, v_new, k_cache, v_cache, positions, scale, cos, sin,
                                      rows=None, append: bool = True, norm_rope: bool = True) -> torch.Tensor:
    """Plain-PyTorch decode step; appends into the cache like the kernel (when append).

    q_new/k_new/v_new (R, H, D) raw projections of the new token; k_cache/v_cache (B, H, L, D);
    positions (R,) each row's position (= tokens already cached); rows (R,) cache rows (default
    0..R-1). With append=False, nothing is written and each row attends its first `positions` keys."""
    R, H, D = q_new.shape
    rows = torch.arange(R, device=q_new.device) if rows is None else rows.to(q_new.device)
    pos = positions.to(q_new.device).long()
    if norm_rope:
        c, s = cos[pos][:, None, :], sin[pos][:, None, :]                        # (R, 1, D/2)
        q = qknorm_rope_reference(q_new, c, s)
        k = qknorm_rope_reference(k_new, c, s)
    else:
        q, k = q_new, k_new
    if append:
        k_cache[rows, :, pos] = k.to(k_cache.dtype)
        v_cache[rows, :, pos] = v_new.to(v_cache.dtype)
        n_keys = pos + 1
    else:
        n_keys = pos
    K, V = k_cache[rows].to(q.dtype), v_cache[rows].to(q.dtype)
    out = attention_reference(q[:, :, None, :], K, V, scale, lengths=n_keys, causal=False)
    return out[:, :, 0, :]


# ----------------------------------------------------------------------------- kernel
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _decode_kernel(QN, KN, VN, KC, VC, O, POS, ROWS, COS, SIN, SCALE,
                       sqr, sqh, skr, skh, svr, svh, skcb, skch, skct, svcb, svch, svct, sor, soh, sct, max_len,
                       D: tl.constexpr, HALF_D: tl.constexpr, BN: tl.constexpr, APPEND: tl.constexpr,
                       NORM_ROPE: tl.constexpr, HAS_ROWS: tl.constexpr):
        r = tl.program_id(0)
        h = tl.program_id(1)
        pos = tl.load(POS + r).to(tl.int32)
        cr = r
        if HAS_ROWS:
            cr = tl.load(ROWS + r).to(tl.int32)
        j = tl.arange(0, HALF_D)
        d_idx = tl.arange(0, D)
        scale = tl.load(SCALE).to(tl.float32) * 1.4426950408889634   # exp -> exp2

        q_ptr = QN + r * sqr + h * sqh + 2 * j
        qe = tl.load(q_ptr).to(tl.float32)
        qo = tl.load(q_ptr + 1).to(tl.float32)
        in_cache = pos < max_len
        p_safe = tl.minimum(pos, max_len - 1)
        if NORM_ROPE:
            c = tl.load(COS + p_safe * sct + j).to(tl.float32)
            s = tl.load(SIN + p_safe * sct + j).to(tl.float32)
            den = tl.maximum(tl.sqrt(tl.sum(qe * qe, 0) + tl.sum(qo * qo, 0)), 1e-12)
            qe, qo = qe / den, qo / den
            qe, qo = qe * c - qo * s, qe * s + qo * c
        qe = qe.to(QN.dtype.element_ty).to(tl.float32)
        qo = qo.to(QN.dtype.element_ty).to(tl.float32)

        kc_base = KC + cr * skcb + h * skch
        vc_base = VC + cr * svcb + h * svch
        n_keys = tl.minimum(pos, max_len)
        if APPEND:
            k_ptr = KN + r * skr + h * skh + 2 * j
            ke = tl.load(k_ptr).to(tl.float32)
            ko = tl.load(k_ptr + 1).to(tl.float32)
            if NORM_ROPE:
                den_k = tl.maximum(tl.sqrt(tl.sum(ke * ke, 0) + tl.sum(ko * ko, 0)), 1e-12)
                ke, ko = ke / den_k, ko / den_k
                ke, ko = ke * c - ko * s, ke * s + ko * c
            ke = ke.to(KC.dtype.element_ty)
            ko = ko.to(KC.dtype.element_ty)
            v_new = tl.load(VN + r * svr + h * svh + d_idx).to(VC.dtype.element_ty)
            w_mask = (j * 0 + pos) < max_len
            tl.store(kc_base + p_safe * skct + 2 * j, ke, mask=w_mask)
            tl.store(kc_base + p_safe * skct + 2 * j + 1, ko, mask=w_mask)
            tl.store(vc_base + p_safe * svct + d_idx, v_new, mask=(d_idx * 0 + pos) < max_len)
            # the new key first: the running max starts finite
            m_i = (tl.sum(qe * ke.to(tl.float32), 0) + tl.sum(qo * ko.to(tl.float32), 0)) * scale
            m_i = tl.where(in_cache, m_i, float("-inf"))
            l_i = tl.where(in_cache, 1.0, 0.0)
            acc = tl.where(in_cache, v_new.to(tl.float32), 0.0)
        else:
            m_i = tl.max(tl.zeros([BN], dtype=tl.float32), 0) - float("inf")
            l_i = tl.max(tl.zeros([BN], dtype=tl.float32), 0)
            acc = tl.zeros([D], dtype=tl.float32)

        for n0 in range(0, n_keys, BN):
            offs = n0 + tl.arange(0, BN)
            valid = offs < n_keys
            kp = kc_base + offs[:, None] * skct + 2 * j[None, :]
            kce = tl.load(kp, mask=valid[:, None], other=0.0).to(tl.float32)
            kco = tl.load(kp + 1, mask=valid[:, None], other=0.0).to(tl.float32)
            sc = (tl.sum(kce * qe[None, :], 1) + tl.sum(kco * qo[None, :], 1)) * scale
            sc = tl.where(valid, sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(sc - m_safe)
            alpha = tl.exp2(m_i - m_safe)
            vc = tl.load(vc_base + offs[:, None] * svct + d_idx[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * vc, 0)
            l_i = l_i * alpha + tl.sum(p, 0)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(O + r * sor + h * soh + d_idx, out.to(O.dtype.element_ty))


def qknorm_decode_attention(q_new: torch.Tensor, k_new: torch.Tensor | None, v_new: torch.Tensor | None,
                            k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor, scale,
                            cos: torch.Tensor | None, sin: torch.Tensor | None, rows: torch.Tensor | None = None,
                            append: bool = True, norm_rope: bool = True, check: bool = False) -> torch.Tensor:
    """One decode step of QK-Norm + RoPE attention, appending the new k, v into the cache in place.

    q_new, k_new, v_new: (R, H, D) raw projections of each row's new token (views of the QKV output
    are fine; last dim contiguous). k_cache, v_cache: (B, H, L, D) static caches, keys stored
    normalised and rotated. positions: (R,) int, each row's position = its cached length before
    this token. rows: (R,) cache rows (default 0..R-1). scale: float or scalar tensor (read on
    device, so the call is CUDA-graph safe). cos/sin: (>= L, D/2) tables. append=False: no write,
    each row attends its first `positions` cached keys (plain attention when norm_rope=False too).
    check=True verifies positions < L on the host (a sync); otherwise a full row is not written.
    Returns (R, H, D) in q_new's dtype."""
    name = "qknorm_decode_attention"
    if q_new.dim() != 3:
        raise ValueError(f"{name}: q_new must be (R, H, D), got {tuple(q_new.shape)}")
    R, H, D = q_new.shape
    if append and (k_new is None or v_new is None or k_new.shape != q_new.shape or v_new.shape != q_new.shape):
        raise ValueError(f"{name}: k_new and v_new must be (R, H, D) = {tuple(q_new.shape)} when appending")
    if k_cache.dim() != 4 or k_cache.shape[1] != H or k_cache.shape[3] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"{name}: caches must be (B, {H}, L, {D}), got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if D < 2 or D & (D - 1):
        raise ValueError(f"{name}: head size {D} must be a power of two")
    if positions.shape != (R,):
        raise ValueError(f"{name}: positions must be (R,) = ({R},), got {tuple(positions.shape)}")
    if rows is not None and rows.shape != (R,):
        raise ValueError(f"{name}: rows must be (R,) = ({R},), got {tuple(rows.shape)}")
    L = k_cache.shape[2]
    if norm_rope and (cos is None or cos.dim() != 2 or cos.shape[0] < L or cos.shape[1] != D // 2
                      or sin.shape != cos.shape):
        raise ValueError(f"{name}: cos/sin must be (>= {L}, {D // 2}), got {None if cos is None else tuple(cos.shape)}")
    check_dtype(name, *[t for t in (q_new, k_new, v_new) if t is not None])
    check_dtype(name, k_cache, v_cache)
    if check and R and int(positions.max()) >= L:
        raise ValueError(f"{name}: KV cache full ({L} positions)")
    require_usable(name, q_new, k_cache, v_cache, positions)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError(f"{name}: caches need a contiguous last dim (they are written in place)")
    q_new, k_new, v_new = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (q_new, k_new, v_new))
    if not append:
        k_new = v_new = q_new
    if not norm_rope:
        cos = sin = torch.zeros(1, max(1, D // 2), device=q_new.device, dtype=torch.float32)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    out = torch.empty(R, H, D, device=q_new.device, dtype=q_new.dtype)
    if R == 0:
        return out
    scale_t = as_scale_tensor(scale, q_new.device)
    pos = positions.to(q_new.device).contiguous()
    rows_arg = rows.to(q_new.device).contiguous() if rows is not None else pos
    _decode_kernel[(R, H)](q_new, k_new, v_new, k_cache, v_cache, out, pos, rows_arg, cos, sin, scale_t,
                           q_new.stride(0), q_new.stride(1), k_new.stride(0), k_new.stride(1),
                           v_new.stride(0), v_new.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
                           out.stride(0), out.stride(1), cos.stride(0), L,
                           D=D, HALF_D=max(1, D // 2), BN=min(32, next_pow2(max(L, 16))), APPEND=bool(append),
                           NORM_ROPE=bool(norm_rope), HAS_ROWS=rows is not None,
                           num_warps=2 if D <= 64 else 4)   # no spills at D 64/128 (sm_90)
    return out


__all__ = ["qknorm_decode_attention", "qknorm_decode_attention_reference"]
