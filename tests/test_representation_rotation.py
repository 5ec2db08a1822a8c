"""Rotation helpers against scipy and the spec's conventions (6D rows, w-first quaternions, ZYX Euler).

Tolerances: float64 1e-10 (measured ~1e-15), float32 2e-6.
"""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from motionstreamer.representation import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler_zyx,
    matrix_to_quaternion,
    matrix_to_rot6d,
    quaternion_to_matrix,
    rot6d_to_matrix,
    rot_y,
)


def random_rotations(n, seed=0):
    return Rotation.random(n, random_state=seed)


def test_rot6d_is_first_two_rows_and_round_trips():
    R = random_rotations(50).as_matrix().reshape(5, 10, 3, 3)
    x = matrix_to_rot6d(R)
    assert x.shape == (5, 10, 6)
    np.testing.assert_array_equal(x, np.concatenate([R[..., 0, :], R[..., 1, :]], -1))
    np.testing.assert_allclose(rot6d_to_matrix(x), R, atol=1e-12)


def test_rot6d_gram_schmidt_gives_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 6))
    M = rot6d_to_matrix(x)
    a1, a2 = x[:, :3], x[:, 3:]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=-1, keepdims=True)
    np.testing.assert_allclose(M[:, 0], b1, atol=1e-12)
    np.testing.assert_allclose(M[:, 1], b2, atol=1e-12)
    np.testing.assert_allclose(M[:, 2], np.cross(b1, b2), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(M), 1.0, atol=1e-12)
    assert np.isfinite(rot6d_to_matrix(np.zeros(6))).all()  # degenerate input: no NaN (eps normalise)


def test_axis_angle_and_quaternion_against_scipy():
    rot = random_rotations(200, seed=2)
    aa = rot.as_rotvec()
    R = rot.as_matrix()
    np.testing.assert_allclose(axis_angle_to_matrix(aa), R, atol=1e-12)
    np.testing.assert_allclose(matrix_to_axis_angle(R), aa, atol=1e-10)  # scipy also returns angle <= pi
    q = matrix_to_quaternion(R)
    q_scipy = rot.as_quat()[:, [3, 0, 1, 2]]                                # xyzw -> wxyz
    q_scipy *= np.sign(q_scipy[:, :1])
    np.testing.assert_allclose(q, q_scipy, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(3.0 * q), R, atol=1e-12)  # any norm


def test_axis_angle_small_and_near_pi():
    tiny = np.array([[1e-9, -2e-9, 3e-9], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(matrix_to_axis_angle(axis_angle_to_matrix(tiny)), tiny, atol=1e-15)
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for angle in (np.pi - 1e-6, np.pi - 1e-3):
        np.testing.assert_allclose(matrix_to_axis_angle(axis_angle_to_matrix(axis * angle)), axis * angle, atol=1e-8)
    back = matrix_to_axis_angle(axis_angle_to_matrix(axis * np.pi))
    np.testing.assert_allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(axis * np.pi), atol=1e-10)


def test_euler_zyx_against_scipy():
    rng = np.random.default_rng(3)
    zyx = np.stack([rng.uniform(-179, 179, 500), rng.uniform(-89, 89, 500), rng.uniform(-179, 179, 500)], -1)
    R = Rotation.from_euler("ZYX", zyx, degrees=True).as_matrix()
    np.testing.assert_allclose(matrix_to_euler_zyx(R), zyx, atol=1e-8)
    np.testing.assert_allclose(matrix_to_euler_zyx(R, degrees=False), np.deg2rad(zyx), atol=1e-10)
    # R = Rz(z) Ry(y) Rx(x), spelled out
    z, y, x = np.deg2rad(zyx[0])
    Rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    np.testing.assert_allclose(R[0], Rz @ Ry @ Rx, atol=1e-12)


def test_rot_y_formula_and_scalars():
    a = np.array([0.0, 0.4, -2.0, np.pi])
    expect = np.stack([np.stack([np.cos(a), 0 * a, np.sin(a)], -1), np.stack([0 * a, 1 + 0 * a, 0 * a], -1),
                       np.stack([-np.sin(a), 0 * a, np.cos(a)], -1)], -2)
    np.testing.assert_allclose(rot_y(a), expect, atol=1e-15)
    np.testing.assert_allclose(rot_y(0.4), expect[1], atol=1e-15)           # python float
    np.testing.assert_allclose(rot_y(np.float32(0.4)), expect[1], atol=1e-7)
    assert rot_y(np.float32(0.4)).dtype == np.float32 and rot_y(0.4).shape == (3, 3)
    np.testing.assert_allclose(rot_y(a), Rotation.from_rotvec(a[:, None] * [0.0, 1.0, 0.0]).as_matrix(), atol=1e-15)


@pytest.mark.parametrize("fn,make", [
    (matrix_to_rot6d, lambda R, aa: R), (rot6d_to_matrix, lambda R, aa: R[..., :2, :].reshape(*R.shape[:-2], 6)),
    (axis_angle_to_matrix, lambda R, aa: aa), (matrix_to_axis_angle, lambda R, aa: R),
    (matrix_to_quaternion, lambda R, aa: R), (matrix_to_euler_zyx, lambda R, aa: R),
    (quaternion_to_matrix, lambda R, aa: matrix_to_quaternion(R)), (rot_y, lambda R, aa: aa[..., 0]),
])
def test_numpy_torch_parity_dtype_and_batching(fn, make):
    rot = random_rotations(24, seed=4)
    R, aa = rot.as_matrix().reshape(2, 3, 4, 3, 3), rot.as_rotvec().reshape(2, 3, 4, 3)
    x64 = make(R, aa)
    out_np = fn(x64)
    out_t = fn(torch.from_numpy(x64))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    assert out_np.shape[:3] == (2, 3, 4) and out_np.dtype == np.float64 and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-13)
    out32 = fn(x64.astype(np.float32))
    assert out32.dtype == np.float32
    tol = 2e-4 if fn is matrix_to_euler_zyx else 2e-6  # degrees
    np.testing.assert_allclose(out32, out_np, atol=tol)
    flat = fn(x64.reshape(24, *x64.shape[3:]))
    np.testing.assert_allclose(flat.reshape(out_np.shape), out_np, atol=1e-14)


@pytest.mark.parametrize("call,match", [
    (lambda: matrix_to_rot6d(np.zeros((4, 3))), r"matrix_to_rot6d: m must have shape \(\.\.\., 3, 3\), got \(4, 3\)"),
    (lambda: rot6d_to_matrix(np.zeros((4, 9))), r"rot6d_to_matrix: x must have shape \(\.\.\., 6\)"),
    (lambda: axis_angle_to_matrix(np.zeros((4, 4))), r"axis_angle_to_matrix: aa"),
    (lambda: quaternion_to_matrix(np.zeros((4, 3))), r"quaternion_to_matrix: q"),
    (lambda: matrix_to_euler_zyx(torch.zeros(3)), r"matrix_to_euler_zyx: m"),
    (lambda: matrix_to_axis_angle(np.zeros((2, 3, 4))), r"matrix_to_axis_angle: m"),
    (lambda: rot_y("a"), r"numpy array or torch tensor"),
])
def test_bad_shapes_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_gradients_are_finite_at_identity():
    R = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1).requires_grad_()
    matrix_to_axis_angle(R).sum().backward()
    assert torch.isfinite(R.grad).all()
