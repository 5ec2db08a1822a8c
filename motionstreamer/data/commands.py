"""CLI verb `synth`."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic motion dataset (HumanML3D-272 layout)",
                              description="Procedural motions on the SMPL skeleton (walk, jog, run, turns, jumps, "
                                          "waves, ...) with paraphrased captions, in the HumanML3D-272 layout.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--clips", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream-pairs", type=int, default=0, help="also write this many BABEL-stream A/B pairs")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from motionstreamer.cli import CLIError
    from motionstreamer.data.synth import make_dataset

    if args.clips < 1 or args.clips > 1_000_000:
        raise CLIError(f"--clips must be in [1, 1000000], got {args.clips}")
    if args.stream_pairs < 0:
        raise CLIError(f"--stream-pairs must be >= 0, got {args.stream_pairs}")
    try:
        meta = make_dataset(args.out, args.clips, args.seed, args.stream_pairs, args.min_seconds, args.max_seconds)
    except ValueError as e:
        raise CLIError(str(e))
    print(f"wrote {len(meta['actions'])} clips ({len(set(meta['actions'].values()))} kinds)"
          f"{f' and {args.stream_pairs} stream pairs' if args.stream_pairs else ''} to {args.out}")
    return 0
