"""BVH output: the released converter's format (spec §3), checked with the independent `bvh` package,
scipy's Euler convention, and forward kinematics back to recover_joints."""
import numpy as np
import pytest
import torch
from bvh import Bvh
from scipy.spatial.transform import Rotation

from motionstreamer.io.bvh import BVH, JOINT_ORDER, bvh_text, features_to_bvh, read_bvh, write_bvh
from motionstreamer.representation.features import canonicalize_facing, joints_to_272, recover_joints, recover_rotations
from motionstreamer.representation.skeleton import forward_kinematics

# Spec §3, item 4: file order; and the offset table (m), joint by SMPL index.
FILE_ORDER = ["Pelvis", "Left_hip", "Left_knee", "Left_ankle", "Left_foot", "Right_hip", "Right_knee",
              "Right_ankle", "Right_foot", "Spine1", "Spine2", "Spine3", "Neck", "Head", "Left_collar",
              "Left_shoulder", "Left_elbow", "Left_wrist", "Left_palm", "Right_collar", "Right_shoulder",
              "Right_elbow", "Right_wrist", "Right_palm"]
FILE_ORDER_SMPL = [0, 1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12, 15, 13, 16, 18, 20, 22, 14, 17, 19, 21, 23]
SPEC_OFFSETS = np.array([float(v) for v in """
-0.001795 -0.223333 0.028219   0.069520 -0.091406 -0.006815  -0.067670 -0.090522 -0.004320
-0.002533 0.108963 -0.026696   0.034277 -0.375199 -0.004496  -0.038290 -0.382569 -0.008850
0.005487 0.135180 0.001092    -0.013596 -0.397960 -0.043693   0.015774 -0.398415 -0.042312
0.001457 0.052922 0.025425     0.026358 -0.055791 0.119288   -0.025372 -0.048144 0.123348
-0.002778 0.213870 -0.042857   0.078845 0.121749 -0.034090   -0.081759 0.118833 -0.038615
0.005152 0.064970 0.051349     0.090977 0.030469 -0.008868   -0.096012 0.032551 -0.009143
0.259612 -0.012772 -0.027456  -0.253742 -0.013329 -0.021401   0.249234 0.008986 -0.001171
-0.255298 0.007772 -0.005559   0.084042 -0.008162 -0.014945  -0.084622 -0.006117 -0.010315
""".split()]).reshape(24, 3)


def make_motion(T=24, seed=0):
    """Smooth random local rotations (angles up to ~60 deg), a turning pelvis and a moving root."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None, None] / 30.0
    rotvec = 1.0 * np.sin(2 * np.pi * (rng.uniform(0.2, 1.0, (1, 22, 3)) * t + rng.uniform(0, 1, (1, 22, 3))))
    rotvec[:, 0] = np.array([0.1, 1.0, -0.1]) * (0.8 * t[:, 0] + 0.5)
    rotations = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(T, 22, 3, 3)
    root = np.stack([0.4 * t[:, 0, 0], 0.95 + 0.05 * np.sin(5 * t[:, 0, 0]), np.sin(t[:, 0, 0])], -1)
    return rotations, root


def motion_features(T=24, seed=0):
    rotations, root = make_motion(T, seed)
    joints, rotations = canonicalize_facing(forward_kinematics(rotations, root), rotations)
    return joints_to_272(joints, rotations)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rotations, root = make_motion()
    path = write_bvh(tmp_path_factory.mktemp("bvh") / "m.bvh", rotations, root, fps=30)
    return path, rotations, root


def test_hierarchy_parses_with_bvh_package(written):
    path, rotations, _ = written
    mocap = Bvh(path.read_text())
    assert mocap.get_joints_names() == FILE_ORDER
    assert [JOINT_ORDER.index(i) for i in FILE_ORDER_SMPL] == list(range(24))
    assert mocap.nframes == len(rotations)
    assert mocap.frame_time == pytest.approx(0.033333, abs=0)
    assert mocap.joint_channels("Pelvis") == ["Xposition", "Yposition", "Zposition",
                                              "Zrotation", "Yrotation", "Xrotation"]
    for name, smpl in zip(FILE_ORDER, FILE_ORDER_SMPL):
        if name != "Pelvis":
            assert mocap.joint_channels(name) == ["Zrotation", "Yrotation", "Xrotation"], name
        np.testing.assert_allclose([float(v) for v in mocap.joint_offset(name)], SPEC_OFFSETS[smpl], atol=0)
    parents = {n: mocap.joint_parent(n).name if mocap.joint_parent(n) else None for n in FILE_ORDER}
    assert parents["Left_palm"] == "Left_wrist" and parents["Head"] == "Neck" and parents["Spine1"] == "Pelvis"
    leaves = [n for n in FILE_ORDER if any(c.value == ["End", "Site"] for c in mocap.get_joint(n).children)]
    assert leaves == ["Left_foot", "Right_foot", "Head", "Left_palm", "Right_palm"]
    for name in leaves:
        end = next(c for c in mocap.get_joint(name).children if c.value == ["End", "Site"])
        assert end["OFFSET"] == ["0.000000", "0.000000", "0.000000"]


def test_text_format_is_the_converters(written):
    path, rotations, _ = written
    text = path.read_text()
    lines = text.split("\n")
    assert lines[:6] == ["HIERARCHY", "ROOT Pelvis", "{", "\tOFFSET -0.001795 -0.223333 0.028219",
                         "\tCHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation ",
                         "\tJOINT Left_hip"]
    assert lines[6:12] == ["\t{", "\t\tOFFSET 0.069520 -0.091406 -0.006815",
                           "\t\tCHANNELS 3 Zrotation Yrotation Xrotation", "\t\tJOINT Left_knee", "\t\t{",
                           "\t\t\tOFFSET 0.034277 -0.375199 -0.004496"]
    assert "\t\t\t\t\tEnd Site\n\t\t\t\t\t{\n\t\t\t\t\t\tOFFSET 0.000000 0.000000 0.000000\n\t\t\t\t\t}\n" in text
    m = lines.index("MOTION")
    assert (lines[m - 1] == "}" and lines[m + 1] == f"Frames: {len(rotations)}"
            and lines[m + 2] == "Frame Time: 0.033333")
    frames = lines[m + 3:]
    assert frames[-1] == "" and len(frames) == len(rotations) + 1       # file ends with a newline
    for row in frames[:-1]:
        assert row.endswith(" ") and not row.endswith("  ")
        values = row[:-1].split(" ")
        assert len(values) == 75
        assert all(v == f"{float(v):f}" for v in values)                 # %f: six decimals
        assert values[-3:] == ["0.000000"] * 3                            # Right_palm
        assert values[3 + 3 * FILE_ORDER.index("Left_palm"):][:3] == ["0.000000"] * 3
    assert text.count("CHANNELS") == 24 and text.count("End Site") == 5
    assert bvh_text(rotations, written[2], 60).split("\n")[m + 2] == "Frame Time: 0.016667"


def test_euler_channels_reproduce_rotations(written):
    path, rotations, _ = written
    mocap = Bvh(path.read_text())
    for name, smpl in zip(FILE_ORDER, FILE_ORDER_SMPL):
        zyx = np.array(mocap.frames_joint_channels(name, ["Zrotation", "Yrotation", "Xrotation"]), dtype=float)
        got = Rotation.from_euler("ZYX", zyx, degrees=True).as_matrix()
        want = rotations[:, smpl] if smpl < 22 else np.tile(np.eye(3), (len(rotations), 1, 1))
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("floor_at_zero", [False, True])
def test_root_position_is_offset_plus_translation(tmp_path, floor_at_zero):
    rotations, root = make_motion(T=10, seed=3)
    path = write_bvh(tmp_path / "r.bvh", rotations, root, floor_at_zero=floor_at_zero)
    mocap = Bvh(path.read_text())
    pos = np.array(mocap.frames_joint_channels("Pelvis", ["Xposition", "Yposition", "Zposition"]), dtype=float)
    want = root if floor_at_zero else root + SPEC_OFFSETS[0]
    np.testing.assert_allclose(pos, want, atol=5e-7)


def _fk_from_bvh_package(mocap: Bvh) -> np.ndarray:
    """Global joint positions (T, 24, 3) in file order from the package's parse, with scipy rotations."""
    names = mocap.get_joints_names()
    T = mocap.nframes
    g_rot, g_pos = {}, {}
    for name in names:
        zyx = np.array(mocap.frames_joint_channels(name, ["Zrotation", "Yrotation", "Xrotation"]), dtype=float)
        local = Rotation.from_euler("ZYX", zyx, degrees=True).as_matrix()
        offset = np.array([float(v) for v in mocap.joint_offset(name)])
        parent = mocap.joint_parent(name)
        if parent is None:
            g_pos[name] = np.array(mocap.frames_joint_channels(name, ["Xposition", "Yposition", "Zposition"]),
                                   dtype=float)
            g_rot[name] = local
        else:
            p = parent.name
            g_pos[name] = g_pos[p] + np.einsum("tab,b->ta", g_rot[p], offset)
            g_rot[name] = g_rot[p] @ local
    return np.stack([g_pos[n] for n in names], 1).reshape(T, 24, 3)


@pytest.mark.parametrize("floor_at_zero", [False, True])
def test_features_to_bvh_to_joints_matches_recover_joints(tmp_path, floor_at_zero):
    features = motion_features(T=40, seed=1)
    path = features_to_bvh(tmp_path / "f.bvh", features, fps=30, floor_at_zero=floor_at_zero,
                           skeleton="smpl-neutral", rotations="model")     # the released converter's file
    shift = 0.0 if floor_at_zero else SPEC_OFFSETS[0]
    want = recover_joints(features)                              # (T, 22, 3), pos-mode inverse
    by_package = _fk_from_bvh_package(Bvh(path.read_text())) - shift
    by_reader = read_bvh(path).global_positions() - shift
    file_order_body = [JOINT_ORDER.index(j) for j in range(22)]
    np.testing.assert_allclose(by_package[:, file_order_body], want, atol=1e-4)
    np.testing.assert_allclose(by_reader[:, file_order_body], want, atol=1e-4)
    np.testing.assert_allclose(by_reader, by_package, atol=1e-9)


def test_read_bvh_round_trip(written):
    path, rotations, root = written
    b = read_bvh(path)
    assert isinstance(b, BVH) and b.names == FILE_ORDER and b.frame_time == 0.033333
    assert b.parents[FILE_ORDER.index("Left_knee")] == FILE_ORDER.index("Left_hip")
    np.testing.assert_array_equal(b.offsets, SPEC_OFFSETS[FILE_ORDER_SMPL])
    local = b.local_rotations()
    np.testing.assert_allclose(local[:, [JOINT_ORDER.index(j) for j in range(22)]], rotations, atol=1e-6)
    np.testing.assert_allclose(b.channel_values(0)[:, :3], root + SPEC_OFFSETS[0], atol=5e-7)


def test_inputs_as_torch_and_float32(tmp_path):
    features = motion_features(T=8, seed=2)
    converter = dict(skeleton="smpl-neutral", rotations="model")
    a = features_to_bvh(tmp_path / "a.bvh", features, **converter).read_text()
    b = features_to_bvh(tmp_path / "b.bvh", torch.from_numpy(features), **converter).read_text()
    assert a == b
    assert features_to_bvh(tmp_path / "d.bvh", features).read_text() == \
        features_to_bvh(tmp_path / "e.bvh", torch.from_numpy(features)).read_text()
    rot, trans = recover_rotations(features)
    c = write_bvh(tmp_path / "c.bvh", rot.astype(np.float32), trans.astype(np.float32))
    np.testing.assert_allclose(read_bvh(c).motion, read_bvh(tmp_path / "a.bvh").motion, atol=2e-3)


@pytest.mark.parametrize("rot_shape,trans_shape,fps,match", [
    ((5, 24, 3, 3), (5, 3), 30, r"rotations must have shape \(frames, 22, 3, 3\)"),
    ((5, 22, 3, 3), (4, 3), 30, r"translation must have shape \(5, 3\)"),
    ((0, 22, 3, 3), (0, 3), 30, "no frames"),
    ((5, 22, 3, 3), (5, 3), 0, "fps must be a positive number"),
    ((5, 22, 3, 3), (5, 3), float("nan"), "fps must be a positive number"),
])
def test_write_bvh_rejects_bad_input(tmp_path, rot_shape, trans_shape, fps, match):
    rot = np.broadcast_to(np.eye(3), rot_shape).copy()
    with pytest.raises(ValueError, match=match):
        write_bvh(tmp_path / "x.bvh", rot, np.zeros(trans_shape), fps=fps)
    assert not list(tmp_path.iterdir())


def test_nan_is_rejected_and_existing_file_kept(tmp_path):
    rotations, root = make_motion(T=6)
    path = write_bvh(tmp_path / "x.bvh", rotations, root)
    before = path.read_text()
    bad = rotations.copy()
    bad[3, 7, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"rotations contains NaN/inf \(first at index \(3, 7, 1, 1\)\)"):
        write_bvh(path, bad, root)
    features = motion_features(T=6)
    features[2, 100] = np.inf
    with pytest.raises(ValueError, match="features contains NaN/inf"):
        features_to_bvh(path, features)
    with pytest.raises(ValueError, match=r"features must have shape \(frames, 272\)"):
        features_to_bvh(path, features[:, :263])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.bvh"]


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("HIERARCHY", "HIERARCHX"), r":1: expected HIERARCHY"),
    (lambda t: t.replace("CHANNELS 3 Zrotation Yrotation Xrotation", "CHANNELS 3 Zrotation Yrotation", 1),
     r":9: CHANNELS 3 must be followed by 3 channel names"),
    (lambda t: t.replace("OFFSET 0.069520 -0.091406 -0.006815", "OFFSET 0.069520 oops -0.006815"),
     r":8: OFFSET has a non-number"),
    (lambda t: t.rsplit("\n", 2)[0] + "\n", r"expected 24 frames, found 23"),
    (lambda t: t.replace("Frame Time: 0.033333", "Frame Time: soon"), r"bad Frames / Frame Time"),
    (lambda t: t.split("MOTION")[0], r"missing MOTION section"),
])
def test_read_bvh_names_file_and_line(written, tmp_path, edit, match):
    bad = tmp_path / "bad.bvh"
    bad.write_text(edit(written[0].read_text()))
    with pytest.raises(ValueError, match=match) as e:
        read_bvh(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(FileNotFoundError, match="BVH file not found"):
        read_bvh(tmp_path / "missing.bvh")
