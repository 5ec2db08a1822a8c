"""FBX through Blender's own importer and exporter.

`write_fbx(path, rig)` writes an io.rig.Rig (the motion's SMPL skeleton) or an io.retarget.TargetRig
(a user's rig): for a rig read from an FBX, that file is imported again and its armature keyed in
place, so the written FBX keeps its meshes, hierarchy and rest pose; otherwise an armature is built
from the skeleton (io.blender_rig). The exporter's settings (EXPORT_SETTINGS: Y up, -Z forward, one
key per frame, no leaf bones, FBX units scale) are the ones docs/blender.md gives Unity's and
Unreal's importers. `read_fbx_skeleton(path)` reads the largest armature of an FBX.

Blender is the one io.blender_process finds: bpy in this process (`pip install "motionstreamer[blender]"`;
the scene is reset to an empty one before each use), else a Python with bpy or a Blender executable,
where io.blender_worker runs the same functions (`*_bpy`) on the rig sent as files.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from motionstreamer.io.blender_process import find_blender, pack_target_rig, run_job, unpack_skeleton
from motionstreamer.io.blender_rig import armature_skeleton, build_armature, fcurves, key_action
from motionstreamer.io.retarget import RetargetError, Skeleton, TargetRig
from motionstreamer.representation.ik import rest_positions
from motionstreamer.utils import atomic_path

EXPORT_SETTINGS = dict(axis_forward="-Z", axis_up="Y", apply_unit_scale=True, apply_scale_options="FBX_SCALE_UNITS",
                       add_leaf_bones=False, primary_bone_axis="Y", secondary_bone_axis="X", bake_anim=True,
                       bake_anim_use_all_bones=True, bake_anim_use_nla_strips=False, bake_anim_use_all_actions=False,
                       bake_anim_force_startend_keying=True, bake_anim_step=1.0, bake_anim_simplify_factor=0.0,
                       object_types={"ARMATURE", "MESH"}, use_armature_deform_only=False)


def require_bpy():
    """The bpy module of this Python (the in-process path, and the worker inside Blender)."""
    import bpy

    return bpy


@contextlib.contextmanager
def _quiet():
    """Blender's own printing (progress lines; on a failure, the operator's traceback before it raises)
    is dropped: in process, this process's stdout and stderr are the CLI's (`stream --jsonl` writes
    JSON there, errors are one line). What failed comes back as the exception."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _empty_scene(bpy) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _import_fbx(bpy, path: Path):
    try:
        bpy.ops.import_scene.fbx(filepath=str(path), automatic_bone_orientation=False, ignore_leaf_bones=False)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[-1][:200]
        raise RetargetError(f"target {path}: Blender cannot import it as FBX ({why})") from None
    arms = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
    if not arms:
        raise RetargetError(f"target {path}: the FBX has no armature (skeleton)")
    return max(arms, key=lambda o: len(o.data.bones))


def read_fbx_skeleton(path):
    """io.retarget.Skeleton of the largest armature in an FBX file (Y up, metres), read by Blender."""
    if find_blender().in_process:
        return read_fbx_skeleton_bpy(path)
    result, arrays = run_job("read_fbx_skeleton", {"path": str(path)})
    return unpack_skeleton(result["skeleton"], arrays)


def read_fbx_skeleton_bpy(path):
    """read_fbx_skeleton with this process's bpy."""
    bpy = require_bpy()
    path = Path(path)
    with _quiet():
        _empty_scene(bpy)
        return armature_skeleton(_import_fbx(bpy, path), source=str(path))


def smpl_target_rig(rig):
    """An io.rig.Rig (24 SMPL joints, identity rest orientations) as an io.retarget.TargetRig."""
    J = len(rig.parents)
    sk = Skeleton(rig.names, rig.parents, rest_positions(rig.offsets), np.tile(np.eye(3), (J, 1, 1)))
    return TargetRig(sk, rig.rotations, 0, rig.root, rig.fps, {j: j for j in range(22)}, "smpl")


def _rest_key_before(bpy, action, obj) -> None:
    """A rest key one frame before the motion, and the scene on it: the exporter writes each bone's
    default transform (what importers take as the rest pose of a file without a mesh) from the
    current frame's pose. The animation it bakes spans the scene's range, which starts after it."""
    start = bpy.context.scene.frame_start
    for fc in fcurves(action, obj):
        rest = 1.0 if fc.data_path.endswith("rotation_quaternion") and fc.array_index == 0 else 0.0
        fc.keyframe_points.insert(start - 1, rest)
    bpy.context.scene.frame_set(start - 1)


def write_fbx(path, rig) -> Path:
    """Write rig (io.rig.Rig or io.retarget.TargetRig) as a binary FBX through Blender's exporter,
    atomically; returns the path."""
    path = Path(path)
    if not hasattr(rig, "skeleton"):
        rig = smpl_target_rig(rig)
    for name, a in (("rotations", rig.rotations), ("root positions", rig.translation)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contain NaN/inf")
    if find_blender().in_process:
        return write_fbx_bpy(path, rig)
    meta, arrays = pack_target_rig(rig)
    run_job("write_fbx", {"path": str(path), "rig": meta}, arrays)
    return path


def write_fbx_bpy(path, rig) -> Path:
    """write_fbx of an io.retarget.TargetRig with this process's bpy."""
    with _quiet():
        return _write_fbx_bpy(require_bpy(), Path(path), rig)


def _write_fbx_bpy(bpy, path: Path, rig) -> Path:
    _empty_scene(bpy)
    sk = rig.skeleton
    if sk.fbx_armature and Path(sk.source).suffix.lower() == ".fbx" and Path(sk.source).is_file():
        obj = _import_fbx(bpy, Path(sk.source))
        for o in bpy.context.scene.objects:      # the imported file's own animation is replaced
            if o.animation_data is not None:
                o.animation_data.action = None
    else:
        obj = build_armature(sk, Path(path).stem or "motion")
    action = key_action(obj, rig, name=Path(path).stem or "motion", frame_start=0)   # FBX time 0: frame 0
    _rest_key_before(bpy, action, obj)
    with atomic_path(path) as tmp:
        tmp_fbx = Path(str(tmp) + ".fbx")         # the exporter insists on its suffix
        try:
            result = bpy.ops.export_scene.fbx(filepath=str(tmp_fbx), **EXPORT_SETTINGS)
            if "FINISHED" not in result or not tmp_fbx.is_file():
                raise OSError(f"Blender's FBX exporter did not finish ({result})")
            tmp_fbx.replace(tmp)
        finally:
            tmp_fbx.unlink(missing_ok=True)
    _empty_scene(bpy)
    return path
