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
    "motionstreamer.data.commands",      # synth, prepare-amass
    "motionstreamer.io.commands",        # render, to-bvh
    "motionstreamer.models.commands",    # convert-checkpoint, download
    "motionstreamer.train.commands",     # train tae|t2m|stream, train-evaluator, encode-latents, make-bundle
    "motionstreamer.eval.commands",      # evaluate
    "motionstreamer.export.commands",    # export-onnx
    "motionstreamer.serve.commands",     # serve
)


class CLIError(Exception):
    """A user-facing error: printed as `motionstreamer: error: ...` with exit code 2, no traceback."""


def add_verb(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
    """A verb's parser that runs `func`: `help` in the verb list, the handler's docstring as the
    verb's own --help description (argparse re-wraps it)."""
    import inspect

    p = subparsers.add_parser(name, help=help, description=inspect.cleandoc(func.__doc__ or help))
    p.set_defaults(func=func)
    return p


def add_group(subparsers, name: str, help: str, description: str, dest: str, metavar: str):
    """A verb with sub-verbs (`train tae`, `evaluate t2m`); alone it prints its help. Returns the
    sub-verbs' subparsers."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.set_defaults(func=lambda args: p.print_help() or 2)
    return p.add_subparsers(dest=dest, metavar=metavar)


def check_positive(args, *names) -> None:
    """CLIError for the first of these integer flags given as < 1."""
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise CLIError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


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
