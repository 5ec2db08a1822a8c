"""Group-averaged Mean/Std (spec §5) and normalise/de-normalise."""
import warnings

import numpy as np
import pytest
import torch

from motionstreamer.representation import FEATURE_GROUPS, compute_mean_std, denormalize, normalize


def test_groups_cover_the_layout():
    assert FEATURE_GROUPS == ((0, 2), (2, 8), (8, 74), (74, 140), (140, 272))


def test_group_averaging_by_hand():
    # Clip a: dim d takes values {0, 2d'} where d' = d % 4 -> per-dim std = d' (population std of {0, 2d'}).
    d = np.arange(272) % 4
    a = np.stack([np.zeros(272), 2.0 * d])
    b = np.stack([np.zeros(272), 2.0 * d])      # a second clip with the same two rows
    mean, std = compute_mean_std([a, b])
    np.testing.assert_allclose(mean, d, atol=1e-12)
    per_dim = d.astype(float)
    # group means of (d % 4): [0:2] -> (0+1)/2, [2:8] -> (2+3+0+1+2+3)/6, others average 1.5
    expect = {(0, 2): 0.5, (2, 8): 11 / 6, (8, 74): per_dim[8:74].mean(), (74, 140): per_dim[74:140].mean(),
              (140, 272): 1.5}
    for (lo, hi), v in expect.items():
        np.testing.assert_allclose(std[lo:hi], v, atol=1e-12)
    assert std.dtype == np.float64 and std.shape == (272,)


def test_equals_concatenated_reference_and_skips_nan_files(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.normal(loc=rng.normal(size=272), scale=rng.uniform(0.1, 3, 272), size=(n, 272))
             for n in (5, 17, 1, 40)]
    bad = clips[1].copy()
    bad[3, 100] = np.nan
    paths = []
    for i, c in enumerate(clips[:2] + [bad] + clips[2:]):
        paths.append(tmp_path / f"{i:03d}.npy")
        np.save(paths[-1], c)
    with pytest.warns(UserWarning, match=r"skipping .*002\.npy"):
        mean, std = compute_mean_std(paths)
    data = np.concatenate(clips)
    ref_std = data.std(axis=0)
    for lo, hi in FEATURE_GROUPS:
        ref_std[lo:hi] = ref_std[lo:hi].mean()
    np.testing.assert_allclose(mean, data.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, ref_std, atol=1e-12)
    # the same through names, (name, array) pairs and torch tensors
    with pytest.warns(UserWarning, match="skipping clip-b"):
        m2, s2 = compute_mean_std([clips[0], bad, clips[1]], names=["clip-a", "clip-b", "clip-c"])
    with pytest.warns(UserWarning, match="skipping oops"):
        m3, s3 = compute_mean_std([("ok", torch.from_numpy(clips[0])), ("oops", bad), ("ok2", clips[1])])
    np.testing.assert_allclose(m2, m3, atol=0)
    np.testing.assert_allclose(s2, s3, atol=0)


def test_compute_mean_std_errors(tmp_path):
    with pytest.raises(ValueError, match=r"clip #1: expected \(T, 272\) features, got shape \(3, 263\)"):
        compute_mean_std([np.zeros((3, 272)), np.zeros((3, 263))])
    with pytest.raises(ValueError, match="no valid frames"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_mean_std([np.full((2, 272), np.nan)])
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="cannot read .*junk.npy"):
        compute_mean_std([tmp_path / "junk.npy"])


def test_normalize_round_trip_numpy_and_torch():
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=272), rng.uniform(0.1, 2, 272)
    x = rng.normal(size=(2, 7, 272)).astype(np.float32)
    n = normalize(x, mean, std)
    assert n.dtype == np.float32
    np.testing.assert_allclose(n, (x - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(denormalize(n, mean, std), x, atol=1e-5)
    xt = torch.from_numpy(x)
    nt = normalize(xt, mean, std)
    assert isinstance(nt, torch.Tensor) and nt.dtype == torch.float32
    np.testing.assert_allclose(nt.numpy(), n, atol=1e-6)
    nt2 = normalize(xt, torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(nt2.numpy(), n, atol=1e-6)
    np.testing.assert_allclose(denormalize(nt, mean, std).numpy(), x, atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: normalize(np.zeros((3, 263)), np.zeros(272), np.ones(272)),
     r"normalize: x must have shape \(\.\.\., 272\)"),
    (lambda: normalize(np.zeros((3, 272)), np.zeros(263), np.ones(272)), r"normalize: mean must have shape \(272,\)"),
    (lambda: denormalize(np.zeros((3, 272)), np.zeros(272), np.ones((2, 272))), r"denormalize: std must have shape"),
])
def test_shape_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
