"""BVH output in the released converter's exact format (spec §3), and a small BVH reader.

Every BVH is written in that format from an `io.rig.Rig` (names, offsets, rotations, root): by
default the motion's own skeleton with rotations solved from its joints (`features_to_bvh`, the CLI);
`write_bvh` / `bvh_text` / skeleton 'smpl-neutral' + rotations 'model' are the converter's file.
Frames are converted and written a block at a time, so memory does not grow with the clip.

Format (byte-compatible with `representation_272_to_bvh.py`, whose writer comes from smpl2bvh):
- the 24-joint SMPL hierarchy, depth-first from the pelvis with children in increasing SMPL index
  (file order 0,1,4,7,10,2,5,8,11,3,6,9,12,15,13,16,18,20,22,14,17,19,21,23), tab-indented;
- OFFSETs are the rig's rest offsets (the converter's: SMPL neutral, betas 0); leaves (feet, head, palms) end in an
  `End Site` with OFFSET 0 0 0;
- root `CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation ` (trailing space),
  others `CHANNELS 3 Zrotation Yrotation Xrotation`;
- MOTION: `Frames: T`, `Frame Time: %f` (0.033333 at 30 fps; every other layout writes the exact
  0.03333333333333333, which Blender reads as 30 fps, not 30.0003), then per frame 75 values printed %f,
  each followed by a space: root position, then [z, y, x] Euler degrees (R = Rz Ry Rx) of every joint
  in file order; the palms are always 0 0 0;
- root position = offset[0] + (tau_x, h, tau_z) as the converter writes it (the rest pelvis sits at
  offset[0], so the BVH floor is about 0.22 m below y = 0); floor_at_zero=True writes (tau_x, h, tau_z)
  so the pelvis is where recover_joints puts it (no longer byte-compatible).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motionstreamer import FEATURE_DIM, FPS
from motionstreamer.io.motion_io import check_fps
from motionstreamer.io.rig import RIG_NAMES, Rig, _pad24, make_rig, prepare_motion
from motionstreamer.representation.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS_24, SMPL_OFFSETS_24
from motionstreamer.utils import as_numeric_array, atomic_path, check_finite

NUM_BVH_JOINTS = len(JOINT_NAMES)   # 24: the 22 body joints and the two palms
ROOT_CHANNELS = ("Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation")
JOINT_CHANNELS = ("Zrotation", "Yrotation", "Xrotation")


def _children(j: int, parents=PARENTS_24) -> list[int]:
    return [c for c in range(len(parents)) if parents[c] == j]


def _depth_first(j: int = 0, parents=PARENTS_24) -> list[int]:
    return [j] + [k for c in _children(j, parents) for k in _depth_first(c, parents)]


# SMPL indices in file order (each joint's channels appear in this order in a frame line).
JOINT_ORDER = tuple(_depth_first())


def hierarchy_text(offsets=SMPL_OFFSETS_24, names=JOINT_NAMES, parents=PARENTS_24, translated=(0,)) -> str:
    """The HIERARCHY block (ending with a newline): the 24-joint SMPL skeleton, or any tree whose
    `parents` list its root first (-1); the joints in `translated` (the root) have position channels."""
    lines = ["HIERARCHY"]

    def visit(j: int, ind: str) -> None:
        o = offsets[j]
        lines.append(f"{ind}{'ROOT' if j == 0 else 'JOINT'} {names[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}\tOFFSET {o[0]:f} {o[1]:f} {o[2]:f}")
        if j in translated:
            lines.append(f"{ind}\tCHANNELS 6 {' '.join(ROOT_CHANNELS)} ")
        else:
            lines.append(f"{ind}\tCHANNELS 3 {' '.join(JOINT_CHANNELS)}")
        kids = _children(j, parents)
        for c in kids:
            visit(c, ind + "\t")
        if not kids:
            lines.extend([f"{ind}\tEnd Site", f"{ind}\t{{", f"{ind}\t\tOFFSET {0.0:f} {0.0:f} {0.0:f}", f"{ind}\t}}"])
        lines.append(f"{ind}}}")

    visit(0, "")
    return "\n".join(lines) + "\n"


def _converter_rig(rotations, translation, fps: float, floor_at_zero: bool):
    """The released converter's rig: SMPL-neutral offsets, these rotations, root = offset[0] + translation."""

    rot = as_numeric_array(rotations, "rotations").astype(np.float64)
    trans = as_numeric_array(translation, "translation").astype(np.float64)
    if rot.ndim != 4 or rot.shape[1:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"rotations must have shape (frames, 22, 3, 3), got {rot.shape}")
    if rot.shape[0] == 0:
        raise ValueError("rotations has no frames")
    if trans.shape != (rot.shape[0], 3):
        raise ValueError(f"translation must have shape ({rot.shape[0]}, 3) to match rotations, got {trans.shape}")
    check_finite("rotations", rot)
    check_finite("translation", trans)
    fps = check_fps(fps)
    root = trans if floor_at_zero else trans + SMPL_OFFSETS_24[0]
    return Rig(RIG_NAMES["smpl"], SMPL_OFFSETS_24, _pad24(rot), root, fps)


FRAMES_PER_WRITE = 512    # frame lines converted and written at a time: memory stays bounded


def frame_time_text(fps: float, converter: bool = False) -> str:
    """The Frame Time value: the shortest text that reads back as exactly 1 / fps (Blender's importer then
    sets exactly 30 fps: `0.03333333333333333`), or the converter's six decimals (`0.033333`: 30.0003 fps)."""
    return f"{1.0 / fps:f}" if converter else repr(1.0 / fps)


def write_bvh_stream(out, rig, converter: bool = False) -> None:
    """Write `rig` (io.rig.Rig, or any rig with names, parents, offsets, rotations (T, J, 3, 3), root
    (T, 3), fps, and optionally `translated` {joint: (T, 3)}, the joints with position channels) as BVH
    text to the text stream `out`, a block of frames at a time. converter: the released converter's
    six-decimal frame time (byte compatibility)."""

    check_fps(rig.fps)
    T = len(rig.root)
    translated = getattr(rig, "translated", None) or {0: rig.root}
    out.write(hierarchy_text(rig.offsets, rig.names, rig.parents, tuple(translated)))
    out.write(f"MOTION\nFrames: {T}\nFrame Time: {frame_time_text(rig.fps, converter)}\n")
    # torch only when a BVH is written: reading one stays numpy (Blender's Python runs it, the add-on)
    from motionstreamer.representation.rotation import matrix_to_euler_zyx  # noqa: PLC0415

    order = _depth_first(0, rig.parents)
    for start in range(0, T, FRAMES_PER_WRITE):
        rot = rig.rotations[start:start + FRAMES_PER_WRITE]
        check_finite(f"rotations (frames {start}..)", rot)
        check_finite(f"root positions (frames {start}..)", rig.root[start:start + FRAMES_PER_WRITE])
        euler = matrix_to_euler_zyx(np.ascontiguousarray(rot[:, order]), degrees=True)   # [z, y, x] per joint
        n = len(rot)
        values = np.concatenate([part for k, j in enumerate(order) for part in (
            (translated[j][start:start + n],) if j in translated else ()) + (euler[:, k],)], axis=1)
        np.savetxt(out, values, fmt="%f", delimiter=" ", newline=" \n")   # every value followed by a space


def write_rig_bvh(path: str | Path, rig, converter: bool = False) -> Path:
    """Write a Rig (io.rig) as a BVH file, atomically and streaming (memory does not grow with T)."""

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            write_bvh_stream(f, rig, converter)
    return path


def bvh_text(rotations, translation, fps: float = FPS, floor_at_zero: bool = False) -> str:
    """The released converter's BVH as text (for small clips; files are written streaming).
    rotations (T, 22, 3, 3): [0] pelvis global rotation, [1:] parent-local (recover_rotations' output);
    translation (T, 3): pelvis position (tau_x, h, tau_z)."""
    out = io.StringIO()
    write_bvh_stream(out, _converter_rig(rotations, translation, fps, floor_at_zero), converter=True)
    return out.getvalue()


def write_bvh(path: str | Path, rotations, translation, fps: float = FPS, floor_at_zero: bool = False) -> Path:
    """Write rotations (T, 22, 3, 3) + pelvis translation (T, 3) as the released converter's BVH
    (atomic, streaming); returns the path."""
    return write_rig_bvh(path, _converter_rig(rotations, translation, fps, floor_at_zero), converter=True)


def features_to_bvh(path: str | Path, features, fps: float = FPS, floor_at_zero: bool = False,
                    skeleton: str = "motion", rotations: str = "solved", rig: str = "smpl",
                    clean_feet: bool = False) -> Path:
    """De-normalised 272 features (T, 272) -> BVH.

    Default: the motion's own skeleton with rotations solved from its joint positions, grounded (the
    joints of `io.rig.prepare_motion`, i.e. what PREFIX_joints.npy holds). skeleton='smpl-neutral',
    rotations='model' is the released converter's output (rot-mode inverse, spec §2.3), byte for byte;
    floor_at_zero applies to it only. rig: 'smpl' or 'mixamo' joint names."""

    x = as_numeric_array(features, "features").astype(np.float64)
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
        raise ValueError(f"features must have shape (frames, {FEATURE_DIM}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("features has no frames")
    check_finite("features", x)
    if skeleton == "smpl-neutral" and rotations == "model" and rig == "smpl" and not clean_feet:
        # the model's rotations as they are: no solve needed
        from motionstreamer.representation.features import recover_rotations  # noqa: PLC0415  (torch: as above)

        return write_bvh(path, *recover_rotations(x), fps=fps, floor_at_zero=floor_at_zero)
    motion = prepare_motion(x, clean_feet=clean_feet, fps=fps)
    converter = skeleton == "smpl-neutral" and rotations == "model"
    return write_rig_bvh(path, make_rig(motion, skeleton, rotations, rig, converter=True, floor_at_zero=floor_at_zero),
                         converter)


# ---------------------------------------------------------------------------------------------- reading

@dataclass
class BVH:
    """A parsed BVH file. Joints are in file order; End Sites are not joints."""
    names: list[str]
    parents: list[int]            # index into names, -1 for the root
    offsets: np.ndarray           # (J, 3)
    channels: list[tuple[str, ...]]
    frame_time: float
    motion: np.ndarray            # (T, total channels), columns in file order

    def channel_values(self, joint: int) -> np.ndarray:
        """(T, len(channels[joint])) values of one joint's channels."""
        start = sum(len(c) for c in self.channels[:joint])
        return self.motion[:, start:start + len(self.channels[joint])]

    def local_rotations(self) -> np.ndarray:
        """(T, J, 3, 3): the product of each joint's rotation channels in file order (R = R1 R2 R3)."""
        T, J = self.motion.shape[0], len(self.names)
        out = np.tile(np.eye(3), (T, J, 1, 1))
        for j in range(J):
            vals = self.channel_values(j)
            for k, ch in enumerate(self.channels[j]):
                if ch.endswith("rotation"):
                    out[:, j] = out[:, j] @ _axis_rotation(ch[0].lower(), np.deg2rad(vals[:, k]))
        return out

    def local_translations(self) -> np.ndarray:
        """(T, J, 3): each joint's offset, replaced per axis by its position channels when it has them."""
        T, J = self.motion.shape[0], len(self.names)
        out = np.broadcast_to(self.offsets, (T, J, 3)).copy()
        for j in range(J):
            vals = self.channel_values(j)
            for k, ch in enumerate(self.channels[j]):
                if ch.endswith("position"):
                    out[:, j, "xyz".index(ch[0].lower())] = vals[:, k]
        return out

    def global_positions(self) -> np.ndarray:
        """(T, J, 3) joint positions by forward kinematics over the file's hierarchy."""
        rot, trans = self.local_rotations(), self.local_translations()
        g_rot, g_pos = np.empty_like(rot), np.empty_like(trans)
        for j, p in enumerate(self.parents):   # parents precede children in a BVH file
            if p < 0:
                g_rot[:, j], g_pos[:, j] = rot[:, j], trans[:, j]
            else:
                g_pos[:, j] = g_pos[:, p] + (g_rot[:, p] @ trans[:, j, :, None])[..., 0]
                g_rot[:, j] = g_rot[:, p] @ rot[:, j]
        return g_pos


def _axis_rotation(axis: str, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(angle.shape + (3, 3))
    i, k = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    a = "xyz".index(axis)
    m[..., a, a] = 1.0
    m[..., i, i] = c
    m[..., k, k] = c
    m[..., i, k] = -s
    m[..., k, i] = s
    return m


_VALID_CHANNELS = {f"{a}{kind}" for a in "XYZ" for kind in ("position", "rotation")}


def read_bvh(path: str | Path) -> BVH:
    """Parse a BVH file; ValueError naming the file and line for malformed input."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BVH file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    names, parents, offsets, channels = [], [], [], []
    stack: list[int] = []          # open joints; -2 marks an open End Site
    i = 0

    def fail(msg: str):
        raise ValueError(f"{path}:{i + 1}: {msg}")

    def numbers(tokens: list[str], count: int, what: str) -> list[float]:
        if len(tokens) != count:
            fail(f"{what} needs {count} numbers, got {len(tokens)}")
        try:
            return [float(t) for t in tokens]
        except ValueError:
            fail(f"{what} has a non-number in {' '.join(tokens)!r}")

    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != "HIERARCHY":
        fail("expected HIERARCHY")
    i += 1
    while i < len(lines):
        tok = lines[i].split()
        if not tok:
            i += 1
            continue
        key = tok[0]
        if key in ("ROOT", "JOINT"):
            if (key == "ROOT") != (not stack) or (key == "ROOT" and names):
                fail(f"{key} in the wrong place")
            if len(tok) != 2:
                fail(f"{key} needs one name")
            parents.append(stack[-1] if stack else -1)
            names.append(tok[1])
            offsets.append(None)
            channels.append(None)
        elif key == "End" and tok[1:] == ["Site"]:
            if not stack or stack[-1] < 0:
                fail("End Site outside a joint")
        elif key == "{":
            prev = lines[i - 1].split() if i else []
            stack.append(-2 if prev[:1] == ["End"] else len(names) - 1)
        elif key == "}":
            if not stack:
                fail("unbalanced '}'")
            stack.pop()
        elif key == "OFFSET":
            vals = numbers(tok[1:], 3, "OFFSET")
            if not stack:
                fail("OFFSET outside a joint")
            if stack[-1] >= 0:
                offsets[stack[-1]] = vals
        elif key == "CHANNELS":
            if not stack or stack[-1] < 0:
                fail("CHANNELS outside a joint")
            try:
                n = int(tok[1])
            except (IndexError, ValueError):
                fail("CHANNELS needs a count")
            if len(tok) != n + 2 or any(c not in _VALID_CHANNELS for c in tok[2:]):
                fail(f"CHANNELS {n} must be followed by {n} channel names, got {tok[2:]}")
            channels[stack[-1]] = tuple(tok[2:])
        elif key == "MOTION":
            break
        else:
            fail(f"unexpected {key!r} in HIERARCHY")
        i += 1
    if i >= len(lines):
        fail("missing MOTION section")
    if stack or not names:
        fail("unbalanced braces or no joints before MOTION")
    for j, n in enumerate(names):
        if offsets[j] is None:
            fail(f"joint {n!r} has no OFFSET")
        if channels[j] is None:
            channels[j] = ()
    i += 1
    header = {}
    for key in ("Frames:", "Frame Time:"):
        if i >= len(lines) or not lines[i].strip().startswith(key):
            fail(f"expected '{key}'")
        header[key] = lines[i].strip()[len(key):].strip()
        i += 1
    try:
        n_frames, frame_time = int(header["Frames:"]), float(header["Frame Time:"])
    except ValueError:
        i -= 2
        fail(f"bad Frames / Frame Time values {header}")
    width = sum(len(c) for c in channels)
    rows = []
    for row in range(n_frames):
        if i >= len(lines):
            fail(f"expected {n_frames} frames, found {row}")
        vals = numbers(lines[i].split(), width, f"frame {row}")
        rows.append(vals)
        i += 1
    motion = np.array(rows, dtype=np.float64).reshape(n_frames, width)
    return BVH(names, parents, np.array(offsets, dtype=np.float64), channels, frame_time, motion)
