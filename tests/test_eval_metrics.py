"""Metrics against closed forms and direct re-derivations (numpy only, fast)."""
import numpy as np
import pytest
import torch

from motionstreamer.eval import metrics as M


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(M.fid(x, x)) < 1e-8
    assert abs(M.fid(torch.from_numpy(x), x)) < 1e-8       # tensors accepted


def test_fid_of_gaussians_matches_the_closed_form():
    # N(0, I) vs N(m, 4I) in d dims: ||m||^2 + tr(I + 4I - 2*sqrt(4I)) = ||m||^2 + d (1 + 4 - 4) = ||m||^2 + d
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    m = np.array([1.0, -2.0, 0.5, 0.0])
    a = rng.normal(size=(n, d))
    b = m + 2.0 * rng.normal(size=(n, d))
    expected = float(m @ m) + d
    assert M.fid(a, b) == pytest.approx(expected, rel=0.02)
    # and the Frechet distance itself on exact statistics
    assert M.frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_general_covariances_vs_eigendecomposition():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = A @ A.T + np.eye(5), B @ B.T + np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (the eigenvalues are real and positive)
    tr = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        M.fid(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2 dims"):
        M.fid(np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="differ in length"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_r_precision_perfect_pairing_is_one():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(64, 16))
    np.testing.assert_allclose(M.r_precision(m + 1e-3 * rng.normal(size=m.shape), m), [1, 1, 1])


def test_r_precision_random_pairing_is_chance():
    rng = np.random.default_rng(4)
    n = 32 * 400
    r = M.r_precision(rng.normal(size=(n, 8)), rng.normal(size=(n, 8)), batch=32, top_k=3)
    np.testing.assert_allclose(r, [1 / 32, 2 / 32, 3 / 32], atol=0.008)


def test_r_precision_counts_vs_direct_ranking_and_partial_batches():
    rng = np.random.default_rng(5)
    t, m = rng.normal(size=(70, 6)), rng.normal(size=(70, 6))
    hits = np.zeros(3)
    for s in (0, 32):    # the trailing 6 rows are dropped
        d = np.linalg.norm(t[s:s + 32, None] - m[None, s:s + 32], axis=-1)
        rank = (d < np.diag(d)[:, None]).sum(1)          # motions closer than the own one
        hits += [(rank < k).sum() for k in (1, 2, 3)]
    np.testing.assert_allclose(M.r_precision(t, m, batch=32), hits / 64)
    with pytest.raises(ValueError, match="full batch"):
        M.r_precision(t[:10], m[:10], batch=32)
    with pytest.raises(ValueError, match="pair up"):
        M.r_precision(t, m[:5])


def test_matching_score_and_euclidean_matrix_vs_numpy():
    rng = np.random.default_rng(6)
    t, m = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    assert M.matching_score(t, m) == pytest.approx(np.mean([np.linalg.norm(a - b) for a, b in zip(t, m)]), rel=1e-12)
    d = M.euclidean_distance_matrix(t, m)
    np.testing.assert_allclose(d, np.linalg.norm(t[:, None] - m[None], axis=-1), atol=1e-10)
    np.testing.assert_allclose(np.diag(d).mean(), M.matching_score(t, m), rtol=1e-9)


def test_diversity_vs_direct_computation():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(500, 12))
    got = M.diversity(x, n_pairs=300, seed=11)
    g = np.random.default_rng(11)
    i, j = g.choice(500, 300, replace=False), g.choice(500, 300, replace=False)
    assert got == pytest.approx(np.mean(np.linalg.norm(x[i] - x[j], axis=1)), rel=1e-12)
    # two unit Gaussians in 12 dims: E|x - y| ~ sqrt(2 * 12)
    assert got == pytest.approx(np.sqrt(24), rel=0.05)
    with pytest.raises(ValueError, match="more than 300"):
        M.diversity(x[:300], 300)


def test_multimodality_vs_direct_computation():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 30, 4))
    got = M.multimodality(x, n_pairs=10, seed=3)
    g = np.random.default_rng(3)
    i, j = g.choice(30, 10, replace=False), g.choice(30, 10, replace=False)
    assert got == pytest.approx(np.linalg.norm(x[:, i] - x[:, j], axis=2).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="repeats"):
        M.multimodality(x[:, :10], 10)


def test_mpjpe_pelvis_aligned():
    rng = np.random.default_rng(9)
    gt = rng.normal(size=(50, 22, 3))
    moved = gt + rng.normal(size=(50, 1, 3))              # a per-frame translation of the whole body
    assert M.mpjpe_mm(moved, gt) == pytest.approx(0.0, abs=1e-9)
    # a 2 cm offset of every joint but the pelvis: 21/22 joints wrong by 20 mm
    off = gt.copy()
    off[:, 1:, 0] += 0.02
    assert M.mpjpe_mm(off, gt) == pytest.approx(20.0 * 21 / 22, rel=1e-9)
    # per-frame values averaged over frames, frame-weighted
    assert M.mpjpe_per_frame(off, gt).shape == (50,)
    with pytest.raises(ValueError, match="equal shapes"):
        M.mpjpe_mm(gt[:10], gt)


def test_jerk_of_a_cubic_motion():
    # x(t) = c t^3 per joint coordinate: the third finite difference is exactly 6c per frame
    T, J = 40, 22
    t = np.arange(T, dtype=np.float64)
    c = np.linspace(0.001, 0.002, J)                       # joint j moves along x with c_j, along z with -2 c_j
    joints = np.zeros((2, T, J, 3))
    joints[..., 0] = c[None, None, :] * t[None, :, None] ** 3
    joints[..., 2] = -2 * c[None, None, :] * t[None, :, None] ** 3
    curve = M.jerk_curve(joints)
    assert curve.shape == (2, T - 3)
    np.testing.assert_allclose(curve, 6 * c.max() * 3, rtol=1e-9)        # L1 over xyz (1 + 2), max over joints
    # lengths zero the tail of a row
    cut = M.jerk_curve(joints, lengths=[T, 20])
    assert np.all(cut[1, 17:] == 0) and np.allclose(cut[1, :17], 18 * c.max())
    assert M.mean_jerk(joints, lengths=[T, 20]) == pytest.approx(18 * c.max())
    # PJ / AUJ: a constant curve of 18c against a reference of 10c
    res = M.transition_jerk(joints, gt_jerk=10 * c.max())
    assert res["peak_jerk"] == pytest.approx(18 * c.max())
    assert res["auj"] == pytest.approx(8 * c.max() * (T - 3))


def test_transition_windows():
    x = np.arange(100)[:, None] * np.ones((1, 3))
    w = M.transition_windows(x, [50, 10, 95], length=60)
    assert w.shape == (1, 60, 3)                            # 10 and 95 do not fit
    assert w[0, 0, 0] == 20 and w[0, 30, 0] == 50 and w[0, -1, 0] == 79


def test_mean_and_ci95_known_sample():
    v = [1.0, 2.0, 3.0, 4.0]
    mean, ci = M.mean_and_ci95(v)
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * np.sqrt(1.25) / 2)     # population std (ddof 0) as the field
    assert M.mean_and_ci95([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        M.mean_and_ci95([])
