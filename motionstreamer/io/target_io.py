"""A target rig from a file, and a retargeted motion (io.retarget.TargetRig) to one, by the file's type:
BVH (io.bvh; centimetres detected), glTF / GLB (pygltflib: the first skin's joints, or the node tree;
the armature nodes' transforms and scale baked in) and FBX (io.fbx: through Blender). The retargeting
itself, io.retarget, is numpy only and knows no file format, so Blender's Python runs it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib

from motionstreamer.io.bvh import read_bvh, write_rig_bvh
from motionstreamer.io.fbx import read_fbx_skeleton, write_fbx
from motionstreamer.io.gltf import write_glb
from motionstreamer.io.retarget import RetargetError, Skeleton, TargetRig, _orthonormal, _quat_matrix

# ----------------------------------------------------------------------------------------- reading rigs
TARGET_SUFFIXES = (".bvh", ".glb", ".gltf", ".fbx")


def read_skeleton(path) -> Skeleton:
    """A rig's skeleton from a .bvh, .glb / .gltf (the first skin's joints) or .fbx (its armature,
    read through Blender's importer: io.fbx, Blender as io.blender_process finds it)."""
    path = Path(path)
    if not path.is_file():
        raise RetargetError(f"target {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        return _read_bvh_skeleton(path)
    if suffix in (".glb", ".gltf"):
        return _read_gltf_skeleton(path)
    if suffix == ".fbx":
        return read_fbx_skeleton(path)
    raise RetargetError(f"target {path}: expected a {', '.join(TARGET_SUFFIXES)} file, got {suffix or '(no suffix)'!r}")


def _read_bvh_skeleton(path: Path) -> Skeleton:
    try:
        b = read_bvh(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise RetargetError(f"target {path}: not a readable BVH ({str(e)[:200]})") from None
    pos = ik_rest(b.parents, b.offsets)
    height = float(np.ptp(pos, axis=0).max())
    unit = 0.01 if height > 10 else 1.0          # a skeleton taller than 10 units is in centimetres
    # BVH rest orientations are the world axes (its channels are rotations from them)
    return Skeleton(b.names, b.parents, pos * unit, np.tile(np.eye(3), (len(b.names), 1, 1)), unit, str(path))


def ik_rest(parents, offsets) -> np.ndarray:
    pos = np.zeros((len(parents), 3))
    for j, p in enumerate(parents):
        pos[j] = offsets[j] + (pos[p] if p >= 0 else 0.0)
    return pos


def _read_gltf_skeleton(path: Path) -> Skeleton:
    try:
        g = pygltflib.GLTF2().load(str(path))
    except Exception as e:
        raise RetargetError(f"target {path}: not a readable glTF file ({str(e)[:200]})") from None
    if g is None or not g.nodes:
        raise RetargetError(f"target {path}: no nodes")
    n = len(g.nodes)
    parent = [-1] * n
    for i, node in enumerate(g.nodes):
        for c in node.children or []:
            if not 0 <= c < n or parent[c] != -1:
                raise RetargetError(f"target {path}: node {i} has a bad child {c}")
            parent[c] = i

    def local(i) -> np.ndarray:
        node = g.nodes[i]
        if node.matrix:
            return np.array(node.matrix, dtype=np.float64).reshape(4, 4).T
        m = np.eye(4)
        x, y, z, w = node.rotation or (0.0, 0.0, 0.0, 1.0)
        m[:3, :3] = _quat_matrix(np.array([w, x, y, z], dtype=np.float64))
        m[:3, :3] = m[:3, :3] * np.array(node.scale or (1.0, 1.0, 1.0))[None, :]
        m[:3, 3] = node.translation or (0.0, 0.0, 0.0)
        return m

    if g.skins:
        joints = list(g.skins[0].joints)
    else:   # no skin: every node of the scene's tree that is not a mesh
        joints = [i for i in range(n) if g.nodes[i].mesh is None and g.nodes[i].camera is None]
    joint_set = set(joints)
    roots = [j for j in joints if parent[j] not in joint_set]
    if len(roots) != 1:
        raise RetargetError(f"target {path}: its joints form {len(roots)} trees; a skeleton has one root")
    order = []

    def visit(i):
        order.append(i)
        for c in g.nodes[i].children or []:
            if c in joint_set:
                visit(c)

    visit(roots[0])
    above = np.eye(4)
    a = parent[roots[0]]
    while a >= 0:              # the armature nodes above the skeleton (their scale, axes) are baked in
        above = local(a) @ above
        a = parent[a]
    index = {i: k for k, i in enumerate(order)}
    mats = [local(i) for i in order]
    names = [g.nodes[i].name or f"joint{k}" for k, i in enumerate(order)]
    parents = [index.get(parent[i], -1) if k else -1 for k, i in enumerate(order)]
    world = np.zeros((len(order), 4, 4))
    for k, m in enumerate(mats):
        world[k] = (above if parents[k] < 0 else world[parents[k]]) @ m
    return Skeleton(names, parents, world[:, :3, 3], _orthonormal(world[:, :3, :3]), 1.0, str(path))


# ----------------------------------------------------------------------------------------- writing
OUT_SUFFIXES = (".bvh", ".glb", ".fbx")


def write_target(path, rig: TargetRig) -> Path:
    """Write a retargeted motion as .bvh, .glb or .fbx (by the suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        return write_rig_bvh(path, rig.bvh_rig())
    if suffix == ".glb":
        return write_glb(path, rig)
    if suffix == ".fbx":
        return write_fbx(path, rig)
    raise RetargetError(f"{path}: the output must end in {', '.join(OUT_SUFFIXES)}")
