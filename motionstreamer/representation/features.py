"""The 272-dim representation: joints + rotations -> features, and the two inverses (spec §1.4, §2).

Layout per frame (22 joints): [0:2] root XZ velocity in the previous frame's heading, [2:8] 6D of
the heading delta Ry(phi_t - phi_{t-1}), [8:74] root-centred heading-free joint positions (y =
height above the clip floor), [74:140] their frame differences, [140:272] 6D joint rotations (joint
0 the heading-free pelvis global rotation, joints 1..21 SMPL parent-local). Row 0 holds zero
velocities and the identity heading delta. Inputs may be numpy or torch with leading batch dims.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from motionstreamer.representation.rotation import matrix_to_rot6d, rot6d_to_matrix, rot_y, matrix_to_axis_angle

NUM_JOINTS = 22
FEATURE_DIM = 272
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _torch_in_numpy_out(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(isinstance(a, np.ndarray) for a in args):
            out = fn(*[torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args], **kwargs)
            return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()
        return fn(*args, **kwargs)
    return wrapper


def _check(name, x, trailing):
    if x.ndim < len(trailing) + 1 or tuple(x.shape[-len(trailing):]) != trailing:
        raise ValueError(f"{name} must have shape (..., T, {', '.join(map(str, trailing))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def heading_angle(pelvis_rotation: torch.Tensor) -> torch.Tensor:
    """phi = -atan2(R[0,2], R[2,2]): minus the yaw of the pelvis local +Z axis."""
    return -torch.atan2(pelvis_rotation[..., 0, 2], pelvis_rotation[..., 2, 2])


@_torch_in_numpy_out
def canonicalize_facing(joints, rotations):
    """Rotate the whole clip about the world Y axis so that frame 0's pelvis faces +Z (spec §1.2).

    joints (..., T, 22, 3) world positions; rotations (..., T, 22, 3, 3) with [0] the pelvis global
    rotation. Returns (joints, rotations) rotated; local rotations are unchanged.
    """
    _check("joints", joints, (NUM_JOINTS, 3))
    r0 = rotations[..., 0, 0, :, :]
    q = rot_y(-torch.atan2(r0[..., 0, 2], r0[..., 2, 2]))                 # (..., 3, 3)
    joints = torch.einsum("...ab,...tjb->...tja", q, joints)
    rotations = rotations.clone()
    rotations[..., 0, :, :] = torch.einsum("...ab,...tbc->...tac", q, rotations[..., 0, :, :])
    return joints, rotations


@_torch_in_numpy_out
def joints_to_272(joints, rotations):
    """Global joints (..., T, 22, 3) + rotations (..., T, 22, 3, 3) -> features (..., T, 272)."""
    _check("joints", joints, (NUM_JOINTS, 3))
    _check("rotations", rotations, (NUM_JOINTS, 3, 3))
    if joints.shape[:-2] != rotations.shape[:-3]:
        raise ValueError(f"joints {tuple(joints.shape)} and rotations {tuple(rotations.shape)} disagree on (..., T)")
    if joints.shape[-3] < 1:
        raise ValueError("a clip needs at least one frame")
    P = joints
    origin = torch.stack([P[..., 0, 0, 0], P[..., 1].amin(dim=(-1, -2)), P[..., 0, 0, 2]], dim=-1)
    P = P - origin[..., None, None, :]
    root = P[..., :, 0, :]                                                  # (..., T, 3)
    Q = P - torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 2]], -1)[..., None, :]
    phi = heading_angle(rotations[..., 0, :, :])                            # (..., T)
    H = rot_y(phi)                                                          # (..., T, 3, 3)
    local = torch.einsum("...tab,...tjb->...tja", H, Q)                     # (..., T, 22, 3)

    T = P.shape[-3]
    batch = P.shape[:-3]
    out = torch.zeros(*batch, T, FEATURE_DIM, dtype=P.dtype, device=P.device)
    d = root[..., 1:, :] - root[..., :-1, :]
    v = torch.einsum("...tab,...tb->...ta", H[..., :-1, :, :], d)
    out[..., 1:, 0] = v[..., 0]
    out[..., 1:, 1] = v[..., 2]
    out[..., 0, 2:8] = torch.tensor(IDENTITY_6D, dtype=P.dtype, device=P.device)
    out[..., 1:, 2:8] = matrix_to_rot6d(rot_y(phi[..., 1:] - phi[..., :-1]))
    flat = local.reshape(*batch, T, 3 * NUM_JOINTS)
    out[..., 8:74] = flat
    out[..., 1:, 74:140] = flat[..., 1:, :] - flat[..., :-1, :]
    M = rotations.clone()
    M[..., 0, :, :] = H @ rotations[..., 0, :, :]
    out[..., 140:272] = matrix_to_rot6d(M).reshape(*batch, T, 6 * NUM_JOINTS)
    return out


def _headings(features: torch.Tensor) -> torch.Tensor:
    """H_hat[t] = mat(x[t,2:8]) @ H_hat[t-1], H_hat[-1] = I (spec §2.1). Returns (..., T, 3, 3)."""
    delta = rot6d_to_matrix(features[..., 2:8])
    out = []
    h = None
    for t in range(features.shape[-2]):
        h = delta[..., t, :, :] if h is None else delta[..., t, :, :] @ h
        out.append(h)
    return torch.stack(out, dim=-3)


def _root_translation(features: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """tau[t] = sum_k v[k], v[0] unrotated, v[t] = H[t-1]^T (x0, 0, x1)."""
    vel = torch.stack([features[..., 0], torch.zeros_like(features[..., 0]), features[..., 1]], -1)
    v = vel.clone()
    v[..., 1:, :] = torch.einsum("...tba,...tb->...ta", H[..., :-1, :, :], vel[..., 1:, :])
    return torch.cumsum(v, dim=-2)


@_torch_in_numpy_out
def recover_joints(features):
    """De-normalised features (..., T, 272) -> global joints (..., T, 22, 3) ("pos" mode)."""
    _check("features", features, (FEATURE_DIM,))
    H = _headings(features)
    local = features[..., 8:74].reshape(*features.shape[:-1], NUM_JOINTS, 3)
    P = torch.einsum("...tba,...tjb->...tja", H, local)                    # H^T p
    tau = _root_translation(features, H)
    P = P.clone()
    P[..., 0] += tau[..., None, 0]
    P[..., 2] += tau[..., None, 2]
    return P


@_torch_in_numpy_out
def recover_rotations(features):
    """De-normalised features -> (rotations (..., T, 22, 3, 3), translation (..., T, 3)) ("rot" mode).

    rotations[..., 0] is the pelvis global rotation with the heading restored, [1:] parent-local;
    translation is the pelvis position (tau_x, height, tau_z).
    """
    _check("features", features, (FEATURE_DIM,))
    H = _headings(features)
    M = rot6d_to_matrix(features[..., 140:272].reshape(*features.shape[:-1], NUM_JOINTS, 6))
    M = M.clone()
    M[..., 0, :, :] = H.transpose(-1, -2) @ M[..., 0, :, :]
    tau = _root_translation(features, H)
    trans = torch.stack([tau[..., 0], features[..., 9], tau[..., 2]], -1)
    return M, trans


@_torch_in_numpy_out
def recover_smpl85(features):
    """De-normalised features -> smpl_85: [axis-angle 22x3 | zeros 6 | translation 3 | zero betas 10]."""
    rot, trans = recover_rotations(features)
    aa = matrix_to_axis_angle(rot).reshape(*rot.shape[:-3], 66)
    z6 = torch.zeros(*aa.shape[:-1], 6, dtype=aa.dtype, device=aa.device)
    z10 = torch.zeros(*aa.shape[:-1], 10, dtype=aa.dtype, device=aa.device)
    return torch.cat([aa, z6, trans, z10], -1)
