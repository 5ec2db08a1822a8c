#!/usr/bin/env python
"""Reproduce the embedded default model from scratch (seeded), on CPU, with the project's trainers.

    python scripts/train_default_model.py --out motionstreamer/assets/default_model

Steps: synthetic dataset (clips + BABEL-stream pairs) -> Causal TAE (small) -> latents (sampled z +
reference end latent) -> text-to-motion/streaming model (small, MiniLM text, Two-Forward, plain clips and
A/B pairs together) -> with --goal-steps N (off: the shipped model has no goals yet, docs/goals.md)
goals: the same model with a goal module, fine-tuned with goals beside the text (train/goals.py: goals
from each clip's own future root path, goal dropout keeps the text-only model, plus goal-only steered
clips and the root-step loss, docs/design.md) -> TMR-style evaluator (small, MiniLM backbone) -> bundle
(safetensors + config, evaluator included) -> quality on the synthetic test split (real pairs, generated,
and the random-text baseline) and the goals protocol -> few-step student head distilled from the guided
head (train/distill.py), added to the bundle, with its head-level quality -> training_summary.json.

`--stages goals` runs the goal stage on the text-to-motion model of the bundle already at --out, then
its quality, the goals protocol and the distillation (the student must match the new teacher; the
TAE, statistics and evaluator files stay as they are); `--stages distill` runs only the last stage.
Both regenerate the dataset and latents in the work folder when missing (the same synthetic data,
latents from the bundle's TAE). `--resume` continues a stopped run, the later stages included.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="motionstreamer/assets/default_model")
    ap.add_argument("--work", default="runs/default_model")
    ap.add_argument("--clips", type=int, default=1600)
    ap.add_argument("--stream-pairs", type=int, default=600)
    ap.add_argument("--tae-steps", type=int, default=3000)
    ap.add_argument("--t2m-steps", type=int, default=6000)
    ap.add_argument("--goal-steps", type=int, default=0,
                    help=f"goal stage steps (0: no goals, the shipped model: goals do not reach well enough yet, "
                         f"docs/goals.md; {GOAL_STEPS}: the best attempt)")
    ap.add_argument("--goal-prob", type=float, default=GOAL_PROB, help="share of goal stage sequences given a goal")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--evaluator-epochs", type=int, default=5)
    ap.add_argument("--quality-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="continue from the work folder's checkpoints (data, TAE and latents are reused)")
    ap.add_argument("--stages", choices=("all", "goals", "distill"), default="all",
                    help="'goals': the goal stage and what follows it, on the bundle already at --out; 'distill': "
                         "only the few-step head, on that bundle")
    ap.add_argument("--distill-steps", type=int, default=DISTILL_STEPS)
    ap.add_argument("--distill-conditions", type=int, default=DISTILL_CONDITIONS)
    ap.add_argument("--distill-rounds", type=int, default=DISTILL_ROLLOUT_ROUNDS,
                    help="rounds of the student's own rollouts (0: teacher-forced contexts only)")
    ap.add_argument("--distill-guidance-weight", type=float, default=DISTILL_GUIDANCE_WEIGHT)
    ap.add_argument("--distill-guidance-steps", type=int, default=DISTILL_GUIDANCE_STEPS,
                    help="first steps on the guided-eps regression alone")
    ap.add_argument("--distill-condition-blocks", type=int, default=DISTILL_CONDITION_BLOCKS,
                    help="transformer blocks the student owns (0: ln_f and out_proj only; -1: none)")
    ap.add_argument("--distill-switch-share", type=float, default=DISTILL_SWITCH_SHARE,
                    help="share of the bank's targets right after a prompt change")
    ap.add_argument("--distill-lr", type=float, default=DISTILL_LR)
    ap.add_argument("--distill-keep-guidance", action=argparse.BooleanOptionalAction, default=DISTILL_KEEP_GUIDANCE,
                    help="the student keeps the teacher's guidance ([cond; uncond] rows) and distils only the steps "
                         "(needs --distill-condition-blocks -1)")
    ap.add_argument("--distill-student-steps", default=DISTILL_STUDENT_STEPS,
                    help="comma-separated step counts the student is trained for; its default is the largest")
    ap.add_argument("--distill-work", default="distill", help="the distillation's folder inside --work")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stages == "distill":
        return distill_only(args, argv)
    if args.stages == "goals":
        return goals_only(args, argv)

    from motionstreamer.data.humanml3d import load_mean_std, load_motions
    from motionstreamer.data.synth import make_dataset
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import T2MTrainConfig, embed_captions, load_latent_examples, train_t2m
    from motionstreamer.train.tae import TAETrainConfig, encode_latents, reference_end_latent, train_tae

    work = Path(args.work)
    data = work / "data"
    summary = {"command": " ".join(["python", "scripts/train_default_model.py",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "seed": args.seed, "clips": args.clips, "stream_pairs": args.stream_pairs}
    t0 = time.time()
    if not (data / "synth_meta.json").exists():
        # no meta: an unfinished folder
        make_dataset(data, args.clips, seed=args.seed, stream_pairs=args.stream_pairs, overwrite=True)
    mean, std = load_mean_std(data / "mean_std")

    # 1. Causal TAE
    torch.manual_seed(args.seed)
    tae = CausalHumanTAE(TAEConfig(hidden=128, width=128))
    motions = load_motions(data, "train", normalize=True)
    tcfg = TAETrainConfig(out_dir=str(work / "tae"), steps=args.tae_steps, batch_size=args.batch, lr=4e-4,
                          schedule="cosine", warmup_steps=100, milestones=(), grad_clip=1.0, save_every=1000,
                          log_every=50, seed=args.seed, window=64)
    tae_ck = work / "tae" / "checkpoint_last.pt"
    resume_tae = args.resume and tae_ck.exists()
    res = train_tae(tae, list(motions.values()), tcfg, resume=tae_ck if resume_tae else None, overwrite=not resume_tae)
    summary["tae"] = {"steps": res.step, "params": sum(p.numel() for p in tae.parameters()),
                      **loss_summary(work / "tae")}
    tae.eval()

    # 2. latents
    end = reference_end_latent(tae)
    all_motions = {}
    for split in ("train", "val", "test"):
        all_motions.update(load_motions(data, split, normalize=True))
    encode_latents(tae, all_motions, work / "latents", end, sample=True, seed=args.seed)
    stream_root = data / "babel_stream"
    for split in ("train", "val"):
        folder = stream_root / f"{split}_stream"
        if folder.is_dir():
            sm = {p.stem: (np.load(p) - mean) / std for p in sorted(folder.glob("*.npy"))}
            encode_latents(tae, sm, work / "stream_latents", end, sample=True, seed=args.seed)

    # 3. text-to-motion + streaming, one model
    enc = TextEncoder.load("minilm")
    examples = load_latent_examples(work / "latents", data, "train")
    n_plain = len(examples)
    examples += load_stream_examples(stream_root, work / "stream_latents", "train")
    emb = embed_captions(examples, enc)
    torch.manual_seed(args.seed)
    config = T2MConfig(n_layer=4, n_head=4, n_embd=128, cond_dim=enc.dim, block_size=78)
    config.head.width, config.head.depth = 256, 3
    model = TextToMotionModel(config)
    mcfg = T2MTrainConfig(out_dir=str(work / "t2m"), steps=args.t2m_steps, batch_size=args.batch, lr=5e-4,
                          warmup_steps=args.t2m_steps // 10, weight_decay=1e-6, grad_clip=1.0, save_every=1000,
                          log_every=50, seed=args.seed, diffmlps_batch_mul=2)
    t2m_ck = work / "t2m" / "checkpoint_last.pt"
    resume_t2m = args.resume and t2m_ck.exists()
    res = train_t2m(model, examples, emb, mcfg, name="t2m", extra_config={"text_encoder": "minilm"},
                    resume=t2m_ck if resume_t2m else None, overwrite=not resume_t2m)
    summary["t2m"] = {"steps": res.step, "examples": len(examples), "plain_examples": n_plain,
                      "params": sum(p.numel() for p in model.parameters()), **loss_summary(work / "t2m")}
    if args.goal_steps:
        model, summary["goal_stage"] = goal_stage(args, model, tae, end, work, data, enc)
    model.eval()

    # 4. evaluator (the same run `motionstreamer train-evaluator --model-size small --epochs E
    #    --batch-size 64 --set lr=5e-4 --set log_every=10 --set save_every=100` makes)
    evaluator, summary["evaluator"] = train_small_evaluator(data, work / "evaluator", args.evaluator_epochs,
                                                            args.resume)

    out = Path(args.out)
    finish_bundle(out, tae, model, mean, std, end, work, data, args.seed, evaluator)
    summary["end_threshold"] = json.loads((out / "config.json").read_text()).get("end_threshold_calibration")

    # 5. quality with the project's evaluator on the synthetic test split; goals beside the text
    summary["quality"] = measure_quality(out, data, args.quality_repeats, args.seed)
    if args.goal_steps:
        summary["goals"] = measure_goals(out, data, args.quality_repeats, args.seed)

    # 6. the few-step student head
    summary["distill"] = distill_stage(args, out, work, data)
    summary["minutes"] = (time.time() - t0) / 60
    from motionstreamer.utils import atomic_write_json
    atomic_write_json(out / "training_summary.json", summary)
    print(json.dumps(summary, indent=1))
    return 0


# the goal stage (a fine-tune of the text-to-motion model; why not from scratch: docs/default-model.md;
# why steered clips, the goal module's own learning rate and the root-step loss: docs/design.md)
GOAL_STEPS = 900
GOAL_PROB = 0.5          # goal dropout: the other half of the plain sequences keep the text-only objective
GOAL_LR = 3e-4
GOAL_LR_MULT = 10.0      # the goal module is new in a trained model
GOAL_ROOT_AUX = 1.0      # the auxiliary root-step loss
STEERED_CLIPS = 800      # goal-only locomotion clips: turns the caption does not name, and walks to a target
STEERED_SHARE = 0.5      # of the rows
PURSUIT = 0.7            # of the steered clips: heading for a target point
GOAL_MODULE_ONLY = False # True: only the goal module learns (text-only streams stay exact; attempt G broke the motion)


def goal_stage(args, model, tae, end_latent, work: Path, data: Path, text_encoder):
    """The text-to-motion model with a goal module, fine-tuned with goals beside the text on the same
    examples (with their root paths) and on steered clips that always carry a goal: returns (the goal
    model, its training summary)."""
    from motionstreamer.data.humanml3d import load_mean_std
    from motionstreamer.data.synth.writers import make_steered_clips
    from motionstreamer.models.transformer import TextToMotionModel
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import T2MTrainConfig, embed_captions, load_latent_examples, train_t2m
    from motionstreamer.train.tae import encode_latents

    steer, steer_latents = work / "steered", work / "steered_latents"
    if not (steer / "split").is_dir():
        make_steered_clips(steer, STEERED_CLIPS, seed=args.seed, overwrite=True, pursuit=PURSUIT)
    if not steer_latents.is_dir():
        mean, std = load_mean_std(data / "mean_std")
        motions = {p.stem: (np.load(p) - mean) / std for p in sorted((steer / "motion_data").glob("*.npy"))}
        encode_latents(tae, motions, steer_latents, end_latent, sample=True, seed=args.seed)
    examples = load_latent_examples(work / "latents", data, "train", paths=True)
    examples += load_stream_examples(data / "babel_stream", work / "stream_latents", "train", paths=True)
    examples += [dataclasses.replace(e, goal_only=True)
                 for e in load_latent_examples(steer_latents, steer, "train", paths=True)]
    emb = embed_captions(examples, text_encoder)
    torch.manual_seed(args.seed)
    goal_model = TextToMotionModel(type(model.config).from_dict({**model.config.to_dict(), "goal": True}))
    state = {k: v.float() for k, v in model.state_dict().items()}
    state.update({k: v for k, v in goal_model.state_dict().items() if k.startswith("goal_embed.")})
    goal_model.load_state_dict(state, strict=True)
    cfg = T2MTrainConfig(out_dir=str(work / "goals"), steps=args.goal_steps, batch_size=args.batch, lr=GOAL_LR,
                         warmup_steps=max(1, args.goal_steps // 20), weight_decay=1e-6, grad_clip=1.0,
                         save_every=250, log_every=50, seed=args.seed, diffmlps_batch_mul=2,
                         goal_prob=args.goal_prob, goal_only_share=STEERED_SHARE, goal_horizon_s=(0.5, 10.0),
                         goal_lr_mult=GOAL_LR_MULT, root_aux=GOAL_ROOT_AUX, goal_module_only=GOAL_MODULE_ONLY)
    ck = work / "goals" / "checkpoint_last.pt"
    resume = args.resume and ck.exists()
    res = train_t2m(goal_model, examples, emb, cfg, name="t2m", extra_config={"text_encoder": "minilm"},
                    resume=ck if resume else None, overwrite=not resume)
    return goal_model.eval(), {"steps": res.step, "goal_prob": args.goal_prob, "lr": GOAL_LR,
                               "goal_lr_mult": GOAL_LR_MULT, "root_aux": GOAL_ROOT_AUX,
                               "goal_module_only": GOAL_MODULE_ONLY,
                               "steered_clips": STEERED_CLIPS, "steered_share": STEERED_SHARE, "pursuit": PURSUIT,
                               "examples": len(examples), **loss_summary(work / "goals")}


def goals_only(args, argv) -> int:
    """--stages goals: the goal stage on the bundle at --out (its t2m.safetensors and config.json are
    replaced; the student head is dropped until the distillation adds the new one), then its end
    threshold, quality, the goals protocol and the distillation, into training_summary.json."""
    from motionstreamer.checkpoints import STUDENT_FILE, load_bundle, read_bundle_config, save_safetensors
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.utils import atomic_write_json

    out, work = Path(args.out), Path(args.work)
    data = work / "data"
    if not (out / "config.json").is_file():
        raise SystemExit(f"--stages goals needs a trained bundle at --out {out}")
    t0 = time.time()
    ensure_data_and_latents(args, load_bundle(out), work, data)
    bundle = load_bundle(out)
    if not args.goal_steps:
        raise SystemExit(f"--stages goals needs --goal-steps (e.g. {GOAL_STEPS})")
    model, info = goal_stage(args, bundle.t2m, bundle.tae, bundle.end_latent.cpu(), work, data,
                             TextEncoder.load("minilm"))
    config = dataclasses.replace(read_bundle_config(out), t2m=model.config, student_head=None)
    (out / "config.json").unlink()          # until the new one is written: an incomplete bundle says so
    save_safetensors(out / "t2m.safetensors", model.state_dict())
    (out / STUDENT_FILE).unlink(missing_ok=True)
    atomic_write_json(out / "config.json", config.to_dict())
    store_half(out)
    calibrate(out, work, data, args.seed)
    path = out / "training_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    info["command"] = " ".join(["python", "scripts/train_default_model.py",
                                *(argv if argv is not None else sys.argv[1:])])
    summary["goal_stage"] = info
    summary["end_threshold"] = json.loads((out / "config.json").read_text()).get("end_threshold_calibration")
    summary["quality"] = measure_quality(out, data, args.quality_repeats, args.seed)
    summary["goals"] = measure_goals(out, data, args.quality_repeats, args.seed)
    summary["distill"] = distill_stage(args, out, work, data)
    summary["goal_stage"]["minutes_with_evaluation_and_distillation"] = (time.time() - t0) / 60
    atomic_write_json(path, summary)
    print(json.dumps({k: summary[k] for k in ("goal_stage", "goals")}, indent=1, default=str))
    return 0


def ensure_data_and_latents(args, bundle, work: Path, data: Path) -> None:
    """The synthetic dataset and its latents (from the bundle's stored TAE) in the work folder, unless there."""
    from motionstreamer.data.humanml3d import load_mean_std, load_motions
    from motionstreamer.data.synth import make_dataset
    from motionstreamer.train.tae import encode_latents

    if not (data / "synth_meta.json").exists():
        make_dataset(data, args.clips, seed=args.seed, stream_pairs=args.stream_pairs, overwrite=True)
    if (work / "latents").is_dir():
        return
    end = bundle.end_latent.cpu()
    motions = {}
    for split in ("train", "val", "test"):
        motions.update(load_motions(data, split, normalize=True))
    encode_latents(bundle.tae, motions, work / "latents", end, sample=True, seed=args.seed)
    mean, std = load_mean_std(data / "mean_std")
    for split in ("train", "val"):
        folder = data / "babel_stream" / f"{split}_stream"
        if folder.is_dir():
            sm = {p.stem: (np.load(p) - mean) / std for p in sorted(folder.glob("*.npy"))}
            encode_latents(bundle.tae, sm, work / "stream_latents", end, sample=True, seed=args.seed)



# The student recipe (train/distill.py; docs/student.md compares the runs): run I, the student keeps
# the teacher's guidance on [cond; uncond] rows and its 50 steps are distilled into 4 by the energy
# score, on teacher-forced contexts (a share right after prompt changes), then two rounds on the
# student's own streamed rollouts labelled by the teacher; the round that scores best end to end is
# kept. The one-row students (their own last block, the guided-eps regression: runs A-D, C the best)
# stayed at the unguided teacher's R@3: --no-distill-keep-guidance --distill-condition-blocks 1
# --distill-guidance-weight 10 --distill-guidance-steps 200 --distill-student-steps 1,2,4.
DISTILL_STEPS = 1200
DISTILL_CONDITIONS = 4096
DISTILL_LR = 1e-4
DISTILL_CONDITION_BLOCKS = -1
DISTILL_GUIDANCE_STEPS = 0
DISTILL_GUIDANCE_WEIGHT = 0.0
DISTILL_ROLLOUT_ROUNDS = 2
DISTILL_ROLLOUT_CONDITIONS = 2048
DISTILL_KEEP_GUIDANCE = True
DISTILL_STUDENT_STEPS = "4"
DISTILL_SWITCH_SHARE = 0.3


def distill_only(args, argv) -> int:
    """--stages distill: the student head for the bundle at --out; its summary goes into the bundle's
    training_summary.json beside the earlier stages'."""
    from motionstreamer.checkpoints import load_bundle
    from motionstreamer.utils import atomic_write_json

    out, work = Path(args.out), Path(args.work)
    data = work / "data"
    if not (out / "config.json").is_file():
        raise SystemExit(f"--stages distill needs a trained bundle at --out {out}")
    ensure_data_and_latents(args, load_bundle(out), work, data)
    path = out / "training_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["distill"] = distill_stage(args, out, work, data)
    summary["distill"]["command"] = " ".join(["python", "scripts/train_default_model.py",
                                              *(argv if argv is not None else sys.argv[1:])])
    atomic_write_json(path, summary)
    print(json.dumps(summary["distill"], indent=1))
    return 0


def distill_stage(args, out: Path, work: Path, data: Path) -> dict:
    """Distil the bundle's guided head into a 1/2/4-step student (train/distill.py), add it to the
    bundle (the teacher's files stay as they are), and measure it against the teacher on held-out
    conditions (motionstreamer evaluate head)."""
    from motionstreamer.checkpoints import add_student_head, load_bundle
    from motionstreamer.eval.head_quality import head_report
    from motionstreamer.eval.selection import StudentSelector
    from motionstreamer.models.evaluator import TMREvaluator
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.train.distill import SELECTION_FILE, DistillConfig, distill_head
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import embed_captions, load_latent_examples

    t0 = time.time()
    bundle = load_bundle(out)
    latents, stream_latents = work / "latents", work / "stream_latents"
    stream_root = data / "babel_stream"
    enc = TextEncoder.load("minilm")
    examples = load_latent_examples(latents, data, "train")
    examples += load_stream_examples(stream_root, stream_latents, "train")
    emb = embed_captions(examples, enc)
    blocks = None if args.distill_condition_blocks < 0 else args.distill_condition_blocks
    config = DistillConfig(out_dir=str(work / args.distill_work), steps=args.distill_steps,
                           conditions=args.distill_conditions, lr=args.distill_lr, warmup_steps=50, seed=args.seed,
                           tensorboard=False, condition_blocks=blocks,
                           guidance_steps=args.distill_guidance_steps,
                           guidance_weight=args.distill_guidance_weight, rollout_rounds=args.distill_rounds,
                           rollout_conditions=DISTILL_ROLLOUT_CONDITIONS, switch_share=args.distill_switch_share,
                           keep_guidance=args.distill_keep_guidance,
                           student_steps=tuple(int(k) for k in args.distill_student_steps.split(",")))
    # rounds are kept by what a user sees: evaluate t2m and evaluate stream on the val split, one repeat
    select = StudentSelector(bundle, enc, TMREvaluator.load(out), data, stream_data=stream_root,
                             split="val", stream_split="val", seed=args.seed)
    ck = Path(config.out_dir) / "checkpoint_last.pt"
    student, res = distill_head(bundle, examples, emb, config, teacher_name="embedded default model",
                                resume=ck if args.resume and ck.exists() else None, select=select)
    add_student_head(out, student)
    store_half(out)
    bundle = load_bundle(out)
    head = head_report(bundle, enc, data, latents, "test", conditions=64, samples=256, seed=args.seed)
    info = {"distillation": bundle.student.student_config.distillation,
            "steps_supported": list(bundle.student.student_config.steps),
            "train_steps": res.step, "conditions": config.conditions, "teacher_samples": config.teacher_samples,
            "recipe": {k: getattr(config, k) for k in ("condition_blocks", "guidance_steps", "guidance_weight",
                                                       "rollout_rounds", "rollout_conditions", "switch_share", "lr",
                                                       "keep_guidance", "student_steps")},
            "selection": json.loads((Path(config.out_dir) / SELECTION_FILE).read_text()),
            "minutes": (time.time() - t0) / 60, "head_quality": head, **loss_summary(Path(config.out_dir))}
    info["verdict"] = student_verdict(out, data, args.quality_repeats, args.seed)
    info["minutes_with_verdict"] = (time.time() - t0) / 60
    return info


# the acceptance bar for the student as the default head: t2m R@3 and FID within the teacher's 95% CI
# (test split), stream R@3 within this margin of the teacher's (the BABEL-stream val pairs)
STREAM_R3_MARGIN = 0.05


def student_verdict(out: Path, data: Path, repeats: int, seed: int) -> dict:
    """Teacher and student side by side from the same draws: evaluate t2m on the test split and evaluate
    stream on the val pairs, `repeats` each, the bundle's evaluator. The student becomes the bundle's
    default head (config.json "sampler": {"head": "student"}) when it is within the teacher's 95% CI on
    t2m R@3 and FID and within STREAM_R3_MARGIN of its stream R@3; otherwise the teacher stays the default."""
    import dataclasses

    from motionstreamer.checkpoints import read_bundle_config
    from motionstreamer.data.humanml3d import load_mean_std
    from motionstreamer.eval import protocols as P
    from motionstreamer.models.evaluator import TMREvaluator
    from motionstreamer.runtime.engine import GenerationConfig
    from motionstreamer.runtime.loading import load_models
    from motionstreamer.utils import atomic_write_json

    evaluator = TMREvaluator.load(out)
    evalset = P.EvalSet.load(data, "test")
    mean, std = load_mean_std(data / "mean_std")
    cases = P.load_stream_cases(data / "babel_stream", "val", mean=mean, std=std)
    models, text_encoder, _ = load_models(str(out), device="cpu", dtype="fp32")
    table = {}
    for head in ("teacher", "student"):
        config = GenerationConfig(head=head)
        t2m = P.evaluate_t2m(evaluator, evalset, P.runtime_generator(models, text_encoder, config),
                             repeats=repeats, seed=seed).summary()
        stream = P.evaluate_stream(evaluator, cases, P.runtime_stream_generator(models, text_encoder, config), mean,
                                   std, repeats=repeats, seed=seed).summary()
        table[head] = {"t2m": {k: t2m[k] for k in ("r_precision_top3", "fid", "r_precision_top1", "matching_score",
                                                    "diversity")},
                       "stream": {k: stream[k] for k in ("r_precision_top3", "fid", "transition_fid")}}
    t, st = table["teacher"], table["student"]
    checks = {
        "t2m_r3_within_teacher_ci": st["t2m"]["r_precision_top3"]["mean"] >= t["t2m"]["r_precision_top3"]["mean"]
        - t["t2m"]["r_precision_top3"]["ci95"],
        "t2m_fid_within_teacher_ci": st["t2m"]["fid"]["mean"] <= t["t2m"]["fid"]["mean"] + t["t2m"]["fid"]["ci95"],
        "stream_r3_within_margin": st["stream"]["r_precision_top3"]["mean"]
        >= t["stream"]["r_precision_top3"]["mean"] - STREAM_R3_MARGIN}
    default = "student" if all(checks.values()) else "teacher"
    config = read_bundle_config(out)
    config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, head=default))
    atomic_write_json(out / "config.json", config.to_dict())
    return {"repeats": repeats, "seed": seed, "t2m_split": "test", "stream_split": "val", **table, "checks": checks,
            "default_head": default}


def loss_summary(run_dir: Path) -> dict:
    """First/last logged loss and throughput from a run's log.jsonl (survives resumed runs)."""
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"first_logged_loss": recs[0]["loss"], "last_logged_loss": recs[-1]["loss"],
            "mean_loss_last_10_logs": float(np.mean([r["loss"] for r in recs[-10:]])),
            "samples_per_s_last": recs[-1]["samples_per_s"]}


def train_small_evaluator(data: Path, run_dir: Path, epochs: int, resume: bool):
    """The small TMR-style evaluator (MiniLM backbone, frozen) on the training split; a finished run
    in run_dir is reused as it is."""
    from motionstreamer.checkpoints import load_training_checkpoint
    from motionstreamer.models.evaluator import EvaluatorConfig, TMREvaluator
    from motionstreamer.train.evaluator import CHECKPOINT_NAME, EvaluatorTrainConfig, train_evaluator

    config = EvaluatorTrainConfig(out_dir=str(run_dir), epochs=epochs, batch_size=64, lr=5e-4, log_every=10,
                               save_every=100, tensorboard=False)
    ck = run_dir / CHECKPOINT_NAME
    done = ck.exists() and int(load_training_checkpoint(ck)["step"]) >= epochs * json.loads(
        (run_dir / "config.json").read_text())["steps_per_epoch"]
    if done:
        evaluator = TMREvaluator.load(run_dir / "evaluator")
    else:
        evaluator, _ = train_evaluator(data, config, EvaluatorConfig.small("minilm"),
                                       resume=ck if resume and ck.exists() else None,
                                       overwrite=not (resume and ck.exists()))
    info = {"config": "small (MiniLM backbone, latent 64, 2 layers)", "epochs": epochs,
            "params_trained": sum(v.numel() for v in evaluator.export_state_dict().values()),
            **loss_summary(run_dir)}
    return evaluator.eval(), info


def measure_quality(bundle: Path, data: Path, repeats: int, seed: int) -> dict:
    """FID / R-precision / MM-Dist / Diversity of generated motions (ground-truth lengths, official
    sampler settings) against the real test motions, the real pairs themselves, and the random-text
    baseline (each motion generated from another caption of its batch), with the bundle's evaluator."""
    from motionstreamer.eval import protocols as P
    from motionstreamer.models.evaluator import TMREvaluator
    from motionstreamer.runtime.loading import load_models

    evaluator = TMREvaluator.load(bundle)
    evalset = P.EvalSet.load(data, "test")
    models, text_encoder, _ = load_models(str(bundle), device="cpu", dtype="fp32")
    generate = P.runtime_generator(models, text_encoder)
    out = {"split": "test", "entries": len(evalset), "repeats": repeats, "batch": 32}
    runs = {"real": P.evaluate_gt(evaluator, evalset, repeats=repeats, seed=seed),
            "generated": P.evaluate_t2m(evaluator, evalset, generate, repeats=repeats, seed=seed, progress=True),
            "random_text": P.evaluate_t2m(evaluator, evalset, generate, repeats=repeats, seed=seed, progress=True,
                                          shuffle_text=True)}
    for name, res in runs.items():
        print(f"== {name}\n{P.format_table(res)}")
        out[name] = {k: v for k, v in res.summary().items() if not k.startswith("real_")}
    return out


def measure_goals(bundle: Path, data: Path, repeats: int, seed: int) -> dict:
    """The goals protocol (eval.protocols.evaluate_goals: held-out crops, each with its own end as the
    goal) with the bundle's evaluator and sampler defaults."""
    from motionstreamer.eval import protocols as P
    from motionstreamer.models.evaluator import TMREvaluator
    from motionstreamer.runtime.loading import load_models

    evaluator = TMREvaluator.load(bundle)
    evalset = P.EvalSet.load(data, "test")
    models, text_encoder, _ = load_models(str(bundle), device="cpu", dtype="fp32")
    res = P.evaluate_goals(evaluator, evalset, P.runtime_goal_generator(models, text_encoder), repeats=repeats,
                           seed=seed, progress=True)
    print(f"== goals\n{P.format_table(res)}")
    return {"metrics": res.summary(), "info": res.info}


def store_half(bundle: Path) -> None:
    """Weights as fp16 on disk (half the package size; loading casts back to the run dtype). The
    statistics stay fp32: de-normalisation is exact to the data."""
    from safetensors.torch import load_file, save_file

    from motionstreamer.utils import atomic_path

    for name in ("tae", "t2m", "evaluator", "student_head"):
        path = bundle / f"{name}.safetensors"
        if path.is_file():
            state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
            with atomic_path(path) as tmp:
                save_file(state, str(tmp))


def finish_bundle(out, tae, model, mean, std, end, work, data, seed: int, evaluator=None) -> None:
    """Save the bundle (fp32 safetensors) with its sampler defaults, then calibrate its end threshold.

    skip_terminal_step: a briefly trained head cannot predict eps precisely enough at the cosine
    schedule's degenerate last step (alpha_bar ~1e-6), see DiffLoss.sampling_process."""
    from motionstreamer.checkpoints import save_bundle

    save_bundle(out, tae, model, mean, std, end, text_encoder="minilm",
                description="motionstreamer default: small TAE + t2m/streaming model trained on synthetic motions "
                            "(scripts/train_default_model.py, seed %d)" % seed,
                extra_config={"sampler": {"skip_terminal_step": True}}, evaluator=evaluator)
    store_half(out)
    calibrate(out, work, data, seed)


def calibrate(out: Path, work: Path, data: Path, seed: int) -> None:
    """The bundle's end-of-action threshold (scripts/calibrate_end_threshold.py), into its config.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import calibrate_end_threshold
    calibrate_end_threshold.main(["--bundle", str(out), "--data", str(data), "--latents", str(work / "latents"),
                                  "--seed", str(seed)])


if __name__ == "__main__":
    sys.exit(main())
