"""HumanML3D-272 reader: loads what `synth` writes (all splits), reference length rules and sub-caption
crops, normalisation round trip to the generated joints, collate, and one named error per kind of
malformed input (lenient mode skips with a warning instead)."""
import shutil

import numpy as np
import pytest
import torch

from motionstreamer.data import synth
from motionstreamer.data.humanml3d import (
    DataError,
    DataWarning,
    HumanML3D272Dataset,
    collate,
    load_mean_std,
    load_motions,
    read_split,
    read_text_file,
)
from motionstreamer.representation.features import recover_joints
from motionstreamer.representation.normalize import denormalize


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("h3d") / "ds"
    synth.make_dataset(out, 40, seed=5, progress=False, composite_fraction=0.3)
    return out


@pytest.fixture
def copy(dataset, tmp_path):
    """A private copy to break."""
    dst = tmp_path / "ds"
    shutil.copytree(dataset, dst)
    return dst


def test_loads_every_split_with_reference_lengths(dataset):
    total = 0
    for split in ("train", "val", "test"):
        ds = HumanML3D272Dataset(dataset, split)
        total += len(read_split(dataset, split))
        assert len(ds) >= len(read_split(dataset, split))                  # + one sample per sub-caption
        for i in range(len(ds)):
            it = ds[i]
            assert it["motion"].dtype == np.float32 and it["motion"].shape == (it["length"], 272)
            assert 60 <= it["length"] < 300 and it["length"] % 4 == 0
            assert it["caption"] and it["tokens"] and it["name"]
            assert np.all(np.isfinite(it["motion"]))
        np.testing.assert_array_equal(ds.lengths, [ds[i]["length"] for i in range(len(ds))])
    assert total == 40


def test_normalised_with_the_dataset_statistics(dataset):
    ds = HumanML3D272Dataset(dataset, "train")
    raw = HumanML3D272Dataset(dataset, "train", normalize=False)
    mean, std = load_mean_std(dataset / "mean_std")
    np.testing.assert_allclose(ds[0]["motion"], (raw[0]["motion"] - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.inv_transform(ds[0]["motion"]), raw[0]["motion"], atol=1e-5)
    x = np.concatenate([raw[i]["motion"] for i in range(len(raw)) if "_" not in raw[i]["name"]])
    z = np.concatenate([ds[i]["motion"] for i in range(len(ds)) if "_" not in ds[i]["name"]])
    assert abs(z.mean()) < 0.2 and 0.3 < z.std() < 3.0 and x.shape == z.shape


def test_sub_captions_crop_at_30_fps(dataset):
    ds = HumanML3D272Dataset(dataset, "train", captions="all", normalize=False)
    motions = load_motions(dataset, "train", normalize=False)
    subs = [i for i in range(len(ds)) if ds[i]["name"].count("_") == 2]
    assert subs, "the fixture has composite clips"
    for i in subs:
        it = ds[i]
        name, start, end = it["name"].split("_")
        crop = motions[name][int(float(start) * 30):int(float(end) * 30)]
        n = len(crop) // 4 * 4
        np.testing.assert_array_equal(it["motion"], crop[:n])


def test_round_trip_to_the_generated_joints(tmp_path, dataset):
    """write -> read (normalised, float32) -> denormalise -> recover_joints == canonical joints."""
    rng = np.random.default_rng(0)
    clips = [synth.generate_clip(a, rng, 4.0, 9.0, name=f"{k:06d}")
             for k, a in enumerate(["walk_circle", "run", "jump"])]
    root = tmp_path / "rt"
    for c in clips:
        (root / "motion_data").mkdir(parents=True, exist_ok=True)
        np.save(root / "motion_data" / f"{c.name}.npy", c.features())
        (root / "texts").mkdir(exist_ok=True)
        (root / "texts" / f"{c.name}.txt").write_text(f"{c.captions[0]}#{synth.tokens_for(c.captions[0])}#0.0#0.0\n")
    (root / "split").mkdir()
    (root / "split" / "train.txt").write_text("\n".join(c.name for c in clips) + "\n")
    shutil.copytree(dataset / "mean_std", root / "mean_std")
    ds = HumanML3D272Dataset(root, "train", captions="first")
    assert [it["name"] for it in ds] == [c.name for c in clips]
    for c, it in zip(clips, ds):
        j, _ = c.canonical()
        ref = j - np.array([j[0, 0, 0], j[..., 1].min(), j[0, 0, 2]])
        x = denormalize(it["motion"].astype(np.float64), ds.mean.astype(np.float64), ds.std.astype(np.float64))
        np.testing.assert_allclose(recover_joints(x), ref[:it["length"]], atol=1e-5)
        assert it["caption"] == c.captions[0]


def test_caption_modes_and_seeded_random_choice(dataset):
    first = HumanML3D272Dataset(dataset, "val", captions="first")
    every = HumanML3D272Dataset(dataset, "val", captions="all")
    texts = {n: read_text_file(dataset / "texts" / f"{n}.txt") for n in read_split(dataset, "val")}
    assert len(every) == sum(len(v) for v in texts.values())
    assert first[0]["caption"] == texts[first[0]["name"]][0].caption
    a = [HumanML3D272Dataset(dataset, "val", seed=1)[i]["caption"] for i in range(len(first))]
    b = [HumanML3D272Dataset(dataset, "val", seed=1)[i]["caption"] for i in range(len(first))]
    assert a == b
    rnd = HumanML3D272Dataset(dataset, "val", seed=1)
    draws = set()
    for epoch in range(8):
        rnd.set_epoch(epoch)
        draws.add(rnd[0]["caption"])
    assert len(draws) > 1 and draws <= {c.caption for c in texts[rnd[0]["name"]]}


def test_random_crop_keeps_units(dataset):
    ds = HumanML3D272Dataset(dataset, "train", random_crop=True, normalize=False)
    raw = load_motions(dataset, "train", normalize=False)
    for i in range(5):
        it = ds[i]
        full = raw[it["name"]]
        offsets = [k for k in range(len(full) - it["length"] + 1)
                   if np.array_equal(full[k:k + it["length"]], it["motion"])]
        assert it["length"] == len(full) // 4 * 4 and offsets


def test_length_rules(copy):
    x = np.load(copy / "motion_data" / "000000.npy")
    for n, kept in ((59, False), (60, True), (299, True), (300, False), (301, False)):
        np.save(copy / "motion_data" / "000000.npy", np.resize(x, (n, 272)).astype(np.float32))
        (copy / "split" / "train.txt").write_text("000000\n000001\n")
        names = {it["name"] for it in HumanML3D272Dataset(copy, "train", captions="all")}
        assert ("000000" in names) == kept, n
    crop = HumanML3D272Dataset(copy, "train", too_long="crop", captions="first")
    assert [it["length"] for it in crop if it["name"] == "000000"] == [300]


def test_collate_pads_and_keeps_lengths(dataset):
    ds = HumanML3D272Dataset(dataset, "train")
    items = [ds[i] for i in range(5)]
    b = collate(items)
    T = max(it["length"] for it in items)
    assert b["motion"].shape == (5, T, 272) and b["motion"].dtype == torch.float32
    assert b["length"].tolist() == [it["length"] for it in items]
    for k, it in enumerate(items):
        np.testing.assert_array_equal(b["motion"][k, :it["length"]].numpy(), it["motion"])
        assert torch.all(b["motion"][k, it["length"]:] == 0)
    assert b["caption"] == [it["caption"] for it in items] and b["name"] == [it["name"] for it in items]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    assert next(iter(loader))["motion"].shape[0] == 4


# ----------------------------------------------------------------------------- malformed input
def first_train(root):
    return read_split(root, "train")[0]


def break_text(root, line):
    name = first_train(root)
    path = root / "texts" / f"{name}.txt"
    path.write_text(path.read_text() + line + "\n")
    return path, len(path.read_text().splitlines())


@pytest.mark.parametrize("line, message", [
    ("a person walks#a/DET person/NOUN walk/VERB#0.0", r"4 '#'-separated fields\), got 3"),
    ("a person walks#tokens#0.0#0.0#extra", r"got 5"),
    ("a person walks#tokens#zero#1.0", r"are not numbers"),
    ("a person walks#tokens#2.0#1.0", r"end 1.0 is before start 2.0"),
    ("a person walks#tokens#-1.0#1.0", r"negative time"),
    ("a person walks#tokens#inf#inf", r"must be finite"),
    ("#tokens#0.0#0.0", r"empty caption"),
])
def test_malformed_text_line_names_file_and_line(copy, line, message):
    path, n = break_text(copy, line)
    with pytest.raises(DataError, match=rf"{path}:{n}: .*{message}"):
        HumanML3D272Dataset(copy, "train")
    with pytest.warns(DataWarning, match=rf"{path}:{n}"):
        ds = HumanML3D272Dataset(copy, "train", lenient=True)
    assert first_train(copy) in {it["name"] for it in ds}                # only the bad line is dropped


def test_sub_caption_past_the_end_is_an_error(copy):
    path, n = break_text(copy, "a person waves#tokens#100.0#101.0")
    with pytest.raises(DataError, match=rf"{path}:{n}: sub-caption starts at 100.0 s"):
        HumanML3D272Dataset(copy, "train")


def test_nan_times_mean_the_whole_clip_as_in_the_reference(copy):
    name = first_train(copy)
    (copy / "texts" / f"{name}.txt").write_text("a person walks#a/DET person/NOUN walk/VERB#nan#nan\n")
    ds = HumanML3D272Dataset(copy, "train", captions="all")
    assert [it["caption"] for it in ds if it["name"] == name] == ["a person walks"]


@pytest.mark.parametrize("payload, message", [
    (np.zeros((100, 263), np.float32), r"expected \(frames, 272\) features, got shape \(100, 263\)"),
    (np.zeros((100,), np.float32), r"expected \(frames, 272\) features, got shape \(100,\)"),
    (np.zeros((0, 272), np.float32), r"no frames"),
    ("nan", r"contains NaN/inf \(first at frame 7, dim 3\)"),
    ("inf", r"contains NaN/inf"),
    (np.array([["a"] * 272] * 70), r"expected numbers"),
])
def test_bad_motion_file_is_named(copy, payload, message):
    name = first_train(copy)
    path = copy / "motion_data" / f"{name}.npy"
    if isinstance(payload, str):
        x = np.load(path)
        x[7, 3] = float(payload)
        payload = x
    np.save(path, payload)
    with pytest.raises(DataError, match=rf"entry '{name}': {path}: {message}"):
        HumanML3D272Dataset(copy, "train")
    with pytest.warns(DataWarning, match=str(path)):
        ds = HumanML3D272Dataset(copy, "train", lenient=True)
    assert name not in {it["name"] for it in ds}


def test_corrupt_npy_is_named(copy):
    name = first_train(copy)
    path = copy / "motion_data" / f"{name}.npy"
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataError, match=rf"{path}: not a numeric .npy array"):
        load_motions(copy, "train")


@pytest.mark.parametrize("folder, suffix", [("motion_data", ".npy"), ("texts", ".txt")])
def test_missing_file_for_a_split_entry(copy, folder, suffix):
    name = first_train(copy)
    path = copy / folder / f"{name}{suffix}"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"split 'train' entry '{name}': {path}: .*not found"):
        HumanML3D272Dataset(copy, "train")
    with pytest.warns(DataWarning, match=str(path)):
        assert name not in {it["name"] for it in HumanML3D272Dataset(copy, "train", lenient=True)}


def test_missing_or_bad_split_file(copy):
    (copy / "split" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split/val.txt: split file not found"):
        HumanML3D272Dataset(copy, "val", lenient=True)
    (copy / "split" / "test.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"split/test.txt: split is empty"):
        HumanML3D272Dataset(copy, "test")
    (copy / "split" / "test.txt").write_text("000001\n../etc/passwd\n")
    with pytest.raises(DataError, match=r"split/test.txt:2: '../etc/passwd' is not a clip id"):
        HumanML3D272Dataset(copy, "test")


def test_missing_or_bad_mean_std(copy):
    (copy / "mean_std" / "Std.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"mean_std/Std.npy: not found"):
        HumanML3D272Dataset(copy, "train", lenient=True)
    assert len(HumanML3D272Dataset(copy, "train", normalize=False)) > 0    # not needed without normalising
    np.save(copy / "mean_std" / "Std.npy", np.zeros(272, np.float32))
    with pytest.raises(DataError, match=r"Std.npy: Std must be positive"):
        HumanML3D272Dataset(copy, "train")
    np.save(copy / "mean_std" / "Std.npy", np.ones(263, np.float32))
    with pytest.raises(DataError, match=r"Std.npy: expected shape \(272,\)"):
        HumanML3D272Dataset(copy, "train")


def test_text_file_without_captions_and_bad_options(copy):
    name = first_train(copy)
    (copy / "texts" / f"{name}.txt").write_text("\n")
    with pytest.raises(DataError, match=rf"{name}.txt: no captions"):
        HumanML3D272Dataset(copy, "train")
    with pytest.raises(ValueError, match="captions must be one of"):
        HumanML3D272Dataset(copy, "train", captions="some")
    with pytest.raises(ValueError, match="too_long must be"):
        HumanML3D272Dataset(copy, "train", too_long="wrap")
