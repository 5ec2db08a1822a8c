"""benchmarks/bench_kernels.py keeps working: without CUDA its case is skipped with the reason (no
interpreter timings in the results), and every case runs end to end at tiny shapes on the Triton
interpreter (the GPU run then only has the GPU to worry about)."""
import sys
from pathlib import Path

import pytest
import torch

from motionstreamer.kernels import integration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_kernels  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_without_cuda_the_case_is_skipped_with_a_reason():
    rows = bench_kernels.run_all("cpu", small=True, quick=True)
    assert len(rows) == 1 and "needs a CUDA GPU" in rows[0]["skipped"] and "error" not in rows[0]


@pytest.mark.skipif(not integration.available("cpu"), reason="needs triton with TRITON_INTERPRET=1 (tests/conftest.py)")
def test_every_case_runs_on_the_interpreter():
    rows = bench_kernels.run_all("cpu", allow_interpreter=True)
    cases = {r["case"].rsplit("_", 1)[0] for r in rows}
    assert cases == {"attn_fwd", "attn_fwdbwd", "decode", "adaln_ln", "bias_silu", "gated_residual", "linear_ln_silu",
                     "linear_gated", "head_step", "head_loop"}
    for r in rows:
        assert "eager_ms" in r and "triton_ms" in r, r
        for k, v in r.items():
            if k.endswith("_ms"):
                assert "error" not in v and v["median"] > 0, (r["case"], k, v)
        assert not any(k.startswith("speedup_") for k in r)   # interpreter times are not comparable
    fwd = next(r for r in rows if r["case"].startswith("attn_fwd_"))
    assert fwd["max_abs_err_vs_reference"] < 1e-5
    loop = next(r for r in rows if r["case"].startswith("head_loop"))
    assert loop["head_weight_bytes_per_step"] > 0
