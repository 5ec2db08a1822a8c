"""Rigs inside Blender (bpy): an armature's skeleton, an armature built from a skeleton, and a
retargeted motion (io.retarget.TargetRig) keyed onto an armature as an action or posed live.

Used by io.fbx (FBX through Blender's own importer/exporter, `bpy` from PyPI) and shipped inside the
Blender add-on (integrations/blender), so it needs only numpy and bpy. Axes: motionstreamer works in
Y up (glTF's), Blender in Z up; (x, y, z) Y-up is (x, -z, y) in Blender, the glTF importer's choice.
Bones keep the armature's own rest pose: a pose is each bone's `matrix_basis`, computed from the
bone's rest matrix (`bone.matrix_local`, as Blender stores it) and the world pose the rig asks for.
"""
from __future__ import annotations

import numpy as np

from motionstreamer.io.retarget import RetargetError, Skeleton
from motionstreamer.representation.ik import swing

Y_UP_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _np(m) -> np.ndarray:
    return np.array([list(row) for row in m], dtype=np.float64)


def _polar(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def armature_skeleton(obj, source: str = ""):
    """io.retarget.Skeleton of an armature object's rest pose (world, Y up, metres)."""
    bones = list(obj.data.bones)
    if len(bones) < 2:
        raise RetargetError(f"armature {obj.name!r} has {len(bones)} bone(s); a humanoid needs a skeleton")
    order, seen = [], set()

    def visit(b):
        order.append(b)
        seen.add(b.name)
        for c in b.children:
            visit(c)

    roots = [b for b in bones if b.parent is None]
    if len(roots) != 1:   # several root bones (props, IK targets beside the body): the largest tree
        roots = sorted(roots, key=lambda b: -len(b.children_recursive))[:1]
    visit(roots[0])
    index = {b.name: i for i, b in enumerate(order)}
    world = _np(obj.matrix_world)
    pos = np.zeros((len(order), 3))
    rot = np.zeros((len(order), 3, 3))
    for i, b in enumerate(order):
        m = world @ _np(b.matrix_local)
        pos[i] = Y_UP_TO_BLENDER.T @ m[:3, 3]
        rot[i] = Y_UP_TO_BLENDER.T @ _polar(m[:3, :3])
    parents = [index[b.parent.name] if b.parent is not None else -1 for b in order]
    return Skeleton([b.name for b in order], parents, pos, rot, 1.0, source or obj.name, fbx_armature=obj.name)


def build_armature(skeleton, name: str = "motionstreamer_rig", collection=None):
    """A new armature object with the skeleton's bones at their rest positions (world = armature
    space). A bone's roll follows the skeleton's rest orientation; a skeleton without orientations
    (all identity: BVH, SMPL) gets bones pointing at their first child, as Blender's BVH importer."""
    import bpy
    from mathutils import Matrix

    sk = skeleton
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    (collection or bpy.context.scene.collection).objects.link(obj)
    rest = sk.rest_positions @ Y_UP_TO_BLENDER.T
    orient = Y_UP_TO_BLENDER @ sk.rest_rotations
    plain = np.allclose(sk.rest_rotations, np.eye(3))
    size = max(float(np.ptp(rest, axis=0).max()), 1e-3)
    lengths, frames = {}, {}
    for j in range(len(sk.names)):
        kids = sk.children(j)
        d = rest[kids[0]] - rest[j] if kids else None
        lengths[j] = float(np.linalg.norm(d)) if kids and np.linalg.norm(d) > 1e-4 else 0.05 * size
        if plain:
            p = sk.parents[j]
            frames[j] = swing(np.array([0.0, 1.0, 0.0]), d) if lengths[j] != 0.05 * size else \
                (frames[p] if p >= 0 else np.eye(3))
        else:
            frames[j] = orient[j]
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    edit = {}
    for j, n in enumerate(sk.names):
        eb = data.edit_bones.new(n)
        eb.head, eb.tail = (0.0, 0.0, 0.0), (0.0, lengths[j], 0.0)
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = frames[j], rest[j]
        eb.matrix = Matrix(m.tolist())
        eb.use_connect = False
        if sk.parents[j] >= 0:
            eb.parent = edit[sk.parents[j]]
        edit[j] = eb
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def pose_matrices(obj, rig, frames=None) -> dict:
    """{bone name: (T, 4, 4) matrix_basis} that pose the armature `obj` as `rig` (io.retarget.TargetRig)
    at the given frames (all by default). Bones of the armature the rig does not have keep rest."""
    sk = rig.skeleton
    pos, rot = rig.world()
    if frames is not None:
        pos, rot = pos[frames], rot[frames]
    T = len(pos)
    delta = rot @ np.swapaxes(sk.rest_rotations, -1, -2)[None]       # world turns from rest (Y up)
    world = _np(obj.matrix_world)
    to_arm = np.linalg.inv(world)
    w_rot = _polar(world[:3, :3])
    conv = w_rot.T @ Y_UP_TO_BLENDER                                     # Y-up world -> armature axes
    index = {n: i for i, n in enumerate(sk.names)}
    rest = {b.name: _np(b.matrix_local) for b in obj.data.bones}
    posed, out = {}, {}
    for b in _parents_first(obj.data.bones):
        i = index.get(b.name)
        P = np.tile(np.eye(4), (T, 1, 1))
        B = rest[b.name]
        if i is None:            # not in the rig: rest relative to its parent
            parent = posed.get(b.parent.name) if b.parent is not None else None
            local = B if b.parent is None else np.linalg.inv(rest[b.parent.name]) @ B
            P = local[None] if parent is None else parent @ local
            P = np.broadcast_to(P, (T, 4, 4)).copy()
        else:
            P[:, :3, :3] = conv @ delta[:, i] @ conv.T @ B[:3, :3]
            P[:, :3, 3] = (np.concatenate([Y_UP_TO_BLENDER @ pos[:, i].T, np.ones((1, T))]).T @ to_arm.T)[:, :3]
        posed[b.name] = P
        rel = B if b.parent is None else np.linalg.inv(rest[b.parent.name]) @ B
        parent_pose = np.eye(4)[None] if b.parent is None else posed[b.parent.name]
        out[b.name] = np.linalg.inv(rel)[None] @ np.linalg.inv(parent_pose) @ P
    return out


def _parents_first(bones) -> list:
    out, seen = [], set()
    pending = list(bones)
    while pending:
        rest = []
        for b in pending:
            if b.parent is None or b.parent.name in seen:
                out.append(b)
                seen.add(b.name)
            else:
                rest.append(b)
        pending = rest
    return out


def _fcurve(action, obj, path: str, index: int, group: str):
    if hasattr(action, "fcurve_ensure_for_datablock"):         # Blender 4.4+ (slotted actions)
        return action.fcurve_ensure_for_datablock(obj, path, index=index, group_name=group)
    return action.fcurves.new(path, index=index, action_group=group)


def fcurves(action, obj) -> list:
    """The F-curves of an action for `obj` (Blender 4.4+ keeps them per slot, older ones on the action)."""
    if hasattr(action, "layers") and not hasattr(action, "fcurves"):
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
        return list(bag.fcurves) if bag is not None else []
    return list(action.fcurves)


def key_action(obj, rig, name: str = "motionstreamer", frame_start: int = 1, moving=None):
    """Key `rig` onto the armature `obj` as a new action (one key per frame: rotation quaternions of
    every bone the rig has, the location of its moving bone), make it the active action, set the
    scene's frame range and fps. Returns the action."""
    import bpy

    basis = pose_matrices(obj, rig)
    action = bpy.data.actions.new(name)
    if obj.animation_data is None:
        obj.animation_data_create()
    obj.animation_data.action = action
    T = len(rig.rotations)
    frames = np.arange(frame_start, frame_start + T, dtype=np.float64)
    names = set(rig.names)
    mover = rig.names[rig.mover] if moving is None else moving
    for b in obj.pose.bones:
        if b.name not in basis or b.name not in names:
            continue
        b.rotation_mode = "QUATERNION"
        m = basis[b.name]
        channels = [("rotation_quaternion", _continuous(_matrix_quat(m[:, :3, :3])))]
        if b.name == mover:
            channels.append(("location", m[:, :3, 3]))
        for prop, values in channels:
            for k in range(values.shape[1]):
                fc = _fcurve(action, obj, f'pose.bones["{b.name}"].{prop}', k, b.name)
                fc.keyframe_points.add(T)
                fc.keyframe_points.foreach_set("co", np.stack([frames, values[:, k]], 1).ravel().tolist())
                fc.update()
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = int(round(rig.fps)), int(round(rig.fps)) / rig.fps
    scene.frame_start, scene.frame_end = frame_start, frame_start + T - 1
    return action


def apply_pose(obj, rig, frame: int) -> None:
    """Pose the armature as frame `frame` of `rig`, no keys (live playback)."""
    basis = pose_matrices(obj, rig, frames=[frame])
    mover = rig.names[rig.mover]
    for b in obj.pose.bones:
        if b.name in basis and b.name in set(rig.names):
            m = basis[b.name][0]
            b.rotation_mode = "QUATERNION"
            b.rotation_quaternion = _matrix_quat(m[None, :3, :3])[0].tolist()
            if b.name == mover:
                b.location = m[:3, 3].tolist()


def _matrix_quat(m: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotation matrices -> (T, 4) quaternions w, x, y, z (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    tr = np.trace(m, axis1=-2, axis2=-1)
    cand = np.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr], -1)
    k = np.argmax(cand, axis=-1)
    q = np.zeros(m.shape[:-2] + (4,))
    s = np.sqrt(np.maximum(np.take_along_axis(cand, k[..., None], -1)[..., 0], 1e-12))
    w = [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]]
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    rows = {0: (s, w[0] / s, w[1] / s, w[2] / s), 1: (w[0] / s, s, xy / s, xz / s),
            2: (w[1] / s, xy / s, s, yz / s), 3: (w[2] / s, xz / s, yz / s, s)}
    for case, vals in rows.items():
        sel = k == case
        q[sel] = np.stack([v[sel] for v in vals], -1) * 0.5
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _continuous(q: np.ndarray) -> np.ndarray:
    flips = np.cumsum(np.concatenate([[0], np.sum(q[1:] * q[:-1], axis=-1) < 0])) % 2
    return q * np.where(flips[:, None] == 1, -1.0, 1.0)
