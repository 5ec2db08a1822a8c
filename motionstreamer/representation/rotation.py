"""Rotation helpers in the 272 format's conventions (spec §0, §2, §3.6).

Every function takes numpy arrays or torch tensors with any leading batch dims and returns the same
kind, keeping a floating dtype (integer input is promoted to float64 / torch's default dtype). There
is one torch implementation per function; numpy input is wrapped zero-copy and converted back.

Conventions:
- 6D = the first two ROWS of the matrix, row-major `[R00 R01 R02 R10 R11 R12]`; Gram-Schmidt
  decoding yields the rows b1, b2, b3 (PyTorch3D `rotation_6d_to_matrix`).
- Quaternions are (w, x, y, z); matrix -> quaternion returns w >= 0, so matrix -> axis-angle has
  angle in [0, pi] (PyTorch3D through a quaternion, as the reference code does).
- `rot_y(a) = [[cos a, 0, sin a], [0, 1, 0], [-sin a, 0, cos a]]`.
- Euler: [z, y, x] with R = Rz(z) Ry(y) Rx(x) (intrinsic ZYX, the BVH channel order of spec §3.6).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def as_torch(x, name: str = "input") -> torch.Tensor:
    """numpy array / scalar / tensor -> floating torch tensor (zero-copy for float numpy arrays)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    if isinstance(x, (np.ndarray, np.generic, float, int)) and not isinstance(x, bool):
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        if not (a.flags.c_contiguous and a.flags.writeable):  # (np.ascontiguousarray would make 0-d 1-d)
            a = a.copy()
        return torch.from_numpy(a)
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def array_api(fn):
    """Run a torch implementation on numpy input too (and python/numpy scalars), returning numpy.

    Positional arguments are the arrays; keyword arguments pass through. The result is torch when
    any positional argument is a torch tensor, numpy otherwise.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(isinstance(a, torch.Tensor) for a in args):
            return fn(*[as_torch(a, f"{fn.__name__} argument {i}") for i, a in enumerate(args)], **kwargs)
        out = fn(*[as_torch(a, f"{fn.__name__} argument {i}") for i, a in enumerate(args)], **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() for o in out)
        return out.numpy()
    return wrapper


def check_trailing(x, trailing: tuple, name: str, fn: str, lead: str = "...") -> None:
    """ValueError naming `fn` and argument `name` when x's trailing shape is not `trailing`."""
    n = len(trailing)
    if x.ndim < n or tuple(x.shape[x.ndim - n:]) != tuple(trailing):
        want = ", ".join([lead] + [str(s) for s in trailing])
        raise ValueError(f"{fn}: {name} must have shape ({want}), got {tuple(x.shape)}")


@array_api
def matrix_to_rot6d(m):
    """(..., 3, 3) -> (..., 6): the first two rows, row-major."""
    check_trailing(m, (3, 3), "m", "matrix_to_rot6d")
    return m[..., :2, :].clone().reshape(*m.shape[:-2], 6)


@array_api
def rot6d_to_matrix(x):
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; b1, b2, b3 are the matrix rows."""
    check_trailing(x, (6,), "x", "rot6d_to_matrix")
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


@array_api
def rot_y(angle):
    """Rotation about +Y by `angle` (radians), shape (...) -> (..., 3, 3)."""
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*angle.shape, 3, 3)


@array_api
def quaternion_to_matrix(q):
    """(..., 4) (w, x, y, z), any norm -> (..., 3, 3)."""
    check_trailing(q, (4,), "q", "quaternion_to_matrix")
    w, x, y, z = torch.unbind(q, -1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack([
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ], dim=-1)
    return m.reshape(*q.shape[:-1], 3, 3)


def _sqrt_positive(x):
    """sqrt(max(0, x)) with a zero (not NaN) gradient where x <= 0."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


@array_api
def matrix_to_quaternion(m):
    """(..., 3, 3) -> (..., 4) (w, x, y, z) with w >= 0.

    PyTorch3D's well-conditioned form: of the four candidate quaternions (each divides by one of
    |w|, |x|, |y|, |z|), take the one whose divisor is largest.
    """
    check_trailing(m, (3, 3), "m", "matrix_to_quaternion")
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


def _sin_half_over_angle(angle):
    """sin(angle/2)/angle, with its Taylor series near 0."""
    small = angle.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(angle), angle)
    return torch.where(small, 0.5 - angle * angle / 48, torch.sin(angle * 0.5) / safe)


@array_api
def axis_angle_to_matrix(aa):
    """(..., 3) axis * angle (radians) -> (..., 3, 3), through a quaternion."""
    check_trailing(aa, (3,), "aa", "axis_angle_to_matrix")
    angle = torch.linalg.vector_norm(aa, dim=-1, keepdim=True)
    q = torch.cat([torch.cos(angle * 0.5), aa * _sin_half_over_angle(angle)], -1)
    return quaternion_to_matrix(q)


@array_api
def matrix_to_axis_angle(m):
    """(..., 3, 3) -> (..., 3), angle in [0, pi], through a quaternion (PyTorch3D)."""
    check_trailing(m, (3, 3), "m", "matrix_to_axis_angle")
    q = matrix_to_quaternion(m)
    norm = torch.linalg.vector_norm(q[..., 1:], dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, q[..., :1])
    return q[..., 1:] / _sin_half_over_angle(angle)


@array_api
def matrix_to_euler_zyx(m, degrees: bool = True):
    """(..., 3, 3) -> (..., 3) = [z, y, x] with R = Rz(z) Ry(y) Rx(x) (intrinsic ZYX, BVH order).

    Formulas of the reference BVH writer (quaternion `to_euler(order='zyx')`); no gimbal handling.
    """
    check_trailing(m, (3, 3), "m", "matrix_to_euler_zyx")
    q = matrix_to_quaternion(m)
    w, x, y, z = torch.unbind(q, -1)
    ez = torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    ey = torch.asin(torch.clamp(2 * (w * y - z * x), -1.0, 1.0))
    ex = torch.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    out = torch.stack([ez, ey, ex], -1)
    return torch.rad2deg(out) if degrees else out
