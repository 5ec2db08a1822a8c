"""Mean/Std of the 272 format (spec §5): per-dim mean; the std of every dim is replaced by the
arithmetic mean of the per-dim (population) stds of its feature group. No epsilon, no weighting.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable

import numpy as np
import torch

from motionstreamer import FEATURE_DIM
from motionstreamer.representation.features import HEADING_DELTA, POSITIONS, ROOT_VELOCITY, ROTATIONS, VELOCITIES
from motionstreamer.utils import load_npy

# the format's blocks, each sharing one Std (spec §5)
FEATURE_GROUPS = tuple((s.start, s.stop) for s in (ROOT_VELOCITY, HEADING_DELTA, POSITIONS, VELOCITIES, ROTATIONS))


def _clip_items(clips: Iterable, names: Iterable[str] | None):
    """Yield (label, array): items may be arrays, paths to .npy files, or (name, array) pairs."""
    names = iter(names) if names is not None else None
    for i, item in enumerate(clips):
        label = next(names, None) if names is not None else None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, os.PathLike)):
            label, item = str(item[0]) if label is None else label, item[1]
        if isinstance(item, (str, os.PathLike)):
            label = str(item) if label is None else label
            try:
                item = load_npy(item)
            except (OSError, ValueError) as e:
                raise ValueError(f"compute_mean_std: cannot read {label}: {e}") from e
        if hasattr(item, "detach"):
            item = item.detach().cpu().numpy()
        yield (label if label is not None else f"clip #{i}"), np.asarray(item)


def compute_mean_std(clips: Iterable, names: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and group-averaged Std (float64, (272,)) over all frames of all clips.

    clips: (T, 272) arrays (numpy or torch), .npy paths, or (name, array) pairs; `names` optionally
    labels them for messages. Clips holding NaN/inf are skipped with a warning naming them, as the
    reference does. Streams: per-clip moments are merged (Chan et al.), so memory stays O(272) and
    the result equals np.concatenate(clips).mean/std(axis=0) up to float64 rounding.
    """
    count, mean, m2 = 0, np.zeros(FEATURE_DIM), np.zeros(FEATURE_DIM)
    for label, c in _clip_items(clips, names):
        if c.ndim != 2 or c.shape[1] != FEATURE_DIM:
            raise ValueError(f"compute_mean_std: {label}: expected (T, 272) features, got shape {c.shape}")
        c = c.astype(np.float64, copy=False)
        if not np.all(np.isfinite(c)):
            warnings.warn(f"compute_mean_std: skipping {label} (contains NaN/inf)", stacklevel=2)
            continue
        n = c.shape[0]
        if n == 0:
            continue
        c_mean = c.mean(axis=0)
        c_m2 = ((c - c_mean) ** 2).sum(axis=0)
        total = count + n
        delta = c_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + c_m2 + delta ** 2 * (count * n / total)
        count = total
    if count == 0:
        raise ValueError("compute_mean_std: no valid frames (every clip was empty or held NaN/inf)")
    std = np.sqrt(m2 / count)
    for a, b in FEATURE_GROUPS:
        std[a:b] = std[a:b].mean()
    return mean, std


def _stats_like(x, stat, name: str, fn: str):
    """Check shapes and bring mean/std to x's kind, dtype and device."""
    shape = tuple(stat.shape) if hasattr(stat, "shape") else np.shape(stat)
    if shape != (FEATURE_DIM,):
        raise ValueError(f"{fn}: {name} must have shape (272,), got {shape}")
    if hasattr(x, "detach"):

        return torch.as_tensor(np.asarray(stat) if not hasattr(stat, "detach") else stat,
                               dtype=x.dtype, device=x.device)
    s = stat.detach().cpu().numpy() if hasattr(stat, "detach") else np.asarray(stat)
    return s.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64, copy=False)


def _check_x(x, fn: str):
    shape = tuple(x.shape)
    if len(shape) == 0 or shape[-1] != FEATURE_DIM:
        raise ValueError(f"{fn}: x must have shape (..., 272), got {shape}")


def normalize(x, mean, std):
    """(x - mean) / std over the last dim; numpy or torch, keeps x's float dtype and device."""
    _check_x(x, "normalize")
    return (x - _stats_like(x, mean, "mean", "normalize")) / _stats_like(x, std, "std", "normalize")


def denormalize(x, mean, std):
    """x * std + mean: the inverse of normalize; needed before recover_joints / recover_rotations."""
    _check_x(x, "denormalize")
    return x * _stats_like(x, std, "std", "denormalize") + _stats_like(x, mean, "mean", "denormalize")
