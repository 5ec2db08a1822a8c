"""`motionstreamer <verb>`: one argparse parser; each area of the package registers its own verbs.

A command module exposes `register(subparsers)`, adds its parsers, and sets `func` on each; the
handler imports the heavy modules itself so that `motionstreamer --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in `--help`.
COMMAND_MODULES = (
    "motionstreamer.runtime.commands",   # generate, stream
    "motionstreamer.data.commands",      # synth
    "motionstreamer.data.amass",         # prepare-amass
    "motionstreamer.io.commands",        # render, to-bvh
    "motionstreamer.models.commands",    # convert-checkpoint, download
    "motionstreamer.train.commands",     # train tae|t2m|stream|evaluator, encode-latents
    "motionstreamer.eval.commands",      # evaluate, train-evaluator
    "motionstreamer.export.commands",    # export-onnx
    "motionstreamer.serve.commands",     # serve
)


class CLIError(Exception):
    """A user-facing error: printed as `motionstreamer: error: ...` with exit code 2, no traceback."""


def check_output(path, flag: str, kind: str = "file") -> None:
    """CLIError naming `flag` when the file or folder `path` cannot be written (utils.check_writable).
    Verbs call it before their work, so that a bad destination never costs a run."""
    from motionstreamer.utils import check_writable

    try:
        check_writable(path, kind)
    except ValueError as e:
        raise CLIError(f"{flag}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    from motionstreamer import __version__

    parser = argparse.ArgumentParser(
        prog="motionstreamer",
        description="Streaming text-to-motion generation: generate, stream, train, evaluate, export.",
    )
    parser.add_argument("--version", action="version", version=f"motionstreamer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        parser.exit(2, f"motionstreamer: error: {e}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
