"""Synthetic motion generator: determinism, skeleton consistency, physical plausibility (feet planted
without sliding, speeds, flight), actions distinguishable by their motion and their captions,
continuous transitions, and the 272 round trip."""
import numpy as np
import pytest

from motionstreamer.data import synth
from motionstreamer.representation.features import joints_to_272, recover_joints
from motionstreamer.representation.skeleton import PARENTS, SMPL_OFFSETS, forward_kinematics

FLOOR_TOL = 0.005        # a toe within 5 mm of the floor counts as touching it


def clip(action, seed, seconds=4.0):
    return synth.generate_clip(action, np.random.default_rng(seed), seconds, seconds + 0.01)


@pytest.fixture(scope="module")
def clips():
    """Every action, three seeds each, 4 s."""
    return {(a, s): clip(a, 100 + s) for a in synth.ACTIONS for s in range(3)}


def floor_joints(c):
    j, _ = c.canonical()
    return j - np.array([0.0, j[..., 1].min(), 0.0])


def root_speed(j):
    return np.linalg.norm(np.diff(j[:, 0, [0, 2]], axis=0), axis=-1) * synth.FPS


def test_deterministic_per_seed_and_different_across_seeds():
    a, b = clip("walk", 7), clip("walk", 7)
    np.testing.assert_array_equal(a.joints, b.joints)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert a.captions == b.captions
    c = clip("walk", 8)
    assert a.joints.shape != c.joints.shape or not np.allclose(a.joints, c.joints)


def test_enough_action_kinds():
    assert len(synth.ACTIONS) >= 14
    for name in ("walk", "jog", "run", "walk_backwards", "sidestep_left", "sidestep_right", "turn_left",
                 "turn_right", "jump", "squat", "wave_left", "wave_right", "raise_arms", "kick", "idle"):
        assert name in synth.ACTIONS


def test_unknown_action_is_named():
    with pytest.raises(ValueError, match="unknown action 'moonwalk'"):
        clip("moonwalk", 0)


def test_finite_and_lengths_in_range(clips):
    for (a, _), c in clips.items():
        assert np.all(np.isfinite(c.joints)) and np.all(np.isfinite(c.rotations)), a
        assert c.joints.shape == (120, 22, 3) and c.rotations.shape == (120, 22, 3, 3)
    rng = np.random.default_rng(0)
    lengths = [len(synth.generate_clip("idle", rng, 2.0, 10.0).joints) for _ in range(30)]
    assert 60 <= min(lengths) and max(lengths) < 300      # [2 s, 10 s): what the readers keep


def test_rotations_are_rotations_and_joints_are_their_forward_kinematics(clips):
    for (a, _), c in clips.items():
        r = c.rotations
        np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)
        np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
        scale = c.params["scale"]
        fk = forward_kinematics(r, c.joints[:, 0], SMPL_OFFSETS * scale)
        np.testing.assert_allclose(fk, c.joints, atol=1e-9, err_msg=a)


def test_bone_lengths_are_the_scaled_smpl_offsets(clips):
    for (a, _), c in clips.items():
        bones = np.linalg.norm(c.joints[:, 1:] - c.joints[:, list(PARENTS[1:])], axis=-1)      # (T, 21)
        ratio = bones / np.linalg.norm(SMPL_OFFSETS[1:], axis=-1)
        np.testing.assert_allclose(ratio, c.params["scale"], rtol=1e-9, err_msg=a)
        assert 0.85 <= c.params["scale"] <= 1.15


def test_feet_on_the_floor_and_planted_feet_do_not_slide(clips):
    """Every frame with support has a foot on the floor; a toe that stays on the floor for three
    frames moves less than 15 cm/s (median over the clip < 6 cm/s: a pivot about the ankle at most)."""
    for (a, _), c in clips.items():
        j = floor_joints(c)
        lowest = j[:, [7, 8, 10, 11], 1].min(axis=1)
        airborne = lowest > FLOOR_TOL
        if a not in ("jump", "run", "jog"):
            assert not airborne.any(), a
        toes = j[:, [10, 11]]
        down = toes[..., 1] < FLOOR_TOL
        planted = down[:-2] & down[1:-1] & down[2:]                          # (T-2, 2): frames t..t+2
        speed = np.linalg.norm(toes[2:, :, [0, 2]] - toes[1:-1, :, [0, 2]], axis=-1) * synth.FPS
        slide = speed[planted]
        assert len(slide) > 0, a
        assert np.median(slide) < 0.06 and np.percentile(slide, 90) < 0.15, (a, np.median(slide), slide.max())


def test_flight_in_jumps_and_runs(clips):
    for s in range(3):
        for a, height in (("jump", 0.08), ("run", 0.005)):
            j = floor_joints(clips[(a, s)])
            assert j[:, [7, 8, 10, 11], 1].min(axis=1).max() > height, a


def test_speeds_ordered_walk_jog_run(clips):
    med = {a: [np.median(root_speed(floor_joints(clips[(a, s)]))) for s in range(3)] for a in ("walk", "jog", "run")}
    assert max(med["walk"]) < min(med["jog"]) and max(med["jog"]) < min(med["run"]), med
    assert 0.7 < min(med["walk"]) and max(med["run"]) < 5.0


def body_frame_displacement(j):
    """Root displacement over the clip in frame 0's facing frame (canonical: +Z forward, +X left)."""
    return j[-1, 0, [0, 2]] - j[0, 0, [0, 2]]


def heading_change(c):
    r = c.rotations[:, 0]
    yaw = np.unwrap(np.arctan2(r[:, 0, 2], r[:, 2, 2]))
    return np.degrees(yaw[-1] - yaw[0])


def test_actions_have_their_own_motion_signatures(clips):
    for s in range(3):
        j = {a: floor_joints(clips[(a, s)]) for a in synth.ACTIONS}
        c = {a: clips[(a, s)] for a in synth.ACTIONS}
        travel = {a: np.linalg.norm(body_frame_displacement(j[a])) for a in j}
        assert body_frame_displacement(j["walk"])[1] > 1.5
        assert body_frame_displacement(j["walk_backwards"])[1] < -0.8
        assert body_frame_displacement(j["sidestep_left"])[0] > 0.3
        assert body_frame_displacement(j["sidestep_right"])[0] < -0.3
        assert heading_change(c["turn_left"]) > 60 and heading_change(c["turn_right"]) < -60
        assert abs(heading_change(c["walk_circle"])) > 120
        for still in ("idle", "wave_left", "wave_right", "raise_arms", "squat", "kick"):
            assert travel[still] < 0.3, (still, travel[still])
        head = {a: j[a][:, 15, 1] for a in j}
        assert ((j["wave_left"][:, 20, 1] > head["wave_left"]).any()
                and not (j["wave_left"][:, 21, 1] > head["wave_left"]).any())
        assert ((j["wave_right"][:, 21, 1] > head["wave_right"]).any()
                and not (j["wave_right"][:, 20, 1] > head["wave_right"]).any())
        assert ((j["raise_arms"][:, 20, 1] > head["raise_arms"])
                & (j["raise_arms"][:, 21, 1] > head["raise_arms"])).any()
        pelvis_drop = {a: j[a][:, 0, 1].max() - j[a][:, 0, 1].min() for a in j}
        assert pelvis_drop["squat"] > 0.2 and pelvis_drop["sit_down"] > 0.25 and pelvis_drop["idle"] < 0.05
        assert j["sit_down"][-1, 0, 1] < 0.7 * j["sit_down"][0, 0, 1]               # ends seated
        assert j["kick"][:, [7, 8], 1].max() > 0.35                                # a foot well off the floor


def test_captions_distinct_per_action_and_fully_tokenised():
    rng = np.random.default_rng(0)
    seen = {}
    for a in synth.ACTIONS:
        phrases = set()
        for _ in range(25):
            p = synth.sample_params(a, rng, float(rng.uniform(2, 10)))
            p["curve"] = float(rng.choice([0.0, 0.4, -0.4])) if a in ("walk", "jog", "run") else 0.0
            caps = synth.captions_for(a, p, rng, 3)
            assert len(caps) == len(set(caps)) == 3
            for cap in caps:
                tokens = synth.tokens_for(cap).split(" ")
                assert len(tokens) == len(cap.split()) and all("/" in t for t in tokens)
                phrases.add(cap.split(" ", 2)[-1] if cap.startswith(("a ", "the ")) else cap.split(" ", 1)[-1])
        seen[a] = phrases
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seen[a] & seen[b], (a, b, seen[a] & seen[b])


def test_tokens_name_an_unknown_word():
    with pytest.raises(KeyError, match="'moonwalks'"):
        synth.tokens_for("a person moonwalks")


def test_sequence_transitions_are_continuous():
    """Per-frame joint acceleration around each boundary stays within what the two actions themselves
    do away from it, and joint speeds stay human everywhere."""
    rng = np.random.default_rng(3)
    for acts in (["walk", "jump", "wave_right"], ["run", "idle"], ["squat", "turn_left", "jog", "sit_down"],
                 ["sidestep_left", "kick", "walk_backwards"]):
        lengths = [100] * len(acts)
        j, _, segs = synth.generate_sequence(acts, lengths, rng)
        assert [s["action"] for s in segs] == acts and segs[-1]["end"] == len(j) == sum(lengths)
        acc = np.linalg.norm(np.diff(j, 2, axis=0), axis=-1).max(axis=1)               # m / frame^2
        near = np.zeros(len(acc), bool)
        for s in segs[:-1]:
            near[s["end"] - 10: s["end"] + 10] = True
        for a, b in zip(segs[:-1], segs[1:]):
            own = np.arange(len(acc))
            own = ~near & (own >= a["start"]) & (own < b["end"] - 1)
            assert acc[near & (np.arange(len(acc)) >= a["end"] - 10) & (np.arange(len(acc)) < a["end"] + 10)].max() \
                <= 1.25 * acc[own].max() + 0.01, (acts, a["action"], b["action"])
        step = np.linalg.norm(np.diff(j, axis=0), axis=-1).max(axis=1)
        assert step.max() < 0.33                          # < 10 m/s anywhere (a running swing foot: ~2x the body)


def test_leg_ik_reaches_reachable_targets():
    """Forward kinematics of the solved angles (R_hip = Rx(flex) Rz(abd), knee Rx) puts the ankle on
    the target; unreachable targets end up on the target's direction at full reach."""
    rng = np.random.default_rng(0)
    for side in (0, 1):
        leg = synth.Leg.of(side, 1.07)
        # targets from random reachable poses
        flex0, abd0, knee0 = rng.uniform(-1.2, 0.8, 200), rng.uniform(-0.4, 0.4, 200), rng.uniform(0.05, 2.0, 200)
        def fk(flex, abd, knee):
            R = synth.euler_xyz(np.stack([flex, np.zeros_like(flex), abd], -1))
            shank = synth.euler_xyz(np.stack([knee, 0 * knee, 0 * knee], -1)) @ leg.shank
            return np.einsum("tab,tb->ta", R, leg.thigh + shank)
        target = fk(flex0, abd0, knee0)
        flex, abd, knee = synth.leg_ik(leg, target)
        np.testing.assert_allclose(fk(flex, abd, knee), target, atol=1e-9)
        far = target / np.linalg.norm(target, axis=-1, keepdims=True) * 2.0
        got = fk(*synth.leg_ik(leg, far))
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 0.9999 * leg.reach, rtol=1e-9)
        np.testing.assert_allclose(got / np.linalg.norm(got, axis=-1, keepdims=True), far / 2.0, atol=1e-9)


def test_features_round_trip_to_canonical_joints(clips):
    for a in ("walk", "run", "walk_circle", "jump", "turn_right"):
        c = clips[(a, 0)]
        j, r = c.canonical()
        ref = j - np.array([j[0, 0, 0], j[..., 1].min(), j[0, 0, 2]])
        np.testing.assert_allclose(recover_joints(joints_to_272(j, r)), ref, atol=1e-9)
        x = c.features()
        assert x.dtype == np.float32 and x.shape == (len(j), 272)
        np.testing.assert_allclose(recover_joints(x.astype(np.float64)), ref, atol=1e-5)
        np.testing.assert_allclose(x[0, :8], [0, 0, 1, 0, 0, 0, 1, 0], atol=1e-6)      # row-0 convention
