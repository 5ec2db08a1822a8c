"""Evaluator training: the TMR losses against direct re-derivations, bit-exact resume, and a short
training on synthetic motion that ranks real (caption, motion) pairs far above chance."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionstreamer.eval import metrics as M
from motionstreamer.models.evaluator import EvaluatorConfig, TMREvaluator
from motionstreamer.train.evaluator import (
    EpochSampler,
    EvaluatorTrainConfig,
    infonce_loss,
    tmr_losses,
    train_evaluator,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from motionstreamer.cli import main
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--out", str(out), "--clips", "200", "--seed", "0"]) == 0
    return out


# ----------------------------------------------------------------------------- losses
def _original_infonce(f_motion, f_text, dist, t):
    """Evaluator_272/mld/models/losses/infonce.py, transcribed."""
    logits = torch.mm(F.normalize(f_motion, dim=1), F.normalize(f_text, dim=1).T)
    if dist is not None:
        mask = torch.where(torch.logical_and(dist > 0.85, dist < 1.0 - 1e-100), torch.tensor(float("-inf")),
                           torch.tensor(1.0e100))
        mask.diagonal().fill_(float("inf"))
        logits = torch.min(mask, logits)
    labels = torch.arange(f_motion.shape[0])
    return (F.cross_entropy(logits / t, labels) + F.cross_entropy(logits.T / t, labels)) / 2


def test_infonce_matches_the_original_with_and_without_filter():
    g = torch.Generator().manual_seed(0)
    fm, ft = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    torch.testing.assert_close(infonce_loss(fm, ft, None, 0.1), _original_infonce(fm, ft, None, 0.1))
    sim = torch.rand(8, 8, generator=g) * 0.8
    sim = (sim + sim.T) / 2
    sim[0, 3] = sim[3, 0] = 0.9          # near duplicates: not negatives of each other
    sim[2, 5] = sim[5, 2] = 0.95
    sim.fill_diagonal_(1.0)
    torch.testing.assert_close(infonce_loss(fm, ft, sim, 0.1), _original_infonce(fm, ft, sim, 0.1))
    assert not torch.allclose(infonce_loss(fm, ft, sim, 0.1), infonce_loss(fm, ft, None, 0.1))
    # identical captions (similarity exactly 1) are filtered too; the original's `< 1.0` test leaves
    # them in (so its result equals ours only when that pair is just below 1)
    sim_same, sim_near = sim.clone(), sim.clone()
    sim_same[1, 6] = sim_same[6, 1] = 1.0
    sim_near[1, 6] = sim_near[6, 1] = 0.999
    torch.testing.assert_close(infonce_loss(fm, ft, sim_same, 0.1), _original_infonce(fm, ft, sim_near, 0.1))


def test_tmr_losses_vs_closed_forms():
    g = torch.Generator().manual_seed(1)
    B, T, D = 4, 6, 272
    out = {"mu_text": torch.randn(B, 8, generator=g), "std_text": torch.rand(B, 8, generator=g) + 0.5,
           "mu_motion": torch.randn(B, 8, generator=g), "std_motion": torch.rand(B, 8, generator=g) + 0.5,
           "lat_text": torch.randn(B, 8, generator=g), "lat_motion": torch.randn(B, 8, generator=g),
           "feat_text": torch.randn(B, T, D, generator=g), "feat_motion": torch.randn(B, T, D, generator=g)}
    ref = torch.randn(B, T, D, generator=g)
    config = EvaluatorTrainConfig()
    total, terms = tmr_losses(out, ref, None, config)

    def kl(m1, s1, m2, s2):   # KL(N(m1, s1) || N(m2, s2)), elementwise mean
        return (torch.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5).mean()

    def smooth_l1(a, b):
        d = (a - b).abs()
        return torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()

    mt, st, mm, sm = out["mu_text"], out["std_text"], out["mu_motion"], out["std_motion"]
    one, zero = torch.ones_like(st), torch.zeros_like(mt)
    expect = {"recons_motion": smooth_l1(out["feat_motion"], ref), "recons_text": smooth_l1(out["feat_text"], ref),
              "kl_text2motion": kl(mt, st, mm, sm), "kl_motion2text": kl(mm, sm, mt, st),
              "kl_text": kl(mt, st, zero, one), "kl_motion": kl(mm, sm, zero, one),
              "latent": smooth_l1(out["lat_text"], out["lat_motion"]),
              "infonce": _original_infonce(mm, mt, None, 0.1)}
    for k, v in expect.items():
        assert terms[k] == pytest.approx(float(v), rel=1e-5), k
    weighted = (expect["recons_motion"] + expect["recons_text"]
                + 1e-5 * (expect["kl_text2motion"] + expect["kl_motion2text"] + expect["kl_text"] + expect["kl_motion"])
                + 1e-5 * expect["latent"] + 0.1 * expect["infonce"])
    assert float(total) == pytest.approx(float(weighted), rel=1e-5)


def test_epoch_sampler_covers_each_epoch_and_resumes():
    s = EpochSampler(10, 4, seed=3)
    first = [s.indices(4) for _ in range(3)]          # ceil(10 / 4) = 3 steps per epoch
    assert sorted(np.concatenate(first)[:10].tolist()) == list(range(10))
    again = EpochSampler(10, 4, seed=3, start_step=2)
    np.testing.assert_array_equal(again.indices(4), first[2])
    # two ranks split the global batch
    a, b = EpochSampler(10, 4, 3).indices(2, rank=0), EpochSampler(10, 4, 3).indices(2, rank=1)
    np.testing.assert_array_equal(np.concatenate([a, b]), first[0])


def test_config_checks():
    with pytest.raises(ValueError, match="epochs"):
        EvaluatorTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="cache_dtype"):
        EvaluatorTrainConfig(cache_dtype="int8")
    with pytest.raises(ValueError, match="unknown"):
        EvaluatorTrainConfig().updated({"lamda_kl": 1})


# ----------------------------------------------------------------------------- training
def _cfg(out, **kw):
    base = dict(out_dir=str(out), batch_size=8, epochs=1, save_every=3, progress=False, tensorboard=False,
                log_every=1, max_frames=64, filter_model="none")
    base.update(kw)
    return EvaluatorTrainConfig(**base)


def test_resume_is_bit_exact(tmp_path, synth):
    from motionstreamer.data.humanml3d import HumanML3D272Dataset
    ds = HumanML3D272Dataset(synth, "val", max_frames=64, too_long="crop", captions="all")
    mc = EvaluatorConfig.small("tiny-distilbert")
    full, res = train_evaluator(synth, _cfg(tmp_path / "a"), mc, dataset=ds)
    steps = res.step
    assert steps == math.ceil(len(ds) / 8) and steps > 4
    part, res_b = train_evaluator(synth, _cfg(tmp_path / "b"), mc, dataset=ds, stop_after=4)
    assert res_b.step == 4
    done, res_c = train_evaluator(synth, _cfg(tmp_path / "b"), dataset=ds, resume=tmp_path / "b" / "checkpoint_last.pt")
    assert res_c.step == steps
    for (k, v), (k2, v2) in zip(full.state_dict().items(), done.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # files: resumable state, the model export, logs
    for f in ("checkpoint_last.pt", "config.json", "log.jsonl", "evaluator/evaluator.safetensors",
              "evaluator/config.json"):
        assert (tmp_path / "b" / f).is_file(), f
    meta = json.loads((tmp_path / "b" / "evaluator" / "config.json").read_text())
    assert meta["trained_steps"] == steps and meta["evaluator"]["text_backbone"] == "tiny-distilbert"
    reloaded = TMREvaluator.load(tmp_path / "b" / "evaluator")
    x = torch.randn(2, 12, 272)
    torch.testing.assert_close(reloaded.encode_motion(x, [12, 8]), done.encode_motion(x, [12, 8]))


def test_training_on_synthetic_motion_ranks_real_pairs_far_above_chance(tmp_path, synth):
    """~60 steps (lr 1e-3) of the small evaluator (MiniLM backbone, 64-frame clips) on 200 synthetic clips."""
    from motionstreamer.eval.protocols import EvalSet, evaluate_gt
    config = _cfg(tmp_path / "run", batch_size=32, epochs=3, lr=1e-3, save_every=10_000, filter_model="minilm",
               log_every=20)
    ev, res = train_evaluator(synth, config, EvaluatorConfig.small("minilm"))
    losses = [v for _, v in res.losses]
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    # R-precision of the real pairs of the training clips (reference draw, batches of 32)
    train = EvalSet.load(synth, "train", max_frames=300)
    r = evaluate_gt(ev, train, repeats=2, batch=32, seed=0).summary()
    r3 = r["r_precision_top3"]["mean"]
    print(f"\nsynthetic evaluator after {res.step} steps: R@1/2/3 {r['r_precision_top1']['mean']:.3f}/"
          f"{r['r_precision_top2']['mean']:.3f}/{r3:.3f}, gt FID {r['fid']['mean']:.4f}, "
          f"MM-Dist {r['matching_score']['mean']:.3f}, diversity {r['diversity']['mean']:.3f}")
    assert r3 > 0.4                     # chance: 3/32 = 0.094
    assert r["r_precision_top1"]["mean"] > 2 / 32
    # real vs real FID is small next to the spread of the embeddings (diversity^2 ~ 2 tr(cov))
    assert r["fid"]["mean"] < 0.05 * r["diversity"]["mean"] ** 2
    # held-out clips and captions (test split), 16 at a time: chance 3/16
    from motionstreamer.data.humanml3d import HumanML3D272Dataset, collate
    test = HumanML3D272Dataset(synth, "test", captions="all")
    b = collate([test[i] for i in range(len(test))])
    order = np.random.default_rng(0).permutation(len(test))
    r_test = M.r_precision(ev.encode_text(b["caption"]).numpy()[order],
                           ev.encode_motion(b["motion"], b["length"]).numpy()[order], batch=16)
    print(f"held-out test captions (batches of 16): R@1/2/3 {r_test[0]:.3f}/{r_test[1]:.3f}/{r_test[2]:.3f}")
    assert r_test[2] > 1.5 * 3 / 16
