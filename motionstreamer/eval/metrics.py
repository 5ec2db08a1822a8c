"""Text-to-motion metrics as the field computes them (T2M / T2M-GPT / MotionStreamer `utils/eval_trans.py`,
FlowMDM `utils/metrics.py` for jerk). numpy in, Python floats / numpy arrays out; torch tensors are
accepted anywhere an array is.

Embeddings are the evaluator's motion/text means. Randomness (Diversity, MultiModality) comes from
an explicit seed or numpy Generator, never from global state.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.ndimage import uniform_filter1d

from motionstreamer import FPS
from motionstreamer.representation.feet import FootCleaner, clean_feet, ground


def _np(x, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN/inf")
    return a


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ----------------------------------------------------------------------------- FID
def activation_statistics(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, rowvar=False) covariance of (N, d) embeddings."""
    a = _np(emb, "embeddings", 2)
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings for a covariance, got {a.shape[0]}")
    return a.mean(axis=0), np.cov(a, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():      # a singular product warns; it is handled below with eps
        warnings.simplefilter("ignore", RuntimeWarning)
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (the T2M / Dougal Sutherland formulation: scipy
    sqrtm, eps added to the diagonals when the product is singular, tiny imaginary parts dropped)."""
    mu1, mu2 = np.atleast_1d(_np(mu1, "mu1")), np.atleast_1d(_np(mu2, "mu2"))
    sigma1, sigma2 = np.atleast_2d(_np(sigma1, "sigma1")), np.atleast_2d(_np(sigma2, "sigma2"))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances must both be {(mu1.shape[0],) * 2}, got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(emb_a, emb_b) -> float:
    """FID between two sets of embeddings (N, d) and (M, d)."""
    mu1, s1 = activation_statistics(emb_a)
    mu2, s2 = activation_statistics(emb_b)
    return frechet_distance(mu1, s1, mu2, s2)


# ----------------------------------------------------------------------------- retrieval
def euclidean_distance_matrix(a, b) -> np.ndarray:
    """(N, d), (M, d) -> (N, M) distances, via -2ab + |a|^2 + |b|^2 as the field (clipped at 0)."""
    a, b = _np(a, "a", 2), _np(b, "b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    d2 = -2 * a @ b.T + np.sum(a * a, axis=1, keepdims=True) + np.sum(b * b, axis=1)
    return np.sqrt(np.maximum(d2, 0.0))


def _pairs(text_emb, motion_emb):
    t, m = _np(text_emb, "text embeddings", 2), _np(motion_emb, "motion embeddings", 2)
    if t.shape != m.shape:
        raise ValueError(f"text and motion embeddings must pair up, got {t.shape} and {m.shape}")
    return t, m


def r_precision_counts(text_emb, motion_emb, top_k: int = 3) -> np.ndarray:
    """For one batch: how many texts have their own motion among the k nearest, k = 1..top_k."""
    t, m = _pairs(text_emb, motion_emb)
    order = np.argsort(euclidean_distance_matrix(t, m), axis=1)[:, :top_k]
    hit = order == np.arange(t.shape[0])[:, None]
    return np.cumsum(hit, axis=1).clip(max=1).sum(axis=0)


def r_precision(text_emb, motion_emb, batch: int = 32, top_k: int = 3) -> np.ndarray:
    """R-precision top-1..top_k: each text ranks the `batch` motions of its batch (consecutive groups
    of `batch` rows; a trailing partial group is dropped, as the field's drop_last loader)."""
    t, m = _pairs(text_emb, motion_emb)
    n = (t.shape[0] // batch) * batch
    if n == 0:
        raise ValueError(f"R-precision needs at least one full batch of {batch} pairs, got {t.shape[0]}")
    if top_k > batch:
        raise ValueError(f"top_k {top_k} > batch {batch}")
    counts = sum(r_precision_counts(t[i:i + batch], m[i:i + batch], top_k) for i in range(0, n, batch))
    return counts / n


def matching_score(text_emb, motion_emb) -> float:
    """MM-Dist: mean Euclidean distance between each text and its own motion."""
    t, m = _pairs(text_emb, motion_emb)
    return float(np.linalg.norm(t - m, axis=1).mean())


def _random_pair_distance(a: np.ndarray, axis: int, n_pairs: int, seed, what: str) -> float:
    """Mean distance between n_pairs random pairs along `axis` (two independent draws without
    replacement, the same indices for every other leading index), as the field computes both
    Diversity and MultiModality."""
    if a.shape[axis] <= n_pairs:
        raise ValueError(f"{what} with {n_pairs} pairs needs more than {n_pairs} "
                         f"{'embeddings' if axis == 0 else 'repeats per caption'}, got {a.shape[axis]}")
    rng = _rng(seed)
    first, second = (rng.choice(a.shape[axis], n_pairs, replace=False) for _ in range(2))
    return float(np.linalg.norm(np.take(a, first, axis) - np.take(a, second, axis), axis=-1).mean())


def diversity(emb, n_pairs: int = 300, seed=0) -> float:
    """Mean distance between n_pairs random pairs of embeddings."""
    return _random_pair_distance(_np(emb, "embeddings", 2), 0, n_pairs, seed, "diversity")


def multimodality(emb, n_pairs: int = 10, seed=0) -> float:
    """emb (N captions, R repeats, d): mean distance between n_pairs random pairs of repeats of the
    same caption (the same repeat indices for every caption, as the field)."""
    return _random_pair_distance(_np(emb, "embeddings", 3), 1, n_pairs, seed, "multimodality")


# ----------------------------------------------------------------------------- joints
def mpjpe_per_frame(pred_joints, gt_joints) -> np.ndarray:
    """(..., T, J, 3) each -> (..., T) mean per-joint error after subtracting each frame's pelvis
    (joint 0) from both sequences (MotionStreamer `calculate_mpjpe`). Units of the input."""
    p, g = _np(pred_joints, "pred_joints"), _np(gt_joints, "gt_joints")
    if p.shape != g.shape or p.ndim < 3 or p.shape[-1] != 3:
        raise ValueError(f"joints must have equal shapes (..., T, J, 3), got {p.shape} and {g.shape}")
    p = p - p[..., :1, :]
    g = g - g[..., :1, :]
    return np.linalg.norm(p - g, axis=-1).mean(axis=-1)


def mpjpe_mm(pred_joints, gt_joints) -> float:
    """Pelvis-aligned MPJPE in millimetres (joints in metres), averaged over every frame."""
    return float(mpjpe_per_frame(pred_joints, gt_joints).mean() * 1000.0)


def jerk_curve(joints, lengths=None) -> np.ndarray:
    """FlowMDM `calculate_jerk`: third finite difference of joint positions (per frame, no fps
    scaling), L1 norm over xyz, max over joints. joints (B, T, J, 3) -> (B, T-3); values at or past
    length-3 of a row are 0."""
    j = _np(joints, "joints", 4)
    if j.shape[1] < 4:
        raise ValueError(f"jerk needs at least 4 frames, got {j.shape[1]}")
    jerk = np.diff(j, n=3, axis=1)
    if lengths is not None:
        lengths = np.asarray(lengths).reshape(-1)
        if lengths.shape[0] != j.shape[0]:
            raise ValueError(f"{lengths.shape[0]} lengths for {j.shape[0]} sequences")
        valid = np.arange(jerk.shape[1])[None, :] < (lengths[:, None] - 3)
        jerk = jerk * valid[:, :, None, None]
    return np.abs(jerk).sum(axis=-1).max(axis=-1)


def mean_jerk(joints, lengths=None) -> float:
    """The reference level for AUJ: mean of the jerk curve over all valid frames of (GT) motions."""
    curve = jerk_curve(joints, lengths)
    if lengths is None:
        return float(curve.mean())
    n = np.clip(np.asarray(lengths).reshape(-1) - 3, 0, None)
    return float(curve.sum() / max(int(n.sum()), 1))


def transition_jerk(windows, gt_jerk: float) -> dict:
    """Peak Jerk and Area Under Jerk over transition windows (FlowMDM `evaluate_jerk`).

    windows (N, L, J, 3): joints around each transition (L frames, the transition at L//2). The jerk
    curve is averaged over the N windows frame by frame; PJ = its maximum, AUJ = sum over frames of
    |curve - gt_jerk| (gt_jerk = mean_jerk of ground-truth motion)."""
    curve = jerk_curve(windows).mean(axis=0)
    return {"peak_jerk": float(curve.max()), "auj": float(np.abs(curve - gt_jerk).sum()), "curve": curve}


def transition_windows(sequence, boundaries, length: int = 60) -> np.ndarray:
    """Cut (length, ...) windows [b - length//2, b + length - length//2) around each boundary frame b
    of one long sequence (T, ...); boundaries whose window leaves the sequence are skipped."""
    x = np.asarray(sequence.detach().cpu().numpy() if hasattr(sequence, "detach") else sequence)
    left, right = length // 2, length - length // 2
    out = [x[b - left:b + right] for b in boundaries if b - left >= 0 and b + right <= x.shape[0]]
    return np.stack(out) if out else np.zeros((0, length) + x.shape[1:], dtype=x.dtype)


def transition_fid(emb_gt_windows, emb_gen_windows) -> float:
    """FID between evaluator embeddings of ground-truth and generated transition windows."""
    return fid(emb_gt_windows, emb_gen_windows)


# ----------------------------------------------------------------------------- repeats
def mean_and_ci95(values) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) over repeats, std with ddof=0 as the field's get_metric_statistics."""
    v = _np(values, "values").reshape(-1)
    if v.size == 0:
        raise ValueError("mean_and_ci95 of no values")
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(v.size))


# ----------------------------------------------------------------------------- feet
def foot_skating_ratio(joints, fps: float = FPS, height: float = 0.05, speed: float = 0.5, window: int = 5) -> float:
    """The field's foot-skating ratio (GMD, Karunratanakul et al. 2023; used by OmniControl and others):
    the fraction of frame pairs in which either foot joint (10, 11) is below `height` m in both frames
    and slides horizontally faster than `speed` m/s, both in that pair and on average over `window`
    frames. joints (T, 22, 3), Y up, floor at y = 0."""

    j = _np(joints, "joints", 3)
    if j.shape[0] < 2 or j.shape[1:] != (22, 3):
        raise ValueError(f"joints must have shape (frames >= 2, 22, 3), got {j.shape}")
    feet = j[:, [10, 11]]
    v = np.linalg.norm(np.diff(feet[..., [0, 2]], axis=0), axis=-1) * fps            # (T-1, 2)
    v_avg = uniform_filter1d(v, size=window, axis=0, mode="constant")
    low = (feet[:-1, :, 1] < height) & (feet[1:, :, 1] < height)
    return float((low & (v > speed) & (v_avg > speed)).any(axis=1).mean())


def floor_penetration(joints, joints_idx=(7, 8, 10, 11)) -> dict:
    """How far the foot joints (ankles, feet) go below the floor y = 0: mean over frames of the lowest
    one's depth (m, 0 when above), the worst frame's depth, and the fraction of frames deeper than 1 cm."""
    j = _np(joints, "joints", 3)
    depth = np.maximum(0.0, -j[:, list(joints_idx), 1].min(axis=1))
    return {"mean": float(depth.mean()), "max": float(depth.max()), "frames_over_1cm": float((depth > 0.01).mean())}


def foot_metrics(joints_list, fps: float = FPS, prefix: str = "") -> dict:
    """Foot metrics of motions as the exports show them, averaged over the motions (T, 22, 3) each:
    the skating ratio after grounding by foot contacts (representation.feet.ground), after the offline
    clean-up (clean_feet) and after the causal one a stream uses (FootCleaner, on the joints as
    recovered), and the floor penetration (m) of the joints as recovered, against the format's floor
    y = 0 (after grounding it is 0 by construction)."""

    skate, clean, causal, depth = [], [], [], []
    for j in joints_list:
        j = _np(j, "joints", 3)
        if len(j) < 2:
            continue
        grounded, _ = ground(j, fps)
        skate.append(foot_skating_ratio(grounded, fps))
        clean.append(foot_skating_ratio(clean_feet(grounded, fps)[0], fps))
        causal.append(foot_skating_ratio(FootCleaner(fps)(j), fps))
        depth.append(floor_penetration(j)["mean"])
    if not skate:
        raise ValueError("foot_metrics needs at least one motion of 2 frames or more")
    return {f"{prefix}foot_skating": float(np.mean(skate)), f"{prefix}foot_skating_clean": float(np.mean(clean)),
            f"{prefix}foot_skating_causal": float(np.mean(causal)),
            f"{prefix}floor_penetration_mm": float(np.mean(depth) * 1000)}
