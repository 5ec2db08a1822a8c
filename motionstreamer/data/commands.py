"""CLI verbs `synth` and `prepare-amass`."""
from __future__ import annotations

import sys
from pathlib import Path

from motionstreamer import FPS
from motionstreamer.cli import CLIError, add_verb
from motionstreamer.data.amass import prepare_amass
from motionstreamer.data.synth import make_dataset


def register(subparsers) -> None:
    p = add_verb(subparsers, "synth", cmd_synth)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: new or empty (written beside it, renamed into place when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset (or anything) already in --out")
    p.add_argument("--clips", type=int, default=500, help="number of clips (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    p.add_argument("--stream-pairs", type=int, default=0, metavar="M", help="also write M BABEL-stream A/B pairs")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip (default 2.0)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="clips are shorter than this (default 10.0)")
    p.add_argument("--composite-fraction", type=float, default=0.1,
                   help="fraction of clips made of two actions, with sub-captions (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add_verb(subparsers, "prepare-amass", cmd_prepare_amass)
    p.add_argument("--index", required=True, metavar="FILE",
                   help="clip index: CSV with source_path,start_frame,end_frame,new_name (HumanML3D index.csv) "
                        "or rows 'path start end id'; start/end are frames of the 30 fps strided sequence")
    p.add_argument("--amass-root", metavar="DIR", default=None,
                   help="directory that relative index paths are resolved against (.npy names map to .npz)")
    p.add_argument("--body-model", required=True, metavar="NPZ", help="SMPL-X NEUTRAL .npz (the released data uses it)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--fps", type=int, default=FPS, help="target rate of the floor stride (default 30)")
    p.add_argument("--strict", action="store_true", help="stop at the first clip that fails instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_synth(args) -> int:
    """Procedural motions on the SMPL skeleton (walk, jog, run, walk backwards, side steps, turns, jumps,
    squats, waves, raised arms, kicks, standing, walking in a circle, sitting down) with paraphrased
    captions, written in the HumanML3D-272 layout: motion_data/, texts/, split/, mean_std/ and
    synth_meta.json (action label per clip). With --stream-pairs also babel_stream/ (A/B pairs) and
    babel_272/ (the pairs' segments)."""

    if args.clips < 1 or args.clips > 1_000_000:
        raise CLIError(f"--clips must be in [1, 1000000], got {args.clips}")
    if args.stream_pairs < 0 or args.stream_pairs > 1_000_000:
        raise CLIError(f"--stream-pairs must be in [0, 1000000], got {args.stream_pairs}")
    if not 0.5 <= args.min_seconds <= args.max_seconds <= 60.0:
        raise CLIError("need 0.5 <= --min-seconds <= --max-seconds <= 60, "
                       f"got {args.min_seconds} and {args.max_seconds}")
    if not 0.0 <= args.composite_fraction <= 1.0:
        raise CLIError(f"--composite-fraction must be in [0, 1], got {args.composite_fraction}")
    try:
        meta = make_dataset(args.out, args.clips, args.seed, args.stream_pairs, args.min_seconds, args.max_seconds,
                            progress=not args.quiet, composite_fraction=args.composite_fraction,
                            overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        raise CLIError(str(e))
    kinds = {a for a in meta["actions"].values() if "+" not in a}
    print(f"wrote {len(meta['actions'])} clips ({len(kinds)} action kinds)"
          f"{f' and {args.stream_pairs} stream pairs' if args.stream_pairs else ''} to {args.out}")
    return 0


def cmd_prepare_amass(args) -> int:
    """The released AMASS -> HumanML3D-272 pipeline: 30 fps floor stride, crop, Z-up -> Y-up, mirror, face
    +Z, SMPL-X joints, 272 features. Writes OUT/motion_data/<id>.npy, OUT/motion_data/M<id>.npy and
    OUT/mean_std/{Mean,Std}.npy. No body model is shipped: pass SMPLX_NEUTRAL.npz (keys v_template,
    shapedirs, J_regressor, kintree_table)."""

    if args.fps < 1:
        raise CLIError(f"--fps must be >= 1, got {args.fps}")
    if args.amass_root is not None and not Path(args.amass_root).is_dir():
        raise CLIError(f"--amass-root {args.amass_root}: not a directory")
    try:
        result = prepare_amass(args.index, args.amass_root, args.body_model, args.out, args.fps,
                               strict=args.strict, progress=not args.quiet)
    except ValueError as e:
        raise CLIError(str(e))
    for where, reason in result["failed"]:
        print(f"motionstreamer: skipped {where}: {reason}", file=sys.stderr)
    n = len(result["written"])
    print(f"wrote {n} clips and {n} mirrors to {result['motion_dir']}"
          + (f", Mean/Std to {result['mean_std_dir']}" if n else "")
          + (f"; {len(result['failed'])} failed" if result["failed"] else ""))
    return 1 if result["failed"] or not n else 0
