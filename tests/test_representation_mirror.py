"""Closed-form mirror of 272 features (spec §7.9) against mirroring the SMPL parameters (§1.1 step 5)."""
import numpy as np
import pytest
import torch
from test_representation_features import make_motion

from motionstreamer.representation import (
    axis_angle_to_matrix,
    canonicalize_facing,
    joints_to_272,
    matrix_to_axis_angle,
    mirror_272,
    mirror_smpl85,
)
from motionstreamer.representation.skeleton import SMPL_OFFSETS, forward_kinematics, mirror_permutation

EXACT = np.r_[0:8, 140:272]


def smpl85_of(rotations, root):
    T = rotations.shape[0]
    aa = matrix_to_axis_angle(rotations).reshape(T, 66)
    return np.concatenate([aa, np.zeros((T, 6)), root, np.tile(np.arange(10.0), (T, 1))], -1)


def features_of(params, offsets):
    """smpl_85 -> world joints by FK (pelvis at trans) -> face +Z -> 272."""
    T = params.shape[0]
    R = axis_angle_to_matrix(params[:, :66].reshape(T, 22, 3))
    return joints_to_272(*canonicalize_facing(forward_kinematics(R, params[:, 72:75], offsets), R))


def symmetric_offsets():
    off = SMPL_OFFSETS.copy()
    perm = mirror_permutation()
    off = 0.5 * (off + off[perm] * [-1, 1, 1])
    return off


def test_mirror_smpl85_is_the_spec_recipe():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 85))
    m = mirror_smpl85(p)
    aa, maa = p[:, :66].reshape(4, 22, 3), m[:, :66].reshape(4, 22, 3)
    for a, b in ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)):
        np.testing.assert_array_equal(maa[:, a], aa[:, b] * [1, -1, -1])
        np.testing.assert_array_equal(maa[:, b], aa[:, a] * [1, -1, -1])
    for j in (0, 3, 6, 9, 12, 15):
        np.testing.assert_array_equal(maa[:, j], aa[:, j] * [1, -1, -1])
    np.testing.assert_array_equal(m[:, 72:75], p[:, 72:75] * [-1, 1, 1])
    np.testing.assert_array_equal(m[:, 66:72], p[:, 66:72])
    np.testing.assert_array_equal(m[:, 75:], p[:, 75:])
    np.testing.assert_array_equal(mirror_smpl85(m), p)
    # it is the reflection S R S, S = diag(-1, 1, 1), of every rotation
    S = np.diag([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(axis_angle_to_matrix(maa[:, 0]), S @ axis_angle_to_matrix(aa[:, 0]) @ S, atol=1e-12)


def test_closed_form_exact_on_velocity_heading_rotation_dims():
    J, R = make_motion(T=60, seed=11)
    params = smpl85_of(R, J[:, 0])
    x = features_of(params, SMPL_OFFSETS)
    x_m = features_of(mirror_smpl85(params), SMPL_OFFSETS)
    closed = mirror_272(x)
    np.testing.assert_allclose(closed[:, EXACT], x_m[:, EXACT], atol=1e-10)
    # positions are only approximate with the asymmetric SMPL skeleton (spec: a few cm)
    err = np.abs(closed[:, 8:140] - x_m[:, 8:140]).max()
    assert 1e-6 < err < 0.05


def test_closed_form_exact_everywhere_on_a_symmetric_skeleton():
    off = symmetric_offsets()
    J, R = make_motion(T=60, seed=12, offsets=off)
    params = smpl85_of(R, J[:, 0])
    x = features_of(params, off)
    np.testing.assert_allclose(mirror_272(x), features_of(mirror_smpl85(params), off), atol=1e-10)


def test_mirror_twice_is_identity_numpy_and_torch():
    x = np.random.default_rng(2).normal(size=(3, 5, 272))
    np.testing.assert_array_equal(mirror_272(mirror_272(x)), x)
    xt = torch.from_numpy(x).float()
    out = mirror_272(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), mirror_272(x.astype(np.float32)), atol=0)
    assert torch.equal(mirror_272(out), xt)


@pytest.mark.parametrize("call,match", [
    (lambda: mirror_272(np.zeros((3, 263))), r"mirror_272: features must have shape \(\.\.\., 272\)"),
    (lambda: mirror_smpl85(np.zeros((3, 322))), r"mirror_smpl85: params must have shape \(\.\.\., 85\)"),
])
def test_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_joint_sides_and_leg_groups_follow_the_smpl_names():
    """The sides and leg groups every module uses (skeleton.py) against SMPL's own joint names (an
    independent statement of the same facts): left joints are named Left_*, right ones Right_*, every
    other body joint is on the centre line; each leg group is the (left, right) pair of its name."""
    from motionstreamer.representation import skeleton as S

    names = S.JOINT_NAMES[:22]
    assert [names[j] for j in S.LEFT_JOINTS] == [n for n in names if n.startswith("Left_")]
    assert [names[j] for j in S.RIGHT_JOINTS] == [n for n in names if n.startswith("Right_")]
    assert all(names[a][5:] == names[b][6:] for a, b in zip(S.LEFT_JOINTS, S.RIGHT_JOINTS))
    for group, part in ((S.HIPS, "hip"), (S.KNEES, "knee"), (S.ANKLES, "ankle"), (S.FEET, "foot")):
        assert (names[group[0]], names[group[1]]) == (f"Left_{part}", f"Right_{part}")
    assert set(S.GROUND_JOINTS) == set(S.ANKLES) | set(S.FEET)
