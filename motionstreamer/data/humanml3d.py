"""HumanML3D-272 layout reader (also BABEL-272, which shares it).

    root/motion_data/<id>.npy   (T, 272) float features, not normalised
    root/texts/<id>.txt         lines `caption#tokens#start_s#end_s` (0#0 = the whole clip)
    root/split/{train,val,test}.txt
    root/mean_std/{Mean,Std}.npy   (BABEL-272: t2m_babel_mean_std/)

Sub-captions crop the motion at int(sec * 30). Loader conventions (MotionStreamer): clips shorter
than 60 frames are dropped, longer than 300 are cut, lengths are cut to a multiple of 4. Malformed
input raises an error naming the file (and line); lenient=True skips it with a warning instead.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FPS = 30


class DataError(ValueError):
    pass


@dataclass
class Caption:
    caption: str
    tokens: list
    start: float
    end: float


def read_split(root: str | Path, split: str) -> list[str]:
    path = Path(root) / "split" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise DataError(f"{path}: split is empty")
    return names


def parse_caption_line(line: str, where: str) -> Caption:
    fields = line.split("#")
    if len(fields) != 4:
        raise DataError(f"{where}: expected 'caption#tokens#start#end' (4 fields), got {len(fields)}: {line!r}")
    caption, tokens, s, e = fields
    if not caption.strip():
        raise DataError(f"{where}: empty caption")
    try:
        start, end = float(s), float(e)
    except ValueError:
        raise DataError(f"{where}: start/end {s!r}/{e!r} are not numbers") from None
    start = 0.0 if math.isnan(start) else start
    end = 0.0 if math.isnan(end) else end
    if start < 0 or end < 0 or (end < start) or (end == start and start != 0.0):
        raise DataError(f"{where}: bad sub-caption times start={start} end={end}")
    return Caption(caption.strip(), tokens.split(" "), start, end)


def read_text_file(path: str | Path, lenient: bool = False) -> list[Caption]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: text file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_caption_line(line.strip(), f"{path}:{n}"))
        except DataError as e:
            if not lenient:
                raise
            warnings.warn(f"skipping {e}")
    if not out:
        raise DataError(f"{path}: no captions")
    return out


def load_mean_std(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    try:
        mean = np.load(d / "Mean.npy", allow_pickle=False)
        std = np.load(d / "Std.npy", allow_pickle=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{d}: Mean.npy/Std.npy not found") from e
    if mean.shape != (272,) or std.shape != (272,):
        raise DataError(f"{d}: Mean/Std must have shape (272,), got {mean.shape} / {std.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(std > 0)):
        raise DataError(f"{d}: Mean must be finite and Std positive")
    return mean.astype(np.float32), std.astype(np.float32)


def load_motion_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: motion file not found")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: not a numeric .npy array ({e})") from e
    if x.ndim != 2 or x.shape[1] != 272:
        raise DataError(f"{path}: expected (frames, 272) features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: contains NaN/inf")
    return x.astype(np.float32)


def load_motions(root: str | Path, split: str, normalize: bool = True, mean_std_dir=None, motion_dir: str = "motion_data",
                 lenient: bool = False, missing_split_ok: bool = False) -> dict[str, np.ndarray]:
    """Whole clips of a split, {id: (T, 272)} (normalised when asked)."""
    root = Path(root)
    try:
        names = read_split(root, split)
    except FileNotFoundError:
        if missing_split_ok:
            return {}
        raise
    mean, std = load_mean_std(mean_std_dir or root / "mean_std") if normalize else (None, None)
    out = {}
    for name in names:
        try:
            x = load_motion_file(root / motion_dir / f"{name}.npy")
        except (FileNotFoundError, DataError) as e:
            if not lenient:
                raise type(e)(f"split {split!r} entry {name!r}: {e}") from None
            warnings.warn(f"skipping {e}")
            continue
        out[name] = (x - mean) / std if normalize else x
    return out


class HumanML3D272Dataset(torch.utils.data.Dataset):
    """(motion, caption) items of a split, sub-captions cropped, lengths filtered and cut to units."""

    def __init__(self, root: str | Path, split: str = "train", mean=None, std=None, min_frames: int = 60,
                 max_frames: int = 300, unit_length: int = 4, lenient: bool = False, normalize: bool = True,
                 mean_std_dir=None):
        self.root = Path(root)
        if normalize and (mean is None or std is None):
            mean, std = load_mean_std(mean_std_dir or self.root / "mean_std")
        self.mean, self.std = mean, std
        self.items = []
        motions = load_motions(self.root, split, normalize=False, lenient=lenient)
        for name, x in motions.items():
            x = (x - mean) / std if normalize else x
            for cap in read_text_file(self.root / "texts" / f"{name}.txt", lenient=lenient):
                m = x if cap.start == 0.0 and cap.end == 0.0 else x[int(cap.start * FPS):int(cap.end * FPS)]
                if len(m) < min_frames:
                    continue
                m = m[:max_frames]
                m = m[: len(m) // unit_length * unit_length]
                self.items.append({"motion": m, "length": len(m), "caption": cap.caption,
                                   "tokens": cap.tokens, "name": name})
        if not self.items:
            raise DataError(f"{self.root}: split {split!r} has no clips of at least {min_frames} frames")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(items: list[dict]) -> dict:
    """Pad motions to the batch max length; returns motion (B, T, 272), length (B,), captions, names."""
    T = max(it["length"] for it in items)
    motion = torch.zeros(len(items), T, items[0]["motion"].shape[1])
    for i, it in enumerate(items):
        motion[i, :it["length"]] = torch.from_numpy(np.ascontiguousarray(it["motion"]))
    return {"motion": motion, "length": torch.tensor([it["length"] for it in items]),
            "caption": [it["caption"] for it in items], "name": [it["name"] for it in items]}
