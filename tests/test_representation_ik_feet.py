"""Skeleton fitting (representation.ik) and feet (representation.feet): exact on rigid motions, the
model's twist kept, contacts in the 272 format's conventions, grounding by contacts, the offline and
causal foot-skating clean-ups (skating down, bones kept, no penetration, chunking-invariant), the
session hook, and the foot metrics."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from motionstreamer.eval.metrics import floor_penetration, foot_skating_ratio
from motionstreamer.representation import feet, ik
from motionstreamer.representation.skeleton import PARENTS, SMPL_OFFSETS, forward_kinematics

FPS = 30


def random_rotations(T, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    return Rotation.from_rotvec(rng.normal(0, scale, (T * 22, 3))).as_matrix().reshape(T, 22, 3, 3)


def skating_walk(T=150, slide=0.55, speed=0.7):
    """A walk on the SMPL skeleton built with leg IK: each foot alternates a 0.6 s stance and a 0.4 s
    swing (lifted 12 cm) while the pelvis moves forward at `speed` m/s; during stance the foot slides
    forward at `slide` m/s (the skating of generated motion; 0 = planted)."""
    t = np.arange(T) / FPS
    rot = np.tile(np.eye(3), (T, 22, 1, 1))
    for joint, angle in ((1, -0.25), (2, -0.25), (4, 0.5), (5, 0.5), (7, -0.25), (8, -0.25)):   # knees bent
        rot[:, joint] = Rotation.from_rotvec([angle, 0.0, 0.0]).as_matrix()
    root = np.stack([0 * t, 0.0 * t, speed * t], 1)
    j = forward_kinematics(rot, root)
    j[..., 1] -= j[0, :, 1].min()
    targets = j[:, [10, 11]].copy()
    for k in range(2):
        u = (t + 0.5 * k) % 1.0
        land = t - u
        z_land = speed * land + 0.2
        stance = u < 0.6
        s = np.clip((u - 0.6) / 0.4, 0, 1)
        z_off = z_land + slide * 0.6
        z_next = speed * (land + 1) + 0.2
        targets[:, k, 2] = np.where(stance, z_land + slide * u, z_off + (z_next - z_off) * s * s * (3 - 2 * s))
        targets[:, k, 1] = np.where(stance, 0.0, 0.12 * np.sin(np.pi * s))
    return feet.move_feet(j, targets - j[:, [10, 11]])


# ----------------------------------------------------------------------------------------- ik
def test_solve_is_exact_on_rigid_motions_and_keeps_the_twist():
    R = random_rotations(40, 0)
    root = np.random.default_rng(1).normal(size=(40, 3))
    P = forward_kinematics(R, root)
    lengths = ik.bone_lengths(P)
    np.testing.assert_allclose(lengths[1:], np.linalg.norm(SMPL_OFFSETS[1:], axis=-1), atol=1e-12)
    local, pos = ik.solve_rotations(P, SMPL_OFFSETS, init=R)
    np.testing.assert_allclose(pos, P, atol=1e-12)
    np.testing.assert_allclose(local, R, atol=1e-10)           # with the model's rotations as the guess: exact
    no_twist, pos2 = ik.solve_rotations(P, SMPL_OFFSETS)       # without: same joints, other twists
    np.testing.assert_allclose(pos2, P, atol=1e-12)
    assert np.abs(no_twist - R).max() > 0.1
    np.testing.assert_allclose(ik.fk(local, root, SMPL_OFFSETS), P, atol=1e-12)


def test_non_rigid_positions_fit_without_accumulating_error():
    R = random_rotations(60, 2, scale=0.3)
    P = forward_kinematics(R, np.zeros((60, 3)))
    noisy = P + np.random.default_rng(3).normal(0, 0.01, P.shape)   # bones stretch by ~1 cm per frame
    offsets = ik.scaled_offsets(ik.bone_lengths(noisy))
    _, fitted = ik.solve_rotations(noisy, offsets, init=R)
    err = np.linalg.norm(fitted - noisy, axis=-1)
    assert err.mean() < 0.02 and err[:, [20, 21, 10, 11]].mean() < 0.03   # chain ends no worse than the rest
    got = np.linalg.norm(fitted[:, 1:] - fitted[:, list(PARENTS[1:])], axis=-1)
    np.testing.assert_allclose(got, np.broadcast_to(np.linalg.norm(offsets[1:22], axis=-1), got.shape), atol=1e-12)


def test_scaled_offsets_rest_pose_on_the_floor_and_degenerate_bones():
    off = ik.scaled_offsets(ik.bone_lengths(forward_kinematics(np.tile(np.eye(3), (2, 22, 1, 1)), np.zeros((2, 3)))))
    assert off.shape == (24, 3)
    assert ik.rest_positions(off)[:, 1].min() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(off[1:22], SMPL_OFFSETS[1:], atol=1e-12)
    lengths = ik.bone_lengths(np.zeros((3, 22, 3)))            # all joints at one point
    np.testing.assert_allclose(lengths[1:], np.linalg.norm(SMPL_OFFSETS[1:], axis=-1))
    with pytest.raises(ValueError, match="joints must have shape"):
        ik.bone_lengths(np.zeros((3, 24, 3)))
    with pytest.raises(ValueError, match="init must have shape"):
        ik.solve_rotations(np.zeros((3, 22, 3)), SMPL_OFFSETS, init=np.zeros((2, 22, 3, 3)))


def test_swing_and_kabsch():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    r = ik.swing(a, b)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", r, a / np.linalg.norm(a, axis=1, keepdims=True)),
                               b / np.linalg.norm(b, axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    flip = ik.swing(np.array([0.0, 1.0, 0.0]), np.array([0.0, -2.0, 0.0]))     # antiparallel
    np.testing.assert_allclose(flip @ [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], atol=1e-12)
    q = Rotation.random(5, random_state=5).as_matrix()
    rest = rng.normal(size=(3, 3))
    np.testing.assert_allclose(ik.kabsch(rest, np.einsum("tij,nj->tni", q, rest)), q, atol=1e-10)


# ----------------------------------------------------------------------------------------- feet
def test_contacts_follow_the_272_conventions():
    j = skating_walk(slide=0.0)
    fmt = feet.format_contacts(j)            # speed < 0.0015 m/frame, 6-frame vote, joints 10 and 11
    speed = np.linalg.norm(np.diff(j[:, [10, 11]], axis=0), axis=-1)
    assert fmt.shape == (len(j), 2) and fmt.any(0).all()
    assert (speed[fmt[:-1]] < 0.01).mean() > 0.95
    planted = feet.foot_contacts(j)
    assert ((j[:, [10, 11], 1] < 0.05) | ~planted).all()   # a planted foot is near the floor
    assert not (planted[:, 0] & planted[:, 1]).all()        # and the feet alternate


def test_ground_uses_contacts_not_one_frame():
    j = skating_walk() + np.array([0.0, 0.3, 0.0])           # floating 30 cm
    sunk = j.copy()
    sunk[70, :, 1] -= 0.25                                  # one sunken frame
    g, vertical = feet.ground(sunk)
    assert g[:, feet.GROUND_JOINTS, 1].min() >= -1e-9      # no foot joint below the floor
    planted = feet.foot_contacts(g)
    assert abs(np.median(g[:, [10, 11], 1][planted])) < 0.005  # planted feet on the floor
    others = np.r_[0:60, 80:len(j)]
    np.testing.assert_allclose(vertical[others], vertical[0], atol=2e-3)   # one sunken frame moved its neighbours only
    assert vertical[70] > vertical[0] + 0.2


def test_offline_clean_up_pins_planted_feet_keeps_bones_and_floor():
    j, _ = feet.ground(skating_walk())
    before = foot_skating_ratio(j)
    clean, contacts = feet.clean_feet(j)
    assert before > 0.1 and foot_skating_ratio(clean) < 0.5 * before
    for k, foot in enumerate((10, 11)):
        for s, e in feet._segments(contacts[:, k]):
            np.testing.assert_allclose(clean[s:e, foot, [0, 2]].std(0), 0, atol=2e-3)   # pinned (where the leg reaches)
            assert np.median(np.abs(clean[s:e, foot, 1])) < 0.002           # on the floor (ramped at the ends)
    def lengths(x):
        return np.linalg.norm(x[:, 1:] - x[:, list(PARENTS[1:])], axis=-1)
    np.testing.assert_allclose(lengths(clean), lengths(j), atol=1e-9)
    assert np.abs(np.diff(clean, axis=0)).max() < np.abs(np.diff(j, axis=0)).max() + 0.05   # hand-over: no pop
    assert floor_penetration(clean)["max"] < 0.01


def test_causal_cleaner_is_chunking_invariant_and_cleans():
    j, _ = feet.ground(skating_walk())
    whole = feet.FootCleaner()(j)
    c = feet.FootCleaner()
    parts = np.concatenate([c(j[s:s + 4]) for s in range(0, len(j), 4)])
    np.testing.assert_allclose(parts, whole, atol=1e-12)
    c2 = feet.FootCleaner()
    first = c2(j[:50])
    np.testing.assert_allclose(first, whole[:50], atol=1e-12)      # frame t depends on frames <= t only
    assert foot_skating_ratio(whole) < 0.5 * foot_skating_ratio(j)
    assert floor_penetration(whole)["max"] < 1e-9
    def lengths(x):
        return np.linalg.norm(x[:, 1:] - x[:, list(PARENTS[1:])], axis=-1)
    np.testing.assert_allclose(lengths(whole), lengths(j), atol=1e-9)
    assert np.abs(np.diff(whole, axis=0)).max() < np.abs(np.diff(j, axis=0)).max() + 0.05   # hand-over: no pop


def test_session_hook_cleans_chunks_causally():
    from motionstreamer.runtime.engine import FrameChunk

    j, _ = feet.ground(skating_walk(T=40))
    cleaner = feet.FootCleaner()
    chunks = [FrameChunk(0, i, 4 * i, torch.zeros(4, 272), torch.from_numpy(j[4 * i:4 * i + 4]).float(),
                         torch.zeros(16), "walk") for i in range(10)]
    out = [cleaner.clean_chunk(c) for c in chunks]
    assert all(o.joints.dtype == torch.float32 and o.latent_index == c.latent_index for o, c in zip(out, chunks))
    np.testing.assert_allclose(torch.cat([o.joints for o in out]).numpy(),
                               feet.FootCleaner()(j.astype(np.float32).astype(np.float64)), atol=1e-6)


def test_foot_metrics():
    j = np.zeros((31, 22, 3))
    j[:, 10, 2] = np.arange(31) * 0.03                 # a foot on the floor sliding at 0.9 m/s
    j[:, 11, 1] = 0.2                                   # the other lifted
    assert foot_skating_ratio(j) == pytest.approx(1.0)
    j[:, 10, 1] = 0.06                                  # above 5 cm: not skating
    assert foot_skating_ratio(j) == 0.0
    j[:, 10, 1] = -0.02
    j[5, 11, 1] = -0.05
    p = floor_penetration(j)
    assert p["max"] == pytest.approx(0.05) and p["mean"] == pytest.approx(0.02 + 0.03 / 31)
    assert p["frames_over_1cm"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"frames >= 2, 22, 3"):
        foot_skating_ratio(np.zeros((1, 22, 3)))


def test_numpy_filters_equal_scipy_ndimage():
    """feet.py's numpy filters (so that it runs in Blender's Python, which has no scipy) against
    scipy.ndimage itself, on random data of every length, sizes odd and even."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 6, 7, 31):
        mask = rng.random((n, 2)) < 0.5
        for size in (1, 2, 3, 5, 6, 7):
            ref = np.stack([ndimage.median_filter(mask[:, k], size=size, mode="nearest") for k in range(2)], 1)
            np.testing.assert_array_equal(feet._vote(mask, size), ref, err_msg=f"{n} frames, size {size}")
        x = rng.random(n)
        for size in (1, 3, 9):
            np.testing.assert_array_equal(feet._max_filter(x, size), ndimage.maximum_filter1d(x, size, mode="nearest"))
        for sigma in (0.5, 1.0, 2.0, 7.0):
            np.testing.assert_allclose(feet._gaussian_filter(x, sigma),
                                       ndimage.gaussian_filter1d(x, sigma, mode="nearest"), atol=1e-12)


def test_ground_by_contacts_puts_planted_feet_on_the_floor_frame_by_frame():
    """A body whose legs differ from the motion's (its feet 3 cm higher in half the frames): one
    constant shift cannot ground it, the contacts can."""
    j, _ = feet.ground(skating_walk())
    contacts = feet.foot_contacts(j)
    body = j.copy()
    body[len(j) // 2:, :, 1] += 0.03
    g, offsets = feet.ground_by_contacts(body, contacts)
    lowest = np.where(contacts, g[:, [10, 11], 1], np.inf).min(1)
    planted = np.isfinite(lowest)
    assert np.percentile(np.abs(lowest[planted]), 90) < 0.004       # planted feet on the floor in both halves
    assert g[:, feet.GROUND_JOINTS, 1].min() >= -1e-9
    constant, _ = feet.ground(body)                                  # what one shift does: half the frames float
    const_low = np.where(contacts, constant[:, [10, 11], 1], np.inf).min(1)
    assert np.percentile(np.abs(const_low[planted]), 90) > 0.01
    with pytest.raises(ValueError, match=r"contacts must have shape"):
        feet.ground_by_contacts(body, contacts[:-1])
