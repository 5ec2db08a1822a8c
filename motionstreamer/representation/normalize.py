"""Mean/Std of the 272 format: per-dim mean, std replaced by the mean std of each feature group (spec §5)."""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np

FEATURE_GROUPS = ((0, 2), (2, 8), (8, 74), (74, 140), (140, 272))


def compute_mean_std(clips: Iterable, names: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """clips: (T, 272) arrays. Clips with NaN/inf are skipped with a warning naming them."""
    names = list(names) if names is not None else None
    kept = []
    for i, c in enumerate(clips):
        c = np.asarray(c, dtype=np.float64)
        label = names[i] if names is not None else f"clip #{i}"
        if c.ndim != 2 or c.shape[1] != 272:
            raise ValueError(f"{label}: expected (T, 272) features, got shape {c.shape}")
        if not np.all(np.isfinite(c)):
            warnings.warn(f"compute_mean_std: skipping {label} (contains NaN/inf)")
            continue
        kept.append(c)
    if not kept:
        raise ValueError("compute_mean_std: no valid clips")
    data = np.concatenate(kept, axis=0)
    mean = data.mean(axis=0)
    std = data.std(axis=0)
    for a, b in FEATURE_GROUPS:
        std[a:b] = std[a:b].mean()
    return mean, std


def _check(x, mean, std):
    if x.shape[-1] != 272 or np.shape(mean)[-1] != 272 or np.shape(std)[-1] != 272:
        raise ValueError(f"normalisation needs 272-dim features, mean and std; got x {tuple(x.shape)}, "
                         f"mean {tuple(np.shape(mean))}, std {tuple(np.shape(std))}")


def normalize(x, mean, std):
    _check(x, mean, std)
    return (x - mean) / std


def denormalize(x, mean, std):
    _check(x, mean, std)
    return x * std + mean
