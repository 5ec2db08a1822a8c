"""y = epilogue(prologue(x) @ W^T + b): a head block's linear layers with their AdaLN pieces fused in.

prologue: none, or AdaLN's LayerNorm(x) * (1 + scale) + shift applied to the A tiles as they are
loaded (row statistics from a first pass over the row, fp32, shifted by the row's first element so
the one-pass variance does not cancel). epilogue: bias; bias + SiLU; or residual + gate * (. + bias).

A head block at small batch is two such calls: it reads each weight once, and the normalised,
activated and gated intermediates never reach memory. For many rows (compute-bound) the caller
may prefer cuBLAS plus the separate elementwise kernels (head_step chooses by row count).
W is an nn.Linear weight (N, K), read in place.
"""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, check_dtype, dot_flags, next_pow2, require_usable

EPILOGUES = {"none": 0, "silu": 1, "gated_residual": 2}


def fused_linear_reference(x, weight, bias=None, ln: dict | None = None, epilogue: str = "none",
                           residual=None, gate=None) -> torch.Tensor:
    """The unfused sequence in fp32: [LayerNorm + modulate] -> linear -> [SiLU | residual + gate * .].

    ln: {"weight", "bias" (None for no affine), "shift", "scale", "eps"}."""
    a = x.float()
    if ln is not None:
        w, b = ln.get("weight"), ln.get("bias")
        a = torch.nn.functional.layer_norm(a, (a.shape[-1],), None if w is None else w.float(),
                                           None if b is None else b.float(), ln.get("eps", 1e-6))
        a = a * (1 + ln["scale"].float()) + ln["shift"].float()
    y = a @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    if epilogue == "silu":
        y = torch.nn.functional.silu(y)
    elif epilogue == "gated_residual":
        y = residual.float() + gate.float() * y
    elif epilogue != "none":
        raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {sorted(EPILOGUES)}")
    return y.to(x.dtype)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import autotune, mm

    def config_fits(config, prologue: bool) -> bool:
        """With the LayerNorm prologue only 8-warp configs: with 4 the prologue's row statistics and
        modulation tiles spill registers (ptxas, sm_90; checked by compile_check)."""
        return config.num_warps == 8 or not prologue

    def _prune(configs, named_args, **kw):
        """Keep row tiles no larger than needed for M (small M: 16-row tiles, the weight read is all)
        and configs that fit the prologue's registers."""
        M = named_args["M"]
        K = kw.get("K", named_args.get("K"))
        prologue = bool(kw.get("PROLOGUE", named_args.get("PROLOGUE", False)))
        fits = [c for c in configs if config_fits(c, prologue)]
        bm_max = max(16, next_pow2(M))
        kept = [c for c in fits if c.kwargs["BM"] <= bm_max and c.kwargs["BK"] <= max(16, next_pow2(K))]
        return kept or fits[:1] or configs[:1]

    _GPU_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
                    for bm, bn, bk, w, s in [
                        # GEMV-like (a few rows): many programs over N, long K steps, deep pipelines
                        (16, 16, 256, 4, 4), (16, 32, 128, 4, 4), (16, 32, 256, 4, 3), (16, 64, 128, 4, 3),
                        (16, 16, 128, 2, 5),
                        # the same with 8 warps (the prologue's: no spills at K 1792 on sm_90)
                        (16, 32, 128, 8, 4), (16, 32, 64, 8, 3), (16, 64, 64, 8, 3),
                        # more rows (up to 64: larger tiles spilled, and many rows go to cuBLAS anyway)
                        (64, 64, 64, 4, 3), (32, 64, 64, 8, 3), (64, 64, 64, 8, 3)]]
    # registers/spills of every config: python -m motionstreamer.kernels.compile_check (no GPU needed);
    # at K = N = 1792, bf16, sm_90 only (64, 64, 64, 8, 3) with the prologue spills (40 bytes)

    @triton.jit
    def _row_sums(X, rm, sx, m_valid, x0, k0, s1, s2, K: tl.constexpr, BK: tl.constexpr):
        """Running sums of (x - x0) and (x - x0)^2 over one [rows, BK] tile (shifted: no cancellation)."""
        rk = k0 + tl.arange(0, BK)
        msk = m_valid[:, None] & (rk < K)[None, :]
        d = tl.load(X + rm[:, None] * sx + rk[None, :], mask=msk, other=0.0).to(tl.float32) - x0[:, None]
        d = tl.where(msk, d, 0.0)
        return s1 + tl.sum(d, 1), s2 + tl.sum(d * d, 1)

    @autotune(_GPU_CONFIGS, triton.Config({"BM": 16, "BN": 32, "BK": 32}), key=["M", "N", "K", "PROLOGUE", "EPILOGUE"],
              prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _fused_linear_kernel(X, Wt, BIAS, Y, LNW, LNB, SHIFT, SCALE, RES, GATE,
                             M, N, sx, sw, sy, ssh, ssc, sr, sg, eps, K: tl.constexpr,
                             PROLOGUE: tl.constexpr, LN_AFFINE: tl.constexpr, EPILOGUE: tl.constexpr,
                             HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                             UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        dt = X.dtype.element_ty
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        m_valid = rm < M
        n_valid = rn < N
        if PROLOGUE:
            x0 = tl.load(X + rm * sx, mask=m_valid, other=0.0).to(tl.float32)
            s1 = tl.zeros([BM], dtype=tl.float32)
            s2 = tl.zeros([BM], dtype=tl.float32)
            if BM <= 16:
                # a few rows: unrolled (K is a constexpr), so the loads are all in flight at once
                # instead of one L2 round trip per step
                for k0 in tl.static_range(0, K, BK):
                    s1, s2 = _row_sums(X, rm, sx, m_valid, x0, k0, s1, s2, K, BK)
            else:
                # more rows: a loop (unrolling [BM, BK] tiles K/BK times took ptxas minutes per config)
                for k0 in range(0, K, BK):
                    s1, s2 = _row_sums(X, rm, sx, m_valid, x0, k0, s1, s2, K, BK)
            mean_d = s1 / K
            rstd = 1.0 / tl.sqrt(tl.maximum(s2 / K - mean_d * mean_d, 0.0) + eps)
            mean = x0 + mean_d
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            k_valid = rk < K
            msk = m_valid[:, None] & k_valid[None, :]
            a = tl.load(X + rm[:, None] * sx + rk[None, :], mask=msk, other=0.0)
            if PROLOGUE:
                af = (a.to(tl.float32) - mean[:, None]) * rstd[:, None]
                if LN_AFFINE:
                    af = af * tl.load(LNW + rk, mask=k_valid, other=0.0).to(tl.float32)[None, :] + \
                        tl.load(LNB + rk, mask=k_valid, other=0.0).to(tl.float32)[None, :]
                sc = tl.load(SCALE + rm[:, None] * ssc + rk[None, :], mask=msk, other=0.0).to(tl.float32)
                sh = tl.load(SHIFT + rm[:, None] * ssh + rk[None, :], mask=msk, other=0.0).to(tl.float32)
                a = tl.where(msk, af * (1.0 + sc) + sh, 0.0).to(dt)
            w = tl.load(Wt + rn[:, None] * sw + rk[None, :], mask=n_valid[:, None] & k_valid[None, :], other=0.0)
            acc = mm(a, tl.trans(w), acc, UPCAST, PRECISION)
        if HAS_BIAS:
            acc += tl.load(BIAS + rn, mask=n_valid, other=0.0).to(tl.float32)[None, :]
        out_mask = m_valid[:, None] & n_valid[None, :]
        if EPILOGUE == 1:
            acc = acc / (1.0 + tl.exp(-acc))
        if EPILOGUE == 2:
            res = tl.load(RES + rm[:, None] * sr + rn[None, :], mask=out_mask, other=0.0).to(tl.float32)
            g = tl.load(GATE + rm[:, None] * sg + rn[None, :], mask=out_mask, other=0.0).to(tl.float32)
            acc = res + g * acc
        tl.store(Y + rm[:, None] * sy + rn[None, :], acc.to(Y.dtype.element_ty), mask=out_mask)


def _row_major(name, t, shape, what):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must be {tuple(shape)}, got {tuple(t.shape)}")
    return t if t.stride(-1) == 1 else t.contiguous()


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, ln: dict | None = None,
                 epilogue: str = "none", residual: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """epilogue(prologue(x) @ weight^T + bias) in one kernel.

    x (M, K); weight (N, K) (an nn.Linear weight); bias (N,) or None. ln: AdaLN prologue
    {"weight": (K,) or None, "bias": (K,) or None, "shift": (M, K), "scale": (M, K), "eps": float}.
    epilogue: "none", "silu" or "gated_residual" (needs residual and gate, both (M, N)).
    `out` must not alias x, residual or gate (other output tiles still read them)."""
    name = "fused_linear"
    if epilogue not in EPILOGUES:
        raise ValueError(f"{name}: unknown epilogue {epilogue!r}; expected one of {sorted(EPILOGUES)}")
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: x (M, K) and weight (N, K) do not match: {tuple(x.shape)}, {tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    x, weight = _row_major(name, x, (M, K), "x"), _row_major(name, weight, (N, K), "weight")
    if bias is not None:
        bias = _row_major(name, bias, (N,), "bias")
    tensors = [x, weight] + ([bias] if bias is not None else [])
    lnw = lnb = shift = scale = None
    if ln is not None:
        lnw, lnb = ln.get("weight"), ln.get("bias")
        if (lnw is None) != (lnb is None):
            raise ValueError(f"{name}: give both LayerNorm weight and bias, or neither")
        if lnw is not None:
            lnw, lnb = _row_major(name, lnw, (K,), "ln weight"), _row_major(name, lnb, (K,), "ln bias")
            tensors += [lnw, lnb]
        shift, scale = _row_major(name, ln["shift"], (M, K), "shift"), _row_major(name, ln["scale"], (M, K), "scale")
        tensors += [shift, scale]
    if epilogue == "gated_residual":
        if residual is None or gate is None:
            raise ValueError(f"{name}: the gated_residual epilogue needs residual and gate")
        residual, gate = _row_major(name, residual, (M, N), "residual"), _row_major(name, gate, (M, N), "gate")
        tensors += [residual, gate]
    check_dtype(name, *tensors)
    require_usable(name, *tensors)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype) if out is None else out
    if M == 0 or N == 0:
        return y
    dummy = x
    grid = lambda meta: (triton.cdiv(N, meta["BN"]), triton.cdiv(M, meta["BM"]))   # noqa: E731
    _fused_linear_kernel[grid](
        x, weight, bias if bias is not None else dummy, y,
        lnw if lnw is not None else dummy, lnb if lnb is not None else dummy,
        shift if shift is not None else dummy, scale if scale is not None else dummy,
        residual if residual is not None else dummy, gate if gate is not None else dummy,
        M, N, x.stride(0), weight.stride(0), y.stride(0),
        shift.stride(0) if shift is not None else 0, scale.stride(0) if scale is not None else 0,
        residual.stride(0) if residual is not None else 0, gate.stride(0) if gate is not None else 0,
        float(ln.get("eps", 1e-6)) if ln is not None else 0.0, K=K,
        PROLOGUE=ln is not None, LN_AFFINE=lnw is not None, EPILOGUE=EPILOGUES[epilogue],
        HAS_BIAS=bias is not None, **dot_flags(x.dtype))
    return y


__all__ = ["fused_linear", "fused_linear_reference", "EPILOGUES"]
