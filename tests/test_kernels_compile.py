"""The kernels compile for the GPU (sm_90: Triton -> PTX -> cubin with ptxas) without a GPU, so a
compile error that the CPU interpreter cannot see (loop-carried types, dot shape limits, constexpr
branches) fails CI instead of the first GPU run; and the linear kernel's autotune pruning keeps
the register-safe configs. The full sweep over every config with registers and spills:
`python -m motionstreamer.kernels.compile_check --full`."""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this triton has no bundled ptxas (NVIDIA backend)")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # compiled-mode kernels
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    code = ("import json; from motionstreamer.kernels.compile_check import compile_all; "
            "print(json.dumps(compile_all(90, quick=True, verbose=False)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    kernels = {row["kernel"].split()[0] for row in rows}
    assert kernels == {"attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq", "decode", "adaln_ln", "bias_silu", "gated_residual",
                       "fused_linear", "head_io"}
    failed = [row for row in rows if "error" in row]
    assert not failed, failed


def test_linear_autotune_prunes_to_register_safe_configs():
    from motionstreamer.kernels import linear
    if not hasattr(linear, "_prune"):
        pytest.skip("triton not importable")
    cfgs = linear._GPU_CONFIGS
    few = linear._prune(cfgs, {"M": 4}, K=1792, PROLOGUE=True)
    assert few and all(c.kwargs["BM"] == 16 and c.num_warps == 8 for c in few)
    assert all(c.kwargs["BM"] == 16 for c in linear._prune(cfgs, {"M": 4}, K=1792, PROLOGUE=False))
    many = linear._prune(cfgs, {"M": 1000}, K=1792, PROLOGUE=True)
    assert {c.kwargs["BM"] for c in many} > {16} and all(c.num_warps == 8 for c in many)
