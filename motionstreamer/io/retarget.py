"""Retargeting: a motion onto another humanoid skeleton (the user's rig, read from BVH, glTF or FBX),
written in that rig's own hierarchy and rest pose (BVH, GLB, FBX).

Positions are the truth, as in every export (io.rig): the motion is first `io.rig.prepare_motion`'s
(rigid, grounded by its foot contacts), then put on the target as follows.

1. Bone map: which target bone plays each of the 22 SMPL joints, detected from the naming scheme
   (`SCHEMES`: SMPL, Mixamo `mixamorig:`, Rigify `DEF-`/`ORG-`, Blender's metarig, Unreal's
   mannequin) or given as a small JSON/YAML map {SMPL joint name: bone name}. Pelvis, hips, knees,
   ankles, upper arms, elbows, wrists, one spine bone and the neck or head are required; toes,
   collars and the other spine bones are used when present. Bones the map does not name (fingers,
   twist bones, extra spine bones) keep their rest pose relative to the nearest mapped ancestor.
2. Frame: the target's left (from its hips) and up (pelvis to neck/head) snapped to axes give its
   facing, so a Z-up or -Z-facing rig is handled; the floor is y = 0 of the file when its lowest
   foot joint stands on it (within a tenth of a leg), else that joint's rest height.
3. Rest pose: per mapped joint the rotation that turns the target's rest bone (towards its mapped
   children) onto the source's rest bone (SMPL's T-pose) is composed with the source's rotation, so
   an A-pose, other bone rolls or a bent rest arm are absorbed; leaves take their parent's.
4. Pose: every mapped bone is aimed at the motion's direction to its mapped child (the smallest turn
   from the guess of step 3, which keeps the source's twist about the bone; Kabsch for the pelvis
   and the chest), with the target's own bone lengths. The root (the pelvis) moves along the
   source's path scaled by leg length (thigh + shin, target / source).
5. Feet: the source's foot contacts (representation.feet) say when a foot is planted; the target's
   body is grounded at those times (feet.ground_by_contacts: its planted toes at their rest height
   above its floor), then each planted foot is pinned where it lands (feet.clean_feet with the
   source's contacts: two-bone IK on the target's legs, bone lengths kept), and nothing of the
   feet goes below the floor (feet.lift_offsets). A stream uses feet.FootCleaner (causal) instead.

`Skeleton` is a rig's rest pose (world positions and orientations, metres); `TargetRig` the animated
result in that rig's own hierarchy (local rest translations and rotations, local rotations per frame,
the pelvis translation), which io.bvh, io.gltf and io.fbx write. Reading a rig from a file and writing
the result by file type: io.target_io.

numpy only (no scipy, no torch): the Blender add-on (integrations/blender) ships this module.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from motionstreamer import FPS, NUM_JOINTS
from motionstreamer.representation import feet, ik
from motionstreamer.representation.skeleton import JOINT_NAMES, PARENTS, SMPL_OFFSETS_24

PELVIS, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE, L_FOOT, R_FOOT, NECK, HEAD = 0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 15
REQUIRED = (0, 1, 2, 4, 5, 7, 8, 16, 17, 18, 19, 20, 21)
ONE_OF = ((3, 6, 9), (12, 15))           # at least one spine bone, the neck or the head
LEFT_RIGHT = (("left", "l"), ("right", "r"))

# Bone names per scheme, normalised (`_normal`: last ':'/'|' part, lower case, no '_', '.', '-', ' '),
# candidates in order of preference, in SMPL joint order. Spine3 is matched before spine2, so that
# Unreal 5's spine_01..05 gives spine_01 / spine_03 / spine_05 and Unreal 4's spine_01..03 all three.
SCHEMES = {
    "smpl": ("pelvis", ("lefthip", "lhip"), ("righthip", "rhip"), "spine1", ("leftknee", "lknee"),
             ("rightknee", "rknee"), "spine2", ("leftankle", "lankle"), ("rightankle", "rankle"), "spine3",
             ("leftfoot", "lfoot"), ("rightfoot", "rfoot"), "neck", ("leftcollar", "lcollar"),
             ("rightcollar", "rcollar"), "head", ("leftshoulder", "lshoulder"), ("rightshoulder", "rshoulder"),
             ("leftelbow", "lelbow"), ("rightelbow", "relbow"), ("leftwrist", "lwrist"), ("rightwrist", "rwrist")),
    "mixamo": ("hips", "leftupleg", "rightupleg", "spine", "leftleg", "rightleg", "spine1", "leftfoot", "rightfoot",
               "spine2", "lefttoebase", "righttoebase", "neck", "leftshoulder", "rightshoulder", "head", "leftarm",
               "rightarm", "leftforearm", "rightforearm", "lefthand", "righthand"),
    # Blender's human metarig and the rig Rigify generates from it (its DEF- deform bones, or ORG-)
    "metarig": ("spine", "thighl", "thighr", "spine001", "shinl", "shinr", "spine002", "footl", "footr", "spine003",
                "toel", "toer", "spine004", "shoulderl", "shoulderr", ("spine006", "spine005"), "upperarml",
                "upperarmr", "forearml", "forearmr", "handl", "handr"),
    "unreal": ("pelvis", "thighl", "thighr", "spine01", "calfl", "calfr", ("spine03", "spine02"), "footl", "footr",
               ("spine05", "spine04", "spine03"), "balll", "ballr", "neck01", "claviclel", "clavicler", "head",
               "upperarml", "upperarmr", "lowerarml", "lowerarmr", "handl", "handr"),
}
# (scheme name, table, prefix of the bones it reads): DEF- first, a generated Rigify rig's deform bones
FAMILIES = (("rigify", "metarig", "DEF-"), ("smpl", "smpl", ""), ("mixamo", "mixamo", ""),
            ("unreal", "unreal", ""), ("metarig", "metarig", ""), ("rigify", "metarig", "ORG-"))
MATCH_ORDER = (0, 1, 2, 3, 4, 5, 7, 8, 9, 6) + tuple(range(10, NUM_JOINTS))   # spine3 before spine2


class RetargetError(ValueError):
    """A target that cannot be used (unmappable rig, bad bone map, degenerate skeleton): one line."""


def _normal(name: str) -> str:
    name = re.split(r"[:|]", name)[-1]
    name = re.sub(r"^[mf]_avg_", "", name, flags=re.I)          # SMPL's own FBX names
    return re.sub(r"[\s_.\-]", "", name).lower()


# ----------------------------------------------------------------------------------------- skeleton
@dataclass
class Skeleton:
    """A rig's rest pose: joints parent-first (parents[0] = -1), world positions (metres) and world
    orientations of every joint's frame (columns: its local axes), in the file's own axes."""
    names: tuple
    parents: tuple
    rest_positions: np.ndarray         # (J, 3)
    rest_rotations: np.ndarray         # (J, 3, 3)
    unit: float = 1.0                  # metres per length unit of the file (BVH in centimetres: 0.01)
    source: str = ""                   # the file it was read from
    fbx_armature: str | None = None    # FBX: the armature's object name (io.fbx keys it in place)

    def __post_init__(self):
        self.names = tuple(str(n) for n in self.names)
        self.parents = tuple(int(p) for p in self.parents)
        self.rest_positions = np.asarray(self.rest_positions, dtype=np.float64)
        self.rest_rotations = np.asarray(self.rest_rotations, dtype=np.float64)
        J = len(self.names)
        if J < 2 or len(self.parents) != J or self.rest_positions.shape != (J, 3) or \
                self.rest_rotations.shape != (J, 3, 3):
            raise RetargetError(f"{self._what}: a skeleton needs >= 2 joints with one parent, position and "
                                f"orientation each (got {J} names, {len(self.parents)} parents)")
        if self.parents[0] != -1 or any(not -1 < p < j for j, p in enumerate(self.parents) if j):
            raise RetargetError(f"{self._what}: joints must be listed parents first with one root")
        if len(set(self.names)) != J:
            dup = next(n for n in self.names if self.names.count(n) > 1)
            raise RetargetError(f"{self._what}: two joints are named {dup!r}")
        if not (np.all(np.isfinite(self.rest_positions)) and np.all(np.isfinite(self.rest_rotations))):
            raise RetargetError(f"{self._what}: the rest pose contains NaN/inf")

    @property
    def _what(self) -> str:
        return f"target {self.source}" if self.source else "target skeleton"

    @classmethod
    def from_local(cls, names, parents, translations, rotations=None, root_transform=None, **kw) -> "Skeleton":
        """From local rest transforms (translation (J, 3) in the parent's frame, rotation (J, 3, 3)),
        optionally under a 4x4 `root_transform` (an armature node's; its scale is baked in)."""
        t = np.asarray(translations, dtype=np.float64)
        r = np.tile(np.eye(3), (len(t), 1, 1)) if rotations is None else np.asarray(rotations, dtype=np.float64)
        m = np.eye(4) if root_transform is None else np.asarray(root_transform, dtype=np.float64)
        world = np.zeros((len(t), 4, 4))
        for j, p in enumerate(parents):
            local = np.eye(4)
            local[:3, :3], local[:3, 3] = r[j], t[j]
            world[j] = (m if p < 0 else world[p]) @ local
        return cls(names, parents, world[:, :3, 3], _orthonormal(world[:, :3, :3]), **kw)

    def local_rest(self) -> tuple[np.ndarray, np.ndarray]:
        """(translations (J, 3) in the parent's rest frame, rotations (J, 3, 3)) of the rest pose;
        the root's are its world ones."""
        t, r = self.rest_positions.copy(), self.rest_rotations.copy()
        for j, p in enumerate(self.parents):
            if p >= 0:
                wp = self.rest_rotations[p]
                t[j] = wp.T @ (self.rest_positions[j] - self.rest_positions[p])
                r[j] = wp.T @ self.rest_rotations[j]
        return t, r

    def children(self, j: int) -> list[int]:
        return [c for c, p in enumerate(self.parents) if p == j]


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """Nearest rotations (polar decomposition): scale and shear of node transforms removed."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


# ----------------------------------------------------------------------------------------- bone map
def detect_bone_map(skeleton: Skeleton) -> tuple[str, dict]:
    """(scheme, {SMPL joint index: target joint index}) for the naming scheme that maps the most
    joints; RetargetError naming what the closest scheme lacks when none maps the required ones."""
    best = None
    for scheme, table, prefix in FAMILIES:
        pool = {}
        for i, n in enumerate(skeleton.names):
            raw = re.split(r"[:|]", n)[-1] if prefix else n
            if prefix and not raw.startswith(prefix):
                continue
            pool.setdefault(_normal(raw[len(prefix):]), i)
        found, used = {}, set()
        for j in MATCH_ORDER:
            cands = SCHEMES[table][j]
            for c in (cands,) if isinstance(cands, str) else cands:
                if c in pool and pool[c] not in used:
                    found[j] = pool[c]
                    used.add(pool[c])
                    break
        missing = _missing(found)
        key = (not missing, len(found))
        if best is None or key > best[0]:
            best = (key, scheme, found, missing)
    _, scheme, found, missing = best
    if missing:
        raise RetargetError(f"cannot map the rig {skeleton.source or ''}: no naming scheme (SMPL, Mixamo, Rigify, "
                            f"metarig, Unreal) matches it; the closest ({scheme}) lacks {_joint_list(missing)}. Give "
                            "a bone map (--map MAP.json: {\"Pelvis\": \"hips_bone\", ...})".replace("rig :", "rig:"))
    return scheme, _checked(skeleton, found)


def _joint_list(missing: list) -> str:
    return ", ".join(JOINT_NAMES[j] if isinstance(j, int) else "/".join(JOINT_NAMES[k] for k in j) for j in missing)


def _missing(found: dict) -> list:
    out = [j for j in REQUIRED if j not in found]
    return out + [group for group in ONE_OF if not any(j in found for j in group)]


def _checked(skeleton: Skeleton, mapping: dict) -> dict:
    """Each mapped joint must lie below its mapped SMPL parent in the target's hierarchy."""
    for j, b in mapping.items():
        p = _mapped_parent(j, mapping)
        if p is None:
            continue
        a = skeleton.parents[b]
        while a >= 0 and a != mapping[p]:
            a = skeleton.parents[a]
        if a < 0:
            raise RetargetError(f"bone map: {skeleton.names[b]!r} ({JOINT_NAMES[j]}) is not below "
                                f"{skeleton.names[mapping[p]]!r} ({JOINT_NAMES[p]}) in the target's hierarchy")
        if np.linalg.norm(skeleton.rest_positions[b] - skeleton.rest_positions[mapping[p]]) < 1e-4:
            raise RetargetError(f"bone map: {skeleton.names[b]!r} ({JOINT_NAMES[j]}) sits on "
                                f"{skeleton.names[mapping[p]]!r} ({JOINT_NAMES[p]}): a zero-length bone")
    return dict(sorted(mapping.items()))


def _mapped_parent(j: int, mapping: dict):
    p = PARENTS[j]
    while p >= 0 and p not in mapping:
        p = PARENTS[p]
    return None if p < 0 else p


def load_bone_map(path, skeleton: Skeleton) -> dict:
    """A JSON or YAML file {SMPL joint name (Pelvis, Left_hip, ...; any case): target bone name} ->
    {SMPL index: target index}; RetargetError naming the first bad entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RetargetError(f"bone map {path}: cannot read ({e})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415  (only here: Blender's Python, which runs this module, has no yaml)

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:       # the parsers' own errors: one line, naming the file
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        raise RetargetError(f"bone map {path}: not valid {kind} ({str(e).splitlines()[0][:120]})") from None
    return bone_map_from_dict(data, skeleton, f"bone map {path}")


def bone_map_from_dict(data, skeleton: Skeleton, what: str = "bone map") -> dict:
    if not isinstance(data, dict) or not data:
        raise RetargetError(f"{what}: must be a mapping {{SMPL joint name: bone name}}")
    joints = {n.lower(): i for i, n in enumerate(JOINT_NAMES[:NUM_JOINTS])}
    bones = {n: i for i, n in enumerate(skeleton.names)}
    out = {}
    for k, v in data.items():
        if not isinstance(k, str) or k.lower() not in joints:
            raise RetargetError(f"{what}: unknown joint {k!r}; the joints are {', '.join(JOINT_NAMES[:NUM_JOINTS])}")
        if not isinstance(v, str) or v not in bones:
            raise RetargetError(f"{what}: {k} -> {v!r} is not a bone of the target"
                                + (f" ({len(bones)} bones, e.g. {', '.join(list(bones)[:4])})" if bones else ""))
        if bones[v] in out.values():
            raise RetargetError(f"{what}: bone {v!r} is given to two joints")
        out[joints[k.lower()]] = bones[v]
    missing = _missing(out)
    if missing:
        raise RetargetError(f"{what}: lacks {_joint_list(missing)}")
    return _checked(skeleton, out)


# ----------------------------------------------------------------------------------------- the result
@dataclass
class TargetRig:
    """A motion on a target skeleton, in its own hierarchy: what io.bvh / io.gltf / io.fbx write."""
    skeleton: Skeleton
    rotations: np.ndarray              # (T, J, 3, 3) local (parent-relative) orientations, rest included
    mover: int                         # the joint whose translation moves (the mapped pelvis)
    translation: np.ndarray            # (T, 3) its local translation (in its parent's frame; metres)
    fps: float = FPS
    bone_map: dict = field(default_factory=dict)
    scheme: str = ""

    @property
    def names(self) -> tuple:
        return self.skeleton.names

    @property
    def parents(self) -> tuple:
        return self.skeleton.parents

    def world(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions (T, J, 3), orientations (T, J, 3, 3)) in the target's world, by forward kinematics."""
        t_rest, _ = self.skeleton.local_rest()
        T, J = len(self.rotations), len(self.names)
        pos, rot = np.zeros((T, J, 3)), np.zeros((T, J, 3, 3))
        for j, p in enumerate(self.parents):
            t = self.translation if j == self.mover else t_rest[j]
            if p < 0:
                rot[:, j], pos[:, j] = self.rotations[:, j], np.broadcast_to(t, (T, 3))
            else:
                rot[:, j] = rot[:, p] @ self.rotations[:, j]
                pos[:, j] = pos[:, p] + np.einsum("tab,tb->ta", rot[:, p], np.broadcast_to(t, (T, 3)))
        return pos, rot

    def joints(self) -> np.ndarray:
        return self.world()[0]

    def smpl_joints(self) -> np.ndarray:
        """(T, 22, 3) the mapped joints in SMPL order (NaN where a joint has no bone)."""
        pos = self.joints()
        out = np.full((len(pos), NUM_JOINTS, 3), np.nan)
        for j, b in self.bone_map.items():
            out[:, j] = pos[:, b]
        return out

    def bvh_rig(self):
        """The same motion as a BVH carries it (no rest orientations): offsets = the rest pose's world
        offsets in the file's units, channels = each joint's turn from rest relative to its parent's."""
        sk = self.skeleton
        pos, rot = self.world()
        delta = rot @ np.swapaxes(sk.rest_rotations, -1, -2)[None]
        local = delta.copy()
        offsets = np.zeros((len(sk.names), 3))
        for j, p in enumerate(sk.parents):
            if p >= 0:
                local[:, j] = np.swapaxes(delta[:, p], -1, -2) @ delta[:, j]
                offsets[j] = sk.rest_positions[j] - sk.rest_positions[p]
        offsets[0] = sk.rest_positions[0]
        translated = {0: pos[:, 0] / sk.unit}
        if self.mover != 0:
            p = sk.parents[self.mover]
            translated[self.mover] = np.einsum("tba,tb->ta", delta[:, p], pos[:, self.mover] - pos[:, p]) / sk.unit
        return _BVHRig(sk.names, sk.parents, offsets / sk.unit, local, translated[0], self.fps, translated)


@dataclass
class _BVHRig:
    names: tuple
    parents: tuple
    offsets: np.ndarray
    rotations: np.ndarray
    root: np.ndarray
    fps: float
    translated: dict


# ----------------------------------------------------------------------------------------- retargeting
def _snap(v: np.ndarray) -> np.ndarray:
    out = np.zeros(3)
    k = int(np.argmax(np.abs(v)))
    out[k] = np.sign(v[k])
    return out


def _leg_length(pos, hip, knee, ankle) -> float:
    return float(np.linalg.norm(pos[knee] - pos[hip]) + np.linalg.norm(pos[ankle] - pos[knee]))


class Retargeter:
    """The fixed part of retargeting onto one target (bone map, frame, rest alignment, scale), and
    the per-motion solve: `retarget(motion)` offline, `stream(joints, rotations)` chunk by chunk."""

    def __init__(self, skeleton: Skeleton, bone_map: dict | None = None, source_offsets=None, fps: float = FPS):
        self.skeleton = sk = skeleton
        if bone_map is None:
            self.scheme, self.map = detect_bone_map(sk)
        else:
            self.scheme, self.map = "given", _checked(sk, dict(bone_map))
        self.fps = float(fps)
        m = self.map
        self.mapped = tuple(j for j in range(NUM_JOINTS) if j in m)
        self.parent = {j: _mapped_parent(j, m) for j in self.mapped}
        self.kids = {j: [c for c in self.mapped if self.parent[c] == j] for j in self.mapped}
        # the target's frame: left from the hips, up from the pelvis to the neck / head, snapped to axes
        rest = sk.rest_positions
        top = m.get(NECK, m.get(HEAD))
        left, up = _snap(rest[m[L_HIP]] - rest[m[R_HIP]]), _snap(rest[top] - rest[m[PELVIS]])
        if abs(left @ up) > 0.5:
            raise RetargetError(f"{sk._what}: its hips and spine point along the same axis; not a standing humanoid")
        self.Q = np.stack([left, up, np.cross(left, up)])           # target world -> canonical (+X left, +Y up, +Z fwd)
        canon = rest @ self.Q.T
        self.leg = np.mean([_leg_length(canon, m[h], m[k], m[a]) for h, k, a in ((1, 4, 7), (2, 5, 8))])
        if not self.leg > 1e-3:
            raise RetargetError(f"{sk._what}: its legs have no length")
        ref = [m.get(f, m[a]) for f, a in ((L_FOOT, L_ANKLE), (R_FOOT, R_ANKLE))]   # the joints planted on the floor
        low = float(canon[ref, 1].min())
        self.floor = 0.0 if 0.0 <= low <= 0.1 * self.leg else low
        self.ref_height = float(canon[ref, 1].mean()) - self.floor  # planted reference joints' rest height
        self.rest = {j: canon[m[j]] for j in self.mapped}            # canonical rest positions of mapped joints
        self.offset = {c: self.rest[c] - self.rest[self.parent[c]] for c in self.mapped if c != PELVIS}
        self.set_source(SMPL_OFFSETS_24 if source_offsets is None else source_offsets)
        self._stream_state = None

    def set_source(self, offsets) -> None:
        """The source skeleton (24 or 22, 3) rest offsets along SMPL's T-pose: its rest bones, leg length."""
        off = np.asarray(offsets, dtype=np.float64)
        src = ik.rest_positions(off)[:NUM_JOINTS]
        self.source_offsets = off
        self.scale = self.leg / _leg_length(src, 1, 4, 7) * 0.5 + self.leg / _leg_length(src, 2, 5, 8) * 0.5
        self.align = {}
        for j in self.mapped:      # target rest bone -> source rest bone (A-pose, rolls, proportions)
            kids = self.kids[j]
            if len(kids) == 1:
                self.align[j] = ik.swing(self.offset[kids[0]], src[kids[0]] - src[j])
            elif kids:
                self.align[j] = ik.kabsch(np.stack([self.offset[c] for c in kids]),
                                          np.stack([src[c] - src[j] for c in kids]))
            else:
                self.align[j] = self.align[self.parent[j]]

    # ------------------------------------------------------------------ the solve
    def _pose(self, joints: np.ndarray, source_global: np.ndarray, root: np.ndarray) -> tuple[dict, dict]:
        """World turns from rest D (T, 3, 3) and positions (T, 3) of the mapped joints (canonical frame)."""
        D, pos = {}, {PELVIS: root}
        for j in self.mapped:
            guess = source_global[:, j] @ self.align[j]
            kids = self.kids[j]
            if len(kids) == 1:
                c = kids[0]
                D[j] = ik.swing(guess @ self.offset[c], joints[:, c] - joints[:, j]) @ guess
            elif kids:
                targets = np.stack([np.linalg.norm(self.offset[c]) * _unit(joints[:, c] - joints[:, j])
                                    for c in kids], 1)
                D[j] = ik.kabsch(np.stack([self.offset[c] for c in kids]), targets)
            else:
                D[j] = guess
            for c in kids:
                pos[c] = pos[j] + D[j] @ self.offset[c]
        return D, pos

    def _unshift(self, legs: np.ndarray) -> np.ndarray:
        legs = legs.copy()
        legs[..., 1] += self.ref_height
        return legs

    def _legs22(self, pos: dict) -> np.ndarray:
        """(T, 22, 3) the joints feet.py works on, heights relative to the planted reference height
        (toes, or ankles when the rig has no toe bones, at y = 0 when planted)."""
        T = len(pos[PELVIS])
        out = np.zeros((T, NUM_JOINTS, 3))
        for j in range(NUM_JOINTS):
            k = j
            while k not in pos:
                k = PARENTS[k] if k not in (L_FOOT, R_FOOT) else k - 3    # a missing toe: its ankle
            out[:, j] = pos[k]
        out[..., 1] -= self.ref_height
        return out

    def _refit_legs(self, D: dict, pos: dict, legs: np.ndarray) -> None:
        """Turn thighs and shins onto the IK's knees and ankles (feet keep their orientation)."""
        for hip, knee, ankle in ((1, 4, 7), (2, 5, 8)):
            new_knee, new_ankle = legs[:, knee], legs[:, ankle]
            D[hip] = ik.swing(pos[knee] - pos[hip], new_knee - pos[hip]) @ D[hip]
            pos[knee] = pos[hip] + D[hip] @ self.offset[knee]
            D[knee] = ik.swing(D[knee] @ self.offset[ankle], new_ankle - pos[knee]) @ D[knee]
            pos[ankle] = pos[knee] + D[knee] @ self.offset[ankle]

    def _source(self, joints, rotations):
        j = ik._check_joints(joints)
        if rotations is None:
            rotations, _ = ik.solve_rotations(j, self.source_offsets)
        return j, ik.global_rotations(np.asarray(rotations, dtype=np.float64))

    def retarget(self, joints, rotations=None, contacts=None) -> TargetRig:
        """Offline: source joints (T, 22, 3) on the floor (Y up, e.g. io.rig.Motion.joints), their local
        rotations (T, 22, 3, 3) on `source_offsets` (Motion.rotations; None: solved without twist),
        the source's foot contacts (T, 2) (None: detected on the joints)."""
        j, g = self._source(joints, rotations)
        if contacts is None:
            contacts = feet.foot_contacts(j, fps=self.fps)
        root = j[:, PELVIS] * self.scale
        D, pos = self._pose(j, g, root)
        legs, vertical = feet.ground_by_contacts(self._legs22(pos), contacts, self.fps)
        legs, _ = feet.clean_feet(legs, self.fps, contacts=contacts)
        lift = feet.lift_offsets(legs)
        legs[..., 1] += lift[:, None]
        for k in pos:
            pos[k] = pos[k] + np.stack([np.zeros_like(lift), vertical + lift, np.zeros_like(lift)], -1)
        self._refit_legs(D, pos, self._unshift(legs))
        return self._target_rig(D, pos[PELVIS])

    def stream(self, joints, rotations=None) -> TargetRig:
        """Causal: the next chunk of a stream (frames in order; the stream's own floor, y = 0). The
        feet are cleaned by feet.FootCleaner on the target's legs; call reset_stream() between streams."""
        j, g = self._source(joints, rotations)
        if self._stream_state is None:
            self._stream_state = feet.FootCleaner(self.fps)
        D, pos = self._pose(j, g, j[:, PELVIS] * self.scale)
        raw = self._legs22(pos)
        legs = self._stream_state(raw)
        shift = legs[:, PELVIS, 1] - raw[:, PELVIS, 1]                 # the cleaner's lift of the body
        for k in pos:
            pos[k] = pos[k] + np.stack([np.zeros_like(shift), shift, np.zeros_like(shift)], -1)
        self._refit_legs(D, pos, self._unshift(legs))
        return self._target_rig(D, pos[PELVIS])

    def reset_stream(self) -> None:
        self._stream_state = None

    def _target_rig(self, D: dict, pelvis: np.ndarray) -> TargetRig:
        """World turns of the mapped joints (canonical) -> local orientations of every target bone."""
        sk, Q = self.skeleton, self.Q
        T, J = len(pelvis), len(sk.names)
        group, owner = {}, {b: j for j, b in self.map.items()}
        for b, p in enumerate(sk.parents):        # each bone turns with its nearest mapped ancestor (or itself)
            group[b] = owner.get(b, group[p] if p >= 0 else None)
        world = np.empty((T, J, 3, 3))
        eye = np.broadcast_to(np.eye(3), (T, 3, 3))
        for b in range(J):
            d = eye if group[b] is None else Q.T @ D[group[b]] @ Q          # the turn in the file's axes
            world[:, b] = d @ sk.rest_rotations[b]
        local = world.copy()
        for b, p in enumerate(sk.parents):
            if p >= 0:
                local[:, b] = np.swapaxes(world[:, p], -1, -2) @ world[:, b]
        mover = self.map[PELVIS]
        pelvis_world = (pelvis + [0.0, self.floor, 0.0]) @ Q                # canonical -> file axes
        p = sk.parents[mover]
        if p < 0:
            translation = pelvis_world
        else:   # the pelvis's ancestors stay at rest: its translation in the parent's rest frame
            translation = (pelvis_world - sk.rest_positions[p]) @ sk.rest_rotations[p]
        return TargetRig(sk, local, mover, translation, self.fps, dict(self.map), self.scheme)

    def expected_joints(self, joints) -> np.ndarray:
        """(T, 22, 3) where each mapped joint would be if the target were the source scaled by leg
        length (in the target's world; NaN for unmapped joints): what end effectors are compared with."""
        j = ik._check_joints(joints)
        out = np.full(j.shape, np.nan)
        for k in self.mapped:
            out[:, k] = (j[:, k] * self.scale + [0.0, self.floor, 0.0]) @ self.Q
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def retarget_motion(motion, skeleton: Skeleton, bone_map: dict | None = None) -> TargetRig:
    """An io.rig.Motion (prepare_motion's: rigid, grounded) onto `skeleton`."""
    r = Retargeter(skeleton, bone_map, motion.offsets, motion.fps)
    return r.retarget(motion.joints, motion.rotations)


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions w, x, y, z -> (..., 3, 3) rotation matrices (normalised first)."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    return m.reshape(q.shape[:-1] + (3, 3))
