"""`motionstreamer <verb>`: one argparse parser; each area of the package registers its own verbs.

A command module exposes `register(subparsers)`, adds the parsers of its verbs (VERBS names them and
their one-line help, in `--help` order), and sets `func` on each. Command modules import what their
handlers need at their top, so only the module of the verb being run is imported: `motionstreamer
--help` lists VERBS without importing any.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import sys

from motionstreamer import __version__
from motionstreamer.utils import check_writable

# verb -> (the command module that registers it, its line in `--help`); the order is `--help`'s
VERBS = {
    "generate": ("motionstreamer.runtime.commands", "text -> motion (one prompt)"),
    "stream": ("motionstreamer.runtime.commands", "several prompts over time -> one continuous motion"),
    "synth": ("motionstreamer.data.commands",
              "write a synthetic motion dataset (HumanML3D-272 layout, optional BABEL-stream pairs)"),
    "prepare-amass": ("motionstreamer.data.commands",
                      "build 272-dim clips (and mirrors, Mean/Std) from AMASS with your body model"),
    "render": ("motionstreamer.io.commands", "render a motion .npy to .mp4 or .gif"),
    "to-bvh": ("motionstreamer.io.commands", "convert a motion .npy to BVH"),
    "to-glb": ("motionstreamer.io.commands", "convert a motion .npy to glTF binary (.glb)"),
    "to-smpl": ("motionstreamer.io.commands", "convert a motion .npy to SMPL parameters (AMASS .npz)"),
    "to-fbx": ("motionstreamer.io.commands", "convert a motion .npy to FBX (through Blender)"),
    "retarget": ("motionstreamer.io.commands", "put a motion onto your own rig (BVH, glTF, FBX)"),
    "blender-addon": ("motionstreamer.io.commands", "zip the Blender add-on (a Blender 4.2+ extension)"),
    "convert-checkpoint": ("motionstreamer.models.commands", "official .pth files -> a safetensors model bundle"),
    "download": ("motionstreamer.models.commands", "download the official checkpoints from the Hugging Face Hub"),
    "train": ("motionstreamer.train.commands", "train a model (tae | t2m | stream)"),
    "encode-latents": ("motionstreamer.train.commands", "encode a dataset into per-clip latent files"),
    "make-bundle": ("motionstreamer.train.commands", "training checkpoints -> a model bundle for generate/stream"),
    "train-evaluator": ("motionstreamer.train.commands", "train the TMR-style evaluator"),
    "distill-head": ("motionstreamer.train.commands",
                     "distil the guided 50-step head into a 1-4 step student (no guidance rows)"),
    "evaluate": ("motionstreamer.eval.commands",
                 "evaluate real data, a TAE, or generation (gt | tae | t2m | stream | head)"),
    "export-onnx": ("motionstreamer.export.commands", "export the streaming graphs to ONNX (+ manifest)"),
    "serve": ("motionstreamer.serve.commands", "live service: WebSocket streaming API and a browser app"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in VERBS.values()))
# optional dependencies -> the extra (pyproject.toml) that installs them
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "websockets": "serve", "ray": "serve", "onnx": "onnx",
          "onnxruntime": "onnx", "transformers": "eval", "triton": "triton"}


class CLIError(Exception):
    """A user-facing error: printed as `motionstreamer: error: ...` with exit code 2, no traceback."""


def check_output(path, flag: str, kind: str = "file") -> None:
    """CLIError naming `flag` when the file or folder `path` cannot be written (utils.check_writable).
    Verbs call it before their work, so that a bad destination never costs a run."""
    try:
        check_writable(path, kind)
    except ValueError as e:
        raise CLIError(f"{flag}: {e}") from None


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: does what the current flag does, after a one-line note on stderr."""

    def __init__(self, option_strings, dest, target: argparse.Action, **kw):
        super().__init__(option_strings, dest, **kw)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"motionstreamer: {option_string} is deprecated, use {self.target.option_strings[0]} (the old "
              f"spelling goes in the next release)", file=sys.stderr)
        self.target(parser, namespace, values, self.target.option_strings[0])


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, current: argparse.Action) -> None:
    """Accept `old` (hidden from --help) for the flag `current` (what parser.add_argument returned), for
    one release."""
    parser.add_argument(old, dest=current.dest, action=_DeprecatedAlias, target=current, nargs=current.nargs,
                        type=current.type, choices=current.choices, metavar=current.metavar,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_verb(subparsers, name: str, func, description: str | None = None) -> argparse.ArgumentParser:
    """A verb's parser that runs `func`, described by `description`, else the handler's docstring, else
    its VERBS line (argparse re-wraps it)."""
    text = description or inspect.cleandoc(func.__doc__ or "") or VERBS[name][1]
    p = subparsers.add_parser(name, help=VERBS[name][1], description=text)
    p.set_defaults(func=func)
    return p


def add_group(subparsers, name: str, description: str, dest: str, metavar: str):
    """A verb with sub-verbs (`train tae`, `evaluate t2m`); alone it prints its help. Returns the
    sub-verbs' subparsers."""
    p = subparsers.add_parser(name, help=VERBS[name][1], description=description)
    p.set_defaults(func=lambda args: p.print_help() or 2)
    return p.add_subparsers(dest=dest, metavar=metavar)


def check_positive(args, *names) -> None:
    """CLIError for the first of these integer flags given as < 1."""
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise CLIError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


def parse_step_list(text: str, flag: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; a clear CLIError naming `flag` for anything else ('' -> [])."""
    if not text.strip():
        return []
    try:
        steps = [int(x) for x in text.split(",")]
    except ValueError:
        raise CLIError(f"{flag} must be a comma-separated list of step counts, e.g. 1,2,4; got {text!r}")
    if any(k < 1 for k in steps) or len(set(steps)) != len(steps):
        raise CLIError(f"{flag} must list distinct positive step counts, got {text!r}")
    return steps


def check_finite_options(args: argparse.Namespace) -> None:
    """CLIError naming the first number option given as NaN or inf (argparse's float() takes 'nan',
    'inf' and '1e999'): no verb has a use for them, and they would reach the models silently. Ranges
    are each verb's to check."""
    for name, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number, got {v}")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser with `verb`'s command module registered (its verbs take arguments) and every other
    verb as a name in the list: enough to run `verb`, and `--help` without importing a command module."""
    parser = argparse.ArgumentParser(
        prog="motionstreamer",
        description="Streaming text-to-motion generation: generate, stream, train, evaluate, export.",
    )
    parser.add_argument("--version", action="version", version=f"motionstreamer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    if verb in VERBS:
        try:
            module = importlib.import_module(VERBS[verb][0])
        except ImportError as e:   # an optional extra not installed, or a broken install: one line, no traceback
            extra = EXTRAS.get((e.name or "").split(".")[0])
            how = f"; install it with pip install 'motionstreamer[{extra}]'" if extra else ""
            parser.exit(2, f"motionstreamer: error: `{verb}` cannot run: {e}{how}\n")
        module.register(sub)
    for name, (_, help_line) in VERBS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_finite_options(args)
        return int(args.func(args) or 0)
    except CLIError as e:
        parser.exit(2, f"motionstreamer: error: {e}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
