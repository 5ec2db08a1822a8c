"""CLI verb `evaluate gt|tae|t2m|goals|stream|head`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from motionstreamer.checkpoints import load_tae
from motionstreamer.cli import CLIError, add_group, check_output, check_positive, parse_step_list
from motionstreamer.data.humanml3d import load_mean_std
from motionstreamer.eval import protocols as P
from motionstreamer.eval.head_quality import format_comparison, head_report
from motionstreamer.models.evaluator import TMREvaluator
from motionstreamer.models.sampling import SamplerSettings
from motionstreamer.runtime.engine import resolve_config
from motionstreamer.runtime.loading import DEFAULT_MODEL_DIR, load_models, load_onnx_models, resolve_device
from motionstreamer.runtime.ort_backend import load_ort
from motionstreamer.runtime.sampler_args import add_sampler_args, generation_config
from motionstreamer.utils import atomic_write_json


def _evaluator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--evaluator", default=None, metavar="PATH",
                   help="evaluator folder (train-evaluator output or a bundle with an evaluator) or the released "
                        "Evaluator_272/epoch=99.ckpt (default: the embedded model's evaluator, trained on the "
                        "synthetic dataset: use it for synthetic data only)")
    p.add_argument("--text-backbone", default=None, metavar="NAME|DIR",
                   help="where the text backbone comes from (default: the evaluator's own; for the released "
                        "checkpoint distilbert-base-uncased, whose weights it contains)")
    p.add_argument("--repeats", type=int, default=1, help="independent draws of the test set (mean ± 95%% CI)")
    p.add_argument("--batch", type=int, default=32, help="R-precision batch (the field uses 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="JSON", help="results file (default results/eval_<protocol>.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser, split: str = "test") -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="HumanML3D-272 layout folder")
    p.add_argument("--split", default=split)
    p.add_argument("--mean-std", default=None, metavar="DIR", help="Mean.npy/Std.npy folder (default DATA/mean_std)")


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="model bundle (default: the embedded model)")
    add_sampler_args(p, "cfg_scale", "sampling_steps", "head", "sampler", helps={
        "sampling_steps": "diffusion sampling steps (default: 50, the original, for the teacher; a student's default "
                          "count)",
        "head": "teacher: the guided head; student: the bundle's distilled few-step head (default: the bundle's "
                "choice)"})
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--onnx", default=None, metavar="DIR",
                   help="an export-onnx folder: generate with the onnxruntime engine instead (e.g. to score an "
                        "int8 export against its fp32 one); --steps must be one of its exported head variants")


def register(subparsers) -> None:
    sub = add_group(subparsers, "evaluate",
                    "Text-to-motion metrics with the TMR-style evaluator: FID, R-precision, MM-Dist, Diversity (and "
                    "MPJPE, MultiModality, transition metrics); mean ± 95% CI over repeats, printed and written as "
                    "JSON.", "protocol", "<protocol>")
    g = sub.add_parser("gt", help="real vs real (the reference row of every table)")
    _data_args(g)
    _evaluator_args(g)
    g.set_defaults(func=cmd_evaluate)
    t = sub.add_parser("tae", help="TAE reconstruction: MPJPE (mm) and reconstruction FID")
    _data_args(t)
    _evaluator_args(t)
    t.add_argument("--tae", required=True, metavar="PATH",
                   help="model bundle dir, TAE training checkpoint_last.pt, or the released net_last.pth")
    t.add_argument("--tae-mean", action="store_true", help="decode the posterior mean instead of a sample")
    t.set_defaults(func=cmd_evaluate)
    m = sub.add_parser("t2m", help="text-to-motion generation at ground-truth lengths")
    _data_args(m)
    _evaluator_args(m)
    _generation_args(m)
    m.add_argument("--mm-captions", type=int, default=0, help="captions for MultiModality (0: skip; the field: 100)")
    m.add_argument("--mm-repeats", type=int, default=30, help="generations per MultiModality caption")
    m.add_argument("--shuffle-text", action="store_true",
                   help="random-text baseline: generate each motion from another caption of its batch, score it "
                        "against its own")
    m.set_defaults(func=cmd_evaluate)
    o = sub.add_parser("goals", help="goals beside text: distance to held-out goals at their deadlines, text "
                                     "alignment with and without goals",
                       description="Each test crop's own end (its root position and facing, its duration as the "
                                   "deadline) is the goal of a stream generated from its caption; reported: the "
                                   "distance to the goal at the deadline (median, p90), the facing error, the share "
                                   "within 0.3 m (all goals, goals 2-5 m away, those at walking pace), foot skating, "
                                   "and FID / R-precision with goals beside the same without (a goal-trained model; "
                                   "docs/goals.md).")
    _data_args(o)
    _evaluator_args(o)
    _generation_args(o)
    add_sampler_args(o, "goal_steering")
    o.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("stream", help="prompt sequences (BABEL-stream pairs): segment and transition metrics")
    s.add_argument("--stream-data", required=True, metavar="DIR", help="BABEL-stream layout folder")
    s.add_argument("--split", default="val")
    s.add_argument("--mean-std", required=True, metavar="DIR",
                   help="statistics the evaluator and the model normalise with (e.g. babel_272/t2m_babel_mean_std)")
    s.add_argument("--transition-length", type=int, default=60, help="frames around each prompt change (FlowMDM: 60)")
    _evaluator_args(s)
    _generation_args(s)
    s.set_defaults(func=cmd_evaluate)
    h = sub.add_parser("head", help="diffusion head only: a few-step student vs its guided teacher",
                       description="Distance between latent samplers on held-out teacher-forced conditions: the "
                                   "bundle's guided 50-step teacher is the reference; the teacher with other seeds "
                                   "(the noise floor), the bundle's student head at each of its step counts and the "
                                   "teacher respaced to fewer steps are compared with it (energy distance, sliced "
                                   "Wasserstein-2; mean ± 95%% CI over conditions).")
    h.add_argument("--checkpoint", default=None, metavar="DIR", help="model bundle (default: the embedded model)")
    _data_args(h)
    h.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents of --data (encode-latents)")
    h.add_argument("--conditions", type=int, default=64, help="held-out conditions (default 64)")
    h.add_argument("--samples", type=int, default=256, help="samples per condition and sampler (default 256)")
    h.add_argument("--respaced", default="1,2,4,10", metavar="K,K,...",
                   help="step counts of the respaced-teacher baselines ('' for none)")
    add_sampler_args(h, "cfg_scale", cfg_scale=None, helps={
        "cfg_scale": f"teacher guidance scale (default: the one the student reproduces, else "
                     f"{SamplerSettings.cfg_scale:g})"})
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--out", default=None, metavar="JSON", help="results file (default results/eval_head.json)")
    h.add_argument("--device", default="auto")
    h.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    h.set_defaults(func=cmd_evaluate_head)


# ----------------------------------------------------------------------------- evaluate
def load_evaluator(path: str | None, backbone: str | None, device):
    if path is None:
        if not (DEFAULT_MODEL_DIR / "evaluator.safetensors").is_file():
            raise CLIError("--evaluator is required: the embedded default model ships no evaluator")
        path = str(DEFAULT_MODEL_DIR)
    if not Path(path).exists():
        raise CLIError(f"--evaluator {path}: not found")
    try:
        return TMREvaluator.load(path, device=device, backbone=backbone)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CLIError(f"--evaluator {path}: {e}")


def _generation_config(args):
    """The sampler settings of the sampler flags, checked (CLIError): built once, before any data or model
    loads."""
    config = generation_config(args)
    try:
        config.validate()
    except ValueError as e:
        raise CLIError(str(e))
    return config


def _generation(args, device, config):
    """(bundle, text encoder, GenerationConfig, description, backend factory or None) for the checked
    generation config `config`. With --onnx the bundle is the export's statistics and the factory
    builds onnxruntime backends of the batch's size."""
    if args.onnx:
        if args.checkpoint or args.dtype:
            raise CLIError("--onnx takes the models from the export: leave out --checkpoint and --dtype")
        try:
            stats, text_encoder, desc, probe = load_onnx_models(args.onnx, config)
        except ValueError as e:
            raise CLIError(str(e))
        # one backend per batch size, reused across batches (each new stream resets its slot), so the
        # graphs are loaded once per size rather than once per batch
        backends = {1: probe}

        def backend_for(capacity: int):
            if capacity not in backends:
                backends[capacity] = load_ort(args.onnx, capacity, config=config)[1]
            return backends[capacity]
        return stats, text_encoder, config, desc, backend_for
    try:
        bundle, text_encoder, desc = load_models(args.checkpoint, device=str(device), dtype=args.dtype)
        resolve_config(config, bundle.config)   # --head/--steps against the bundle (a student's step counts)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CLIError(str(e))
    return bundle, text_encoder, config, desc, None


def cmd_evaluate(args) -> int:
    check_positive(args, "repeats", "batch", "sampling_steps", "transition_length")
    out = Path(args.out or f"results/eval_{args.protocol}.json")
    check_output(out, "--out")      # before the evaluation: an unwritable --out must not cost it
    gen_cfg = _generation_config(args) if hasattr(args, "cfg_scale") else None
    if getattr(args, "mm_captions", 0) < 0:
        raise CLIError(f"--mm-captions must be >= 0, got {args.mm_captions}")
    if getattr(args, "mm_captions", 0) and args.mm_repeats <= 10:
        raise CLIError(f"--mm-repeats must be > 10 (MultiModality draws 10 pairs of repeats), got {args.mm_repeats}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise CLIError(str(e))
    torch.manual_seed(args.seed)
    progress = not args.quiet
    evaluator = load_evaluator(args.evaluator, args.text_backbone, device)
    kw = {"repeats": args.repeats, "batch": args.batch, "seed": args.seed, "progress": progress}
    try:
        if args.protocol == "stream":
            mean, std = load_mean_std(args.mean_std)
            cases = P.load_stream_cases(args.stream_data, args.split, mean=mean, std=std)
            bundle, text_encoder, gcfg, desc, factory = _generation(args, device, gen_cfg)
            result = P.evaluate_stream(evaluator, cases,
                                       P.runtime_stream_generator(bundle, text_encoder, gcfg, device, factory),
                                       mean, std, transition_length=args.transition_length, **kw)
            result.info.update(source=f"{args.stream_data} ({args.split})", model=desc)
        else:
            evalset = P.EvalSet.load(args.data, args.split, text=args.protocol != "tae", mean_std_dir=args.mean_std)
            if args.protocol == "gt":
                result = P.evaluate_gt(evaluator, evalset, **kw)
            elif args.protocol == "tae":
                try:
                    tae = load_tae(args.tae, device)
                except (ValueError, FileNotFoundError) as e:
                    raise CLIError(f"--tae: {e}")
                result = P.evaluate_tae(evaluator, tae, evalset, sample=not args.tae_mean, **kw)
                result.info["tae"] = str(args.tae)
            elif args.protocol == "goals":
                bundle, text_encoder, gcfg, desc, factory = _generation(args, device, gen_cfg)
                result = P.evaluate_goals(evaluator, evalset,
                                          P.runtime_goal_generator(bundle, text_encoder, gcfg, device, factory), **kw)
                result.info["model"] = desc
            else:
                bundle, text_encoder, gcfg, desc, factory = _generation(args, device, gen_cfg)
                result = P.evaluate_t2m(evaluator, evalset,
                                        P.runtime_generator(bundle, text_encoder, gcfg, device, factory),
                                        mm_captions=args.mm_captions, mm_repeats=args.mm_repeats,
                                        shuffle_text=args.shuffle_text, **kw)
                result.info["model"] = desc
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e))
    result.info["evaluator"] = str(args.evaluator) if args.evaluator else "embedded default model"
    print(P.format_table(result), flush=True)    # first: a failing write below must not lose the table
    try:
        atomic_write_json(out, result.to_json())
    except OSError as e:
        raise CLIError(f"--out {out}: could not write the results ({e.strerror or e}); the table above holds them")
    print(f"wrote {out}")
    return 0


def cmd_evaluate_head(args) -> int:
    check_positive(args, "conditions", "threads")
    if args.samples < 2:
        raise CLIError(f"--samples must be >= 2, got {args.samples}")
    respaced = parse_step_list(args.respaced, "--respaced")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bundle, text_encoder, desc = load_models(args.checkpoint, args.device, "fp32")
        for k in respaced:
            bundle.t2m.diff_loss.sampling_process(k, False)
        report = head_report(bundle, text_encoder, args.data, args.latents, args.split, args.conditions,
                             args.samples, args.seed, respaced=respaced, cfg_scale=args.cfg_scale)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e))
    report["model"] = desc
    out = Path(args.out or "results/eval_head.json")
    atomic_write_json(out, report)
    print(format_comparison(report["samplers"], f"head samplers vs the guided teacher ({report['conditions']} "
                                                f"{args.split} conditions x {args.samples} samples)"))
    print(f"wrote {out}")
    return 0
