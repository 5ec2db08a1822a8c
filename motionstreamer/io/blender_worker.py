"""The Blender side of io.blender_process: one job run in Blender's own Python, inputs and outputs as
files in a folder, so FBX works from an environment that cannot import bpy (bpy pins numpy < 2).

    python -I blender_worker.py JOB_DIR
    blender --background --factory-startup --python-exit-code 1 --python blender_worker.py -- JOB_DIR

JOB_DIR holds job.json ({"job": name, "args": {...}}) and inputs.npz; the worker writes result.json
(the job's JSON result, or {"error": one line, "type": ...}) and outputs.npz, and exits 0 or 1. It runs
from a copy of motionstreamer's numpy-only modules (io.blender_addon.VENDORED) and imports
nothing else but numpy, the standard library and Blender's modules. The packing of skeletons and
retargeted rigs below is shared by both sides.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":      # run from the package copy io.blender_process made: that copy goes first
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from motionstreamer.io.retarget import RetargetError, Skeleton, TargetRig  # noqa: E402

INPUT, INPUTS, OUTPUT, RESULT = "job.json", "inputs.npz", "outputs.npz", "result.json"
# exceptions a job raises that the caller raises again as such (the CLI's one-line errors); any other
# failure comes back as io.blender_process.BlenderError
ERRORS = {"RetargetError": RetargetError, "ValueError": ValueError, "OSError": OSError}


# ----------------------------------------------------------------------------------------- packing
def pack_skeleton(sk: Skeleton, prefix: str = "") -> tuple[dict, dict]:
    meta = {"names": list(sk.names), "parents": list(sk.parents), "unit": sk.unit, "source": sk.source,
            "fbx_armature": sk.fbx_armature}
    return meta, {f"{prefix}rest_positions": sk.rest_positions, f"{prefix}rest_rotations": sk.rest_rotations}


def unpack_skeleton(meta: dict, arrays: dict, prefix: str = "") -> Skeleton:
    return Skeleton(meta["names"], meta["parents"], arrays[f"{prefix}rest_positions"],
                    arrays[f"{prefix}rest_rotations"], meta["unit"], meta["source"], meta["fbx_armature"])


def pack_target_rig(rig: TargetRig) -> tuple[dict, dict]:
    meta, arrays = pack_skeleton(rig.skeleton, "skeleton_")
    meta = {"skeleton": meta, "mover": rig.mover, "fps": rig.fps, "scheme": rig.scheme,
            "bone_map": [[int(j), int(b)] for j, b in rig.bone_map.items()]}
    return meta, {**arrays, "rotations": rig.rotations, "translation": rig.translation}


def unpack_target_rig(meta: dict, arrays: dict) -> TargetRig:
    return TargetRig(unpack_skeleton(meta["skeleton"], arrays, "skeleton_"), arrays["rotations"], meta["mover"],
                     arrays["translation"], meta["fps"], {j: b for j, b in meta["bone_map"]}, meta["scheme"])


# ----------------------------------------------------------------------------------------- jobs
def job_write_fbx(args: dict, arrays: dict) -> tuple[dict, dict]:
    from motionstreamer.io.fbx import write_fbx_bpy

    write_fbx_bpy(args["path"], unpack_target_rig(args["rig"], arrays))
    return {"path": args["path"]}, {}


def job_read_fbx_skeleton(args: dict, arrays: dict) -> tuple[dict, dict]:
    from motionstreamer.io.fbx import read_fbx_skeleton_bpy

    meta, out = pack_skeleton(read_fbx_skeleton_bpy(args["path"]))
    return {"skeleton": meta}, out


def job_probe(args: dict, arrays: dict) -> tuple[dict, dict]:
    """What this interpreter is, and which modules the worker's imports brought in."""
    import bpy

    return {"blender": bpy.app.version_string, "python": sys.version.split()[0], "numpy": np.__version__,
            "numpy_path": np.__file__, "modules": sorted({m.split(".")[0] for m in sys.modules}), "echo": args,
            "motionstreamer": str(Path(sys.modules["motionstreamer"].__file__).parent)}, \
        {k: v * 2 for k, v in arrays.items()}


JOBS = {"write_fbx": job_write_fbx, "read_fbx_skeleton": job_read_fbx_skeleton, "probe": job_probe}


def _one_line(e: BaseException) -> tuple[str, str]:
    for name, cls in ERRORS.items():          # RetargetError first: it is a ValueError too
        if isinstance(e, cls):
            return name, " ".join(str(e).split()) or name
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return "BlenderError", f"{type(e).__name__} in Blender: {' '.join(str(e).split())[:300]}{at}"


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]      # Blender's own arguments come first
    d = Path(args[0])
    try:
        spec = json.loads((d / INPUT).read_text())
        with np.load(d / INPUTS) as z:
            arrays = {k: z[k] for k in z.files}
        if spec["job"] not in JOBS:
            raise ValueError(f"unknown Blender job {spec['job']!r} (known: {', '.join(JOBS)})")
        result, out = JOBS[spec["job"]](spec["args"], arrays)
        np.savez(d / OUTPUT, **out)
        code = 0
    except Exception as e:
        kind, message = _one_line(e)
        result, code = {"error": message, "type": kind}, 1
    (d / RESULT).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
