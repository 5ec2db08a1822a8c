"""272 forward transform and both inverses (spec §1.4, §2), on FK motions with turning roots.

Tolerances: float64 round trips 1e-9 (measured ~1e-14); float32 1e-5 m / 1e-5 on rotation
entries (measured ~1e-6); parity with the per-frame re-derivation of the spec 1e-12 (float64).
"""
import numpy as np
import pytest
import torch

from motionstreamer.representation import (
    FEATURE_DIM,
    axis_angle_to_matrix,
    canonicalize_facing,
    heading_angle,
    joints_to_272,
    matrix_to_axis_angle,
    recover_joints,
    recover_rotations,
    recover_smpl85,
    rot_y,
)
from motionstreamer.representation.skeleton import SMPL_OFFSETS, forward_kinematics

FPS = 30


def make_motion(T=90, batch=(), seed=0, offsets=SMPL_OFFSETS, turn_rate=1.6):
    """Smooth random local rotations (sums of sinusoids) + a pelvis that walks along its facing
    direction while turning (total yaw change > pi, so heading angles wrap), in world coordinates.

    Returns (joints (*batch, T, 22, 3), rotations (*batch, T, 22, 3, 3)) float64; rotations[..., 0]
    is the pelvis global rotation, [1:] parent-local.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(T) / FPS
    shape = batch + (22, 3, 3)  # 3 sinusoids per axis-angle component
    amp = rng.normal(0.0, 0.2, shape)
    freq = rng.uniform(0.2, 1.5, shape)
    phase = rng.uniform(0, 2 * np.pi, shape)
    wave = np.sin(2 * np.pi * freq[..., None, :, :, :] * t[:, None, None, None] + phase[..., None, :, :, :])
    aa = (amp[..., None, :, :, :] * wave).sum(-1)                            # (*batch, T, 22, 3)
    local = axis_angle_to_matrix(aa)                                         # (*batch, T, 22, 3, 3)
    yaw0 = rng.uniform(-np.pi, np.pi, batch + (1,))
    yaw = yaw0 + turn_rate * t + 0.3 * np.sin(2 * np.pi * 0.4 * t)           # (*batch, T)
    tilt = axis_angle_to_matrix(aa[..., 0, :] * 0.5)                         # small pelvis tilt
    pelvis = rot_y(yaw) @ tilt
    rotations = np.concatenate([pelvis[..., None, :, :], local[..., 1:, :, :]], axis=-3)
    speed = 1.2 + 0.3 * np.sin(2 * np.pi * 0.3 * t)
    step = np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], -1) * (speed / FPS)[..., None]
    root = np.cumsum(step, axis=-2) + np.array([rng.normal(), 0.92, rng.normal()])
    root[..., 1] += 0.03 * np.sin(2 * np.pi * 1.7 * t)
    return forward_kinematics(rotations, root, offsets), rotations


def canonical_motion(**kw):
    return canonicalize_facing(*make_motion(**kw))


def reference_272(P, R):
    """Per-frame literal transcription of spec §1.4 for one clip (T, 22, 3), (T, 22, 3, 3)."""
    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    T = P.shape[0]
    o = P[0, 0].copy()
    o[1] = P[:, :, 1].min()
    P = P - o
    phi = [-np.arctan2(R[t, 0, 0, 2], R[t, 0, 2, 2]) for t in range(T)]
    x = np.zeros((T, 272))
    for t in range(T):
        H = ry(phi[t])
        Q = P[t] - np.array([P[t, 0, 0], 0.0, P[t, 0, 2]])
        x[t, 8:74] = (Q @ H.T).reshape(-1)
        M = R[t].copy()
        M[0] = H @ R[t, 0]
        x[t, 140:272] = M[:, :2, :].reshape(-1)
        if t == 0:
            x[t, 2:8] = [1, 0, 0, 0, 1, 0]
            continue
        v = ry(phi[t - 1]) @ (P[t, 0] - P[t - 1, 0])
        x[t, 0:2] = v[[0, 2]]
        x[t, 2:8] = ry(phi[t] - phi[t - 1])[:2].reshape(-1)
        x[t, 74:140] = x[t, 8:74] - x[t - 1, 8:74]
    return x, o


def reference_recover_joints(x):
    """Sequential transcription of spec §2.1-2.2 (6D decoded with numpy Gram-Schmidt)."""
    def mat(d):
        b1 = d[:3] / np.linalg.norm(d[:3])
        b2 = d[3:] - b1.dot(d[3:]) * b1
        b2 /= np.linalg.norm(b2)
        return np.stack([b1, b2, np.cross(b1, b2)])

    T = x.shape[0]
    H, tau, out = np.eye(3), np.zeros(3), np.zeros((T, 22, 3))
    for t in range(T):
        vel = np.array([x[t, 0], 0.0, x[t, 1]])
        tau = tau + (vel if t == 0 else H.T @ vel)
        H = mat(x[t, 2:8]) @ H
        out[t] = x[t, 8:74].reshape(22, 3) @ H + np.array([tau[0], 0, tau[2]])
    return out


def test_forward_matches_literal_spec_transcription():
    J, R = canonical_motion(T=75, seed=1)
    ours = joints_to_272(J, R)
    ref, _ = reference_272(J, R)
    assert ours.shape == (75, FEATURE_DIM) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-12, rtol=0)


def test_recover_joints_matches_sequential_transcription():
    J, R = canonical_motion(T=75, seed=2)
    x = joints_to_272(J, R)
    x[0, 0:2] = [0.01, -0.02]  # a sliced clip: row 0 with a real (unrotated) velocity
    np.testing.assert_allclose(recover_joints(x), reference_recover_joints(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", [1, 2, 3, 64, 91])
def test_round_trip_float64(T):
    J, R = canonical_motion(T=T, seed=T)
    x = joints_to_272(J, R)
    _, o = reference_272(J, R)
    np.testing.assert_allclose(recover_joints(x), J - o, atol=1e-9, rtol=0)
    rot, trans = recover_rotations(x)
    np.testing.assert_allclose(rot[..., 1:, :, :], R[..., 1:, :, :], atol=1e-9, rtol=0)   # local
    np.testing.assert_allclose(rot[..., 0, :, :], R[..., 0, :, :], atol=1e-9, rtol=0)     # pelvis global
    np.testing.assert_allclose(trans, J[:, 0] - o, atol=1e-9, rtol=0)                     # pelvis position


def test_round_trip_float32():
    J, R = canonical_motion(T=120, seed=3)
    x32 = joints_to_272(J.astype(np.float32), R.astype(np.float32))
    assert x32.dtype == np.float32
    _, o = reference_272(J, R)
    np.testing.assert_allclose(recover_joints(x32), J - o, atol=1e-5, rtol=0)
    rot, trans = recover_rotations(x32)
    assert rot.dtype == np.float32 and trans.dtype == np.float32
    np.testing.assert_allclose(rot, R, atol=1e-5, rtol=0)
    np.testing.assert_allclose(trans, J[:, 0] - o, atol=1e-5, rtol=0)


def test_invariants_of_the_layout():
    J, R = canonical_motion(T=100, seed=4)
    x = joints_to_272(J, R)
    _, o = reference_272(J, R)
    for d in (3, 5, 7, 8, 10, 74, 76):
        np.testing.assert_allclose(x[:, d], 0.0, atol=1e-12, err_msg=f"dim {d}")
    np.testing.assert_allclose(x[:, 6], 1.0, atol=1e-12)
    np.testing.assert_allclose(x[:, 142], 0.0, atol=1e-12)          # pelvis heading removed
    row0 = np.zeros(11)
    row0[[2, 6]] = 1
    row0[9] = J[0, 0, 1] - o[1]
    np.testing.assert_allclose(x[0, :11], row0, atol=1e-12)
    np.testing.assert_allclose(x[0, 74:140], 0.0, atol=0)
    np.testing.assert_allclose(x[1:, 74:140], np.diff(x[:, 8:74], axis=0), atol=1e-12)
    np.testing.assert_allclose(x[:, 9], J[:, 0, 1] - o[1], atol=1e-12)   # pelvis height above floor
    assert abs(x[:, 9:74:3].min()) < 1e-12                             # floor = lowest joint
    np.testing.assert_allclose(x[1:, 2] ** 2 + x[1:, 4] ** 2, 1.0, atol=1e-12)


def test_heading_wraps_without_angle_unwrapping():
    J, R = canonical_motion(T=150, seed=5, turn_rate=4.0)  # several full turns
    phi = heading_angle(R[:, 0])
    assert np.abs(np.diff(phi)).max() > np.pi                 # atan2 jumped by ~2 pi somewhere
    x = joints_to_272(J, R)
    _, o = reference_272(J, R)
    np.testing.assert_allclose(recover_joints(x), J - o, atol=1e-9, rtol=0)


def test_canonicalize_facing_frame0_and_invariance():
    J, R = make_motion(T=40, seed=6)
    Jc, Rc = canonicalize_facing(J, R)
    f = Rc[0, 0] @ np.array([0.0, 0.0, 1.0])
    assert abs(np.arctan2(f[0], f[2])) < 1e-12
    np.testing.assert_allclose(Rc[:, 1:], R[:, 1:], atol=0)
    # any rigid yaw + translation of the world gives the same features after canonicalisation
    q = rot_y(np.array(2.1))
    J2, R2 = J @ q.T + np.array([3.0, 0.5, -1.0]), R.copy()
    R2[:, 0] = q @ R[:, 0]
    np.testing.assert_allclose(joints_to_272(*canonicalize_facing(J2, R2)), joints_to_272(Jc, Rc), atol=1e-12)


def test_batched_equals_per_clip_and_torch_equals_numpy():
    J, R = canonical_motion(T=33, batch=(2, 3), seed=7)
    x = joints_to_272(J, R)
    assert x.shape == (2, 3, 33, FEATURE_DIM)
    for i in range(2):
        for k in range(3):
            np.testing.assert_allclose(x[i, k], joints_to_272(J[i, k], R[i, k]), atol=1e-13)
    xt = joints_to_272(torch.from_numpy(J), torch.from_numpy(R))
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float64
    np.testing.assert_allclose(xt.numpy(), x, atol=1e-13)
    for fn in (recover_joints, recover_smpl85):
        np.testing.assert_allclose(fn(torch.from_numpy(x)).numpy(), fn(x), atol=1e-13)
    rt, tt = recover_rotations(torch.from_numpy(x))
    rn, tn = recover_rotations(x)
    np.testing.assert_allclose(rt.numpy(), rn, atol=1e-13)
    np.testing.assert_allclose(tt.numpy(), tn, atol=1e-13)
    jt, rtt = canonicalize_facing(*(torch.from_numpy(a) for a in make_motion(T=5, seed=8)))
    jn, rn2 = canonicalize_facing(*make_motion(T=5, seed=8))
    np.testing.assert_allclose(jt.numpy(), jn, atol=1e-13)
    np.testing.assert_allclose(rtt.numpy(), rn2, atol=1e-13)


def test_recover_smpl85_layout():
    J, R = canonical_motion(T=20, seed=9)
    x = joints_to_272(J, R)
    p = recover_smpl85(x)
    rot, trans = recover_rotations(x)
    assert p.shape == (20, 85)
    np.testing.assert_allclose(axis_angle_to_matrix(p[:, :66].reshape(20, 22, 3)), R, atol=1e-9)
    np.testing.assert_allclose(p[:, :66], matrix_to_axis_angle(rot).reshape(20, 66), atol=0)
    np.testing.assert_allclose(p[:, 72:75], trans, atol=0)
    assert not p[:, 66:72].any() and not p[:, 75:].any()


def test_gradients_flow_through_forward_and_inverse():
    J, R = (torch.from_numpy(a).requires_grad_() for a in canonical_motion(T=10, seed=10))
    x = joints_to_272(J, R)
    x.sum().backward()
    assert torch.isfinite(J.grad).all() and torch.isfinite(R.grad).all()
    f = x.detach().requires_grad_()
    (recover_joints(f).sum() + recover_rotations(f)[0].sum()).backward()
    assert torch.isfinite(f.grad).all()


@pytest.mark.parametrize("call,match", [
    (lambda: joints_to_272(np.zeros((5, 21, 3)), np.zeros((5, 22, 3, 3))),
     r"joints_to_272: joints must have shape \(\.\.\., T, 22, 3\)"),
    (lambda: joints_to_272(np.zeros((5, 22, 3)), np.zeros((5, 22, 9))), r"joints_to_272: rotations must have shape"),
    (lambda: joints_to_272(np.zeros((5, 22, 3)), np.zeros((4, 22, 3, 3))), r"disagree"),
    (lambda: joints_to_272(np.zeros((0, 22, 3)), np.zeros((0, 22, 3, 3))), r"no frames"),
    (lambda: joints_to_272(np.full((2, 22, 3), np.nan), np.zeros((2, 22, 3, 3))), r"joints contains NaN"),
    (lambda: recover_joints(np.zeros((5, 263))), r"recover_joints: features must have shape \(\.\.\., T, 272\)"),
    (lambda: recover_rotations(np.zeros(272)), r"recover_rotations: features"),
    (lambda: canonicalize_facing(np.zeros((3, 22, 3)), np.zeros((3, 24, 3, 3))), r"canonicalize_facing: rotations"),
    (lambda: joints_to_272([[0.0]], np.zeros((1, 22, 3, 3))), r"numpy array or torch tensor"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def tilted_features(T=150, tilt=1e-3, seed=11):
    """Features whose heading deltas are not pure yaw (as generated features are): each delta is
    composed with a small rotation about x, so the accumulated heading tilts over time."""
    from motionstreamer.representation.rotation import matrix_to_rot6d, rot6d_to_matrix
    J, R = canonical_motion(T=T, seed=seed)
    x = joints_to_272(J, R)
    c, s = np.cos(tilt), np.sin(tilt)
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    x[1:, 2:8] = matrix_to_rot6d(rx @ rot6d_to_matrix(x[1:, 2:8]))
    return x


def test_recovery_has_no_vertical_drift_with_tilted_heading_deltas():
    """Issue 16 item 4: the root translation is accumulated in x and z only (as the original and the
    streaming recovery), so the pelvis height stays dim 9 (up to the tilt of the heading itself) instead
    of drifting by the sum of the tilted velocities' y parts (~0.3 m here before the fix)."""
    from motionstreamer.representation.features import headings_from_features
    from motionstreamer.runtime.kinematics import RootState, recover_joints_step

    x = tilted_features()
    whole = recover_joints(x)
    H = headings_from_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(whole[:, 0, 1], x[:, 9] * H[:, 1, 1], atol=1e-12)   # H^T (0, h, 0), no drift
    assert np.abs(whole[:, 0, 1] - x[:, 9]).max() < 0.02
    # the full recovery equals the chunked streaming recovery
    state = RootState.initial(1, dtype=torch.float64)
    parts, start = [], 0
    for n in (4, 4, 1, 13, 128):
        parts.append(recover_joints_step(torch.from_numpy(x[None, start:start + n]), state)[0].numpy())
        start += n
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-10, rtol=0)


@pytest.mark.skipif(not (__import__("motionstreamer.runtime.loading", fromlist=["x"]).default_model_dir()
                         / "config.json").exists(), reason="embedded default model not built")
def test_generated_features_full_recovery_equals_streaming_joints():
    """The same check on features the embedded model generates (their heading deltas carry small tilts)."""
    from motionstreamer.runtime.engine import GenerationConfig
    from motionstreamer.runtime.loading import load_models
    from motionstreamer.runtime.session import StreamingSession

    bundle, enc, _ = load_models(device="cpu", dtype="fp32")
    s = StreamingSession(bundle, enc, config=GenerationConfig(end_threshold=-1.0, sampling_steps=10), seed=3)
    s.push_text("a person walks forward", max_latents=24)
    chunks = list(s)
    feats = torch.cat([c.features for c in chunks]).double().numpy()
    streamed = torch.cat([c.joints for c in chunks]).double().numpy()
    assert np.abs(feats[:, [3, 5, 7]]).max() > 1e-6             # the deltas are not pure yaw rotations
    np.testing.assert_allclose(recover_joints(feats), streamed, atol=2e-4, rtol=0)   # float32 stream
    np.testing.assert_allclose(recover_joints(feats)[:, 0, 1], feats[:, 9], atol=2e-3)
