"""CLI verb `export-onnx`."""
from __future__ import annotations

from motionstreamer.checkpoints import CheckpointError, load_bundle
from motionstreamer.cli import CLIError, add_deprecated_alias, add_verb, check_output
from motionstreamer.export.onnx_export import QUANTIZE, export_bundle
from motionstreamer.models.sampling import SAMPLERS
from motionstreamer.runtime.loading import default_model_dir

VARIANT_KINDS = (*SAMPLERS, "student")


def register(subparsers) -> None:
    p = add_verb(subparsers, "export-onnx", cmd_export,
                 "Export prefill, decode step (KV cache in/out), the guided head sampling loop and the TAE decoder "
                 "step (conv states in/out).")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="model bundle (default: the embedded model)")
    p.add_argument("--out", required=True, metavar="DIR")
    variant = p.add_argument(
        "--variant", action="append", default=None, metavar="SAMPLER:STEPS",
        help="sampling loops to export, one head graph each: ddpm:N, ddim:N, or student:K for a distilled bundle's "
             "few-step head (default ddpm:50 and ddpm:10, plus student:K for every K the student supports)")
    add_deprecated_alias(p, "--head", variant)
    p.add_argument("--quantize", default=None, metavar="TYPE",
                   help="int8: int8 weights in the transformer and head graphs (CPU deployment; "
                        "the TAE decoder stays fp32)")


def parse_variant(spec: str) -> tuple[str, int]:
    kind, _, steps = spec.partition(":")
    if kind not in VARIANT_KINDS or not steps.isdigit() or not 1 <= int(steps) <= 1000:
        raise CLIError(f"bad --variant {spec!r}: use ddpm:N, ddim:N or student:K")
    return kind, int(steps)


def cmd_export(args) -> int:
    if args.quantize is not None and args.quantize not in QUANTIZE:
        raise CLIError(f"bad --quantize {args.quantize!r}: use {' or '.join(QUANTIZE)} (omit it for fp32)")
    variants = [parse_variant(v) for v in args.variant] if args.variant else None
    check_output(args.out, "--out", "folder")
    path = args.checkpoint or default_model_dir()
    try:
        bundle = load_bundle(path)
    except (CheckpointError, FileNotFoundError) as e:
        raise CLIError(str(e))
    for kind, steps in variants or []:
        if steps > bundle.t2m.config.head.num_train_steps:
            raise CLIError(f"--variant {kind}:{steps}: at most {bundle.t2m.config.head.num_train_steps} steps")
    try:
        m = export_bundle(bundle, args.out, variants, quantize=args.quantize)
    except ValueError as e:   # a student variant the bundle cannot run
        raise CLIError(f"--variant: {e}")
    q = f" ({len(m['quantization']['files'])} int8)" if m["quantization"] else ""
    print(f"exported {len(m['heads']) + 3} graphs{q} + manifest.json to {args.out}")
    return 0
