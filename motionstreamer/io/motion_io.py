"""Motion arrays on disk (.npy) and the conversions the output verbs need.

A motion file holds one clip: 272-dim features (T, 272), normalised or not, or joint positions
(T, 22, 3) / (T, 66). A leading batch dimension of 1 is accepted and dropped. Files are read with
allow_pickle=False, so a .npy holding Python objects is refused rather than executed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from motionstreamer import FEATURE_DIM, NUM_JOINTS
from motionstreamer.utils import as_numeric_array, atomic_save_npy, check_finite, load_npy

MAX_FPS = 1000.0   # frames per second a motion may claim: an output verb's timing, never a rate of 1e9


def check_fps(fps) -> float:
    """fps as a float; ValueError unless a finite number in (0, MAX_FPS]."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not np.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be a positive number (at most {MAX_FPS:g}), got {fps!r}")
    return float(fps)


def load_motion_array(path: str | Path, name: str | None = None) -> np.ndarray:
    """Load a numeric, finite .npy array; FileNotFoundError / ValueError naming `path` otherwise."""
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: file not found")
    if not path.is_file():
        raise ValueError(f"{name}: not a file")
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{name}: expected a .npy file (numpy.save), got suffix {path.suffix or '(none)'!r}")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{name}: not a valid .npy file (no NUMPY header)")
    try:   # no pickles; a header claiming more than the file holds is refused before allocating
        a = load_npy(path)
    except ValueError as e:
        raise ValueError(f"{name}: {str(e).removeprefix(f'{path}: ')}") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read as .npy ({e})") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected one array, got {type(a).__name__}")
    a = as_numeric_array(a, name)
    if a.size == 0:
        raise ValueError(f"{name}: is empty (shape {a.shape})")
    check_finite(name, a)
    return a


def save_npy(path: str | Path, array) -> Path:
    """np.save, atomically (a crash leaves the old file or none, never a partial one)."""

    path = Path(path)
    atomic_save_npy(path, as_numeric_array(array, "array"))
    return path


def _drop_batch(a: np.ndarray) -> np.ndarray:
    return a[0] if a.ndim in (3, 4) and a.shape[0] == 1 and a.shape[1:] != (NUM_JOINTS, 3) else a


def motion_kind(array, name: str = "motion") -> str:
    """'features' for (T, 272), 'joints' for (T, 22, 3) or (T, 66); ValueError otherwise."""
    a = _drop_batch(as_numeric_array(array, name))
    if a.ndim == 2 and a.shape[1] == FEATURE_DIM:
        return "features"
    if (a.ndim == 3 and a.shape[1:] == (NUM_JOINTS, 3)) or (a.ndim == 2 and a.shape[1] == 3 * NUM_JOINTS):
        return "joints"
    hint = " (HumanML3D-263 features are not supported; use the 272-dim format)" if a.shape[-1] == 263 else ""
    raise ValueError(f"{name} must be 272-dim features (frames, 272) or joints (frames, 22, 3) / "
                     f"(frames, 66), got shape {a.shape}{hint}")


def _stat(x, name: str) -> np.ndarray:
    s = as_numeric_array(x, name).astype(np.float64)
    if s.shape != (FEATURE_DIM,):
        raise ValueError(f"{name} must have shape ({FEATURE_DIM},), got {s.shape}")
    check_finite(name, s)
    return s


def to_features(array, mean=None, std=None, name: str = "motion") -> np.ndarray:
    """(T, 272) features, de-normalised with x * std + mean when mean and std are given."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (both or neither)")
    a = _drop_batch(as_numeric_array(array, name))
    if motion_kind(a, name) != "features":
        raise ValueError(f"{name} must be 272-dim features (frames, 272), got shape {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{name} has no frames")
    x = a.astype(np.float64)
    check_finite(name, x)
    if mean is not None:
        # torch for features only: this module is numpy-only at import (Blender's Python runs it, the add-on)
        from motionstreamer.representation.normalize import denormalize  # noqa: PLC0415

        x = denormalize(x, _stat(mean, "mean"), _stat(std, "std"))
    return x


def to_joints(array, mean=None, std=None, name: str = "motion") -> np.ndarray:
    """Joint positions (T, 22, 3) from features (T, 272; de-normalised first when mean/std are given,
    then the position inverse, spec §2.2) or from joints (T, 22, 3) / (T, 66) as they are."""
    if motion_kind(array, name) == "features":
        from motionstreamer.representation.features import recover_joints  # noqa: PLC0415  (torch: as above)

        return recover_joints(to_features(array, mean, std, name))
    if mean is not None or std is not None:
        raise ValueError(f"{name} holds joint positions; mean/std apply only to 272-dim features")
    a = _drop_batch(as_numeric_array(array, name)).astype(np.float64)
    if len(a) == 0:
        raise ValueError(f"{name} has no frames")
    check_finite(name, a)
    return a.reshape(len(a), NUM_JOINTS, 3)
