"""Shared setup for the Triton kernel tests: where they run, per-dtype tolerances, a scaled compare."""
import pytest
import torch

from motionstreamer.kernels import integration

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# module-level skip for kernel test files: `from _kernel_testing import pytestmark`
pytestmark = pytest.mark.skipif(not integration.available(DEV),
                                reason="Triton kernels need CUDA, or triton with TRITON_INTERPRET=1 "
                                       "(tests/conftest.py)")
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(got, ref, tol, what=""):
    scale = max(ref.float().abs().max().item(), 1.0)   # exact zeros (T=1 grads) vs roundoff
    torch.testing.assert_close(got.float(), ref.float(), atol=tol * scale, rtol=tol, msg=lambda m: f"{what}: {m}")
