"""The SMPL 22-joint body skeleton used by the 272-dim format (facts: shared spec, sections 3 and 4).

Joint order is SMPL's. Rest offsets are SMPL neutral with betas 0 (as in the released template BVH);
they are used for BVH output and by the synthetic motion generator.
"""
from __future__ import annotations

import numpy as np

from motionstreamer import NUM_JOINTS

JOINT_NAMES = (
    "Pelvis", "Left_hip", "Right_hip", "Spine1", "Left_knee", "Right_knee", "Spine2",
    "Left_ankle", "Right_ankle", "Spine3", "Left_foot", "Right_foot", "Neck", "Left_collar",
    "Right_collar", "Head", "Left_shoulder", "Right_shoulder", "Left_elbow", "Right_elbow",
    "Left_wrist", "Right_wrist", "Left_palm", "Right_palm",
)  # 24 names: the two palms exist only in BVH output

# Parents of the 24 SMPL joints; the first 22 are the body skeleton.
PARENTS_24 = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
PARENTS = PARENTS_24[:NUM_JOINTS]

# SMPL neutral rest offsets (m), joint minus parent; offset[0] is the absolute pelvis rest position.
SMPL_OFFSETS_24 = np.array([
    [-0.001795, -0.223333, 0.028219],
    [0.069520, -0.091406, -0.006815],
    [-0.067670, -0.090522, -0.004320],
    [-0.002533, 0.108963, -0.026696],
    [0.034277, -0.375199, -0.004496],
    [-0.038290, -0.382569, -0.008850],
    [0.005487, 0.135180, 0.001092],
    [-0.013596, -0.397960, -0.043693],
    [0.015774, -0.398415, -0.042312],
    [0.001457, 0.052922, 0.025425],
    [0.026358, -0.055791, 0.119288],
    [-0.025372, -0.048144, 0.123348],
    [-0.002778, 0.213870, -0.042857],
    [0.078845, 0.121749, -0.034090],
    [-0.081759, 0.118833, -0.038615],
    [0.005152, 0.064970, 0.051349],
    [0.090977, 0.030469, -0.008868],
    [-0.096012, 0.032551, -0.009143],
    [0.259612, -0.012772, -0.027456],
    [-0.253742, -0.013329, -0.021401],
    [0.249234, 0.008986, -0.001171],
    [-0.255298, 0.007772, -0.005559],
    [0.084042, -0.008162, -0.014945],
    [-0.084622, -0.006117, -0.010315],
], dtype=np.float64)
SMPL_OFFSETS = SMPL_OFFSETS_24[:NUM_JOINTS]

# HumanML3D's t2m_kinematic_chain, with the colours the reference renderer uses.
KINEMATIC_CHAIN = (
    (0, 2, 5, 8, 11),      # right leg
    (0, 1, 4, 7, 10),      # left leg
    (0, 3, 6, 9, 12, 15),  # spine, head
    (9, 14, 17, 19, 21),   # right arm
    (9, 13, 16, 18, 20),   # left arm
)
CHAIN_COLORS = ("red", "blue", "black", "red", "blue")

# Left/right joint pairs swapped by mirroring (left first); the other joints are the centre line.
MIRROR_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))
LEFT_JOINTS = tuple(left for left, _ in MIRROR_PAIRS)
RIGHT_JOINTS = tuple(right for _, right in MIRROR_PAIRS)
# Leg joints as (left, right). FEET are the toe-base "foot" joints: the format's contact joints.
HIPS, KNEES, ANKLES, FEET = (1, 2), (4, 5), (7, 8), (10, 11)
GROUND_JOINTS = ANKLES + FEET      # the joints that must never be below the floor


def mirror_permutation(num_joints: int = NUM_JOINTS) -> np.ndarray:
    """Index array that swaps every left joint with its right twin."""
    perm = np.arange(num_joints)
    for a, b in MIRROR_PAIRS:
        if b < num_joints:
            perm[a], perm[b] = b, a
    return perm


def forward_kinematics(local_rotations, root_position, offsets=SMPL_OFFSETS):
    """Global joint positions from rotations.

    local_rotations: (..., 22, 3, 3); entry 0 is the pelvis global rotation, entries 1..21 are
    parent-relative. root_position: (..., 3) pelvis position. offsets: (22, 3) rest offsets
    (offset[0] is ignored). Works on numpy arrays and torch tensors. Returns (..., 22, 3).
    """
    is_np = isinstance(local_rotations, np.ndarray)
    n = local_rotations.shape[-3]
    global_rot = [local_rotations[..., 0, :, :]]
    positions = [root_position]
    if is_np:
        offsets = np.asarray(offsets, dtype=local_rotations.dtype)
    else:   # torch only here: this module is numpy-only at import (Blender's Python runs it, io/blender_addon.py)
        import torch  # noqa: PLC0415

        offsets = torch.as_tensor(np.asarray(offsets), dtype=local_rotations.dtype, device=local_rotations.device)
    for j in range(1, n):
        p = PARENTS[j]
        rot_p = global_rot[p]
        off = offsets[j]
        positions.append(positions[p] + (rot_p @ off[..., None])[..., 0])
        global_rot.append(rot_p @ local_rotations[..., j, :, :])
    if is_np:
        return np.stack(positions, axis=-2)
    return torch.stack(positions, dim=-2)
