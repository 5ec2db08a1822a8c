"""`motionstreamer synth`: the HumanML3D-272 layout (+ BABEL-stream / BABEL-272), byte-for-byte
deterministic per seed, labels in synth_meta.json, Mean/Std over the train split, argument errors."""
import json

import numpy as np
import pytest

from motionstreamer.cli import main
from motionstreamer.data import synth
from motionstreamer.representation.normalize import compute_mean_std


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert main(["synth", "--out", str(out), "--clips", "40", "--seed", "3", "--stream-pairs", "8", "--quiet"]) == 0
    return out


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_humanml3d_layout(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    ids = sorted(meta["actions"])
    assert ids == [f"{i:06d}" for i in range(40)]
    split = {s: (dataset / "split" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(split.values(), [])) == ids                        # a partition of the clips
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (32, 4, 4)
    for name in ids:
        x = np.load(dataset / "motion_data" / f"{name}.npy")
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 272 and 60 <= len(x) < 300
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x[0, :10], [0, 0, 1, 0, 0, 0, 1, 0, 0, x[0, 9]], atol=1e-6)
        lines = (dataset / "texts" / f"{name}.txt").read_text().splitlines()
        assert len(lines) >= 3
        for line in lines:
            caption, tokens, start, end = line.split("#")
            assert caption and len(tokens.split(" ")) == len(caption.split())
            assert 0 <= float(start) <= float(end) <= len(x) / 30 + 0.01
    assert not (dataset / "joints").exists() and not list(dataset.rglob("*.tmp*"))


def test_labels_cover_the_actions_and_are_balanced(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    assert meta["seed"] == 3 and meta["version"] == synth.VERSION and meta["fps"] == 30
    single = [a for a in meta["actions"].values() if "+" not in a]
    assert len(set(single)) >= 14 and set(single) <= set(synth.ACTIONS)
    assert max(single.count(a) for a in set(single)) <= 3                 # round-robin over 17 actions
    for name, label in meta["actions"].items():
        segs = meta["segments"][name]
        assert "+".join(s[0] for s in segs) == label
    for name, label in meta["actions"].items():                          # composite clips carry sub-captions
        timed = [ln for ln in (dataset / "texts" / f"{name}.txt").read_text().splitlines()
                 if not ln.endswith("#0.0#0.0")]
        assert len(timed) == (label.count("+") + 1 if "+" in label else 0)


def test_sub_caption_seconds_map_back_to_segment_frames(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    composite = [n for n, a in meta["actions"].items() if "+" in a]
    for name in composite:
        timed = [ln.split("#") for ln in (dataset / "texts" / f"{name}.txt").read_text().splitlines()
                 if not ln.endswith("#0.0#0.0")]
        frames = [[int(float(s) * 30), int(float(e) * 30)] for _, _, s, e in timed]
        assert frames == [[s, e] for _, s, e in meta["segments"][name]]


def test_mean_std_are_the_group_averaged_statistics_of_the_train_split(dataset):
    train = (dataset / "split" / "train.txt").read_text().split()
    mean, std = compute_mean_std([np.load(dataset / "motion_data" / f"{n}.npy") for n in train])
    np.testing.assert_allclose(np.load(dataset / "mean_std" / "Mean.npy"), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(dataset / "mean_std" / "Std.npy"), std, rtol=1e-6)
    assert np.load(dataset / "mean_std" / "Std.npy").dtype == np.float32


def test_stream_layout(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    stream = meta["stream"]
    assert len(stream) == 8 and {v["split"] for v in stream.values()} <= {"train", "val"}
    for name, info in stream.items():
        x = np.load(dataset / "babel_stream" / f"{info['split']}_stream" / f"{name}.npy")
        assert x.shape == (info["frames"], 272) and x.dtype == np.float32
        assert info["a_frames"] % 4 == 0 and 60 <= info["a_frames"] < len(x) - 59
        for line in (dataset / "babel_stream" / f"{info['split']}_stream_text"
                     / f"{name}.txt").read_text().splitlines():
            a, b = line.split("*")
            assert len(a.split("#")) == 2 and len(b.split("#")) == 3 and int(b.split("#")[2]) == info["a_frames"]
    babel = dataset / "babel_272"
    segs = sorted(p.stem for p in (babel / "motion_data").glob("*.npy"))
    listed = sorted((babel / "split" / "train.txt").read_text().split()
                    + (babel / "split" / "val.txt").read_text().split())
    assert segs == listed == sorted(meta["babel_actions"])
    for f in ("Mean.npy", "Std.npy"):
        assert np.load(babel / "t2m_babel_mean_std" / f).shape == (272,)


def test_same_seed_same_bytes_other_seed_other_motion(tmp_path):
    def build(name, seed):
        out = tmp_path / name
        synth.make_dataset(out, 5, seed=seed, stream_pairs=2, progress=False)
        return out
    a, b, c = build("a", 11), build("b", 11), build("c", 12)
    assert files(a) == files(b)
    for f in files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "motion_data" / "000000.npy").read_bytes() != (c / "motion_data" / "000000.npy").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--clips", "0"], "--clips must be in"),
    (["--stream-pairs", "-1"], "--stream-pairs must be in"),
    (["--min-seconds", "5", "--max-seconds", "3"], "--min-seconds <= --max-seconds"),
    (["--composite-fraction", "1.5"], "--composite-fraction"),
])
def test_bad_arguments_are_named(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path / "x"), "--quiet"] + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
