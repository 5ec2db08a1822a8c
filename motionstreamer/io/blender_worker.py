"""The Blender side of io.blender_process: one job run in Blender's own Python, inputs and outputs as
files in a folder, so FBX works from an environment that cannot import bpy (bpy pins numpy < 2).

    python -I blender_worker.py JOB_DIR
    blender --background --factory-startup --python-exit-code 1 --python blender_worker.py -- JOB_DIR

JOB_DIR holds job.json ({"job": name, "args": {...}}) and inputs.npz; the worker writes result.json
(the job's JSON result, or {"error": one line, "type": ...}) and outputs.npz, and exits 0 or 1. It runs
from a copy of motionstreamer's numpy-only modules (io.blender_process.VENDORED) and imports nothing
else but numpy, the standard library and Blender's modules.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":      # run from the package copy io.blender_process made: that copy goes first
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from motionstreamer.io import blender_process  # noqa: E402
from motionstreamer.io.fbx import read_fbx_skeleton_bpy, write_fbx_bpy  # noqa: E402


def job_write_fbx(args: dict, arrays: dict) -> tuple[dict, dict]:
    write_fbx_bpy(args["path"], blender_process.unpack_target_rig(args["rig"], arrays))
    return {"path": args["path"]}, {}


def job_read_fbx_skeleton(args: dict, arrays: dict) -> tuple[dict, dict]:
    meta, out = blender_process.pack_skeleton(read_fbx_skeleton_bpy(args["path"]))
    return {"skeleton": meta}, out


def job_probe(args: dict, arrays: dict) -> tuple[dict, dict]:
    """What this interpreter is and which modules the worker brought in; `args` back, `arrays` doubled."""
    import bpy

    return {"blender": bpy.app.version_string, "python": sys.version.split()[0], "numpy": np.__version__,
            "numpy_path": np.__file__, "modules": sorted({m.split(".")[0] for m in sys.modules}), "echo": args,
            "motionstreamer": str(Path(sys.modules["motionstreamer"].__file__).parent)}, \
        {k: v * 2 for k, v in arrays.items()}


JOBS = {"write_fbx": job_write_fbx, "read_fbx_skeleton": job_read_fbx_skeleton, "probe": job_probe}


def one_line(e: BaseException) -> tuple[str, str]:
    """(type name for io.blender_process.ERRORS, one-line message) of a job's exception."""
    for name, cls in blender_process.ERRORS.items():          # RetargetError first: it is a ValueError too
        if isinstance(e, cls):
            return name, " ".join(str(e).split()) or name
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return "BlenderError", f"{type(e).__name__} in Blender: {' '.join(str(e).split())[:300]}{at}"


def main(argv=None) -> int:
    d = Path(blender_process.script_args(argv)[0])
    try:
        spec = json.loads((d / blender_process.INPUT).read_text())
        with np.load(d / blender_process.INPUTS) as z:
            arrays = {k: z[k] for k in z.files}
        if spec["job"] not in JOBS:
            raise ValueError(f"unknown Blender job {spec['job']!r} (known: {', '.join(JOBS)})")
        result, out = JOBS[spec["job"]](spec["args"], arrays)
        np.savez(d / blender_process.OUTPUT, **out)
        code = 0
    except Exception as e:
        kind, message = one_line(e)
        result, code = {"error": message, "type": kind}, 1
    (d / blender_process.RESULT).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
