"""AMASS -> 272 pipeline (spec §1.1-1.4) end to end with a fake body model and fake AMASS files.

The expected features are re-derived here independently: scipy rotations, explicit 4x4 rigid
transforms for the body model (lbs-style), the literal stride/crop/axis-swap/mirror/face-z recipe.
Tolerance 1e-5: the pipeline casts parameters to float32 after the Z-up -> Y-up step, as the
reference does; both sides use the same float32 parameters, so the measured gap is ~1e-7.
"""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_representation_features import make_motion

from motionstreamer.cli import main
from motionstreamer.data.amass import (
    BodyModelJoints,
    downsample_stride,
    load_amass,
    read_index,
    resolve_source,
    z_up_to_y_up,
)
from motionstreamer.representation import compute_mean_std, joints_to_272, mirror_272
from motionstreamer.representation.skeleton import PARENTS_24, SMPL_OFFSETS_24

C = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # Z-up -> Y-up
PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))
TOL = 1e-5


def fake_body_model(path, seed=0):
    """SMPL-tree model: 24 joints, 8 vertices around each (plus free vertices), 16 shape dirs."""
    rng = np.random.default_rng(seed)
    rest = np.zeros((24, 3))
    for j in range(1, 24):
        rest[j] = rest[PARENTS_24[j]] + SMPL_OFFSETS_24[j]
    rest += SMPL_OFFSETS_24[0]
    clusters = rest[:, None, :] + rng.normal(0, 0.03, (24, 8, 3))
    v_template = np.concatenate([clusters.reshape(-1, 3), rng.normal(0, 0.3, (40, 3))])
    V = v_template.shape[0]
    j_regressor = np.zeros((24, V))
    for j in range(24):
        w = rng.uniform(0.5, 1.5, 8)
        j_regressor[j, j * 8:(j + 1) * 8] = w / w.sum()
    shapedirs = rng.normal(0, 0.01, (V, 3, 16))
    kintree = np.array([[4294967295] + list(PARENTS_24[1:]), list(range(24))], dtype=np.int64)
    np.savez(path, v_template=v_template, shapedirs=shapedirs, J_regressor=j_regressor, kintree_table=kintree,
             f=np.zeros((1, 3), dtype=np.int32))
    return dict(v_template=v_template, shapedirs=shapedirs, J_regressor=j_regressor)


def fake_amass(path, n_frames, fps, seed, rate_key="mocap_framerate"):
    """A Z-up AMASS SMPL-H npz whose body motion is a Y-up FK motion rotated into Z-up."""
    J, R = make_motion(T=n_frames, seed=seed)
    rng = np.random.default_rng(seed)
    root_z = C.T @ R[:, 0]
    poses = np.concatenate([Rotation.from_matrix(root_z).as_rotvec(),
                            Rotation.from_matrix(R[:, 1:].reshape(-1, 3, 3)).as_rotvec().reshape(n_frames, 63),
                            rng.normal(0, 0.3, (n_frames, 90))], axis=1)             # hands: must be ignored
    trans = (J[:, 0] - 0.3) @ C                                                    # C^T t per row
    np.savez(path, poses=poses, trans=trans, betas=rng.normal(0, 1, 16), gender=np.array("neutral"),
             dmpls=np.zeros((n_frames, 8)), **{rate_key: np.array(float(fps))})


def expected_features(amass_path, start, end, model):
    """Independent re-derivation: returns (features, mirrored features)."""
    d = np.load(amass_path)
    fps = float(d["mocap_framerate"] if "mocap_framerate" in d.files else d["mocap_frame_rate"])
    stride = int(fps / 30)
    idx = np.arange(0, d["poses"].shape[0], stride)[int(start):int(end)]
    aa = d["poses"][idx, :66].reshape(-1, 22, 3).copy()
    trans = d["trans"][idx].copy()
    betas = d["betas"][:10]
    aa[:, 0] = Rotation.from_matrix(C @ Rotation.from_rotvec(aa[:, 0]).as_matrix()).as_rotvec()
    trans = np.stack([trans[:, 0], trans[:, 2], -trans[:, 1]], -1)
    aa, trans = aa.astype(np.float32).astype(np.float64), trans.astype(np.float32).astype(np.float64)

    m_aa = aa.copy()
    for a, b in PAIRS:
        m_aa[:, [a, b]] = m_aa[:, [b, a]]
    m_aa[:, :, 1:] *= -1
    m_trans = trans * [-1, 1, 1]

    shaped = model["v_template"] + model["shapedirs"][:, :, :10] @ betas
    rest = model["J_regressor"][:22] @ shaped

    def features(aa, trans):
        R = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(-1, 22, 3, 3)
        f = R[0, 0] @ [0.0, 0.0, 1.0]
        Q = Rotation.from_rotvec([0.0, -np.arctan2(f[0], f[2]), 0.0]).as_matrix()
        R[:, 0] = Q @ R[:, 0]
        trans = trans @ Q.T
        T = R.shape[0]
        G = np.zeros((T, 22, 4, 4))
        G[..., 3, 3] = 1
        for j in range(22):
            local = np.zeros((T, 4, 4))
            local[:, :3, :3] = R[:, j]
            local[:, :3, 3] = rest[j] - (rest[PARENTS_24[j]] if j else 0)
            local[:, 3, 3] = 1
            G[:, j] = local if j == 0 else G[:, PARENTS_24[j]] @ local
        joints = G[:, :, :3, 3] + trans[:, None]
        return joints_to_272(joints, R)

    return features(aa, trans), features(m_aa, m_trans)


@pytest.fixture()
def workspace(tmp_path):
    model = fake_body_model(tmp_path / "SMPLX_NEUTRAL.npz")
    root = tmp_path / "amass"
    (root / "SubA" / "s1").mkdir(parents=True)
    (root / "SubB").mkdir()
    fake_amass(root / "SubA" / "s1" / "walk_poses.npz", 300, 100, seed=1)                     # stride 3 -> 100
    fake_amass(root / "SubB" / "turn_poses.npz", 240, 120, seed=2, rate_key="mocap_frame_rate")  # stride 4 -> 60
    return tmp_path, root, model


def test_prepare_amass_end_to_end(workspace):
    tmp, root, model = workspace
    index = tmp / "index.csv"
    index.write_text(",source_path,start_frame,end_frame,new_name\n"
                     "0,./datasets/pose_data/SubA/s1/walk_poses.npy,10.0,80.0,000000.npy\n"
                     "1,./pose_data/SubB/turn_poses.npy,0,1000,000001.npy\n")
    out = tmp / "out"
    rc = main(["prepare-amass", "--index", str(index), "--amass-root", str(root), "--body-model",
               str(tmp / "SMPLX_NEUTRAL.npz"), "--out", str(out), "--quiet"])
    assert rc == 0
    files = sorted(p.name for p in (out / "motion_data").iterdir())
    assert files == ["000000.npy", "000001.npy", "M000000.npy", "M000001.npy"]

    cases = (("000000", root / "SubA/s1/walk_poses.npz", 10, 80, 70),
             ("000001", root / "SubB/turn_poses.npz", 0, 1000, 60))
    for cid, src, s, e, T in cases:
        x, xm = np.load(out / "motion_data" / f"{cid}.npy"), np.load(out / "motion_data" / f"M{cid}.npy")
        assert x.shape == (T, 272) and x.dtype == np.float64   # 100 fps: 300 frames / 3 = 100, crop 10:80
        ex, exm = expected_features(src, s, e, model)
        np.testing.assert_allclose(x, ex, atol=TOL, rtol=0)
        np.testing.assert_allclose(xm, exm, atol=TOL, rtol=0)
        # the mirror file is the mirrored SMPL params re-derived; the closed form is exact on 0:8, 140:272
        exact = np.r_[0:8, 140:272]
        np.testing.assert_allclose(mirror_272(x)[:, exact], xm[:, exact], atol=TOL, rtol=0)
        assert np.abs(mirror_272(x)[:, 8:140] - xm[:, 8:140]).max() > 1e-5  # asymmetric model: positions differ
        # canonical form: row 0 and frame-0 heading
        np.testing.assert_allclose(x[0, :9], [0, 0, 1, 0, 0, 0, 1, 0, 0], atol=1e-6)
        assert abs(x[0, 142]) < 1e-6 and abs(x[0, 10]) < 1e-12

    mean, std = np.load(out / "mean_std" / "Mean.npy"), np.load(out / "mean_std" / "Std.npy")
    ref_mean, ref_std = compute_mean_std(sorted((out / "motion_data").iterdir()))
    np.testing.assert_allclose(mean, ref_mean, atol=1e-12)
    np.testing.assert_allclose(std, ref_std, atol=1e-12)
    assert abs(mean[0]) < 1e-6   # the mirrors are included: x-velocity averages out


def test_stride_is_floor_integer():
    assert [downsample_stride(f) for f in (120, 100, 60, 59.99, 250, 30)] == [4, 3, 2, 1, 8, 1]
    with pytest.raises(ValueError, match="below the target"):
        downsample_stride(20)


def test_body_model_joints_match_regressor_and_fk(workspace):
    tmp, _, model = workspace
    bm = BodyModelJoints.from_npz(tmp / "SMPLX_NEUTRAL.npz")
    betas = np.random.default_rng(3).normal(size=10)
    rest = model["J_regressor"][:22] @ (model["v_template"] + model["shapedirs"][:, :, :10] @ betas)
    np.testing.assert_allclose(bm.rest_joints(betas), rest, atol=1e-12)
    params = np.zeros((2, 85))
    params[:, 75:] = betas
    params[1, 72:75] = [1.0, 2.0, 3.0]
    joints = bm.joints(params)
    np.testing.assert_allclose(joints[0], rest, atol=1e-12)                  # zero pose: the rest skeleton
    np.testing.assert_allclose(joints[1], rest + [1.0, 2.0, 3.0], atol=1e-12)  # pelvis = trans + J0


def test_z_up_to_y_up_axes():
    p = np.zeros((1, 85))
    p[0, :3] = [np.pi / 2, 0, 0]                 # AMASS upright: body +Y mapped to world +Z
    p[0, 72:75] = [1.0, 2.0, 3.0]
    q = z_up_to_y_up(p)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q[0, :3], 0.0, atol=1e-6)
    np.testing.assert_allclose(q[0, 72:75], [1.0, 3.0, -2.0], atol=0)


def test_index_formats_and_errors(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("# comment\nSubA/x.npz 0 100 clipA\n\nSubB/y.npz,5,50,clipB\n")
    rows = read_index(plain)
    assert [(r.source, r.start, r.end, r.clip_id) for r in rows] == [("SubA/x.npz", "0", "100", "clipA"),
                                                                     ("SubB/y.npz", "5", "50", "clipB")]
    bad = tmp_path / "bad.txt"
    bad.write_text("SubA/x.npz 0 100 clipA\nSubA/x.npz zero 100 clipB\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: start frame 'zero' is not a number"):
        read_index(bad)
    bad.write_text("SubA/x.npz 0 100\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 4 fields"):
        read_index(bad)
    bad.write_text("source_path,start_frame,end_frame\n")
    with pytest.raises(ValueError, match=r"header has no 'new_name' column"):
        read_index(bad)
    bad.write_text("a.npz 0 1 c1\nb.npz 0 1 c1\n")
    with pytest.raises(ValueError, match="'c1' appears more than once"):
        read_index(bad)
    with pytest.raises(ValueError, match="AMASS file not found for 'nope/z.npy'"):
        resolve_source("nope/z.npy", tmp_path)


def test_bad_amass_files_are_named(tmp_path):
    np.savez(tmp_path / "a.npz", poses=np.zeros((5, 156)), betas=np.zeros(16), mocap_framerate=120.0)
    with pytest.raises(ValueError, match=r"a.npz: AMASS npz is missing field\(s\) \['trans'\]"):
        load_amass(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", poses=np.zeros((5, 156)), trans=np.zeros((5, 3)), betas=np.zeros(16))
    with pytest.raises(ValueError, match="b.npz: missing field 'mocap_framerate'"):
        load_amass(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", poses=np.zeros((5, 156)), trans=np.zeros((4, 3)), betas=np.zeros(16),
             mocap_framerate=60)
    with pytest.raises(ValueError, match=r"c.npz: field 'trans' must be \(5, 3\)"):
        load_amass(tmp_path / "c.npz")
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="d.npz: cannot read AMASS npz"):
        load_amass(tmp_path / "d.npz")
    seq = load_amass(_ok(tmp_path / "e.npz", rate_key="mocap_frame_rate"))
    assert seq.fps == 60.0 and seq.poses.shape == (6, 156)


def _ok(path, rate_key="mocap_framerate"):
    np.savez(path, poses=np.zeros((6, 156)), trans=np.zeros((6, 3)), betas=np.zeros(16), **{rate_key: 60.0})
    return path


def test_body_model_with_wrong_tree_is_rejected(tmp_path):
    fake_body_model(tmp_path / "m.npz")
    d = dict(np.load(tmp_path / "m.npz"))
    d["kintree_table"][0, 5] = 1
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ValueError, match="bad.npz: 'kintree_table' parents"):
        BodyModelJoints.from_npz(tmp_path / "bad.npz")
    del d["J_regressor"]
    np.savez(tmp_path / "bad2.npz", **d)
    with pytest.raises(ValueError, match=r"missing field\(s\) \['J_regressor'\]"):
        BodyModelJoints.from_npz(tmp_path / "bad2.npz")


def test_cli_skips_bad_clips_and_strict_stops(workspace, capsys):
    tmp, root, _ = workspace
    index = tmp / "index.txt"
    index.write_text("SubB/turn_poses.npz 0 20 good\nmissing.npz 0 20 gone\nSubB/turn_poses.npz 500 600 empty\n")
    args = ["prepare-amass", "--index", str(index), "--amass-root", str(root), "--body-model",
            str(tmp / "SMPLX_NEUTRAL.npz"), "--out", str(tmp / "o"), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "index.txt:2" in err and "AMASS file not found" in err
    assert "index.txt:3" in err and "crop [500, 600) is empty for a sequence of 60 frames" in err
    assert sorted(p.name for p in (tmp / "o" / "motion_data").iterdir()) == ["Mgood.npy", "good.npy"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--strict"])
    assert e.value.code == 2
    assert "index.txt:2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-amass", "--index", str(index), "--body-model", str(tmp / "nope.npz"), "--out", str(tmp / "o")])
    assert "nope.npz: cannot read body model npz" in capsys.readouterr().err
