"""`motionstreamer render` / `to-bvh` and the .npy loading behind them: outputs, de-normalisation,
and named errors for bad arguments and bad files."""
import re

import imageio.v3 as iio
import numpy as np
import pytest
from fakes import run_cli
from scipy.spatial.transform import Rotation

from motionstreamer.io.bvh import bvh_text, read_bvh
from motionstreamer.io.motion_io import load_motion_array, motion_kind, save_npy, to_features, to_joints
from motionstreamer.representation.features import (
    canonicalize_facing,
    joints_to_272,
    recover_joints,
    recover_rotations,
)
from motionstreamer.representation.skeleton import forward_kinematics

T = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """De-normalised features, their normalised copy with Mean/Std, and the joints, as .npy files."""
    d = tmp_path_factory.mktemp("motion")
    rng = np.random.default_rng(0)
    t = np.arange(T)[:, None] / 30.0
    rotvec = 0.4 * np.sin(2 * np.pi * (rng.uniform(0.3, 1, (1, 66)) * t + rng.uniform(0, 1, (1, 66))))
    rotations = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(T, 22, 3, 3)
    root = np.concatenate([0.5 * t, 0.95 + 0 * t, 0.2 * t], 1)
    joints, rotations = canonicalize_facing(forward_kinematics(rotations, root), rotations)
    features = joints_to_272(joints, rotations)
    mean, std = features.mean(0), np.linspace(0.1, 2.0, 272)
    paths = dict(features=d / "features.npy", normalised=d / "normalised.npy", mean=d / "mean.npy",
                 std=d / "std.npy", joints=d / "joints.npy", joints66=d / "joints66.npy")
    for name, a in dict(features=features, normalised=(features - mean) / std, mean=mean, std=std,
                        joints=recover_joints(features), joints66=recover_joints(features).reshape(T, 66)).items():
        np.save(paths[name], a)
    return paths, features


def test_to_bvh_denormalises(files, tmp_path, capsys):
    paths, features = files
    out = tmp_path / "n.bvh"
    converter = ["--skeleton", "smpl-neutral", "--rotations", "model"]
    code, stdout, _ = run_cli(["to-bvh", paths["normalised"], "--out", out, "--mean", paths["mean"],
                               "--std", paths["std"]] + converter, capsys)
    assert code == 0 and f"wrote {out}" in stdout
    plain = tmp_path / "p.bvh"
    assert run_cli(["to-bvh", paths["features"], "--out", plain] + converter, capsys)[0] == 0
    assert out.read_text() == plain.read_text() == bvh_text(*recover_rotations(features))
    default_n, default_p = tmp_path / "dn.bvh", tmp_path / "dp.bvh"           # the motion's own skeleton
    assert run_cli(["to-bvh", paths["normalised"], "--out", default_n, "--mean", paths["mean"], "--std",
                    paths["std"]], capsys)[0] == 0
    assert run_cli(["to-bvh", paths["features"], "--out", default_p], capsys)[0] == 0
    np.testing.assert_allclose(read_bvh(default_n).motion, read_bvh(default_p).motion, atol=2e-6)


def test_to_bvh_fps_and_floor(files, tmp_path, capsys):
    paths, _ = files
    a, b = tmp_path / "a.bvh", tmp_path / "b.bvh"
    converter = ["--skeleton", "smpl-neutral", "--rotations", "model"]
    assert run_cli(["to-bvh", paths["features"], "--out", a, "--fps", 60] + converter, capsys)[0] == 0
    assert run_cli(["to-bvh", paths["features"], "--out", b, "--fps", 60, "--floor-at-zero"] + converter,
                   capsys)[0] == 0
    ra, rb = read_bvh(a), read_bvh(b)
    assert ra.frame_time == rb.frame_time == 0.016667 and ra.motion.shape == (T, 75)
    np.testing.assert_allclose(ra.motion[:, :3] - rb.motion[:, :3], np.tile([-0.001795, -0.223333, 0.028219], (T, 1)),
                               atol=2e-6)
    np.testing.assert_array_equal(ra.motion[:, 3:], rb.motion[:, 3:])


@pytest.mark.parametrize("source,ext", [("normalised", "gif"), ("joints66", "mp4")])
def test_render(files, tmp_path, capsys, source, ext):
    paths, _ = files
    out = tmp_path / f"clip.{ext}"
    argv = ["render", paths[source], "--out", out, "--size", 96, "--title", "a person walks", "--quiet"]
    if source == "normalised":
        argv += ["--mean", paths["mean"], "--std", paths["std"]]
    assert run_cli(argv, capsys)[0] == 0
    frames = iio.imread(out, index=None) if ext == "gif" else np.stack(list(iio.imiter(out, plugin="FFMPEG")))
    assert frames.shape[:3] == (T, 96, 96)


def test_help(capsys):
    for verb, words in (("render", ["--mean", "--std", "--title", "--size", ".gif", "--views", "--clean-feet"]),
                        ("to-bvh", ["--floor-at-zero", "--fps", "272", "--skeleton", "--rotations", "--rig"]),
                        ("to-glb", ["--skeleton", "--rotations", "--rig", "--clean-feet"]),
                        ("to-smpl", ["AMASS", "--rotations", "--clean-feet"])):
        code, out, _ = run_cli([verb, "--help"], capsys)
        assert code == 0 and all(w in out for w in words), verb


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make_argv,message", [
    (lambda p, d: ["render", p["features"], "--out", d / "x.avi"],
     "--out '.*x.avi': the output must end in .mp4 or .gif"),
    (lambda p, d: ["to-bvh", p["features"], "--out", d / "x.mp4"], "the output must end in .bvh"),
    (lambda p, d: ["render", p["features"], "--out", d / "x.mp4", "--mean", p["mean"]], "--mean needs --std too"),
    (lambda p, d: ["to-bvh", p["features"], "--out", d / "x.bvh", "--std", p["std"]], "--std needs --mean too"),
    (lambda p, d: ["render", d / "missing.npy", "--out", d / "x.gif"], "INPUT .*missing.npy: file not found"),
    (lambda p, d: ["render", p["features"], "--out", d / "x.gif", "--size", 99], "--size must be an even number"),
    (lambda p, d: ["render", p["features"], "--out", d / "x.gif", "--fps", 0], r"--fps must be in \(0, 1000\]"),
    (lambda p, d: ["to-bvh", p["joints"], "--out", d / "x.bvh", "--rotations", "model"],
     "holds joint positions .*--rotations model needs 272-dim"),
    (lambda p, d: ["to-smpl", p["joints"], "--out", d / "x.npz"], "holds joint positions .*--rotations model needs"),
    (lambda p, d: ["to-bvh", p["features"], "--out", d / "x.bvh", "--floor-at-zero"],
     "--floor-at-zero applies to --skeleton smpl-neutral --rotations model"),
    (lambda p, d: ["to-glb", p["features"], "--out", d / "x.gltf"], r"the output must end in \.glb"),
    (lambda p, d: ["to-smpl", p["features"], "--out", d / "x.npy"], r"the output must end in \.npz"),
    (lambda p, d: ["render", p["features"], "--out", "", "--quiet"], "has no file name"),
    (lambda p, d: ["to-bvh", p["features"], "--out", str(d) + "/"], "has no file name"),
    (lambda p, d: ["render", p["features"], "--out", d / "x.gif", "--mean", p["mean"], "--std",
                   np.save(d / "zero_std.npy", np.r_[np.ones(271), 0.0]) or d / "zero_std.npy"],
     r"--std .*zero_std.npy: every entry must be > 0 .*entry 271 is 0"),
    (lambda p, d: ["to-bvh", p["features"], "--out", d / "x.bvh", "--mean", p["mean"], "--std",
                   np.save(d / "neg_std.npy", -np.ones(272)) or d / "neg_std.npy"],
     r"--std .*neg_std.npy: every entry must be > 0 .*entry 0 is -1"),
    (lambda p, d: ["to-bvh", p["features"], "--out", p["features"] / "x.bvh"], "features.npy/x.bvh: cannot write"),
    (lambda p, d: ["render", p["features"], "--out", p["features"] / "x.gif"], "cannot write the video"),
    (lambda p, d: ["render", p["joints"], "--out", d / "x.gif", "--mean", p["mean"], "--std", p["std"]],
     "holds joint positions; mean/std apply only to 272-dim features"),
    (lambda p, d: ["render", p["features"], "--out", d / "x.gif", "--mean", p["joints"], "--std", p["std"]],
     r"--mean .*joints.npy: must hold the 272 feature statistics, shape \(272,\), got \(12, 22, 3\)"),
    (lambda p, d: ["render", np.save(d / "w.npy", np.zeros((5, 263))) or d / "w.npy", "--out", d / "x.gif"],
     r"got shape \(5, 263\) \(HumanML3D-263 features are not supported"),
    (lambda p, d: ["to-bvh", np.save(d / "o.npy", np.array([{"a": 1}]), allow_pickle=True) or d / "o.npy",
                   "--out", d / "x.bvh"], "holds Python objects"),
    (lambda p, d: ["to-bvh", _write(d / "t.npy", b"not numpy"), "--out", d / "x.bvh"], "not a valid .npy file"),
    (lambda p, d: ["to-bvh", _write(d / "f.txt", b"1 2 3"), "--out", d / "x.bvh"], "expected a .npy file"),
    (lambda p, d: ["to-bvh", np.save(d / "nan.npy", np.full((3, 272), np.nan)) or d / "nan.npy", "--out",
                   d / "x.bvh"], r"nan.npy contains NaN/inf \(first at index \(0, 0\)\)"),
])
def test_bad_arguments_are_named(files, tmp_path, capsys, make_argv, message):
    paths, _ = files
    code, _, err = run_cli(make_argv(paths, tmp_path), capsys)
    assert code == 2
    assert err.startswith("motionstreamer: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not list(tmp_path.glob("x.*"))


def test_motion_io_layouts(files, tmp_path):
    paths, features = files
    joints = recover_joints(features)
    mean, std = np.load(paths["mean"]), np.load(paths["std"])
    normalised = np.load(paths["normalised"])
    assert motion_kind(features) == "features" and motion_kind(joints) == "joints"
    np.testing.assert_allclose(to_features(normalised, mean, std), features, atol=1e-12)
    np.testing.assert_allclose(to_joints(normalised, mean, std), joints, atol=1e-9)
    np.testing.assert_array_equal(to_joints(features), joints)
    np.testing.assert_array_equal(to_joints(joints.reshape(T, 66)), joints)
    np.testing.assert_array_equal(to_joints(joints[None]), joints)             # batch of one
    np.testing.assert_array_equal(to_joints(features[None]), joints)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        to_features(features, mean=mean)
    with pytest.raises(ValueError, match=r"must be 272-dim features \(frames, 272\)"):
        to_features(joints)
    with pytest.raises(ValueError, match=r"got shape \(2, 12, 272\)"):
        to_joints(np.stack([features, features]))


def test_load_and_save_npy(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = save_npy(tmp_path / "sub" / "a.npy", a)
    loaded = load_motion_array(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, a)
    assert [p.name for p in path.parent.iterdir()] == ["a.npy"]
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_motion_array(tmp_path / "none.npy")
    with pytest.raises(ValueError, match="not a file"):
        load_motion_array(_mkdir(tmp_path / "dir.npy"))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="must hold numbers, got dtype <U1"):
        load_motion_array(tmp_path / "s.npy")
    np.save(tmp_path / "e.npy", np.zeros((0, 272)))
    with pytest.raises(ValueError, match=r"is empty \(shape \(0, 272\)\)"):
        load_motion_array(tmp_path / "e.npy")
    np.savez(tmp_path / "z.npz", a=a)
    with pytest.raises(ValueError, match="expected a .npy file"):
        load_motion_array(tmp_path / "z.npz")


def _mkdir(path):
    path.mkdir()
    return path


def test_title_bytes_that_are_not_utf8_give_a_clear_error(files, tmp_path):
    """Issue 18: non-UTF-8 bytes on the command line (Python keeps them as surrogates) -> one-line error."""
    import os
    import subprocess
    import sys

    paths, _ = files
    out = tmp_path / "t.gif"
    argv = [sys.executable, "-m", "motionstreamer", "render", str(paths["features"]), "--out", str(out), "--quiet",
            "--size", "64", "--title"]
    res = subprocess.run([os.fsencode(a) for a in argv] + [b"caf\xe9 \xff"], capture_output=True)
    assert res.returncode == 2 and not out.exists()
    err = res.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "motionstreamer: error: --title: title is not valid UTF-8" in err
    ok = subprocess.run([os.fsencode(a) for a in argv] + ["€ $x^2$ 走".encode()], capture_output=True)
    assert ok.returncode == 0 and out.exists(), ok.stderr.decode()


def test_to_bvh_streams_the_file(tmp_path, monkeypatch):
    """Issue 18: the BVH is written a block of frames at a time; memory does not hold the whole text."""
    import io
    import tracemalloc

    import motionstreamer.io.bvh as bvh_module
    from motionstreamer.io.bvh import write_bvh_stream, write_rig_bvh
    from motionstreamer.io.rig import RIG_NAMES, Rig
    from motionstreamer.representation.skeleton import SMPL_OFFSETS_24

    def rig_of(T):
        rot = Rotation.from_rotvec(np.random.default_rng(0).normal(0, 0.3, (T * 24, 3))).as_matrix()
        return Rig(RIG_NAMES["smpl"], SMPL_OFFSETS_24, rot.reshape(T, 24, 3, 3), np.zeros((T, 3)), 30.0)

    class Sink(io.StringIO):
        largest = 0

        def write(self, s):
            Sink.largest = max(Sink.largest, len(s))
            return super().write(s)

    FRAMES_PER_WRITE = 64                                             # small blocks: a quick test
    monkeypatch.setattr(bvh_module, "FRAMES_PER_WRITE", FRAMES_PER_WRITE)
    T = 3 * FRAMES_PER_WRITE + 17
    sink = Sink()
    write_bvh_stream(sink, rig_of(T))
    text = sink.getvalue()
    assert text.count("\n") > T and Sink.largest < 5000                # the hierarchy, then line by line
    peaks, sizes = [], []
    for T in (4 * FRAMES_PER_WRITE, 16 * FRAMES_PER_WRITE):            # 4x the frames: the same peak memory
        rig = rig_of(T)
        tracemalloc.start()
        path = write_rig_bvh(tmp_path / "long.bvh", rig)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(path.stat().st_size)
    # Holding the text would grow the peak by at least the text's growth (~580 KB here); tracemalloc also
    # counts what other threads of the test process allocate meanwhile (servers left by earlier tests: tens
    # of KB), so the bound is a quarter of that growth, not a ratio of two noisy peaks.
    assert sizes[1] > 3.9 * sizes[0], sizes
    assert peaks[1] - peaks[0] < 0.25 * (sizes[1] - sizes[0]), (peaks, sizes)
    assert peaks[1] < 0.5 * sizes[1]
    bad = rig_of(40)
    bad.rotations[33, 5, 0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN/inf"):
        write_rig_bvh(path, bad)
    assert path.stat().st_size == sizes[1] and sorted(p.name for p in tmp_path.iterdir()) == ["long.bvh"]
