"""`motionstreamer evaluate gt|tae|t2m|stream` and `train-evaluator`: tables, JSON files, protocol
behaviour with known inputs, and argument errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from fakes import randomize_head

from motionstreamer.cli import main
from motionstreamer.eval import protocols as P
from motionstreamer.models.evaluator import EvaluatorConfig, TMREvaluator


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--out", str(out), "--clips", "48", "--seed", "1", "--stream-pairs", "24"]) == 0
    return out


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory):
    torch.manual_seed(0)
    ev = TMREvaluator(EvaluatorConfig.small("tiny-distilbert")).eval()
    d = tmp_path_factory.mktemp("ev") / "evaluator"
    ev.save(d)
    return d


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, data):
    """A small random model bundle (MiniLM text encoder, offline); the diffusion head has random weights,
    so the generated motions depend on the captions (a fresh head's samples depend on the noise only)."""
    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.data.humanml3d import load_mean_std
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
    torch.manual_seed(0)
    mean, std = load_mean_std(data / "mean_std")
    d = tmp_path_factory.mktemp("bundle") / "model"
    save_bundle(d, CausalHumanTAE(TAEConfig.small()), randomize_head(TextToMotionModel(T2MConfig.small())), mean, std,
                np.full(16, 100.0, np.float32), text_encoder="minilm")
    return d


def _run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().out


# ----------------------------------------------------------------------------- protocols with known answers
def test_draw_follows_the_reference_loader(data):
    es = P.EvalSet.load(data, "train")
    batches = es.draw(np.random.default_rng(0), batch=8)
    assert len(batches) == len(es) // 8
    lengths = torch.cat([b["lengths"] for b in batches])
    assert torch.all(lengths % 4 == 0) and torch.all(lengths >= 56)
    for b in batches:
        assert b["motion"].shape[0] == 8 and len(b["captions"]) == 8
        assert torch.all(b["motion"][torch.arange(b["motion"].shape[1])[None, :] >= b["lengths"][:, None]] == 0)
    # a crop is a window of the entry's motion (random offset), normalised as the entry
    flat = {(b["captions"][i], int(b["lengths"][i])): b["motion"][i, :int(b["lengths"][i])]
            for b in batches for i in range(8)}
    (cap, n), crop = next(iter(flat.items()))
    e = next(i for i, caps in enumerate(es.captions) if cap in caps and any(
        np.allclose(es.motions[i][o:o + n], crop.numpy()) for o in range(len(es.motions[i]) - n + 1)))
    assert len(es.motions[e]) - n in (len(es.motions[e]) % 4, len(es.motions[e]) % 4 + 4)
    # whole-clip TAE loader: every clip of the split in [60, 300) frames, no captions
    tae_set = P.EvalSet.load(data, "train", text=False)
    assert tae_set.captions[0] is None and tae_set.draw(np.random.default_rng(0), 8)[0]["captions"] is None


def test_tae_protocol_identity_and_offset(data, evaluator_dir):
    ev = TMREvaluator.load(evaluator_dir)
    es = P.EvalSet.load(data, "train", text=False)

    class Identity(torch.nn.Module):
        def __init__(self, shift=0.0):
            super().__init__()
            self.p, self.shift = torch.nn.Parameter(torch.zeros(1)), shift

        def encode(self, x, sample=True, generator=None):
            return x, x, x

        def decode(self, z):
            return z + self.shift

    r = P.evaluate_tae(ev, Identity(), es, batch=8).summary()
    assert r["mpjpe_mm"]["mean"] == pytest.approx(0, abs=1e-6) and abs(r["fid"]["mean"]) < 1e-6
    # shifting the normalised pelvis height (dim 9) moves only... nothing after pelvis alignment;
    # shifting a joint's local y (dim 8 + 3*5 + 1) by d std moves joint 5 by d * std metres in every frame
    shift = torch.zeros(272)
    shift[8 + 3 * 5 + 1] = 0.5
    r = P.evaluate_tae(ev, Identity(shift), es, batch=8).summary()
    expected = 0.5 * float(es.std[8 + 3 * 5 + 1]) / 22 * 1000
    assert r["mpjpe_mm"]["mean"] == pytest.approx(expected, rel=1e-4)
    assert r["fid"]["mean"] > 0


def test_t2m_protocol_with_a_perfect_and_a_constant_generator(data, evaluator_dir):
    ev = TMREvaluator.load(evaluator_dir)
    es = P.EvalSet.load(data, "train")
    # (caption, length) -> one motion
    es.captions = [[f"{c} #{i}" for c in caps] for i, caps in enumerate(es.captions)]
    lookup = {}

    def perfect(captions, lengths, seed):      # returns the real motion of each caption (de-normalised)
        return [lookup[(c, n)] for c, n in zip(captions, lengths)]

    for b in es.draw(np.random.default_rng([0, 0]), 8):     # the protocol's first repeat draws exactly this
        for i in range(8):
            n = int(b["lengths"][i])
            lookup[(b["captions"][i], n)] = b["motion"][i, :n].numpy() * es.std + es.mean
    r = P.evaluate_t2m(ev, es, perfect, batch=8, seed=0, mm_captions=4, mm_repeats=11).summary()
    assert abs(r["fid"]["mean"]) < 1e-4
    assert r["multimodality"]["mean"] == pytest.approx(0, abs=1e-6)      # the same motion every time

    def noisy(captions, lengths, seed):
        g = np.random.default_rng(seed)
        return [m + 0.1 * es.std * g.normal(size=m.shape) for m in perfect(captions, lengths, seed)]
    assert P.evaluate_t2m(ev, es, noisy, batch=8, seed=0, mm_captions=4,
                          mm_repeats=11).summary()["multimodality"]["mean"] > 0
    for k in ("r_precision_top1", "r_precision_top3", "matching_score"):
        assert r[k]["mean"] == pytest.approx(r["real_" + k]["mean"], abs=1e-5)

    def constant(captions, lengths, seed):
        return [np.tile(es.mean, (n, 1)) for n in lengths]
    r = P.evaluate_t2m(ev, es, constant, batch=8, seed=0).summary()
    assert r["fid"]["mean"] > 1e-3
    with pytest.raises(ValueError, match="returned 1 motions for 8"):
        P.evaluate_t2m(ev, es, lambda c, n, s: [np.zeros((4, 272))], batch=8)
    with pytest.raises(ValueError, match="expected \\(frames, 272\\)"):
        P.evaluate_t2m(ev, es, lambda c, n, s: [np.zeros((4, 263))] * len(c), batch=8)


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 8, 32):
        for _ in range(20):
            perm = P.derangement(n, rng)
            assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(ValueError, match="at least 2"):
        P.derangement(1, rng)


def test_t2m_random_text_baseline_keeps_the_motions_and_breaks_the_pairing(data, evaluator_dir):
    """A generator that returns each caption's real motion: with shuffle_text the generated set is the
    real set permuted within batches (FID ~0), but each motion is scored against another caption."""
    ev = TMREvaluator.load(evaluator_dir)
    es = P.EvalSet.load(data, "train")
    es.captions = [[f"{c} #{i}" for c in caps] for i, caps in enumerate(es.captions)]
    by_caption = {}
    for b in es.draw(np.random.default_rng([0, 0]), 8):
        for i in range(8):
            n = int(b["lengths"][i])
            by_caption[b["captions"][i]] = b["motion"][i, :n].numpy() * es.std + es.mean

    asked = []

    def real_of(captions, lengths, seed):
        asked.append(list(captions))
        return [by_caption[c] for c in captions]
    paired = P.evaluate_t2m(ev, es, real_of, batch=8, seed=0).summary()
    own = [list(b["captions"]) for b in es.draw(np.random.default_rng([0, 0]), 8)]
    assert asked == own
    asked.clear()
    shuffled = P.evaluate_t2m(ev, es, real_of, batch=8, seed=0, shuffle_text=True)
    assert shuffled.info["shuffle_text"] is True
    for got, mine in zip(asked, own, strict=True):      # each slot generated from another caption of its batch
        assert sorted(got) == sorted(mine) and all(g != m for g, m in zip(got, mine))
    s = shuffled.summary()
    assert abs(s["fid"]["mean"]) < 1e-4                  # the same motions, permuted
    assert s["matching_score"]["mean"] != pytest.approx(paired["matching_score"]["mean"], abs=1e-6)


# ----------------------------------------------------------------------------- CLI
def test_evaluate_gt_prints_a_table_and_writes_json(capsys, tmp_path, data, evaluator_dir):
    out = tmp_path / "res" / "gt.json"
    code, text = _run(capsys, ["evaluate", "gt", "--data", str(data), "--split", "train", "--evaluator",
                               str(evaluator_dir), "--repeats", "3", "--batch", "8", "--out", str(out), "--quiet"])
    assert code == 0
    for label in ("FID", "R@1", "R@2", "R@3", "MM-Dist", "mean ± 95% CI", "Foot skating ratio",
                  "Foot skating (--clean-feet)", "Floor penetration (mm)"):
        assert label in text
    res = json.loads(out.read_text())
    assert res["protocol"] == "gt" and res["info"]["batch"] == 8
    assert (0 <= res["metrics"]["foot_skating_clean"]["mean"] <= 1
            and res["metrics"]["floor_penetration_mm"]["mean"] >= 0)
    fid = res["metrics"]["fid"]
    assert len(fid["values"]) == 3
    assert fid["mean"] == pytest.approx(np.mean(fid["values"]))
    assert fid["ci95"] == pytest.approx(1.96 * np.std(fid["values"]) / np.sqrt(3))
    assert 0 <= res["metrics"]["r_precision_top1"]["mean"] <= res["metrics"]["r_precision_top3"]["mean"] <= 1
    assert not list(out.parent.glob(".*.tmp*"))            # atomic write left no temporary file


def test_evaluate_tae_and_t2m_with_a_bundle(capsys, tmp_path, data, evaluator_dir, bundle_dir):
    code, text = _run(capsys, ["evaluate", "tae", "--data", str(data), "--split", "train", "--evaluator",
                               str(evaluator_dir), "--tae", str(bundle_dir), "--batch", "8",
                               "--out", str(tmp_path / "tae.json"), "--quiet"])
    assert code == 0 and "MPJPE (mm)" in text
    assert json.loads((tmp_path / "tae.json").read_text())["metrics"]["mpjpe_mm"]["mean"] > 0
    code, text = _run(capsys, ["evaluate", "t2m", "--data", str(data), "--split", "val", "--evaluator",
                               str(evaluator_dir), "--checkpoint", str(bundle_dir), "--batch", "4", "--sampling-steps",
                               "2", "--out", str(tmp_path / "t2m.json"), "--quiet"])
    assert code == 0 and "Real R@3" in text
    res = json.loads((tmp_path / "t2m.json").read_text())
    assert {"fid", "r_precision_top3", "matching_score", "real_r_precision_top3", "foot_skating",
            "foot_skating_clean", "floor_penetration_mm"} <= set(res["metrics"])


def test_evaluate_t2m_with_an_onnx_export_equals_the_bundle(capsys, tmp_path, data, evaluator_dir, bundle_dir):
    # the same models and noise through onnxruntime give the same metrics (fp32 export parity ~1e-5)
    pytest.importorskip("onnxruntime")
    from motionstreamer.checkpoints import load_bundle
    from motionstreamer.export.onnx_export import export_bundle
    export_bundle(load_bundle(bundle_dir), tmp_path / "onnx", variants=[("ddpm", 2)])
    common = ["evaluate", "t2m", "--data", str(data), "--split", "val", "--evaluator", str(evaluator_dir),
              "--batch", "4", "--sampling-steps", "2", "--quiet", "--device", "cpu"]
    res = {}
    for name, source in [("torch", ["--checkpoint", str(bundle_dir), "--dtype", "fp32"]),
                         ("onnx", ["--onnx", str(tmp_path / "onnx")])]:
        code, text = _run(capsys, common + source + ["--out", str(tmp_path / f"{name}.json")])
        assert code == 0
        res[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "onnxruntime, fp32" in res["onnx"]["info"]["model"]
    for k in ("fid", "matching_score", "r_precision_top3"):
        a, b = res["torch"]["metrics"][k]["mean"], res["onnx"]["metrics"][k]["mean"]
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (k, a, b)
    code, _ = _run(capsys, ["evaluate", "stream", "--stream-data", str(data / "babel_stream"), "--split", "train",
                            "--mean-std", str(data / "mean_std"), "--evaluator", str(evaluator_dir), "--onnx",
                            str(tmp_path / "onnx"), "--batch", "8", "--sampling-steps", "2", "--transition-length",
                            "30", "--out", str(tmp_path / "s.json"), "--quiet", "--device", "cpu"])
    assert code == 0 and "transition_fid" in json.loads((tmp_path / "s.json").read_text())["metrics"]
    # --onnx takes the models from the export
    with pytest.raises(SystemExit):
        main(common + ["--onnx", str(tmp_path / "onnx"), "--checkpoint", str(bundle_dir)])
    assert "leave out --checkpoint" in capsys.readouterr().err


def test_evaluate_stream_with_a_bundle(capsys, tmp_path, data, evaluator_dir, bundle_dir):
    code, text = _run(capsys, ["evaluate", "stream", "--stream-data", str(data / "babel_stream"), "--split", "train",
                               "--mean-std", str(data / "mean_std"), "--evaluator", str(evaluator_dir),
                               "--checkpoint", str(bundle_dir), "--batch", "8", "--sampling-steps", "2",
                               "--transition-length", "30", "--out", str(tmp_path / "s.json"), "--quiet"])
    assert code == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert {"fid", "transition_fid", "peak_jerk", "auj", "real_peak_jerk"} <= set(res["metrics"])
    assert res["info"]["transitions_per_repeat"] >= 8 and res["info"]["gt_jerk"] > 0
    assert "Peak Jerk" in text and "Transition FID" in text


def test_stream_protocol_with_the_real_motion_as_generation(data, evaluator_dir):
    """Returning the ground truth: segment and transition FID ~0 and PJ/AUJ equal the real ones."""
    from motionstreamer.data.humanml3d import load_mean_std
    ev = TMREvaluator.load(evaluator_dir)
    mean, std = load_mean_std(data / "mean_std")
    cases = P.load_stream_cases(data / "babel_stream", "train", mean=mean, std=std)
    for i, c in enumerate(cases):                       # prompts -> one case
        c.prompts = [f"{p} #{i}" for p in c.prompts]
    by_prompts = {tuple(c.prompts): c for c in cases}

    def real(prompt_lists, length_lists, seed):
        out = []
        for p in prompt_lists:
            c = by_prompts[tuple(p)]
            out.append((c.motion * std + mean, np.cumsum(c.lengths)[:-1].tolist()))
        return out

    r = P.evaluate_stream(ev, cases, real, mean, std, batch=8, transition_length=30).summary()
    assert abs(r["fid"]["mean"]) < 1e-4 and abs(r["transition_fid"]["mean"]) < 1e-4
    assert r["peak_jerk"]["mean"] == pytest.approx(r["real_peak_jerk"]["mean"], rel=1e-6)
    assert r["auj"]["mean"] == pytest.approx(r["real_auj"]["mean"], rel=1e-6)


def test_train_evaluator_cli_then_evaluate(capsys, tmp_path, data):
    out = tmp_path / "run"
    code, text = _run(capsys, ["train-evaluator", "--data", str(data), "--out", str(out), "--model-size", "small",
                               "--text-backbone", "tiny-distilbert", "--epochs", "1", "--batch-size", "16",
                               "--set", "max_frames=64", "--set", "filter_model=none", "--quiet", "--no-tensorboard"])
    assert code == 0 and "trained the evaluator" in text
    assert (out / "evaluator" / "evaluator.safetensors").is_file() and (out / "checkpoint_last.pt").is_file()
    code, text = _run(capsys, ["evaluate", "gt", "--data", str(data), "--split", "train", "--evaluator",
                               str(out / "evaluator"), "--batch", "8", "--out", str(tmp_path / "gt.json"), "--quiet"])
    assert code == 0 and "R@3" in text


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "gt", "--data", "{data}", "--evaluator", "{tmp}/nope"], "--evaluator .*nope: not found"),
    (["evaluate", "gt", "--data", "{data}", "--evaluator", "{ev}", "--repeats", "0"], "--repeats must be >= 1"),
    (["evaluate", "gt", "--data", "{tmp}/nodata", "--evaluator", "{ev}"], "split file not found|not found"),
    (["evaluate", "gt", "--data", "{data}", "--split", "test", "--evaluator", "{ev}"], "fewer than one batch of 32"),
    (["evaluate", "tae", "--data", "{data}", "--evaluator", "{ev}", "--tae", "{tmp}/none.pt"],
     "--tae: .*none.pt: not found"),
    (["evaluate", "t2m", "--data", "{data}", "--evaluator", "{ev}", "--mm-captions", "5", "--mm-repeats", "5"],
     "--mm-repeats must be > 10"),
    (["train-evaluator", "--data", "{data}", "--out", "{tmp}/x", "--set", "lamda=1"], "unknown config field"),
    (["train-evaluator", "--data", "{data}", "--out", "{tmp}/x", "--epochs", "0"], "--epochs must be >= 1"),
])
def test_argument_errors(capsys, tmp_path, data, evaluator_dir, argv, message):
    argv = [a.format(data=data, tmp=tmp_path, ev=evaluator_dir) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err), message


def test_generation_protocols_need_the_runtime(data, evaluator_dir):
    """A runtime that does not import (a broken install) is one clear error line naming it, no traceback."""
    code = ("import sys\nsys.modules['motionstreamer.runtime.engine'] = None   # import fails\n"
            "from motionstreamer.cli import main\n"
            f"main(['evaluate', 't2m', '--data', {str(data)!r}, '--split', 'train', '--evaluator', "
            f"{str(evaluator_dir)!r}, '--batch', '8'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("motionstreamer: error: `evaluate` cannot run") and "motionstreamer.runtime.engine" \
        in r.stderr


# ----------------------------------------------------------------------------- goals
def test_crop_goal_is_the_crops_end_seen_from_its_start():
    """A crop's goal from its 272 features against the generator's own pelvis positions and rotations.
    The crop's first row holds the step and turn from the frame before it (spec §2.2's cropping caveat),
    so the crop's world is that of the frame before it (frame 0 itself for a crop from the start)."""
    from motionstreamer.data import synth
    from motionstreamer.representation.features import joints_to_272

    clip = synth.generate_clip("walk_circle", np.random.default_rng(2), min_seconds=7.0, max_seconds=7.5)
    joints, rotations = clip.canonical()
    feats = joints_to_272(joints, rotations)
    for a, b in ((0, 120), (37, 181), (90, 210)):
        x, z, heading, seconds = P.crop_goal(feats[a:b], np.zeros(272), np.ones(272))
        r = max(a - 1, 0)
        d = joints[b - 1, 0, [0, 2]] - joints[r, 0, [0, 2]]
        f0, f1 = (rotations[k, 0] @ [0.0, 0.0, 1.0] for k in (r, b - 1))
        yaw0, yaw1 = np.arctan2(f0[0], f0[2]), np.arctan2(f1[0], f1[2])
        assert x == pytest.approx(d @ [np.cos(yaw0), -np.sin(yaw0)], abs=1e-4)
        assert z == pytest.approx(d @ [np.sin(yaw0), np.cos(yaw0)], abs=1e-4)
        assert abs(np.angle(np.exp(1j * (heading - (yaw1 - yaw0))))) < 1e-4
        assert seconds == (b - a) / 30
        assert np.hypot(x, z) > 1.0 and abs(heading) > 0.3          # a real displacement and turn to get wrong


def test_goals_protocol_with_a_perfect_and_a_wrong_generator(data, evaluator_dir):
    ev = TMREvaluator.load(evaluator_dir)
    es = P.EvalSet.load(data, "train")
    es.captions = [[f"{c} #{i}" for c in caps] for i, caps in enumerate(es.captions)]
    lookup = {}
    for b in es.draw(np.random.default_rng([0, 0]), 8):
        for i in range(8):
            n = int(b["lengths"][i])
            lookup[(b["captions"][i], n)] = b["motion"][i, :n].numpy() * es.std + es.mean
    calls = []

    def perfect(captions, lengths, goals, seed):   # the real crop, whatever the goal: it ends on its own goal
        calls.append(goals)
        return [lookup[(c, n)] for c, n in zip(captions, lengths)]
    r = P.evaluate_goals(ev, es, perfect, batch=8).summary()
    # within a millimetre: the float32 round trip of the normalised crops
    assert r["goal_distance_median"]["mean"] < 1e-3 and r["goal_distance_p90"]["mean"] < 1e-3
    assert r["goal_success"]["mean"] == 1.0 and r["goal_heading_error_deg"]["mean"] < 1e-3
    assert abs(r["fid"]["mean"]) < 1e-4 and r["text_only_fid"]["mean"] == pytest.approx(r["fid"]["mean"])
    assert all(g is not None for g in calls[0]) and all(g is None for g in calls[1])   # with, then without goals

    def still(captions, lengths, goals, seed):      # stands at the origin: its distance is the goal's own
        out = []
        for c, n in zip(captions, lengths):
            m = np.tile(lookup[(c, n)][:1], (n, 1))
            m[:, 0:2], m[:, 2:8] = 0.0, [1, 0, 0, 0, 1, 0]    # no step, no turn
            out.append(m)
        return out
    spans = np.array([np.hypot(*P.crop_goal(m[:, :], np.zeros(272), np.ones(272))[:2]) for m in lookup.values()])
    r = P.evaluate_goals(ev, es, still, batch=8).summary()
    assert r["goal_distance_median"]["mean"] == pytest.approx(np.median(spans), abs=1e-4)
    assert r["goal_success"]["mean"] == pytest.approx(np.mean(spans <= 0.3))
    assert 0 < np.mean(spans <= 0.3) < 1 and r["goal_success_band"]["mean"] == 0.0


def test_evaluate_goals_cli(capsys, tmp_path, data, evaluator_dir, bundle_dir):
    # a text-only bundle with goal steering off has nothing to steer with: one clear line, no traceback
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "goals", "--data", str(data), "--split", "val", "--evaluator", str(evaluator_dir),
              "--checkpoint", str(bundle_dir), "--batch", "4", "--steps", "2", "--out", str(tmp_path / "g.json"),
              "--quiet", "--goal-steering", "off"])
    code, err = e.value.code, capsys.readouterr().err
    assert code == 2 and "not trained with goals" in err and "steering is off" in err and "Traceback" not in err
    # with steering (the default) any model takes goals: the text-only bundle runs the protocol
    code, text = _run(capsys, ["evaluate", "goals", "--data", str(data), "--split", "val", "--evaluator",
                               str(evaluator_dir), "--checkpoint", str(bundle_dir), "--batch", "4", "--steps", "2",
                               "--out", str(tmp_path / "g0.json"), "--quiet"])
    assert code == 0 and "Goals reached (<= 0.3 m)" in text
    # a goal model (random weights) runs the protocol and writes its table
    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.data.humanml3d import load_mean_std
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
    torch.manual_seed(0)
    mean, std = load_mean_std(data / "mean_std")
    cfg = T2MConfig.small()
    cfg.goal = True
    save_bundle(tmp_path / "goal_model", CausalHumanTAE(TAEConfig.small()), randomize_head(TextToMotionModel(cfg)),
                mean, std, np.full(16, 100.0, np.float32), text_encoder="minilm")
    code, text = _run(capsys, ["evaluate", "goals", "--data", str(data), "--split", "val", "--evaluator",
                               str(evaluator_dir), "--checkpoint", str(tmp_path / "goal_model"), "--batch", "4",
                               "--steps", "2", "--out", str(tmp_path / "g.json"), "--quiet"])
    assert code == 0 and "Goals reached (<= 0.3 m)" in text and "Text only: R@3" in text
    res = json.loads((tmp_path / "g.json").read_text())
    assert {"goal_distance_median", "goal_success", "fid", "text_only_fid", "foot_skating"} <= set(res["metrics"])
    # the band's rate only where a repeat had goals 2-5 m away (this small split's random model: none)
    assert ("goal_success_band" in res["metrics"]) == (sum(res["info"]["band_goals_per_repeat"]) > 0)
