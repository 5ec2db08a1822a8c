"""The 272-dim representation: joints + rotations -> features, and the two inverses (spec §1.4, §2).

Layout per frame (22 joints; joint j: position 8+3j, velocity 74+3j, rotation 140+6j):
  [0:2]     root XZ displacement (vx, vz), rotated by the PREVIOUS frame's heading H[t-1]
  [2:8]     6D of the heading delta Ry(phi[t] - phi[t-1])
  [8:74]    root-centred, heading-free joint positions H[t] (P[t,j] - (root.x, 0, root.z));
            y is the height above the clip floor, so dim 9 is the pelvis height
  [74:140]  frame differences of [8:74]
  [140:272] 6D (rows 0, 1) of H[t] R_pelvis[t] for joint 0 and the SMPL parent-local rotations of 1..21
with `phi[t] = -atan2(R[t][0,2], R[t][2,2])` (minus the yaw of the pelvis local +Z) and `H[t] = Ry(phi[t])`.

Row-0 conventions (T frames in, T frames out): row 0 holds zero root velocity, the identity heading
delta [1,0,0,0,1,0] and zero joint velocities, so row 0 = [0,0, 1,0,0,0,1,0, 0,h0,0, ...]. The
inverses start from H[-1] = I: H_hat[0] = mat(x[0,2:8]), H_hat[t] = mat(x[t,2:8]) @ H_hat[t-1]
(left-multiplied); the root velocity of row 0 is added unrotated, row t >= 1 uses H_hat[t-1]^T.

All functions take numpy arrays or torch tensors with leading batch dims (..., T, ...) and return
the same kind with the input's float dtype (mixed dtypes are promoted).
"""
from __future__ import annotations

import torch

from motionstreamer import FEATURE_DIM, NUM_JOINTS
from motionstreamer.representation.rotation import (
    array_api,
    check_trailing,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
    rot_y,
)

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# Slices of the layout (spec §1.5).
ROOT_VELOCITY = slice(0, 2)
HEADING_DELTA = slice(2, 8)
POSITIONS = slice(8, 8 + 3 * NUM_JOINTS)
VELOCITIES = slice(8 + 3 * NUM_JOINTS, 8 + 6 * NUM_JOINTS)
ROTATIONS = slice(8 + 6 * NUM_JOINTS, FEATURE_DIM)


def _check_motion(fn: str, joints, rotations) -> torch.dtype:
    check_trailing(joints, (NUM_JOINTS, 3), "joints", fn, "..., T")
    check_trailing(rotations, (NUM_JOINTS, 3, 3), "rotations", fn, "..., T")
    if tuple(joints.shape[:-2]) != tuple(rotations.shape[:-3]):
        raise ValueError(f"{fn}: joints {tuple(joints.shape)} and rotations {tuple(rotations.shape)} "
                         "disagree on the leading (..., T) dims")
    if joints.shape[-3] < 1:
        raise ValueError(f"{fn}: joints has no frames (T = 0)")
    for name, x in (("joints", joints), ("rotations", rotations)):
        if not torch.isfinite(x).all():
            bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
            raise ValueError(f"{fn}: {name} contains NaN/inf (first at index {tuple(bad)})")
    return torch.promote_types(joints.dtype, rotations.dtype)


@array_api
def heading_angle(pelvis_rotation):
    """phi = -atan2(R[0,2], R[2,2]) for (..., 3, 3) pelvis global rotations: minus the yaw of the
    pelvis local +Z axis, so that Ry(phi) turns the facing direction onto +Z."""
    return -torch.atan2(pelvis_rotation[..., 0, 2], pelvis_rotation[..., 2, 2])


def accumulate_headings(delta: torch.Tensor) -> torch.Tensor:
    """H[t] = delta[t] @ H[t-1], H[-1] = I, for (..., T, 3, 3) deltas (spec §2.1).

    A Hillis-Steele prefix product: log2(T) batched matmuls instead of T sequential ones. Each step
    left-multiplies a window by the older window before it, so the product order is the reference's.
    """
    h, step, T = delta, 1, delta.shape[-3]
    while step < T:
        h = torch.cat([h[..., :step, :, :], h[..., step:, :, :] @ h[..., :-step, :, :]], dim=-3)
        step *= 2
    return h


def headings_from_features(features: torch.Tensor) -> torch.Tensor:
    """Recovered heading matrices H_hat (..., T, 3, 3) of de-normalised features."""
    return accumulate_headings(rot6d_to_matrix(features[..., HEADING_DELTA]))


def root_translation(features: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
    """tau[t] = sum_{k<=t} v[k]: v[0] = (x0, 0, x1) unrotated, v[t] = H[t-1]^T (x0, 0, x1) (spec §2.2).
    Returns (..., T, 3) with y = 0.

    Only x and z are accumulated, as the original and the streaming recovery (runtime/kinematics.py) do:
    generated heading deltas are not pure yaw rotations (small tilts), so H^T v has a small y part, and
    summing it over a stream would sink or lift the whole body (0.17 m over 28 s, measured). The
    height is dim 9, absolute per frame."""
    vel = torch.stack([features[..., 0], torch.zeros_like(features[..., 0]), features[..., 1]], -1)
    rotated = torch.einsum("...tba,...tb->...ta", headings[..., :-1, :, :], vel[..., 1:, :])
    tau = torch.cumsum(torch.cat([vel[..., :1, :], rotated], dim=-2), dim=-2)
    return tau * torch.tensor([1.0, 0.0, 1.0], dtype=tau.dtype, device=tau.device)


@array_api
def canonicalize_facing(joints, rotations):
    """Rotate the whole clip about the world Y axis (through the origin) so that frame 0's pelvis
    local +Z projects onto world +Z (spec §1.2, applied to joints instead of SMPL parameters).

    joints (..., T, 22, 3) world positions (Y-up); rotations (..., T, 22, 3, 3) with [0] the pelvis
    global rotation and [1:] parent-local. Returns (joints, rotations); only [0] rotations change.
    joints_to_272 of the result equals that of the face-z'd SMPL parameters, since the floor and
    XZ origin are re-centred afterwards.
    """
    dtype = _check_motion("canonicalize_facing", joints, rotations)
    joints, rotations = joints.to(dtype), rotations.to(dtype)
    r0 = rotations[..., 0, 0, :, :]                                          # (..., 3, 3)
    q = rot_y(heading_angle(r0))                                             # = Ry(-theta0)
    joints = torch.einsum("...ab,...tjb->...tja", q, joints)
    pelvis = torch.einsum("...ab,...tbc->...tac", q, rotations[..., 0, :, :])
    return joints, torch.cat([pelvis[..., None, :, :], rotations[..., 1:, :, :]], dim=-3)


@array_api
def joints_to_272(joints, rotations):
    """Global joints (..., T, 22, 3) + rotations (..., T, 22, 3, 3) -> features (..., T, 272).

    rotations[..., 0] is the pelvis GLOBAL rotation, [1:] SMPL parent-local. Y-up, metres. The clip
    is put on its own floor (min y over all joints and frames) with frame 0's pelvis XZ at the
    origin (spec §1.4). Frame-0 facing is assumed done (canonicalize_facing), as in the reference.
    """
    dtype = _check_motion("joints_to_272", joints, rotations)
    joints, rotations = joints.to(dtype), rotations.to(dtype)
    batch, T = joints.shape[:-3], joints.shape[-3]
    origin = torch.stack([joints[..., 0, 0, 0], joints[..., 1].amin(dim=(-1, -2)), joints[..., 0, 0, 2]], -1)
    P = joints - origin[..., None, None, :]
    root = P[..., 0, :]                                                      # (..., T, 3)
    Q = P - torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 2]], -1)[..., None, :]
    phi = heading_angle(rotations[..., 0, :, :])                             # (..., T)
    H = rot_y(phi)                                                           # (..., T, 3, 3)
    local = torch.einsum("...tab,...tjb->...tja", H, Q).reshape(*batch, T, 3 * NUM_JOINTS)

    out = torch.zeros(*batch, T, FEATURE_DIM, dtype=dtype, device=joints.device)
    d = root[..., 1:, :] - root[..., :-1, :]
    v = torch.einsum("...tab,...tb->...ta", H[..., :-1, :, :], d)           # previous frame's heading
    out[..., 1:, 0] = v[..., 0]
    out[..., 1:, 1] = v[..., 2]
    out[..., 0, HEADING_DELTA] = torch.tensor(IDENTITY_6D, dtype=dtype, device=joints.device)
    out[..., 1:, HEADING_DELTA] = matrix_to_rot6d(rot_y(phi[..., 1:] - phi[..., :-1]))
    out[..., POSITIONS] = local
    out[..., 1:, VELOCITIES] = local[..., 1:, :] - local[..., :-1, :]
    pelvis = H @ rotations[..., 0, :, :]
    M = torch.cat([pelvis[..., None, :, :], rotations[..., 1:, :, :]], dim=-3)
    out[..., ROTATIONS] = matrix_to_rot6d(M).reshape(*batch, T, 6 * NUM_JOINTS)
    return out


def _check_features(fn: str, features) -> None:
    check_trailing(features, (FEATURE_DIM,), "features", fn, "..., T")
    if features.ndim < 2:
        raise ValueError(f"{fn}: features must have shape (..., T, 272), got {tuple(features.shape)}")


@array_api
def recover_joints(features):
    """De-normalised features (..., T, 272) -> global joints (..., T, 22, 3) ("pos" mode, spec §2.2).

    For a clip made by joints_to_272 this is the input joints minus the clip origin (floor at y = 0,
    frame-0 pelvis XZ at 0), heading as given by the accumulated heading deltas.
    """
    _check_features("recover_joints", features)
    H = headings_from_features(features)
    local = features[..., POSITIONS].reshape(*features.shape[:-1], NUM_JOINTS, 3)
    P = torch.einsum("...tba,...tjb->...tja", H, local)                     # H^T p
    tau = root_translation(features, H)
    return P + tau[..., None, :]                                             # tau.y is 0 (x, z only)


@array_api
def recover_rotations(features):
    """De-normalised features -> (rotations (..., T, 22, 3, 3), translation (..., T, 3)) ("rot" mode).

    rotations[..., 0] is the pelvis global rotation with the heading restored (H_hat^T M0), [1:]
    parent-local as stored; translation is the pelvis position (tau_x, height = dim 9, tau_z).
    """
    _check_features("recover_rotations", features)
    H = headings_from_features(features)
    M = rot6d_to_matrix(features[..., ROTATIONS].reshape(*features.shape[:-1], NUM_JOINTS, 6))
    pelvis = H.transpose(-1, -2) @ M[..., 0, :, :]
    rotations = torch.cat([pelvis[..., None, :, :], M[..., 1:, :, :]], dim=-3)
    tau = root_translation(features, H)
    translation = torch.stack([tau[..., 0], features[..., 9], tau[..., 2]], -1)
    return rotations, translation


@array_api
def recover_smpl85(features):
    """De-normalised features -> smpl_85 (..., T, 85):
    [axis-angle of 22 joints (66) | zeros (6, hands) | translation (3) | zero betas (10)].

    The translation is the pelvis position (spec §2.3 quirk): SMPL places the pelvis at
    transl + J0(betas), so subtract J0 before feeding a body model for correct placement.
    """
    rotations, translation = recover_rotations(features)
    aa = matrix_to_axis_angle(rotations).reshape(*rotations.shape[:-3], 3 * NUM_JOINTS)
    z6 = torch.zeros(*aa.shape[:-1], 6, dtype=aa.dtype, device=aa.device)
    z10 = torch.zeros(*aa.shape[:-1], 10, dtype=aa.dtype, device=aa.device)
    return torch.cat([aa, z6, translation, z10], -1)
