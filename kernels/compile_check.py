"""Compile every kernel for a GPU architecture without a GPU: Triton -> PTX -> cubin (ptxas), with
each cubin's registers and spill stores read back by cuobjdump.

The CPU interpreter checks the kernels' math but not what only the compiler sees (types of
loop-carried values, dot shape limits, constexpr branches, register pressure); this checks that,
for the launch configurations the kernels use (every autotune config of the attention and linear
kernels), so a GPU run does not discover a compile error or a spilling config first.

  python -m motionstreamer.kernels.compile_check [--arch 90] [--full]

Needs TRITON_INTERPRET unset (compiled-mode kernels); no GPU.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from . import adaln_layernorm, diffusion_head, linear, qknorm_attention, qknorm_decode, residual, silu

_FLOATS = {"eps", "cfg_scale", "c0", "c1", "c2", "c3", "c4", "c5", "ln_eps"}
_FP32_PTRS = {"LSE", "DELTA", "DSCALE", "SCALE", "COS", "SIN", "XS", "NOISE"}
_INT_PTRS = {"LENS": "*i32", "POS": "*i64", "ROWS": "*i64"}
_I32 = {n: "i32" for n in ("H", "T", "W", "M", "N")}   # upper-case scalars (sizes); overridden per kernel below


def _signature(fn, dtype: str, constexprs: dict, ptr_overrides: dict | None = None) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif ptr_overrides and name in ptr_overrides:
            sig[name] = ptr_overrides[name]
        elif name in _I32:
            sig[name] = "i32"
        elif name in _INT_PTRS:
            sig[name] = _INT_PTRS[name]
        elif name in _FP32_PTRS:
            sig[name] = "*fp32"
        elif name[0].isupper():
            sig[name] = f"*{dtype}"
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, spill stores in bytes) of a cubin, via cuobjdump when it is installed."""
    tool = shutil.which("cuobjdump")
    if tool is None:   # triton ships one beside its ptxas
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        tool = bundled if os.path.exists(bundled) else None
    if tool is None:
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    spill = re.search(r"STORES:(\d+)", out) or re.search(r"STACK:(\d+)", out)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def cases(full: bool, quick: bool = False):
    """(label, jit function, dtype, constexprs, num_warps, num_stages, pointer overrides) to compile.
    quick: one config per kernel and prologue/epilogue pair (the CI test)."""
    def raw(k):   # the JITFunction under an autotuner
        return getattr(k, "fn", k)

    out = []
    attn_flags = [dict(CAUSAL=True, HAS_LENS=True, NORM_ROPE=True)]
    if full:
        attn_flags += [dict(CAUSAL=True, HAS_LENS=False, NORM_ROPE=False),
                       dict(CAUSAL=False, HAS_LENS=False, NORM_ROPE=True)]
    for dt, D in ([("bf16", 64), ("fp16", 128), ("fp32", 64)] if full else [("bf16", 64)]):
        prec = {"UPCAST": False, "PRECISION": "ieee" if dt == "fp32" else "tf32"}
        first = quick or not (full or dt == "bf16")
        fwd_cfgs = qknorm_attention._FWD_CONFIGS[:1] if first else qknorm_attention._FWD_CONFIGS
        bwd_cfgs = qknorm_attention._BWD_CONFIGS[:1] if first else qknorm_attention._BWD_CONFIGS
        for flags in attn_flags:
            for c in fwd_cfgs:
                ce = dict(D=D, HALF_D=D // 2, STORE_K=True, **flags, **prec, **c.kwargs)
                out.append((f"attn_fwd {dt} D{D} {c}", raw(qknorm_attention._attn_fwd_kernel), dt, ce, c.num_warps,
                            c.num_stages, None))
            for c in bwd_cfgs:
                ce = dict(D=D, HALF_D=D // 2, **flags, **prec, **c.kwargs)
                out.append((f"attn_bwd_dkdv {dt} D{D} {c}", raw(qknorm_attention._attn_bwd_dkdv_kernel), dt, ce,
                            c.num_warps, c.num_stages, None))
                out.append((f"attn_bwd_dq {dt} D{D} {c}", raw(qknorm_attention._attn_bwd_dq_kernel), dt, ce,
                            c.num_warps, c.num_stages, None))
        for append in (True, False):
            ce = dict(D=D, HALF_D=D // 2, BN=32, APPEND=append, NORM_ROPE=True, HAS_ROWS=True)
            out.append((f"decode {dt} D{D} append={append}", qknorm_decode._decode_kernel, dt, ce,
                        2 if D <= 64 else 4, 3, None))
    W = 1792
    dts = ["bf16", "fp16", "fp32"] if full else ["bf16"]
    for dt in dts:
        out.append((f"adaln_ln {dt}", adaln_layernorm._adaln_ln_kernel, dt, dict(BLOCK=2048, AFFINE=True), 8, 3, None))
        out.append((f"bias_silu {dt}", silu._bias_silu_kernel, dt, dict(BLOCK=1024, HAS_BIAS=True), 4, 3, None))
        out.append((f"gated_residual {dt}", residual._gated_residual_kernel, dt, dict(BLOCK=1024, HAS_BIAS=True), 4, 3,
                    {"H": f"*{dt}"}))
        prec = {"UPCAST": False, "PRECISION": "ieee" if dt == "fp32" else "tf32"}
        done = set()
        for c in (linear._GPU_CONFIGS if full or dt == "bf16" else linear._GPU_CONFIGS[:1]):
            for pro, epi in ([(True, 1), (False, 2)] if not full else [(True, 1), (False, 2), (True, 2), (False, 0)]):
                if not linear.config_fits(c, pro) or (quick and (pro, epi) in done):
                    continue   # never launched (the autotuner prunes it) / one config per pair
                done.add((pro, epi))
                ce = dict(K=W, PROLOGUE=pro, LN_AFFINE=pro, EPILOGUE=epi, HAS_BIAS=True, **prec, **c.kwargs)
                out.append((f"fused_linear {dt} prologue={pro} epilogue={epi} {c}", raw(linear._fused_linear_kernel),
                            dt, ce, c.num_warps, c.num_stages, None))
        for guided in (True, False):
            ce = dict(WIDTH=W, BLOCK_W=2048, BW=256, LAT=16, LATP=16, GUIDED=guided, FINAL=True, STORE_EPS=False,
                      UPDATE=True, HAS_NOISE=True, PROJECT=True)
            out.append((f"head_io {dt} guided={guided}", diffusion_head._head_io_kernel, dt, ce, 8, 3, {"B": "i32"}))
    return out


def compile_all(arch: int = 90, full: bool = False, verbose: bool = True, quick: bool = False) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs compiled-mode kernels: unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    results = []
    for label, fn, dt, ce, warps, stages, overrides in cases(full, quick):
        t = time.perf_counter()
        row = {"kernel": label}
        try:
            src = ASTSource(fn, _signature(fn, dt, ce, overrides), constexprs=ce)
            k = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
            row["registers"], row["spill_bytes"] = _resource_usage(k.asm["cubin"])
        except Exception as e:  # noqa: BLE001 - every failure is reported, then raised by main
            row["error"] = f"{type(e).__name__}: {str(e)[-600:]}"
        row["seconds"] = round(time.perf_counter() - t, 2)
        if verbose:
            print(row, flush=True)
        results.append(row)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80 (A100), 90 (H100)")
    ap.add_argument("--full", action="store_true", help="every dtype, flag combination and config")
    ap.add_argument("--quick", action="store_true", help="one config per kernel")
    args = ap.parse_args(argv)
    res = compile_all(args.arch, args.full, quick=args.quick)
    failed = [r for r in res if "error" in r]
    spilled = [r for r in res if r.get("spill_bytes")]
    print(f"{len(res)} compiled for sm_{args.arch}: {len(failed)} failed, {len(spilled)} spill registers "
          f"({', '.join(r['kernel'] for r in spilled) or 'none'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
