"""glTF 2.0 binary (.glb) output: a skinned skeleton with its animation and a simple visible body.

Layout (written with pygltflib, checked in the tests with the Khronos glTF validator and read back
with three.js):
- nodes 0..23: the rig's joints (SMPL order, `io.rig.RIG_NAMES` names), each at its rest offset with
  identity rotation (the rest pose: a T-pose facing +Z, Y up, metres); node 24 "body": the skinned mesh,
  a root of the scene beside the skeleton's root, as the spec asks of skinned meshes;
- one skin over the 24 joints, inverse bind matrices of the rest pose;
- the body: a capsule along every bone and a sphere for the head, each vertex bound to the bone's
  parent joint with weight 1 (rigid parts, no stretching); the foot capsules sit one radius above
  the ankle-foot bone so that their soles, not their centres, meet the floor, and the shins' round
  ends stop at the ankles (not a radius below them, under the soles); three materials: left side blue,
  right side red, centre grey (the renderer's colours);
- one animation "motion": per-frame LINEAR samplers at t / fps (30 fps: 0.0333 s keys) for every body
  joint's rotation (unit quaternions, sign-continuous) and the root's translation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib as g

from motionstreamer import __version__
from motionstreamer.representation.ik import rest_positions
from motionstreamer.representation.rotation import matrix_to_quaternion
from motionstreamer.representation.skeleton import NUM_JOINTS, PARENTS_24
from motionstreamer.utils import atomic_write_bytes

# Capsule radius (m, for a 1.7 m body; scaled with the skeleton) of the bone ending at each joint.
BONE_RADIUS = {1: 0.065, 2: 0.065, 3: 0.085, 4: 0.06, 5: 0.06, 6: 0.09, 7: 0.045, 8: 0.045, 9: 0.09,
               10: 0.035, 11: 0.035, 12: 0.045, 13: 0.05, 14: 0.05, 15: 0.045, 16: 0.045, 17: 0.045,
               18: 0.04, 19: 0.04, 20: 0.033, 21: 0.033, 22: 0.03, 23: 0.03}
HEAD_RADIUS = 0.1
FEET = (10, 11)
ANKLES = (7, 8)
REFERENCE_HEIGHT = 1.7
MATERIALS = (("centre", (0.72, 0.72, 0.75, 1.0)), ("left", (0.22, 0.42, 0.85, 1.0)),
             ("right", (0.85, 0.27, 0.27, 1.0)))


def _side(name: str) -> int:
    n = name.lower().replace("mixamorig:", "")
    return 1 if n.startswith("left") else 2 if n.startswith("right") else 0


def _capsule(p0, p1, radius: float, axis=None, segments: int = 12, rings: int = 4):
    """A capsule from p0 to p1 (a sphere when they coincide; `axis` orients it): (vertices, normals,
    triangles) with outward normals and counter-clockwise faces seen from outside."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    z = p1 - p0 if axis is None else np.asarray(axis, float)
    z = z / max(np.linalg.norm(z), 1e-9)
    x = np.cross(z, [0.0, 1.0, 0.0] if abs(z[1]) < 0.9 else [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    lon = 2 * np.pi * np.arange(segments) / segments
    lats = np.concatenate([np.linspace(-np.pi / 2, 0, rings + 1)[1:], np.linspace(0, np.pi / 2, rings + 1)[:-1]])
    centres = [p0] * rings + [p1] * rings
    dirs = [np.cos(a) * (np.cos(lon)[:, None] * x + np.sin(lon)[:, None] * y) + np.sin(a) * z for a in lats]
    normals = np.concatenate([-z[None], *dirs, z[None]])
    verts = np.concatenate([(p0 - radius * z)[None], *[c + radius * d for c, d in zip(centres, dirs)],
                            (p1 + radius * z)[None]])
    tris = []
    row = lambda i: 1 + i * segments   # noqa: E731  first vertex of ring i
    for j in range(segments):
        k = (j + 1) % segments
        tris.append((0, row(0) + k, row(0) + j))                                # bottom fan
        for i in range(len(lats) - 1):
            a, b, c, d = row(i) + j, row(i) + k, row(i + 1) + k, row(i + 1) + j
            tris += [(a, b, c), (a, c, d)]
        last = row(len(lats) - 1)
        tris.append((len(verts) - 1, last + j, last + k))                      # top fan
    return verts, normals, np.array(tris, dtype=np.int64)


def body_mesh(rest: np.ndarray, names) -> dict:
    """Capsule body in the rest pose: {material index: (positions, normals, joints, triangles)}."""

    pos = rest_positions(rest)
    scale = (pos[:, 1].max() - pos[:, 1].min() + HEAD_RADIUS) / REFERENCE_HEIGHT
    parts = {m: [] for m in range(len(MATERIALS))}
    for c in range(1, len(PARENTS_24)):
        p, r = PARENTS_24[c], BONE_RADIUS[c] * scale
        # the feet's soles at the joints' level: the floor (y = 0) is where the lowest joint touches
        lift = np.array([0.0, r, 0.0]) if c in FEET else 0.0
        end = pos[c] + lift
        if c in ANKLES:   # the shin's round end stops at the ankle: it would reach r below it, under the sole
            end = end - r * (pos[c] - pos[p]) / np.linalg.norm(pos[c] - pos[p])
        parts[_side(names[c])].append((p, _capsule(pos[p] + lift, end, r)))
    head = pos[15] + np.array([0.0, 0.6 * HEAD_RADIUS * scale, 0.02 * scale])
    parts[0].append((15, _capsule(head, head, HEAD_RADIUS * scale, axis=(0.0, 1.0, 0.0))))
    out = {}
    for m, items in parts.items():
        verts, norms, joints, tris, base = [], [], [], [], 0
        for joint, (v, n, t) in items:
            verts.append(v)
            norms.append(n)
            joints.append(np.full(len(v), joint))
            tris.append(t + base)
            base += len(v)
        out[m] = (np.concatenate(verts), np.concatenate(norms), np.concatenate(joints), np.concatenate(tris))
    return out


def _quaternions_xyzw(rotations: np.ndarray) -> np.ndarray:
    """(T, J, 3, 3) -> (T, J, 4) unit quaternions (x, y, z, w), sign-continuous over time."""

    q = matrix_to_quaternion(np.ascontiguousarray(rotations))[..., [1, 2, 3, 0]]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    flips = np.cumsum(np.concatenate([np.zeros((1,) + q.shape[1:-1]),
                                      (np.sum(q[1:] * q[:-1], axis=-1) < 0)]), axis=0) % 2
    return q * np.where(flips[..., None] == 1, -1.0, 1.0)


class _Blob:
    """One binary buffer of 4-byte-aligned views, one accessor per view."""

    def __init__(self, gltf):
        self.gltf, self.data = gltf, bytearray()

    def add(self, array: np.ndarray, kind: str, component: int, target=None, minmax: bool = False) -> int:
        while len(self.data) % 4:
            self.data += b"\0"
        raw = np.ascontiguousarray(array).tobytes()
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw),
                                                  target=target))
        self.data += raw
        count = array.shape[0]
        acc = g.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=count, type=kind)
        if minmax:
            flat = array.reshape(count, -1)
            acc.min, acc.max = flat.min(axis=0).tolist(), flat.max(axis=0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def _animation(rig):
    """(rest translations (J, 3), rest rotations (J, 3, 3) or None, animated joints, (T, J, 3, 3) local
    rotations, moving joint, its (T, 3) translation) of an io.rig.Rig (SMPL, identity rest rotations)
    or an io.retarget.TargetRig (a user's rig: its own rest orientations, every joint keyed)."""
    if hasattr(rig, "skeleton"):
        t, r = rig.skeleton.local_rest()
        return t, r, range(len(rig.names)), rig.rotations, rig.mover, rig.translation
    return rig.offsets, None, range(NUM_JOINTS), rig.rotations, 0, rig.root


def glb_bytes(rig, body: bool = True) -> bytes:
    """The rig (io.rig.Rig, or io.retarget.TargetRig: its own hierarchy and rest pose, no body) as a
    binary glTF 2.0 file."""

    rest_t, rest_r, animated, rotations, mover, translation = _animation(rig)
    parents = tuple(rig.parents)
    body = body and parents == PARENTS_24
    T, J = len(translation), len(parents)
    gltf = g.GLTF2(asset=g.Asset(version="2.0", generator=f"motionstreamer {__version__}"))
    blob = _Blob(gltf)
    rest_q = None if rest_r is None else _quaternions_xyzw(rest_r[None])[0]
    for j in range(J):
        kids = [c for c in range(J) if parents[c] == j]
        gltf.nodes.append(g.Node(name=rig.names[j], translation=[float(v) for v in rest_t[j]],
                                 rotation=None if rest_q is None else [float(v) for v in rest_q[j]],
                                 children=kids or None))
    roots = [0]
    if body:

        rest = rest_positions(rig.offsets)
        ibm = np.tile(np.eye(4, dtype=np.float32), (J, 1, 1))
        ibm[:, 3, :3] = -rest                                  # column-major: translation in the 4th column
        gltf.skins.append(g.Skin(name="skeleton", joints=list(range(J)), skeleton=0,
                                 inverseBindMatrices=blob.add(ibm.astype(np.float32), g.MAT4, g.FLOAT)))
        for name, colour in MATERIALS:
            gltf.materials.append(g.Material(name=name, pbrMetallicRoughness=g.PbrMetallicRoughness(
                baseColorFactor=list(colour), metallicFactor=0.0, roughnessFactor=0.7)))
        primitives = []
        for m, (verts, norms, joints, tris) in body_mesh(rig.offsets, rig.names).items():
            j4 = np.zeros((len(verts), 4), np.uint8)
            j4[:, 0] = joints
            w4 = np.zeros((len(verts), 4), np.float32)
            w4[:, 0] = 1.0
            attrs = g.Attributes(
                POSITION=blob.add(verts.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER, minmax=True),
                NORMAL=blob.add(norms.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER),
                JOINTS_0=blob.add(j4, g.VEC4, g.UNSIGNED_BYTE, g.ARRAY_BUFFER),
                WEIGHTS_0=blob.add(w4, g.VEC4, g.FLOAT, g.ARRAY_BUFFER))
            index_type = (np.uint16, g.UNSIGNED_SHORT) if len(verts) < 65536 else (np.uint32, g.UNSIGNED_INT)
            idx = blob.add(tris.reshape(-1).astype(index_type[0]), g.SCALAR, index_type[1], g.ELEMENT_ARRAY_BUFFER)
            primitives.append(g.Primitive(attributes=attrs, indices=idx, material=m))
        gltf.meshes.append(g.Mesh(name="body", primitives=primitives))
        gltf.nodes.append(g.Node(name="body", mesh=0, skin=0))
        roots.append(len(gltf.nodes) - 1)
    gltf.scenes.append(g.Scene(name="motion", nodes=roots))
    gltf.scene = 0

    times = blob.add((np.arange(T) / rig.fps).astype(np.float32), g.SCALAR, g.FLOAT, minmax=True)
    quats = _quaternions_xyzw(rotations[:, list(animated)]).astype(np.float32)
    anim = g.Animation(name="motion")
    for j in animated:
        anim.samplers.append(g.AnimationSampler(input=times, output=blob.add(quats[:, j], g.VEC4, g.FLOAT),
                                                interpolation=g.ANIM_LINEAR))
        anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                target=g.AnimationChannelTarget(node=j, path="rotation")))
    anim.samplers.append(g.AnimationSampler(input=times, output=blob.add(translation.astype(np.float32), g.VEC3,
                                                                         g.FLOAT), interpolation=g.ANIM_LINEAR))
    anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                            target=g.AnimationChannelTarget(node=mover, path="translation")))
    gltf.animations.append(anim)
    while len(blob.data) % 4:
        blob.data += b"\0"
    gltf.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_glb(path: str | Path, rig, body: bool = True) -> Path:
    """Write the rig as a .glb file (atomically); returns the path."""
    _, _, _, rotations, _, translation = _animation(rig)
    for name, a in (("rotations", rotations), ("root positions", translation)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contain NaN/inf")
    if not len(translation):
        raise ValueError("the motion has no frames")
    path = Path(path)
    atomic_write_bytes(path, glb_bytes(rig, body))
    return path
