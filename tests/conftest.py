"""Test-session setup shared by every test file.

Triton kernels (motionstreamer.kernels) run on CPU only under the Triton interpreter, and
`triton.jit` reads TRITON_INTERPRET when a kernel is DECORATED, i.e. when motionstreamer.kernels
is first imported (triton itself may already be imported: it reads the variable afresh each
time). Setting it inside one test module would depend on test order (another module may import
the kernels first); pytest loads this conftest before it imports any test module, so setting it
here holds for the whole session, whatever the order. With CUDA it is left alone: the kernels
compile for the GPU and the GPU tests run. Models default to their torch paths on CPU even when
the interpreter is on (the "auto" backends pick Triton only on CUDA), so other tests are unaffected.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    if "motionstreamer.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # a plugin imported the kernels before us: they are compiled-mode functions, and the
        # kernel tests skip (kernels_usable is False on CPU without the interpreter)
        sys.stderr.write("conftest: motionstreamer.kernels was imported before TRITON_INTERPRET could be set; "
                         "the Triton kernel tests will skip\n")
    else:
        os.environ.setdefault("TRITON_INTERPRET", "1")

# Blender for the FBX and add-on tests (motionstreamer/io/blender_process.py): bpy in this Python, else
# $MOTIONSTREAMER_BLENDER, which scripts/test.sh sets to the environment scripts/blender_env.sh made; a
# plain `pytest` after that finds the same one. Missing, those tests fail (they never skip).
_BLENDER_ENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-blender", "bin",
                            "python")
if not os.environ.get("MOTIONSTREAMER_BLENDER") and os.path.isfile(_BLENDER_ENV):
    os.environ["MOTIONSTREAMER_BLENDER"] = _BLENDER_ENV
