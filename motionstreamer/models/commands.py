"""CLI verbs `convert-checkpoint` and `download`."""
from __future__ import annotations

import json
import math

from motionstreamer.checkpoints import CheckpointError, convert_official, download_official
from motionstreamer.cli import CLIError, add_verb, check_output
from motionstreamer.models.tae import TAEConfig
from motionstreamer.models.transformer import T2MConfig

COMPONENTS = ["tae", "tae_babel", "t2m", "evaluator", "stats"]   # = checkpoints.HUB_COMPONENTS (kept import-free)


def register(subparsers) -> None:
    c = add_verb(subparsers, "convert-checkpoint", cmd_convert)
    c.add_argument("src", help="folder holding the released files (the hub layout, as `motionstreamer download` "
                               "writes it); the options below name files elsewhere")
    c.add_argument("dst", help="output bundle directory")
    c.add_argument("--text-encoder", default="sentence-t5-xxl",
                   help="text encoder the model was trained with (default: sentence-t5-xxl, the official one)")
    for name, what in (("tae", "TAE checkpoint (.pth with 'net')"),
                       ("t2m", "text-to-motion checkpoint (.pth with 'trans')"),
                       ("mean", "Mean.npy"), ("std", "Std.npy"), ("end-latent", "reference end latent .npy")):
        c.add_argument(f"--{name}", dest=name.replace("-", "_"), metavar="FILE", help=f"the {what}")
    c.add_argument("--compute-end-latent", action="store_true",
                   help="without an end latent file, use the TAE's mean encoding of an all-zero pose")
    c.add_argument("--tae-config", metavar="JSON", help="TAE config (a JSON file) for non-official trainings")
    c.add_argument("--t2m-config", metavar="JSON",
                   help="text-to-motion config (a JSON file) for non-official trainings")

    d = add_verb(subparsers, "download", cmd_download)
    d.add_argument("--dest", default="official", help="download folder (default: ./official)")
    d.add_argument("--components", nargs="+", default=["tae", "t2m", "evaluator", "stats"], choices=COMPONENTS,
                   help="what to fetch (default: tae t2m evaluator stats)")
    d.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the hub (default 10)")


def _read_config(path: str | None, cls, flag: str):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return cls.from_dict(d)
    except OSError as e:
        raise CLIError(f"{flag} {path}: cannot read ({e.strerror})")
    except json.JSONDecodeError as e:
        raise CLIError(f"{flag} {path}: invalid JSON (line {e.lineno}: {e.msg})")
    except (TypeError, ValueError, AttributeError) as e:
        raise CLIError(f"{flag} {path}: bad config ({e})")


def cmd_convert(args) -> int:
    """Convert the released MotionStreamer files (Causal_TAE/net_last.pth,
    Experiments/t2m_model/latest.pth, humanml3d_272/mean_std/{Mean,Std}.npy,
    reference_end_latent_t2m_272.npy) into a model bundle directory. Every tensor is checked against
    the official model configuration."""

    check_output(args.dst, "dst", "folder")

    tae_config = _read_config(args.tae_config, TAEConfig, "--tae-config")
    t2m_config = _read_config(args.t2m_config, T2MConfig, "--t2m-config")
    src = {"dir": args.src, "tae": args.tae, "t2m": args.t2m, "mean": args.mean, "std": args.std,
           "end_latent": args.end_latent}
    try:
        out = convert_official(src, args.dst, text_encoder=args.text_encoder, tae_config=tae_config,
                               t2m_config=t2m_config, compute_end_latent=args.compute_end_latent)
    except CheckpointError as e:
        raise CLIError(str(e))
    print(f"wrote model bundle {out}")
    return 0


def cmd_download(args) -> int:
    """Fetch the released files (hub lxxiao/MotionStreamer; Mean/Std from the lxxiao/272-dim-HumanML3D
    dataset) into a folder that `motionstreamer convert-checkpoint` reads."""

    if not 0 < args.timeout < math.inf:
        raise CLIError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    check_output(args.dest, "--dest", "folder")
    try:
        path = download_official(args.dest, args.components, timeout=args.timeout)
    except (ConnectionError, ValueError) as e:
        raise CLIError(str(e))
    print(f"downloaded {', '.join(args.components)} into {path}")
    print("the end latent (reference_end_latent_t2m_272.npy) is in the root of the MotionStreamer GitHub "
          "repository; put it there too, or convert with --compute-end-latent")
    return 0
