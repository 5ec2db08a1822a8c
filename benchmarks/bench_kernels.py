"""Triton kernels (motionstreamer.kernels) vs eager PyTorch, SDPA and torch.compile, on a CUDA GPU.

Shapes (official unless --small): attention 12 heads x 64 (width 768), T = 78 (the block size);
diffusion head width 1792, 9 blocks, latent 16; streaming batch sizes 2, 64 and 512 streams, i.e.
2x that many rows with classifier-free guidance ([cond; uncond]). Cases:
  attn_fwd_b*        prefill: QK-Norm + RoPE + causal attention over B sequences
                     eager (normalize, rope, matmul-softmax-matmul) | sdpa (normalize, rope, SDPA) |
                     compile (torch.compile of the sdpa version) | triton (one fused kernel)
  attn_fwdbwd_b*     the same, forward + backward (training)
  decode_s*          one new token per row against the KV cache (78 slots, rows half full), with the append
                     eager (the model's decode attention: normalize, rope, index_put, SDPA over the masked
                     cache) | triton
  adaln_ln_s*, bias_silu_s*, gated_residual_s*   the head's elementwise pieces, eager | compile | triton
  linear_ln_silu_s*, linear_gated_s*             a head block's two linears with their fused prologue/epilogues
                     eager (cuBLAS + elementwise) | triton
  head_step_s*       one sampling step of the head: eager (forward_with_modulations) | compile |
                     triton (fused GEMV path) | triton_cublas (cuBLAS + fused elementwise)
  head_loop_s*       the whole 50-step guided sampling loop per latent: eager (DiffLoss.sample, the
                     PyTorch loop) | triton (head_sample_loop) | *_graph (captured in a CUDA graph, as
                     the runtime runs it); with the weight-read bound: head weights read per step x
                     steps / measured HBM bandwidth, and the fraction of it reached
Each row: device name, dtype, shapes, ms per call per variant ({"min", "median", "max"}), speedup of
each variant over eager (median). Without CUDA the case is skipped with the reason (the Triton CPU
interpreter is a correctness tool; its times mean nothing).

`python benchmarks/bench_kernels.py [--small] [--quick]` prints the rows; benchmarks/run.py
collects them (case_external) into its results JSON.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import time_fn  # benchmarks/ is on sys.path (run directly, from run.py or the tests)

STREAMS = (2, 64, 512)


# ----------------------------------------------------------------------------- timing
def cuda_graph(fn, device, warmup: int = 3):
    """fn captured in a CUDA graph (its tensors become static): returns graph.replay."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):   # also runs Triton's autotuning outside the capture
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def hbm_bandwidth(device) -> float | None:
    """Bytes/s from a 512 MiB device copy (read + write)."""
    if device.type != "cuda":
        return None
    a = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    r = time_fn(lambda: b.copy_(a), device, iters=5, repeats=5)
    return 2 * a.numel() / (r["min"] / 1e3)


def _variants(device, fns: dict, iters: int, repeats: int) -> dict:
    """Time every variant; a variant that fails (e.g. torch.compile unsupported) records its error."""
    out = {}
    for name, fn in fns.items():
        if fn is None:
            continue
        try:
            out[name] = time_fn(fn, device, iters=iters, repeats=repeats)
        except Exception as e:  # noqa: BLE001 - reported in the row, the other variants still count
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return out


def _row(case, info, shapes, times: dict) -> dict:
    row = {"case": case, **info, "shapes": shapes}
    eager = times.get("eager", {}).get("median")
    for name, t in times.items():
        row[f"{name}_ms"] = t
        if eager and "median" in t and name != "eager":
            row[f"speedup_{name}"] = eager / t["median"]
    return row


def _compile(fn, enabled: bool):
    if not enabled:
        return None
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------- cases
def attention_cases(device, dtype, info, H, D, T, batches, iters, repeats, use_compile):
    from motionstreamer.kernels import attention_reference, qknorm_rope_attention, rope_tables
    from motionstreamer.models.transformer import apply_rope

    cos, sin = rope_tables(T, D, device=device)
    scale = torch.tensor(6.0, device=device)

    def prep(q, k):
        q = apply_rope(F.normalize(q, dim=-1), cos, sin)
        return q, apply_rope(F.normalize(k, dim=-1), cos, sin)

    def eager(q, k, v):
        q, k = prep(q, k)
        att = (q @ k.transpose(-1, -2)) * 6.0
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=device).tril(), float("-inf"))
        return torch.softmax(att.float(), -1).to(v.dtype) @ v

    def sdpa(q, k, v):
        q, k = prep(q, k)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=6.0)

    def triton(q, k, v):
        return qknorm_rope_attention(q, k, v, scale, cos, sin)

    compiled = _compile(sdpa, use_compile)
    rows = []
    for B in batches:
        qkv = torch.randn(B, T, 3, H, D, device=device, dtype=dtype)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # views of a QKV projection, as the model
        shapes = {"B": B, "H": H, "T": T, "D": D}
        with torch.no_grad():
            ref = attention_reference(*prep(q, k), v, 6.0)
            err = (triton(q, k, v).float() - ref.float()).abs().max().item()
            rows.append(_row(f"attn_fwd_b{B}", info, shapes, _variants(device, {
                "eager": lambda: eager(q, k, v), "sdpa": lambda: sdpa(q, k, v),
                "compile": (lambda: compiled(q, k, v)) if compiled else None,
                "triton": lambda: triton(q, k, v)}, iters, repeats)) | {"max_abs_err_vs_reference": err})
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        do = torch.randn(B, H, T, D, device=device, dtype=dtype)

        def fwdbwd(f):
            def run():
                qg.grad = kg.grad = vg.grad = None
                f(qg, kg, vg).backward(do)
            return run
        rows.append(_row(f"attn_fwdbwd_b{B}", info, shapes, _variants(device, {
            "eager": fwdbwd(eager), "sdpa": fwdbwd(sdpa),
            "compile": fwdbwd(compiled) if compiled else None, "triton": fwdbwd(triton)}, iters, repeats)))
    return rows


def decode_cases(device, dtype, info, H, D, L, streams, iters, repeats):
    from motionstreamer.kernels import qknorm_decode_attention, rope_tables
    from motionstreamer.models.transformer import apply_rope

    cos, sin = rope_tables(L, D, device=device)
    scale = torch.tensor(6.0, device=device)
    rows = []
    for s in streams:
        R = 2 * s
        k_cache = torch.randn(R, H, L, D, device=device, dtype=dtype)
        v_cache = torch.randn(R, H, L, D, device=device, dtype=dtype)
        pos = torch.full((R,), L // 2, device=device, dtype=torch.long)
        qkv = torch.randn(R, 3 * H * D, device=device, dtype=dtype)
        q, k, v = (t.view(R, H, D) for t in qkv.split(H * D, dim=1))
        rows_idx = torch.arange(R, device=device)
        mask = (torch.arange(L, device=device)[None, :] <= pos[:, None])[:, None, None, :]
        c, sn = cos[pos][:, None, None, :], sin[pos][:, None, None, :]

        def eager():   # the model's decode attention (transformer.decode_step, sdpa backend)
            qn = apply_rope(F.normalize(q[:, :, None], dim=-1), c, sn)
            kn = apply_rope(F.normalize(k[:, :, None], dim=-1), c, sn)
            k_cache[rows_idx, :, pos] = kn[:, :, 0]
            v_cache[rows_idx, :, pos] = v
            return F.scaled_dot_product_attention(qn, k_cache, v_cache, attn_mask=mask, scale=6.0)

        def triton():
            return qknorm_decode_attention(q, k, v, k_cache, v_cache, pos, scale, cos, sin)

        with torch.no_grad():
            rows.append(_row(f"decode_s{s}", info, {"rows": R, "H": H, "D": D, "cache": L, "position": L // 2},
                             _variants(device, {"eager": eager, "triton": triton}, iters, repeats)))
    return rows


def head_piece_cases(device, dtype, info, W, streams, iters, repeats, use_compile):
    from motionstreamer.kernels import adaln_modulate_layernorm, bias_silu, fused_linear, gated_residual

    rows = []
    for s in streams:
        N = 2 * s
        x, h = torch.randn(N, W, device=device, dtype=dtype), torch.randn(N, W, device=device, dtype=dtype)
        mods = torch.randn(N, 3, W, device=device, dtype=dtype) * 0.1
        shift, scl, gate = mods[:, 0], mods[:, 1], mods[:, 2]
        lnw, lnb, b = (torch.randn(W, device=device, dtype=dtype) for _ in range(3))
        w1 = torch.randn(W, W, device=device, dtype=dtype) * W ** -0.5

        def ln_eager():
            return F.layer_norm(x, (W,), lnw, lnb, 1e-6) * (1 + scl) + shift

        def silu_eager():
            return F.silu(x + b)

        def res_eager():
            return x + gate * (h + b)

        def lin1_eager():
            return F.silu(F.linear(ln_eager(), w1, b))

        def lin2_eager():
            return x + gate * F.linear(h, w1, b)

        ln = {"weight": lnw, "bias": lnb, "shift": shift, "scale": scl, "eps": 1e-6}
        shapes = {"rows": N, "width": W}
        cases = [
            ("adaln_ln", ln_eager, lambda: adaln_modulate_layernorm(x, lnw, lnb, shift, scl, 1e-6)),
            ("bias_silu", silu_eager, lambda: bias_silu(x, b)),
            ("gated_residual", res_eager, lambda: gated_residual(x, h, gate, b)),
            ("linear_ln_silu", lin1_eager, lambda: fused_linear(x, w1, b, ln=ln, epilogue="silu")),
            ("linear_gated", lin2_eager, lambda: fused_linear(h, w1, b, epilogue="gated_residual", residual=x,
                                                              gate=gate)),
        ]
        with torch.no_grad():
            for name, eager, triton in cases:
                comp = _compile(eager, use_compile)
                rows.append(_row(f"{name}_s{s}", info, shapes, _variants(device, {
                    "eager": eager, "compile": comp, "triton": triton}, iters, repeats)))
    return rows


def head_cases(device, dtype, info, width, depth, latent, streams, steps, iters, repeats, use_compile, bandwidth):
    from motionstreamer.kernels import integration
    from motionstreamer.kernels.diffusion_head import head_step
    from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
    from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise

    torch.manual_seed(0)
    dl = DiffLoss(DiffusionHeadConfig(latent_dim=latent, width=width, depth=depth, cond_dim=768)).to(device, dtype)
    net = dl.net
    weights = integration.head_weights(net)
    step_bytes = weights.step_bytes()
    rows = []
    for s in streams:
        N = 2 * s
        cond = torch.randn(s, 768, device=device, dtype=dtype)
        uncond = torch.randn(s, 768, device=device, dtype=dtype)
        mods = net.modulations(torch.cat([cond, uncond]), dl.model_timesteps(steps, device))
        x = torch.randn(N, latent, device=device, dtype=dtype)
        bm, fm = mods["blocks"][:, 0], mods["final"][0]
        comp = _compile(lambda: net.forward_with_modulations(x, mods, 0), use_compile)
        with torch.no_grad():
            rows.append(_row(f"head_step_s{s}", info, {"rows": N, "width": width, "depth": depth}, _variants(device, {
                "eager": lambda: net.forward_with_modulations(x, mods, 0), "compile": comp,
                "triton": lambda: head_step(x, weights, bm, fm, fused=True),
                "triton_cublas": lambda: head_step(x, weights, bm, fm, fused=False)}, iters, repeats)))

        proc = dl.sampling_process(steps)
        noise = draw_sampling_noise(None, s, proc.num_timesteps, latent, device, dtype)

        def loop(backend):
            def run():
                dl.set_head_backend(backend)
                return dl.sample(cond, uncond, SamplerSettings(cfg_scale=4.0, sampling_steps=steps), noise=noise)
            return run

        variants = {"eager": loop("torch"), "triton": loop("triton")}
        if device.type == "cuda":
            for name in ("eager", "triton"):
                try:
                    variants[f"{name}_graph"] = cuda_graph(variants[name], device)
                except Exception as e:  # noqa: BLE001
                    variants[f"{name}_graph"] = _raiser(e)
        with torch.no_grad():
            times = _variants(device, variants, max(1, iters // 10), repeats)
        dl.set_head_backend("auto")
        row = _row(f"head_loop_s{s}", info, {"streams": s, "rows": N, "width": width, "depth": depth,
                                              "steps": steps}, times)
        row["head_weight_bytes_per_step"] = step_bytes
        if bandwidth:
            bound = step_bytes * proc.num_timesteps / bandwidth * 1e3
            row["weight_read_bound_ms_per_latent"] = bound
            best = min((t["median"] for t in times.values() if "median" in t), default=None)
            if best:
                row["fraction_of_bound"] = bound / best     # 1.0 = at the bound; the goal is >= 1/1.5
        rows.append(row)
    return rows


def _raiser(e):
    def fail():
        raise e
    return fail


# ----------------------------------------------------------------------------- entry points
def gpu_needed_reason(device) -> str | None:
    """Why the kernels cannot be timed on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"needs a CUDA GPU (device is {device}); the Triton CPU interpreter only checks correctness "
                "(tests/test_kernels_*.py), its times mean nothing")
    from motionstreamer.kernels import integration
    if not integration.available(device):
        return "triton is not installed or TRITON_INTERPRET is set; the kernels cannot be compiled for the GPU"
    return None


def run_all(device, small: bool = False, quick: bool = False, allow_interpreter: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py. allow_interpreter runs every case once at tiny shapes on the CPU
    interpreter (tests use it to keep this file working; the times are meaningless and marked so)."""
    device = torch.device(device)
    reason = gpu_needed_reason(device)
    if reason and not (allow_interpreter and device.type == "cpu"):
        return [{"case": "kernels", "skipped": reason, "device": str(device)}]
    interp = reason is not None
    if interp:
        dtype, streams, batches, iters, repeats, use_compile = torch.float32, (1,), (1,), 1, 1, False
        H, D, T, W, depth, latent, steps = 2, 32, 9, 64, 2, 4, 2
    else:
        dtype = torch.bfloat16
        streams = (2,) if quick else STREAMS
        batches = (2,) if quick else (2, 64, 512)
        iters, repeats, use_compile = (5, 2, False) if quick else (20, 5, True)
        H, D, T = (4, 32, 78) if small else (12, 64, 78)
        W, depth, latent, steps = (256, 3, 16, 50) if small else (1792, 9, 16, 50)
    info = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
            "dtype": str(dtype).replace("torch.", "")}
    if interp:
        info["note"] = "Triton CPU interpreter: a smoke run, not a timing"
    bandwidth = hbm_bandwidth(device)
    if bandwidth:
        info["hbm_bandwidth_gbps"] = bandwidth / 1e9
    rows = []
    rows += attention_cases(device, dtype, info, H, D, T, batches, iters, repeats, use_compile)
    rows += decode_cases(device, dtype, info, H, D, T, streams, iters, repeats)
    rows += head_piece_cases(device, dtype, info, W, streams, iters, repeats, use_compile)
    rows += head_cases(device, dtype, info, W, depth, latent, streams, steps, iters, repeats, use_compile, bandwidth)
    if interp:   # interpreter times are not comparable with anything
        rows = [{k: v for k, v in r.items() if not k.startswith("speedup_")} for r in rows]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Triton kernels vs eager PyTorch / SDPA / torch.compile")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    for row in run_all(args.device, args.small, args.quick):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
