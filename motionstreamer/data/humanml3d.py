"""HumanML3D-272 layout reader (BABEL-272 shares it; see babel.py).

    root/motion_data/<id>.npy      (T, 272) features, not normalised, 30 fps
    root/texts/<id>.txt            lines `caption#tokens#start_s#end_s`; 0#0 (or nan) = the whole clip
    root/split/{train,val,test}.txt
    root/mean_std/{Mean,Std}.npy   (BABEL-272: t2m_babel_mean_std/)

Conventions of the reference loaders (humanml3d_272/dataset_eval_t2m.py): a sub-caption crops the
motion to [int(start*30), int(end*30)) and becomes its own sample; the whole clip is a sample when
it has at least one whole-clip caption; samples shorter than 60 frames are dropped, and so are those
of 300 frames or more (`too_long="crop"` keeps their first 300 frames instead); lengths are cut to a
multiple of unit_length = 4 (from the start, or at a random offset with random_crop=True). One
sample per motion with a random caption per access, as the reference (captions="all" gives one per
caption, "first" the first).

Malformed input raises an error naming the file (and line for text files): DataError (a ValueError)
for bad content, FileNotFoundError for missing files. With lenient=True a bad line, clip or split
entry is skipped with a DataWarning naming it instead. Missing split or Mean/Std files always raise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionstreamer import FEATURE_DIM, FPS, FRAMES_PER_LATENT
from motionstreamer.utils import load_npy

MIN_FRAMES, MAX_FRAMES, UNIT_LENGTH = 60, 300, FRAMES_PER_LATENT
CAPTION_MODES = ("random", "all", "first")


class DataError(ValueError):
    """Malformed dataset content; the message names the file (and line)."""


class DataWarning(UserWarning):
    """A sample skipped in lenient mode; the message names the file (and line)."""


def skip_or_raise(error: Exception, lenient: bool) -> None:
    """Lenient: warn that the sample is skipped. Strict: raise the error."""
    if not lenient:
        raise error
    warnings.warn(f"skipping: {error}", DataWarning, stacklevel=3)


@dataclass
class Caption:
    caption: str
    tokens: list
    start: float        # seconds; 0, 0 = the whole clip
    end: float
    where: str = ""     # "file:line", for messages

    @property
    def whole(self) -> bool:
        return self.start == 0.0 and self.end == 0.0


# ----------------------------------------------------------------------------- files
def read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_split(root: str | Path, split: str) -> list[str]:
    """Clip ids listed in root/split/<split>.txt (blank lines ignored)."""
    path = Path(root) / "split" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (layout: <root>/split/{split}.txt)")
    names = []
    for n, line in enumerate(read_lines(path), 1):
        name = line.strip()
        if not name:
            continue
        if "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"{path}:{n}: {name!r} is not a clip id")
        names.append(name)
    if not names:
        raise DataError(f"{path}: split is empty")
    return names


def parse_caption_line(line: str, where: str) -> Caption:
    """`caption#tokens#start#end` -> Caption; DataError naming `where` when malformed."""
    fields = line.split("#")
    if len(fields) != 4:
        raise DataError(f"{where}: expected 'caption#tokens#start#end' (4 '#'-separated fields), "
                        f"got {len(fields)}: {line!r}")
    caption, tokens, s, e = fields
    if not caption.strip():
        raise DataError(f"{where}: empty caption")
    try:
        start, end = float(s), float(e)
    except ValueError:
        raise DataError(f"{where}: start/end {s!r}/{e!r} are not numbers") from None
    start = 0.0 if math.isnan(start) else start      # the reference reads nan as 0 (whole clip)
    end = 0.0 if math.isnan(end) else end
    if math.isinf(start) or math.isinf(end):
        raise DataError(f"{where}: start/end must be finite, got {s!r}/{e!r}")
    if start < 0 or end < 0:
        raise DataError(f"{where}: negative time (start={start}, end={end})")
    if end < start:
        raise DataError(f"{where}: end {end} is before start {start}")
    if end == start and start != 0.0:
        raise DataError(f"{where}: empty sub-caption interval (start = end = {start})")
    return Caption(caption.strip(), tokens.strip().split(" ") if tokens.strip() else [], start, end, where)


def parse_lines(path: Path, parse, lenient: bool, missing: str):
    """(line number, parse(line, "path:n")) for every non-blank line of a text file; a malformed line
    raises (lenient: is skipped with a warning). FileNotFoundError `path: missing`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    for n, line in enumerate(read_lines(path), 1):
        if line.strip():
            try:
                yield n, parse(line.strip(), f"{path}:{n}")
            except DataError as e:
                skip_or_raise(e, lenient)


def read_text_file(path: str | Path, lenient: bool = False) -> list[Caption]:
    """All captions of a clip's text file; malformed lines raise (lenient: are skipped with a warning)."""
    path = Path(path)
    out = [c for _, c in parse_lines(path, parse_caption_line, lenient, "text file not found")]
    if not out:
        raise DataError(f"{path}: no captions")
    return out


def _load_npy(path: Path, missing: str) -> np.ndarray:
    """utils.load_npy (no pickles, the header's shape checked against the file's size); FileNotFoundError
    `path: missing` / DataError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    try:
        return load_npy(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a numeric .npy array ({e})") from None


def load_mean_std(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(Mean, Std) float32 (272,) from directory/Mean.npy and Std.npy."""
    d = Path(directory)
    out = []
    for name in ("Mean.npy", "Std.npy"):
        path = d / name
        x = _load_npy(path, "not found (Mean.npy and Std.npy are needed to normalise)")
        if x.shape != (FEATURE_DIM,) or not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: expected shape ({FEATURE_DIM},) numbers, got {x.shape} {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise DataError(f"{path}: contains NaN/inf")
        out.append(x.astype(np.float32))
    mean, std = out
    if np.any(std <= 0):
        raise DataError(f"{d / 'Std.npy'}: Std must be positive (dim {int(np.argmax(std <= 0))} is {std[std <= 0][0]})")
    return mean, std


def load_motion_file(path: str | Path) -> np.ndarray:
    """(T, 272) float32 features, checked: shape, numeric, finite, T >= 1."""
    path = Path(path)
    x = _load_npy(path, "motion file not found")
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
        raise DataError(f"{path}: expected (frames, {FEATURE_DIM}) features, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: expected numbers, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise DataError(f"{path}: no frames")
    if not np.all(np.isfinite(x)):
        frame, dim = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise DataError(f"{path}: contains NaN/inf (first at frame {frame}, dim {dim})")
    return x.astype(np.float32)


def load_motions(root: str | Path, split: str, normalize: bool = True, mean_std_dir=None,
                 motion_dir: str = "motion_data", lenient: bool = False,
                 missing_split_ok: bool = False) -> dict[str, np.ndarray]:
    """Whole clips of a split, {id: (T, 272) float32}, normalised with root/mean_std (or mean_std_dir)
    when asked. A split entry without a valid motion file raises (lenient: is skipped with a warning)."""
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
            skip_or_raise(type(e)(f"split {split!r} entry {name!r}: {e}"), lenient)
            continue
        out[name] = (x - mean) / std if normalize else x
    return out


# ----------------------------------------------------------------------------- dataset
def unit_crop(length: int, unit_length: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """(offset, length) of the crop to a multiple of unit_length; random offset when rng is given."""
    n = length // unit_length * unit_length
    offset = int(rng.integers(0, length - n + 1)) if rng is not None else 0
    return offset, n


class HumanML3D272Dataset(torch.utils.data.Dataset):
    """(motion, caption) samples of a HumanML3D-272 split. Items: dict(motion (T, 272) float32
    (normalised unless normalize=False), length, caption, tokens, name); T is a multiple of unit_length."""

    mean_std_name = "mean_std"

    def __init__(self, root: str | Path, split: str = "train", mean=None, std=None, min_frames: int = MIN_FRAMES,
                 max_frames: int = MAX_FRAMES, unit_length: int = UNIT_LENGTH, lenient: bool = False,
                 normalize: bool = True, mean_std_dir=None, too_long: str = "drop", captions: str = "random",
                 random_crop: bool = False, seed: int = 0, motion_dir: str = "motion_data", text_dir: str = "texts"):
        if captions not in CAPTION_MODES:
            raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")
        if too_long not in ("drop", "crop"):
            raise ValueError(f"too_long must be 'drop' or 'crop', got {too_long!r}")
        if unit_length < 1 or min_frames < 1 or max_frames < min_frames:
            raise ValueError(f"need unit_length >= 1 and 1 <= min_frames <= max_frames, got {unit_length}, "
                             f"{min_frames}, {max_frames}")
        self.root, self.split = Path(root), split
        self.normalize, self.captions, self.random_crop, self.seed = normalize, captions, random_crop, seed
        self.unit_length = unit_length
        self.epoch = 0
        if normalize:
            if (mean is None) != (std is None):
                raise ValueError("give both mean and std, or neither (then they are read from the dataset)")
            if mean is None:
                mean, std = load_mean_std(mean_std_dir or self.root / self.mean_std_name)
            mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
            if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
                raise ValueError(f"mean/std must have shape ({FEATURE_DIM},), got {mean.shape} / {std.shape}")
        self.mean, self.std = mean, std

        def keep(n: int) -> int:
            """Usable length, or 0 to drop (reference: len < min or len >= max is dropped)."""
            if n < min_frames or (n >= max_frames and too_long == "drop"):
                return 0
            return min(n, max_frames)

        self.entries = []          # (name, motion, [Caption])
        motions = load_motions(self.root, split, normalize=False, motion_dir=motion_dir, lenient=lenient)
        for name, x in motions.items():
            try:
                caps = read_text_file(self.root / text_dir / f"{name}.txt", lenient=lenient)
            except (FileNotFoundError, DataError) as e:
                skip_or_raise(type(e)(f"split {split!r} entry {name!r}: {e}"), lenient)
                continue
            if normalize:
                x = (x - mean) / std
            whole = [c for c in caps if c.whole]
            if whole and keep(len(x)):
                self.entries.append((name, x[:keep(len(x))], whole))
            for c in caps:
                if c.whole:
                    continue
                a, b = int(c.start * FPS), int(c.end * FPS)
                if a >= len(x):
                    skip_or_raise(DataError(f"{c.where}: sub-caption starts at {c.start} s (frame {a}) but "
                                            f"{self.root / motion_dir / (name + '.npy')} has {len(x)} frames"), lenient)
                    continue
                m = x[a:b]
                if keep(len(m)):
                    self.entries.append((f"{name}_{c.start:f}_{c.end:f}", m[:keep(len(m))], [c]))
        if not self.entries:
            raise DataError(f"{self.root}: split {split!r} has no samples of {min_frames} to "
                            f"{max_frames - (too_long == 'drop')} frames")
        self.index = [(e, k) for e, (_, _, caps) in enumerate(self.entries)
                      for k in (range(len(caps)) if captions == "all" else [None])]

    @property
    def lengths(self) -> np.ndarray:
        """Sample lengths after the unit crop, in item order."""
        return np.array([len(self.entries[e][1]) // self.unit_length * self.unit_length for e, _ in self.index])

    def set_epoch(self, epoch: int) -> None:
        """Random captions/crops depend on (seed, epoch, index): call once per epoch for fresh draws."""
        self.epoch = int(epoch)

    def inv_transform(self, x):
        return x * self.std + self.mean if self.normalize else x

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, k = self.index[i]
        name, motion, caps = self.entries[e]
        rng = np.random.default_rng((self.seed, self.epoch, i)) if (k is None and self.captions == "random") \
            or self.random_crop else None
        if k is None:
            k = int(rng.integers(len(caps))) if self.captions == "random" else 0
        offset, n = unit_crop(len(motion), self.unit_length, rng if self.random_crop else None)
        cap = caps[k]
        return {"motion": motion[offset:offset + n], "length": n, "caption": cap.caption, "tokens": cap.tokens,
                "name": name}


def collate(items: list[dict]) -> dict:
    """Batch items: every (T, D) array key is zero-padded to the batch's longest (B, T_max, D) float
    tensor; int keys become tensors (so `length` gives the valid frames); everything else is a list."""
    if not items:
        raise ValueError("collate: empty batch")
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], np.ndarray) and values[0].ndim == 2:
            T = max(v.shape[0] for v in values)
            batch = torch.zeros(len(values), T, values[0].shape[1])
            for i, v in enumerate(values):
                batch[i, :v.shape[0]] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            out[key] = batch
        elif isinstance(values[0], (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values])
        else:
            out[key] = values
    return out
