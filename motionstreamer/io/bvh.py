"""BVH output (spec §3): SMPL 24-joint hierarchy, ZYX Euler channels in degrees, 30 fps.

Hierarchy depth-first from the pelvis with children in increasing SMPL index; End Sites (offset 0)
on the feet, head and palms; root channels Xposition Yposition Zposition Zrotation Yrotation
Xrotation, others Zrotation Yrotation Xrotation; rest offsets of SMPL neutral (betas 0). The root
position is offset[0] + (tau_x, h, tau_z) as the released converter writes it (floor_at_zero=True
writes (tau_x, h, tau_z), putting the rest-pose floor at y = 0 instead).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from motionstreamer.representation.rotation import matrix_to_euler_zyx
from motionstreamer.representation.skeleton import JOINT_NAMES, PARENTS_24, SMPL_OFFSETS_24


def _children(j: int) -> list[int]:
    return [c for c in range(24) if PARENTS_24[c] == j]


def hierarchy_order() -> list[int]:
    order = []

    def visit(j):
        order.append(j)
        for c in _children(j):
            visit(c)
    visit(0)
    return order


def _hierarchy_text() -> str:
    lines = ["HIERARCHY"]

    def visit(j, depth):
        ind = "\t" * depth
        off = SMPL_OFFSETS_24[j]
        lines.append(f"{ind}{'ROOT' if j == 0 else 'JOINT'} {JOINT_NAMES[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}\tOFFSET {off[0]:f} {off[1]:f} {off[2]:f}")
        if j == 0:
            lines.append(f"{ind}\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation ")
        else:
            lines.append(f"{ind}\tCHANNELS 3 Zrotation Yrotation Xrotation ")
        kids = _children(j)
        for c in kids:
            visit(c, depth + 1)
        if not kids:
            lines.append(f"{ind}\tEnd Site")
            lines.append(f"{ind}\t{{")
            lines.append(f"{ind}\t\tOFFSET 0.000000 0.000000 0.000000")
            lines.append(f"{ind}\t}}")
        lines.append(f"{ind}}}")
    visit(0, 0)
    return "\n".join(lines)


def bvh_text(rotations, translation, fps: int = 30, floor_at_zero: bool = False) -> str:
    rot = np.asarray(rotations, dtype=np.float64)
    trans = np.asarray(translation, dtype=np.float64)
    if rot.ndim != 4 or rot.shape[1:] != (22, 3, 3):
        raise ValueError(f"rotations must be (frames, 22, 3, 3), got {rot.shape}")
    if trans.shape != (rot.shape[0], 3):
        raise ValueError(f"translation must be ({rot.shape[0]}, 3), got {trans.shape}")
    if not (np.all(np.isfinite(rot)) and np.all(np.isfinite(trans))):
        raise ValueError("rotations/translation contain NaN or inf")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    T = rot.shape[0]
    euler = np.zeros((T, 24, 3))
    euler[:, :22] = matrix_to_euler_zyx(rot, degrees=True)      # (z, y, x); palms stay 0
    root = trans if floor_at_zero else trans + SMPL_OFFSETS_24[0]
    order = hierarchy_order()
    values = np.concatenate([root, euler[:, order].reshape(T, -1)], axis=1)   # 3 + 72 = 75
    body = "\n".join(" ".join(f"{v:f}" for v in row) + " " for row in values)
    return f"{_hierarchy_text()}\nMOTION\nFrames: {T}\nFrame Time: {1.0 / fps:f}\n{body}\n"


def write_bvh(path: str | Path, rotations, translation, fps: int = 30, floor_at_zero: bool = False) -> Path:
    from motionstreamer.utils import atomic_write_text

    path = Path(path)
    atomic_write_text(path, bvh_text(rotations, translation, fps, floor_at_zero))
    return path


def features_to_bvh(path: str | Path, features, fps: int = 30, floor_at_zero: bool = False) -> Path:
    """De-normalised (T, 272) features -> BVH via the rot-mode inverse."""
    from motionstreamer.representation.features import recover_rotations

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 272:
        raise ValueError(f"features must be (frames, 272), got {x.shape}")
    rot, trans = recover_rotations(x)
    return write_bvh(path, rot, trans, fps, floor_at_zero)
