"""CLI verbs for motion output: `render` (skeleton .mp4 / .gif) and `to-bvh`."""
from __future__ import annotations

import argparse
from pathlib import Path

RENDER_HELP = """\
Render a motion .npy as a skeleton video in the reference visualiser's style.
INPUT is 272-dim features (frames, 272) or joint positions (frames, 22, 3) / (frames, 66).
Features must be de-normalised; give --mean and --std if the file holds normalised features.
"""
TO_BVH_HELP = """\
Convert 272-dim features (frames, 272) to a BVH file (SMPL 24-joint skeleton, ZYX Euler degrees).
Features must be de-normalised; give --mean and --std if the file holds normalised features.
"""


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", metavar="MEAN.npy", help="feature Mean (272,) to de-normalise INPUT (needs --std)")
    p.add_argument("--std", metavar="STD.npy", help="feature Std (272,) to de-normalise INPUT (needs --mean)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second of INPUT (default: 30)")


def register(subparsers) -> None:
    p = subparsers.add_parser("render", help="render a motion .npy to .mp4 or .gif", description=RENDER_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT.npy", help="features (frames, 272) or joints (frames, 22, 3)")
    p.add_argument("--out", required=True, metavar="OUT.mp4|OUT.gif", help="output video; format from the suffix")
    _add_stats_args(p)
    p.add_argument("--title", default="", help="caption above the skeleton (wrapped at 40 characters)")
    p.add_argument("--size", type=int, default=480,
                   help="width = height in pixels, even (default: 480; the reference renders 960)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_render)

    p = subparsers.add_parser("to-bvh", help="convert 272-dim features to BVH", description=TO_BVH_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT.npy", help="272-dim features (frames, 272)")
    p.add_argument("--out", required=True, metavar="OUT.bvh", help="output BVH file")
    _add_stats_args(p)
    p.add_argument("--floor-at-zero", action="store_true",
                   help="write the root position without the rest-pelvis offset, so the floor is at y = 0 "
                        "(the released converter adds it; its files put the floor ~0.22 m lower)")
    p.set_defaults(func=cmd_to_bvh)


def _check_common(args, suffixes: tuple[str, ...]) -> None:
    from motionstreamer.cli import CLIError

    if Path(args.out).suffix.lower() not in suffixes:
        raise CLIError(f"--out {args.out!r}: the output must end in {' or '.join(suffixes)}")
    if Path(args.out).is_dir():
        raise CLIError(f"--out {args.out!r} is a directory; give a file name")
    if (args.mean is None) != (args.std is None):
        given, missing = ("--mean", "--std") if args.mean is not None else ("--std", "--mean")
        raise CLIError(f"{given} needs {missing} too (normalised features are de-normalised with both)")
    if not (args.fps > 0 and args.fps <= 1000):
        raise CLIError(f"--fps must be in (0, 1000], got {args.fps:g}")


def _load(args):
    """(input array, mean, std) with file errors turned into CLI errors naming the argument."""
    from motionstreamer.cli import CLIError
    from motionstreamer.io.motion_io import load_motion_array

    def load(path, what):
        try:
            return load_motion_array(path, name=f"{what} {path}")
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e)) from None

    x = load(args.input, "INPUT")
    stats = []
    for flag, path in (("--mean", args.mean), ("--std", args.std)):
        s = load(path, flag) if path is not None else None
        if s is not None and s.shape != (272,):
            raise CLIError(f"{flag} {path}: must hold the 272 feature statistics, shape (272,), got {s.shape}")
        stats.append(s)
    return x, *stats


def cmd_render(args) -> int:
    from motionstreamer.cli import CLIError

    _check_common(args, (".mp4", ".gif"))
    if args.size < 64 or args.size > 4096 or args.size % 2:
        raise CLIError(f"--size must be an even number of pixels in [64, 4096], got {args.size}")
    x, mean, std = _load(args)

    from motionstreamer.io.motion_io import to_joints
    from motionstreamer.io.render import render_motion

    try:
        joints = to_joints(x, mean, std, name=f"INPUT {args.input}")
        render_motion(joints, args.out, title=args.title, fps=args.fps, progress=not args.quiet, size=args.size)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except OSError as e:   # unwritable --out, ffmpeg failure
        raise CLIError(f"--out {args.out}: cannot write the video ({e})") from None
    if not args.quiet:
        print(f"wrote {args.out} ({len(joints)} frames, {len(joints) / args.fps:.2f} s at {args.fps:g} fps)")
    return 0


def cmd_to_bvh(args) -> int:
    from motionstreamer.cli import CLIError

    _check_common(args, (".bvh",))
    x, mean, std = _load(args)

    from motionstreamer.io.bvh import features_to_bvh
    from motionstreamer.io.motion_io import motion_kind, to_features

    try:
        if motion_kind(x, f"INPUT {args.input}") != "features":
            raise CLIError(f"INPUT {args.input} holds joint positions {x.shape}; to-bvh needs 272-dim features "
                           "(frames, 272), whose rotations the BVH channels are made of")
        features = to_features(x, mean, std, name=f"INPUT {args.input}")
        features_to_bvh(args.out, features, fps=args.fps, floor_at_zero=args.floor_at_zero)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"--out {args.out}: cannot write ({e})") from None
    print(f"wrote {args.out} ({len(features)} frames at {args.fps:g} fps)")
    return 0
