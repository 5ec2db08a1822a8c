"""CLI verb `synth`."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic motion dataset (HumanML3D-272 layout, optional BABEL-stream pairs)",
        description="Procedural motions on the SMPL skeleton (walk, jog, run, walk backwards, side steps, turns, "
                    "jumps, squats, waves, raised arms, kicks, standing, walking in a circle, sitting down) with "
                    "paraphrased captions, written in the HumanML3D-272 layout: motion_data/, texts/, split/, "
                    "mean_std/ and synth_meta.json (action label per clip). With --stream-pairs also "
                    "babel_stream/ (A/B pairs) and babel_272/ (the pairs' segments).")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files are replaced atomically)")
    p.add_argument("--clips", type=int, default=500, help="number of clips (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    p.add_argument("--stream-pairs", type=int, default=0, metavar="M", help="also write M BABEL-stream A/B pairs")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip (default 2.0)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="clips are shorter than this (default 10.0)")
    p.add_argument("--composite-fraction", type=float, default=0.1,
                   help="fraction of clips made of two actions, with sub-captions (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from motionstreamer.cli import CLIError
    from motionstreamer.data.synth import make_dataset

    if args.clips < 1 or args.clips > 1_000_000:
        raise CLIError(f"--clips must be in [1, 1000000], got {args.clips}")
    if args.stream_pairs < 0 or args.stream_pairs > 1_000_000:
        raise CLIError(f"--stream-pairs must be in [0, 1000000], got {args.stream_pairs}")
    if not 0.5 <= args.min_seconds <= args.max_seconds <= 60.0:
        raise CLIError(f"need 0.5 <= --min-seconds <= --max-seconds <= 60, got {args.min_seconds} and {args.max_seconds}")
    if not 0.0 <= args.composite_fraction <= 1.0:
        raise CLIError(f"--composite-fraction must be in [0, 1], got {args.composite_fraction}")
    try:
        meta = make_dataset(args.out, args.clips, args.seed, args.stream_pairs, args.min_seconds, args.max_seconds,
                            progress=not args.quiet, composite_fraction=args.composite_fraction)
    except (ValueError, OSError) as e:
        raise CLIError(str(e))
    kinds = {a for a in meta["actions"].values() if "+" not in a}
    print(f"wrote {len(meta['actions'])} clips ({len(kinds)} action kinds)"
          f"{f' and {args.stream_pairs} stream pairs' if args.stream_pairs else ''} to {args.out}")
    return 0
