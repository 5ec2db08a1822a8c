"""Triton kernels, installed as `motionstreamer.kernels`: one kernel per file, each with a plain
PyTorch reference function beside it (the `*_reference` functions, which the tests compare against).

  qknorm_attention   fused QK-Norm + RoPE + causal flash attention, forward and backward (prefill, training)
  qknorm_decode      one-token decode against a KV cache, cache append fused
  adaln_layernorm    LayerNorm + AdaLN modulate
  silu               bias_silu: SiLU(x + b)
  residual           gated_residual: x + gate * (h + b)
  linear             fused_linear: linear with the AdaLN LayerNorm prologue and bias/SiLU/gated-residual epilogues
  diffusion_head     head_step, head_sample_loop: the diffusion head's sampling step and whole sampling loop from
                     those pieces
  integration        adapters the models call behind their attention / head backend switches
  compile_check      compiles every kernel for sm_90 without a GPU (ptxas), with registers and spills

Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 set
before triton is imported). Without triton the references still import and run.
"""
if __name__ == "kernels":
    # This folder is `motionstreamer.kernels` (setup.py maps it). It is reached as a top-level `kernels`
    # only when the checkout root is on sys.path (`python -m motionstreamer` or a script run there, a
    # Ray worker started from there), and Hugging Face ships a package of that name that transformers
    # imports. So stand aside: load the installed `kernels` in this module's place, or fail exactly as
    # if this folder were not on the path.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is None:
        raise ModuleNotFoundError(f"No module named {__name__!r} (the checkout's kernels/ folder is "
                                  "motionstreamer.kernels, not a top-level package)", name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module      # what `import kernels` hands back once this file has run
    _spec.loader.exec_module(_module)
else:
    from ._common import HAS_TRITON, interpreting, kernels_usable
    from .adaln_layernorm import adaln_modulate_layernorm, adaln_modulate_layernorm_reference
    from .diffusion_head import (
        BlockWeights,
        HeadWeights,
        head_sample_loop,
        head_sample_loop_reference,
        head_step,
        head_step_reference,
    )
    from .linear import fused_linear, fused_linear_reference
    from .qknorm_attention import (
        attention_reference,
        qknorm_rope_attention,
        qknorm_rope_attention_reference,
        qknorm_rope_reference,
        rope_tables,
    )
    from .qknorm_decode import qknorm_decode_attention, qknorm_decode_attention_reference
    from .residual import gated_residual, gated_residual_reference
    from .silu import bias_silu, bias_silu_reference

    __all__ = [
        "HAS_TRITON", "interpreting", "kernels_usable",
        "qknorm_rope_attention", "qknorm_rope_attention_reference", "qknorm_rope_reference", "attention_reference",
        "rope_tables",
        "qknorm_decode_attention", "qknorm_decode_attention_reference",
        "adaln_modulate_layernorm", "adaln_modulate_layernorm_reference",
        "bias_silu", "bias_silu_reference",
        "gated_residual", "gated_residual_reference",
        "fused_linear", "fused_linear_reference",
        "BlockWeights", "HeadWeights", "head_step", "head_step_reference", "head_sample_loop",
        "head_sample_loop_reference",
    ]
