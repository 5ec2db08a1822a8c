"""CLI verb `export-onnx`."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("export-onnx", help="export the streaming graphs to ONNX (+ manifest)",
                              description="Export prefill, decode step (KV cache in/out), the guided head "
                                          "sampling loop and the TAE decoder step (conv states in/out).")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="model bundle (default: the embedded model)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--head", action="append", default=None, metavar="METHOD:STEPS",
                   help="sampler variants to export: ddpm:N, ddim:N, or student:K for a distilled bundle's few-step "
                        "head (default ddpm:50 and ddpm:10, plus student:K for every K the student supports)")
    p.add_argument("--quantize", default=None, metavar="TYPE",
                   help="int8: int8 weights in the transformer and head graphs (CPU deployment; "
                        "the TAE decoder stays fp32)")
    p.set_defaults(func=cmd_export)


def parse_head(spec: str):
    from motionstreamer.cli import CLIError

    method, _, steps = spec.partition(":")
    if method not in ("ddpm", "ddim", "student") or not steps.isdigit() or not 1 <= int(steps) <= 1000:
        raise CLIError(f"bad --head {spec!r}: use ddpm:N, ddim:N or student:K")
    return method, int(steps)


def cmd_export(args) -> int:
    from motionstreamer.checkpoints import CheckpointError, load_bundle
    from motionstreamer.cli import CLIError, check_output
    from motionstreamer.export.onnx_export import QUANTIZE, export_bundle
    from motionstreamer.runtime.loading import default_model_dir

    if args.quantize is not None and args.quantize not in QUANTIZE:
        raise CLIError(f"bad --quantize {args.quantize!r}: use {' or '.join(QUANTIZE)} (omit it for fp32)")
    heads = [parse_head(h) for h in args.head] if args.head else None
    check_output(args.out, "--out", "folder")
    path = args.checkpoint or default_model_dir()
    try:
        bundle = load_bundle(path)
    except (CheckpointError, FileNotFoundError) as e:
        raise CLIError(str(e))
    for method, steps in heads or []:
        if steps > bundle.t2m.config.head.num_train_steps:
            raise CLIError(f"--head {method}:{steps}: at most {bundle.t2m.config.head.num_train_steps} steps")
    try:
        m = export_bundle(bundle, args.out, heads, quantize=args.quantize)
    except ValueError as e:   # a student variant the bundle cannot run
        raise CLIError(f"--head: {e}")
    q = f" ({len(m['quantization']['files'])} int8)" if m["quantization"] else ""
    print(f"exported {len(m['heads']) + 3} graphs{q} + manifest.json to {args.out}")
    return 0
