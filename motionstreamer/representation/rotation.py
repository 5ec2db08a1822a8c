"""Rotation helpers in the 272 format's conventions (spec §0, §2, §3.6).

Every function takes numpy arrays or torch tensors with any leading batch dims and returns the
same kind. One torch implementation; numpy inputs are converted (dtype kept) and converted back.
6D = the first two ROWS of the matrix, row-major; Gram-Schmidt decoding yields the rows b1, b2, b3.
Quaternions are (w, x, y, z).
"""
from __future__ import annotations

import functools

import numpy as np
import torch


def _array_api(fn):
    """Run the torch implementation on numpy input too, returning numpy."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(isinstance(a, np.ndarray) for a in args):
            targs = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
            out = fn(*targs, **kwargs)
            if isinstance(out, tuple):
                return tuple(o.numpy() for o in out)
            return out.numpy()
        return fn(*args, **kwargs)
    return wrapper


def _check_last(x, shape, name):
    if tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(f"{name} must have trailing shape {shape}, got {tuple(x.shape)}")


@_array_api
def matrix_to_rot6d(m):
    _check_last(m, (3, 3), "matrix")
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


@_array_api
def rot6d_to_matrix(x):
    _check_last(x, (6,), "rot6d")
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / torch.linalg.vector_norm(b2, dim=-1, keepdim=True)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


@_array_api
def rot_y(angle):
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*angle.shape, 3, 3)


@_array_api
def quaternion_to_matrix(q):
    _check_last(q, (4,), "quaternion")
    w, x, y, z = torch.unbind(q, -1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack([
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ], dim=-1)
    return m.reshape(*q.shape[:-1], 3, 3)


def _sqrt_positive(x):
    return torch.where(x > 0, torch.sqrt(torch.clamp(x, min=0)), torch.zeros_like(x))


@_array_api
def matrix_to_quaternion(m):
    """PyTorch3D's robust conversion: pick the best-conditioned of four candidates. Returns w >= 0."""
    _check_last(m, (3, 3), "matrix")
    batch = m.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(m.reshape(*batch, 9), -1)
    q_abs = _sqrt_positive(torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                                        1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1))
    cand = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2)
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    cand = cand / (2.0 * torch.maximum(q_abs[..., None], floor))
    best = q_abs.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*batch, 1, 4))[..., 0, :]
    return torch.where(q[..., :1] < 0, -q, q)


@_array_api
def axis_angle_to_matrix(aa):
    _check_last(aa, (3,), "axis_angle")
    angle = torch.linalg.vector_norm(aa, dim=-1, keepdim=True)
    half = angle * 0.5
    small = angle.abs() < 1e-6
    sin_half_over = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / torch.where(small, torch.ones_like(angle), angle))
    q = torch.cat([torch.cos(half), aa * sin_half_over], -1)
    return quaternion_to_matrix(q)


@_array_api
def matrix_to_axis_angle(m):
    q = matrix_to_quaternion(m)
    norm = torch.linalg.vector_norm(q[..., 1:], dim=-1, keepdim=True)
    half = torch.atan2(norm, q[..., :1])
    angle = 2 * half
    small = angle.abs() < 1e-6
    sin_half_over = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / torch.where(small, torch.ones_like(angle), angle))
    return q[..., 1:] / sin_half_over


@_array_api
def matrix_to_euler_zyx(m, degrees: bool = True):
    """[z, y, x] with R = Rz(z) Ry(y) Rx(x) (intrinsic ZYX, the BVH channel order of spec §3)."""
    _check_last(m, (3, 3), "matrix")
    q = matrix_to_quaternion(m)
    w, x, y, z = torch.unbind(q, -1)
    ez = torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    ey = torch.asin(torch.clamp(2 * (w * y - z * x), -1.0, 1.0))
    ex = torch.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    out = torch.stack([ez, ey, ex], -1)
    return torch.rad2deg(out) if degrees else out
