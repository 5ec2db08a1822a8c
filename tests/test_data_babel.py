"""BABEL-272 and BABEL-stream readers on the synthetic pairs: items as the reference stores them
(A then B, A's frame count, B's caption), continuous A->B transitions, named errors, lenient mode."""
import json
import shutil

import numpy as np
import pytest

from motionstreamer.data import synth
from motionstreamer.data.babel import BABEL_MEAN_STD, BABEL272Dataset, BABELStreamDataset, parse_stream_line
from motionstreamer.data.humanml3d import DataError, DataWarning, collate, load_mean_std
from motionstreamer.representation.features import recover_joints


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("babel") / "ds"
    synth.make_dataset(out, 8, seed=9, stream_pairs=14, progress=False)
    return out


@pytest.fixture
def stream_copy(dataset, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(dataset, dst)
    return dst


def stats(root):
    return root / "babel_272" / BABEL_MEAN_STD


def test_babel272_loads_train_and_val(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())
    names = set()
    for split in ("train", "val"):
        ds = BABEL272Dataset(dataset / "babel_272", split, captions="first")
        assert len(ds) > 0
        for it in ds:
            assert 60 <= it["length"] < 300 and it["length"] % 4 == 0 and it["caption"]
            names.add(it["name"])
        np.testing.assert_array_equal(ds.mean, load_mean_std(stats(dataset))[0])     # its own statistics
    assert names == set(meta["babel_actions"])
    with pytest.raises(FileNotFoundError, match="split/test.txt"):
        BABEL272Dataset(dataset / "babel_272", "test")


def test_stream_items_as_the_reference_stores_them(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())["stream"]
    seen = set()
    for split in ("train", "val"):
        ds = BABELStreamDataset(dataset / "babel_stream", split, mean_std_dir=stats(dataset), captions="all")
        raw = BABELStreamDataset(dataset / "babel_stream", split, normalize=False, captions="all")
        mean, std = load_mean_std(stats(dataset))
        for it, r in zip(ds, raw):
            info = meta[it["name"]]
            assert info["split"] == split
            assert it["a_length"] == info["a_frames"] and it["length"] == info["frames"] == len(it["motion"])
            assert it["caption"] == it["text_b"] and it["tokens"] == it["tokens_b"] and it["text_a"]
            np.testing.assert_array_equal(np.concatenate([it["motion_a"], it["motion_b"]]), it["motion"])
            assert len(it["motion_a"]) == it["a_length"]
            np.testing.assert_allclose(it["motion"], (r["motion"] - mean) / std, rtol=1e-6, atol=1e-6)
            seen.add(it["name"])
    assert seen == set(meta)


def test_stream_segments_match_babel272_and_the_transition_is_continuous(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())["stream"]
    ds = BABELStreamDataset(dataset / "babel_stream", "train", normalize=False, captions="first")
    for it in ds:
        seg_a, seg_b = meta[it["name"]]["segments"]
        a = np.load(dataset / "babel_272" / "motion_data" / f"{seg_a}.npy")
        assert len(a) == it["a_length"]
        # the pair is A then B cut from one sequence: the same body motion as the A segment
        ja = recover_joints(a.astype(np.float64))
        jp = recover_joints(it["motion"].astype(np.float64))[:it["a_length"]]
        np.testing.assert_allclose(jp - jp[:, :1], ja - ja[:, :1], atol=1e-4)
        j = recover_joints(it["motion"].astype(np.float64))
        step = np.linalg.norm(np.diff(j, axis=0), axis=-1).max(axis=1)            # per-frame joint motion
        k = it["a_length"] - 1                                                     # the A->B frame pair
        inside = np.delete(step, np.arange(k - 3, k + 4))
        assert step[k - 3:k + 4].max() <= 1.2 * inside.max() + 0.01, it["name"]


def test_collate_stream_items(dataset):
    ds = BABELStreamDataset(dataset / "babel_stream", "train", mean_std_dir=stats(dataset))
    b = collate([ds[i] for i in range(3)])
    assert b["motion"].shape[0] == 3 and b["a_length"].tolist() == [ds[i]["a_length"] for i in range(3)]
    assert b["motion_a"].shape[1] == max(ds[i]["a_length"] for i in range(3))
    assert b["caption"] == [ds[i]["text_b"] for i in range(3)]


@pytest.mark.parametrize("line, message", [
    ("a person walks#a/DET*a person jumps#a/DET#40", None),
    ("a person walks#a/DET#x*a person jumps#a/DET#40", r"the A part has 3 '#'-separated fields"),
    ("a person walks#a/DET a person jumps#a/DET#40", r"exactly one '\*', found 0"),
    ("a#b*c#d*e#f#40", r"exactly one '\*', found 2"),
    ("a person walks#a/DET*a person jumps#40", r"the B part has 2 '#'-separated fields"),
    ("a person walks#a/DET*a person jumps#a/DET#forty", r"A_frames 'forty' is not an integer"),
    ("a person walks#a/DET*a person jumps#a/DET#0", r"A_frames must be >= 1"),
])
def test_parse_stream_line(line, message):
    if message is None:
        rec = parse_stream_line(line, "f.txt:1")
        assert rec == {"text_a": "a person walks", "tokens_a": ["a/DET"], "text_b": "a person jumps",
                       "tokens_b": ["a/DET"], "a_frames": 40}
    else:
        with pytest.raises(DataError, match=rf"f.txt:1: .*{message}"):
            parse_stream_line(line, "f.txt:1")


def first_pair(root):
    return sorted((root / "babel_stream" / "train_stream_text").glob("*.txt"))[0]


def test_malformed_stream_line_names_file_and_line(stream_copy):
    path = first_pair(stream_copy)
    n = len(path.read_text().splitlines()) + 1
    path.write_text(path.read_text() + "broken line without a star\n")
    root = stream_copy / "babel_stream"
    with pytest.raises(DataError, match=rf"{path}:{n}: .*exactly one"):
        BABELStreamDataset(root, "train", normalize=False)
    with pytest.warns(DataWarning, match=rf"{path}:{n}"):
        ds = BABELStreamDataset(root, "train", normalize=False, captions="all", lenient=True)
    assert path.stem in {it["name"] for it in ds}                          # the good lines stay


def test_a_frames_must_agree_and_leave_frames_for_b(stream_copy):
    path = first_pair(stream_copy)
    root = stream_copy / "babel_stream"
    lines = path.read_text().splitlines()
    a, rest = lines[0].rsplit("#", 1)
    path.write_text(lines[0] + "\n" + f"{a}#{int(rest) + 4}\n")
    with pytest.raises(DataError, match=rf"{path}:2: A_frames {int(rest) + 4} disagrees"):
        BABELStreamDataset(root, "train", normalize=False)
    T = len(np.load(root / "train_stream" / f"{path.stem}.npy"))
    path.write_text(f"{a}#{T}\n")
    with pytest.raises(DataError, match=rf"{path}:1: A_frames {T} leaves no frames for B"):
        BABELStreamDataset(root, "train", normalize=False)


def test_empty_b_text_is_skipped_like_the_reference(stream_copy):
    path = first_pair(stream_copy)
    good = path.read_text().splitlines()[0]
    a, b = good.split("*")
    path.write_text(f"{a}*#tokens#{b.rsplit('#', 1)[1]}\n{good}\n")
    ds = BABELStreamDataset(stream_copy / "babel_stream", "train", normalize=False, captions="all")
    assert [it["caption"] for it in ds if it["name"] == path.stem] == [b.split("#")[0]]
    path.write_text(f"{a}*#tokens#{b.rsplit('#', 1)[1]}\n")
    with pytest.raises(DataError, match=rf"{path}: no usable lines"):
        BABELStreamDataset(stream_copy / "babel_stream", "train", normalize=False)


def test_missing_and_bad_files(stream_copy):
    root = stream_copy / "babel_stream"
    path = first_pair(stream_copy)
    motion = root / "train_stream" / f"{path.stem}.npy"
    np.save(motion, np.zeros((100, 263), np.float32))
    with pytest.raises(DataError, match=rf"{motion}: expected \(frames, 272\)"):
        BABELStreamDataset(root, "train", normalize=False)
    motion.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{motion}: motion file not found"):
        BABELStreamDataset(root, "train", normalize=False)
    with pytest.warns(DataWarning, match=str(motion)):
        assert path.stem not in {it["name"] for it in BABELStreamDataset(root, "train", normalize=False, lenient=True)}
    path.unlink()
    other = sorted((root / "train_stream").glob("*.npy"))[0]
    (root / "train_stream_text" / f"{other.stem}.txt").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{other.stem}.txt: stream text file not found"):
        BABELStreamDataset(root, "train", normalize=False)
    with pytest.raises(FileNotFoundError, match=r"no_such_stream: folder not found"):
        BABELStreamDataset(root, "no_such", normalize=False)
    with pytest.raises(ValueError, match="needs mean/std or mean_std_dir"):
        BABELStreamDataset(root, "val")
    (stats(stream_copy) / "Mean.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"t2m_babel_mean_std/Mean.npy: not found"):
        BABELStreamDataset(root, "val", mean_std_dir=stats(stream_copy))
