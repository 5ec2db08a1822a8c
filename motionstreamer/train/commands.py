"""CLI verbs: `train tae|t2m|stream`, `train-evaluator`, `encode-latents`, `make-bundle`, `distill-head`.

The pipeline from a HumanML3D-272 folder to a model that `generate`/`stream` can run:

    motionstreamer train tae --data D --out runs/tae
    motionstreamer encode-latents --data D --tae runs/tae/checkpoint_last.pt --out runs/latents
    motionstreamer train t2m --data D --latents runs/latents --out runs/t2m
    motionstreamer make-bundle --tae runs/tae/checkpoint_last.pt --t2m runs/t2m/checkpoint_last.pt \\
        --data D --out my_model

Every `train` verb runs unchanged under `torchrun --nproc_per_node N -m motionstreamer train ...`
(DDP; the global batch is split across the processes). Config: the trainer's dataclass defaults
(the original recipe) <- `--config FILE` (YAML/JSON) <- `--set key=value`; the result is saved as
config.json beside every checkpoint.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from motionstreamer.checkpoints import (
    CheckpointError,
    add_student_head,
    ema_or_model_state,
    load_bundle,
    load_state_dict_strict,
    load_tae,
    load_training_checkpoint,
    save_bundle,
)
from motionstreamer.cli import CLIError, add_group, add_verb, check_positive, parse_step_list
from motionstreamer.data.humanml3d import load_mean_std, load_motion_file, load_motions
from motionstreamer.models.evaluator import EvaluatorConfig, backbone_hidden_size
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.text import TextEncoder
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime.loading import resolve_device
from motionstreamer.runtime.sampler_args import add_sampler_args
from motionstreamer.train.common import check_run_dir, cleanup_distributed, load_config_file, parse_overrides
from motionstreamer.train.distill import DistillConfig, distill_head
from motionstreamer.train.evaluator import EvaluatorTrainConfig, train_evaluator
from motionstreamer.train.stream import load_stream_examples
from motionstreamer.train.t2m import (
    T2MTrainConfig,
    embed_captions,
    load_latent_examples,
    load_text_embeddings,
    save_text_embeddings,
    train_t2m,
)
from motionstreamer.train.tae import TAETrainConfig, encode_latents, reference_end_latent, train_tae
from motionstreamer.utils import atomic_save_npy


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-encoder", default="minilm", help="minilm | sentence-t5-xxl | hub id | folder")
    p.add_argument("--text-cache", default=None, metavar="FILE",
                   help="caption embeddings file: read when present (same --text-encoder), missing captions "
                        "are encoded and the file is updated; the encoder is not loaded when all are cached")


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="HumanML3D-272 layout folder")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"run folder: checkpoints, config.json, logs (default: the config's out_dir, {default_out})")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML/JSON file of config fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set steps=2000 --set lr=2e-4")
    p.add_argument("--model-size", choices=("official", "small"), default="official",
                   help="model config for a new run (a resumed run keeps its checkpoint's)")
    p.add_argument("--resume", default=None, metavar="CKPT", help="continue from a checkpoint_last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it such a folder is refused)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: the config's device, auto)")


def register(subparsers) -> None:
    sub = add_group(subparsers, "train",
                    "Train on the CPU, one GPU, or many (torchrun --nproc_per_node N -m motionstreamer train ...). "
                    "Config: defaults <- --config <- --set.", "what", "<model>")
    a = sub.add_parser("tae", help="Causal TAE on 272-dim motion windows")
    _common(a, "runs/tae")
    a.set_defaults(func=cmd_train_tae)
    b = sub.add_parser("t2m", help="text-to-motion transformer + diffusion head (Two-Forward)")
    _common(b, "runs/t2m")
    b.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents from encode-latents")
    _text_args(b)
    b.set_defaults(func=cmd_train_t2m)
    c = sub.add_parser("stream", help="streaming model on A/B pairs (plus single clips)")
    _common(c, "runs/stream")
    c.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents of the HumanML3D-272 clips")
    c.add_argument("--stream-data", required=True, metavar="DIR", help="BABEL-stream layout folder")
    c.add_argument("--stream-latents", required=True, metavar="DIR", help="latents of the stream pairs' motions")
    _text_args(c)
    c.add_argument("--init", default=None, metavar="CKPT", help="start from a text-to-motion checkpoint")
    c.set_defaults(func=cmd_train_stream)

    e = add_verb(subparsers, "encode-latents", cmd_encode_latents)
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--tae", required=True, metavar="CKPT", help="TAE checkpoint_last.pt or a model bundle dir")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--motion-dir", default="motion_data", help="sub-folder of --data with the clips")
    e.add_argument("--all-files", action="store_true",
                   help="encode every .npy in DATA/MOTION_DIR instead of the split lists (e.g. --data "
                        "D/babel_stream --motion-dir train_stream --mean-std D/mean_std)")
    e.add_argument("--mean-std", default=None, metavar="DIR",
                   help="folder with Mean.npy/Std.npy (default DATA/mean_std)")
    e.add_argument("--mu", action="store_true", help="store the posterior mean instead of a sample")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")

    m = add_verb(subparsers, "make-bundle", cmd_make_bundle)
    m.add_argument("--tae", required=True, metavar="CKPT", help="TAE checkpoint_last.pt")
    m.add_argument("--t2m", required=True, metavar="CKPT", help="t2m or stream checkpoint_last.pt")
    m.add_argument("--data", default=None, metavar="DIR", help="dataset folder whose mean_std/ normalised the training")
    m.add_argument("--mean-std", default=None, metavar="DIR", help="folder with Mean.npy/Std.npy (instead of --data)")
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA")

    r = add_verb(subparsers, "train-evaluator", cmd_train_evaluator)
    _common(r, "runs/evaluator")
    r.add_argument("--split", default="train")
    r.add_argument("--text-backbone", default=None, metavar="NAME|DIR",
                   help="HF AutoModel folder or name, 'minilm' (offline) or 'tiny-distilbert' "
                        "(default: distilbert-base-uncased for official, minilm for small)")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--save-every", type=int, default=None, metavar="STEPS")
    r.add_argument("--no-tensorboard", action="store_true")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    d = add_verb(subparsers, "distill-head", cmd_distill_head)
    d.add_argument("--checkpoint", required=True, metavar="BUNDLE", help="the teacher model bundle")
    d.add_argument("--data", required=True, metavar="DIR", help="HumanML3D-272 layout folder (train split)")
    d.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents from encode-latents")
    d.add_argument("--stream-data", default=None, metavar="DIR", help="BABEL-stream layout folder (optional)")
    d.add_argument("--stream-latents", default=None, metavar="DIR", help="latents of the stream pairs")
    d.add_argument("--out", required=True, metavar="NEW_BUNDLE", help="the bundle to write (teacher + student)")
    d.add_argument("--overwrite", action="store_true", help="replace NEW_BUNDLE when it already holds a bundle")
    d.add_argument("--run-dir", default=None, metavar="DIR",
                   help="training run folder: checkpoints, logs, TensorBoard, the teacher-sample bank "
                        "(default: the config's out_dir, runs/distill)")
    d.add_argument("--student-steps", default=None, metavar="K[,K...]",
                   help="step counts the student is trained for and supports (default 4); the largest is "
                        "its default")
    add_sampler_args(d, "cfg_scale", cfg_scale=None, helps={
        "cfg_scale": f"the teacher's guidance scale to reproduce (default: {DistillConfig.cfg_scale:g})"})
    d.add_argument("--config", default=None, metavar="FILE", help="YAML/JSON file of DistillConfig fields")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set steps=2000 --set conditions=8192")
    d.add_argument("--resume", default=None, metavar="CKPT", help="continue from the run's checkpoint_last.pt")
    d.add_argument("--text-cache", default=None, metavar="FILE", help="caption embeddings file (see train t2m)")
    d.add_argument("--device", default=None, help="cpu, cuda or auto")


# ----------------------------------------------------------------------------- helpers
def _config(cls, args, **flags):
    """The trainer config: defaults <- --config <- --set <- the verb's own flags (None: not given)."""

    config = cls()
    flags = {"out_dir": args.out, "device": args.device, **flags}
    try:
        if args.config:
            config = config.updated(load_config_file(args.config))
        config = config.updated(parse_overrides(args.set, cls))
        config = config.updated({k: v for k, v in flags.items() if v is not None})
        # before the data is read
        check_run_dir(config.out_dir, getattr(args, "resume", None), getattr(args, "overwrite", False))
    except (ValueError, OSError) as e:
        raise CLIError(str(e))
    return config


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(msg: str) -> None:
    if _is_main():
        print(msg)


def _checkpoint(path: str, trainers: tuple) -> dict:
    try:
        return load_training_checkpoint(path, trainers)
    except (ValueError, OSError) as e:
        raise CLIError(str(e))


def _tae(path: str, device) -> torch.nn.Module:
    """--tae: a bundle, a TAE training checkpoint or the released net_last.pth (checkpoints.load_tae)."""
    try:
        return load_tae(path, device)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"--tae: {e}")


def _run(train_fn):
    """Run a training call; turn config/data errors into CLI errors; close the process group."""

    try:
        result = train_fn()
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        cleanup_distributed(barrier=False)
        raise CLIError(str(e))
    except BaseException:
        cleanup_distributed(barrier=False)
        raise
    cleanup_distributed()
    return result


def torch_seed(seed: int) -> None:
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- train
def cmd_train_tae(args) -> int:
    config = _config(TAETrainConfig, args)
    try:
        motions = list(load_motions(args.data, "train", normalize=True).values())
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    if args.resume:
        tae_cfg = TAEConfig.from_dict(_checkpoint(args.resume, ("tae",))["config"]["tae"])
    else:
        tae_cfg = TAEConfig.official() if args.model_size == "official" else TAEConfig.small()
    torch_seed(config.seed)
    res = _run(lambda: train_tae(CausalHumanTAE(tae_cfg), motions, config, resume=args.resume,
                                 overwrite=args.overwrite))
    _say(f"trained TAE to step {res.step}: last loss {res.losses[-1][1] if res.losses else float('nan'):.4f}, "
         f"{res.samples_per_s:.1f} samples/s; checkpoint {res.checkpoint}")
    return 0


def _captions_needed(examples) -> set:
    return {c for e in examples for c in e.all_captions()} | {""}


def text_embeddings_for(examples, encoder_name: str, cache: str | None):
    """Caption embeddings for the examples: from the cache file where present, the rest encoded
    (the encoder is loaded only then), the cache updated by the main process."""

    known = {}
    if cache and Path(cache).exists():
        try:
            known, cached_name = load_text_embeddings(cache)
        except ValueError as e:
            raise CLIError(str(e))
        if cached_name != encoder_name:
            raise CLIError(f"--text-cache {cache} holds {cached_name!r} embeddings, not --text-encoder "
                           f"{encoder_name!r}; pass --text-encoder {cached_name} or another cache file")
    missing = _captions_needed(examples) - set(known)
    enc = None
    if missing:
        try:
            enc = TextEncoder.load(encoder_name)
        except FileNotFoundError as e:
            raise CLIError(str(e))
    emb = embed_captions(examples, enc, known=known)
    if cache and missing and _is_main():
        save_text_embeddings(cache, {**known, **emb}, encoder_name)
    return emb


def _t2m_model(args, text_dim: int, from_checkpoint: dict | None = None, goals: bool = False):
    """goals: the run trains with goals (goal_prob > 0): the model gets a goal module (a fresh one on top of
    a text-only checkpoint it starts from)."""
    if from_checkpoint is not None:
        config = T2MConfig.from_dict(from_checkpoint["config"]["t2m"])
    else:
        config = (T2MConfig.official(cond_dim=text_dim) if args.model_size == "official"
                  else T2MConfig.small(cond_dim=text_dim))
    config.goal = config.goal or goals
    if config.cond_dim != text_dim:
        raise CLIError(f"the model expects {config.cond_dim}-dim text embeddings but --text-encoder "
                       f"{args.text_encoder!r} gives {text_dim}")
    return TextToMotionModel(config)


def _load_t2m_weights(model, ck: dict, path: str, ema: bool = True) -> None:
    state = ema_or_model_state(ck) if ema else ck["model"]
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if model.goal_embed is not None and not any(k.startswith("goal_embed.") for k in state):
        # a text-only model fine-tuned with goals: its new goal module keeps its initial weights
        state.update({f"goal_embed.{k}": v for k, v in model.goal_embed.state_dict().items()})
    try:
        load_state_dict_strict(model, state, path)
    except ValueError as e:
        raise CLIError(str(e))


def cmd_train_t2m(args) -> int:
    config = _config(T2MTrainConfig, args)
    goals = config.goal_prob > 0      # goals need each clip's root path (read from its motion file)
    try:
        examples = load_latent_examples(args.latents, args.data, "train", max_latents=config.max_latents, paths=goals)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    emb = text_embeddings_for(examples, args.text_encoder, args.text_cache)
    torch_seed(config.seed)
    model = _t2m_model(args, emb[""].shape[-1], _checkpoint(args.resume, ("t2m",)) if args.resume else None, goals)
    res = _run(lambda: train_t2m(model, examples, emb, config, resume=args.resume, overwrite=args.overwrite,
                                 extra_config={"text_encoder": args.text_encoder}))
    _say(f"trained t2m to step {res.step}: last loss {res.losses[-1][1] if res.losses else float('nan'):.4f}, "
         f"{res.samples_per_s:.1f} samples/s; checkpoint {res.checkpoint}")
    return 0


def cmd_train_stream(args) -> int:
    config = _config(T2MTrainConfig, args)
    goals = config.goal_prob > 0
    try:
        examples = load_latent_examples(args.latents, args.data, "train", max_latents=config.max_latents, paths=goals)
        examples += load_stream_examples(args.stream_data, args.stream_latents, "train", max_latents=config.max_latents,
                                         paths=goals)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    emb = text_embeddings_for(examples, args.text_encoder, args.text_cache)
    torch_seed(config.seed)
    init = _checkpoint(args.init, ("t2m", "stream")) if args.init else None
    source = _checkpoint(args.resume, ("stream",)) if args.resume else init
    model = _t2m_model(args, emb[""].shape[-1], source, goals)
    if init is not None and not args.resume:
        _load_t2m_weights(model, init, args.init, ema=False)
    res = _run(lambda: train_t2m(model, examples, emb, config, name="stream", resume=args.resume,
                                 overwrite=args.overwrite, extra_config={"text_encoder": args.text_encoder}))
    _say(f"trained streaming model to step {res.step}: last loss "
         f"{res.losses[-1][1] if res.losses else float('nan'):.4f}; checkpoint {res.checkpoint}")
    return 0


# ----------------------------------------------------------------------------- latents, bundle
def cmd_encode_latents(args) -> int:
    """Encode every clip with a trained TAE into DIR/<clip>.npy of shape (L+1, 16): the SAMPLED z per clip
    (the decoder was trained on samples), then the reference end latent appended, as the original."""

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise CLIError(str(e))
    tae = _tae(args.tae, device)
    try:
        motions = {}
        if args.all_files:
            folder = Path(args.data) / args.motion_dir
            files = sorted(folder.glob("*.npy"))
            if not files:
                raise FileNotFoundError(f"{folder}: no .npy motion files")
            mean, std = load_mean_std(args.mean_std or Path(args.data) / "mean_std")
            motions = {p.stem: (load_motion_file(p) - mean) / std for p in files}
        else:
            for split in ("train", "val", "test"):
                motions.update(load_motions(args.data, split, normalize=True, mean_std_dir=args.mean_std,
                                            motion_dir=args.motion_dir, missing_split_ok=True))
            if not motions:
                raise FileNotFoundError(f"{Path(args.data) / 'split'}: no train/val/test split files "
                                        f"(use --all-files to encode every .npy of a folder)")
        end = reference_end_latent(tae)
        written = encode_latents(tae, motions, args.out, end, sample=not args.mu, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    atomic_save_npy(Path(args.out) / "reference_end_latent.npy", end[None].numpy())
    print(f"encoded {len(written)} clips into {args.out} ({'mean' if args.mu else 'sampled'} z + end latent)")
    return 0


def cmd_make_bundle(args) -> int:
    """Combine a TAE and a text-to-motion (or streaming) training checkpoint (EMA weights when present)
    with the dataset's Mean/Std into a safetensors model bundle."""

    if not (args.data or args.mean_std):
        raise CLIError("give --data (its mean_std/ folder) or --mean-std")
    try:
        mean, std = load_mean_std(args.mean_std or Path(args.data) / "mean_std")
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    tae = _tae(args.tae, "cpu")
    ck = _checkpoint(args.t2m, ("t2m", "stream"))
    model = TextToMotionModel(T2MConfig.from_dict(ck["config"]["t2m"]))
    _load_t2m_weights(model, ck, args.t2m, ema=not args.no_ema)
    text_encoder = ck["config"].get("text_encoder", "minilm")
    out = save_bundle(args.out, tae, model.eval(), mean, std, reference_end_latent(tae), text_encoder=text_encoder,
                      description=f"trained with motionstreamer: TAE {args.tae}, {ck['trainer']} {args.t2m} "
                                  f"(step {ck['step']})")
    print(f"wrote model bundle {out} (text encoder {text_encoder}); use it with --checkpoint {out}")
    return 0


# ----------------------------------------------------------------------------- train-evaluator
def cmd_train_evaluator(args) -> int:
    """Train the text/motion evaluator (TMR losses, frozen text backbone) on a HumanML3D-272 layout folder;
    writes OUT/checkpoint_last.pt (resumable) and OUT/evaluator/ (safetensors + config.json) every
    --save-every steps."""

    check_positive(args, "epochs", "batch_size", "save_every")
    config = _config(EvaluatorTrainConfig, args, epochs=args.epochs, batch_size=args.batch_size,
                  save_every=args.save_every, progress=not args.quiet, tensorboard=not args.no_tensorboard)
    try:
        if args.model_size == "small":
            model_cfg = EvaluatorConfig.small(args.text_backbone or "minilm")
        elif args.text_backbone is None:
            model_cfg = EvaluatorConfig.official()
        else:
            model_cfg = EvaluatorConfig(text_backbone=args.text_backbone,
                                        text_dim=backbone_hidden_size(args.text_backbone))
    except Exception as e:   # a backbone name that cannot be resolved, offline or unknown
        raise CLIError(f"--text-backbone {args.text_backbone!r}: {e}")
    evaluator, res = _run(lambda: train_evaluator(args.data, config, model_cfg, resume=args.resume, split=args.split,
                                                   overwrite=args.overwrite))
    last = res.losses[-1][1] if res.losses else float("nan")
    _say(f"trained the evaluator to step {res.step}: last loss {last:.4f}, {res.samples_per_s:.1f} samples/s; "
         f"model {Path(config.out_dir) / 'evaluator'}, checkpoint {res.checkpoint}")
    return 0


# ----------------------------------------------------------------------------- distill-head
def cmd_distill_head(args) -> int:
    """Train a few-step student head (the teacher head's architecture, initialised from it) that
    reproduces the bundle's guided 50-step sampling distribution in a few steps: by default it keeps the
    teacher's guidance on [cond; uncond] rows (--set keep_guidance=false --set condition_blocks=1: one row
    and its own last transformer block), trained on the frozen transformer's conditions over the
    dataset's latent sequences (teacher forcing) and then over its own streamed rollouts. Writes
    NEW_BUNDLE: the teacher bundle byte for byte plus student_head.safetensors. Method and numbers:
    motionstreamer/train/distill.py, docs/student.md. Runs under torchrun like the train verbs."""

    out = Path(args.out)
    steps = None if args.student_steps is None else parse_step_list(args.student_steps, "--student-steps")
    # --out is the new bundle here; the run folder is --run-dir
    config = _config(DistillConfig, argparse.Namespace(**{**vars(args), "out": args.run_dir}),
                  student_steps=steps, cfg_scale=args.cfg_scale)
    if (args.stream_data is None) != (args.stream_latents is None):
        raise CLIError("give both --stream-data and --stream-latents, or neither")
    if (out / "config.json").exists() and not args.overwrite:
        raise CLIError(f"--out {out} already holds a model bundle; pass --overwrite to replace it")
    try:
        teacher = load_bundle(args.checkpoint)
    except CheckpointError as e:
        raise CLIError(str(e))
    try:
        examples = load_latent_examples(args.latents, args.data, "train")
        if args.stream_data:
            examples += load_stream_examples(args.stream_data, args.stream_latents, "train")
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    emb = text_embeddings_for(examples, teacher.text_encoder_name, args.text_cache)
    if next(iter(emb.values())).shape[-1] != teacher.t2m.config.cond_dim:
        raise CLIError(f"the teacher takes {teacher.t2m.config.cond_dim}-dim text embeddings, the text encoder "
                       f"{teacher.text_encoder_name!r} gives {next(iter(emb.values())).shape[-1]}")
    torch_seed(config.seed)
    student, res = _run(lambda: distill_head(teacher, examples, emb, config, resume=args.resume,
                                             teacher_name=str(Path(args.checkpoint).resolve())))
    if _is_main():
        add_student_head(args.checkpoint, student, out)
    _say(f"distilled a {','.join(map(str, student.student_config.steps))}-step head in {res.step} steps "
         f"({res.samples_per_s:.1f} conditions/s); wrote {out} (run folder {config.out_dir}). "
         f"Compare it with its teacher: motionstreamer evaluate head --checkpoint {out} --data {args.data} "
         f"--latents {args.latents}")
    return 0
