"""CLI verbs `convert-checkpoint` and `download`."""
from __future__ import annotations


def register(subparsers) -> None:
    c = subparsers.add_parser("convert-checkpoint", help="official .pth files -> a safetensors model bundle",
                              description="Convert the released MotionStreamer files (Causal_TAE/net_last.pth, "
                                          "Experiments/t2m_model/latest.pth, Mean/Std, reference end latent) "
                                          "into a model bundle directory.")
    c.add_argument("src", help="folder holding the released files (as downloaded)")
    c.add_argument("dst", help="output bundle directory")
    c.add_argument("--text-encoder", default="sentence-t5-xxl", help="text encoder the model was trained with")
    c.set_defaults(func=cmd_convert)
    d = subparsers.add_parser("download", help="download the official checkpoints from the hub")
    d.add_argument("--dest", default="official", help="download folder")
    d.add_argument("--components", nargs="+", default=["tae", "t2m", "evaluator"],
                   choices=["tae", "tae_babel", "t2m", "evaluator"])
    d.set_defaults(func=cmd_download)


def cmd_convert(args) -> int:
    from motionstreamer.checkpoints import CheckpointError, convert_official
    from motionstreamer.cli import CLIError

    try:
        out = convert_official(args.src, args.dst, text_encoder=args.text_encoder)
    except CheckpointError as e:
        raise CLIError(str(e))
    print(f"wrote model bundle {out}")
    return 0


def cmd_download(args) -> int:
    from motionstreamer.checkpoints import download_official
    from motionstreamer.cli import CLIError

    try:
        path = download_official(args.dest, args.components)
    except (ConnectionError, ValueError) as e:
        raise CLIError(str(e))
    print(f"downloaded {', '.join(args.components)} into {path}")
    return 0
