"""BABEL-272 and BABEL-stream readers.

BABEL-272 has the HumanML3D-272 layout (motion_data/, texts/, split/{train,val}.txt) with its own
statistics folder `t2m_babel_mean_std/` (computed over HumanML3D-272 + BABEL-272, used by every model
trained on both). BABEL-stream (README of the reference and dataset_TM_train_motionstreamer.py):

    root/{train,val}_stream/<seq>.npy          (T, 272) motion A followed by motion B
    root/{train,val}_stream_text/<seq>.txt     lines `A_text#A_tokens*B_text#B_tokens#A_frames`

A pair's first A_frames frames are A, the rest B. The caption trained on is B's (the reference
skips lines whose B text is empty; so does this reader). Every line of a file must give the same
A_frames. Malformed input raises an error naming the file and line; lenient=True skips the bad
line or pair with a DataWarning instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from motionstreamer import FEATURE_DIM
from motionstreamer.data.humanml3d import (
    UNIT_LENGTH,
    DataError,
    HumanML3D272Dataset,
    load_mean_std,
    load_motion_file,
    parse_lines,
    skip_or_raise,
)

BABEL_MEAN_STD = "t2m_babel_mean_std"


class BABEL272Dataset(HumanML3D272Dataset):
    """BABEL-272 samples; same options and items as HumanML3D272Dataset, statistics from
    root/t2m_babel_mean_std unless mean/std or mean_std_dir are given. Splits: train, val."""

    mean_std_name = BABEL_MEAN_STD


def parse_stream_line(line: str, where: str) -> dict:
    """`A_text#A_tokens*B_text#B_tokens#A_frames` -> dict(text_a, tokens_a, text_b, tokens_b, a_frames)."""
    expected = "expected 'A_text#A_tokens*B_text#B_tokens#A_frames'"
    if line.count("*") != 1:
        raise DataError(f"{where}: {expected} with exactly one '*', found {line.count('*')}: {line!r}")
    a_part, b_part = line.split("*")
    a, b = a_part.split("#"), b_part.split("#")
    if len(a) != 2:
        raise DataError(f"{where}: {expected}; the A part has {len(a)} '#'-separated fields, not 2: {a_part!r}")
    if len(b) != 3:
        raise DataError(f"{where}: {expected}; the B part has {len(b)} '#'-separated fields, not 3: {b_part!r}")
    try:
        a_frames = int(b[2].strip())
    except ValueError:
        raise DataError(f"{where}: A_frames {b[2]!r} is not an integer") from None
    if a_frames < 1:
        raise DataError(f"{where}: A_frames must be >= 1, got {a_frames}")
    split_tokens = lambda s: s.strip().split(" ") if s.strip() else []  # noqa: E731
    return {"text_a": a[0].strip(), "tokens_a": split_tokens(a[1]), "text_b": b[0].strip(),
            "tokens_b": split_tokens(b[1]), "a_frames": a_frames}


def read_stream_text(path: Path, lenient: bool = False) -> list[dict]:
    """The usable lines of a stream text file (empty-B lines skipped, as the reference does)."""
    out = []
    for n, rec in parse_lines(path, parse_stream_line, lenient, "stream text file not found"):
        if not rec["text_b"]:
            continue
        if out and rec["a_frames"] != out[0]["a_frames"]:
            skip_or_raise(DataError(f"{path}:{n}: A_frames {rec['a_frames']} disagrees with "
                                    f"{out[0]['a_frames']} on an earlier line"), lenient)
            continue
        rec["where"] = f"{path}:{n}"
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no usable lines (every line malformed or with an empty B text)")
    return out


class BABELStreamDataset(torch.utils.data.Dataset):
    """BABEL-stream pairs of a split. Items: dict(motion (T, 272) float32 = A then B (normalised unless
    normalize=False), length T, a_length (A's frames), motion_a / motion_b (views of the two parts),
    caption / tokens (B's, as trained on), text_a, tokens_a, text_b, tokens_b, name). `captions` as in
    HumanML3D272Dataset."""

    def __init__(self, root: str | Path, split: str = "train", mean=None, std=None, normalize: bool = True,
                 mean_std_dir=None, lenient: bool = False, captions: str = "random", seed: int = 0,
                 max_frames: int | None = None, unit_length: int = UNIT_LENGTH):
        if captions not in ("random", "all", "first"):
            raise ValueError(f"captions must be 'random', 'all' or 'first', got {captions!r}")
        self.root, self.split = Path(root), split
        self.normalize, self.captions, self.seed, self.unit_length = normalize, captions, seed, unit_length
        self.epoch = 0
        if normalize:
            if (mean is None) != (std is None):
                raise ValueError("give both mean and std, or neither (then they are read from mean_std_dir)")
            if mean is None:
                if mean_std_dir is None:
                    raise ValueError("BABELStreamDataset: normalize=True needs mean/std or mean_std_dir "
                                     f"(the BABEL-272 statistics, <babel_272>/{BABEL_MEAN_STD})")
                mean, std = load_mean_std(mean_std_dir)
            mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
            if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
                raise ValueError(f"mean/std must have shape ({FEATURE_DIM},), got {mean.shape} / {std.shape}")
        self.mean, self.std = mean, std
        motion_dir, text_dir = self.root / f"{split}_stream", self.root / f"{split}_stream_text"
        for d in (motion_dir, text_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: folder not found (BABEL-stream layout: <root>/{split}_stream/ "
                                        f"and <root>/{split}_stream_text/)")
        names = sorted({p.stem for p in text_dir.glob("*.txt")} | {p.stem for p in motion_dir.glob("*.npy")})
        self.entries = []
        for name in names:
            try:
                x = load_motion_file(motion_dir / f"{name}.npy")
                lines = read_stream_text(text_dir / f"{name}.txt", lenient)
                a = lines[0]["a_frames"]
                if a >= len(x):
                    raise DataError(f"{lines[0]['where']}: A_frames {a} leaves no frames for B in "
                                    f"{motion_dir / (name + '.npy')} ({len(x)} frames)")
            except (FileNotFoundError, DataError) as e:
                skip_or_raise(e, lenient)
                continue
            if max_frames is not None and len(x) > max_frames:
                continue
            self.entries.append((name, (x - mean) / std if normalize else x, lines))
        if not self.entries:
            raise DataError(f"{self.root}: split {split!r} has no stream pairs")
        self.index = [(e, k) for e, (_, _, lines) in enumerate(self.entries)
                      for k in (range(len(lines)) if captions == "all" else [None])]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, k = self.index[i]
        name, motion, lines = self.entries[e]
        if k is None:
            k = int(np.random.default_rng((self.seed, self.epoch, i)).integers(len(lines))) \
                if self.captions == "random" else 0
        rec = lines[k]
        a = rec["a_frames"]
        return {"motion": motion, "length": len(motion), "a_length": a, "motion_a": motion[:a], "motion_b": motion[a:],
                "caption": rec["text_b"],
                "tokens": rec["tokens_b"], "text_a": rec["text_a"], "tokens_a": rec["tokens_a"],
                "text_b": rec["text_b"], "tokens_b": rec["tokens_b"], "name": name}
