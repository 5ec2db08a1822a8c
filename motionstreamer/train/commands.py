"""CLI verbs: `train tae|t2m|stream` and `encode-latents`."""
from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="HumanML3D-272 layout folder")
    p.add_argument("--out", default=default_out, metavar="DIR", help="run folder (checkpoints, logs, config)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML/JSON file of config fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set steps=2000 --set lr=2e-4")
    p.add_argument("--model-size", choices=("official", "small"), default="official")
    p.add_argument("--resume", default=None, metavar="CKPT", help="continue from a checkpoint_last.pt")
    p.add_argument("--device", default="auto")


def register(subparsers) -> None:
    t = subparsers.add_parser("train", help="train a model (tae | t2m | stream)",
                              description="Train on one GPU, many (torchrun), or the CPU.")
    sub = t.add_subparsers(dest="what", metavar="<model>")
    a = sub.add_parser("tae", help="Causal TAE on 272-dim motion windows")
    _common(a, "runs/tae")
    a.set_defaults(func=cmd_train_tae)
    b = sub.add_parser("t2m", help="text-to-motion transformer + diffusion head (Two-Forward)")
    _common(b, "runs/t2m")
    b.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents from encode-latents")
    b.add_argument("--text-encoder", default="minilm", help="minilm | sentence-t5-xxl | path")
    b.set_defaults(func=cmd_train_t2m)
    c = sub.add_parser("stream", help="streaming model on A/B pairs (plus single clips)")
    _common(c, "runs/stream")
    c.add_argument("--latents", required=True, metavar="DIR", help="per-clip latents of the HumanML3D-272 clips")
    c.add_argument("--stream-data", required=True, metavar="DIR", help="BABEL-stream layout folder")
    c.add_argument("--stream-latents", required=True, metavar="DIR", help="latents of the stream pairs' motions")
    c.add_argument("--text-encoder", default="minilm")
    c.add_argument("--init", default=None, metavar="CKPT", help="start from a text-to-motion checkpoint")
    c.set_defaults(func=cmd_train_stream)
    t.set_defaults(func=lambda args: t.print_help() or 2)

    e = subparsers.add_parser("encode-latents", help="encode a dataset into per-clip latent files",
                              description="Encode every clip with a trained TAE: the SAMPLED z per clip, "
                                          "then the reference end latent appended, as the original.")
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--tae", required=True, metavar="CKPT", help="TAE checkpoint_last.pt or a model bundle dir")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--motion-dir", default="motion_data", help="sub-folder of --data with the clips")
    e.add_argument("--mean-std", default=None, metavar="DIR", help="folder with Mean.npy/Std.npy (default DATA/mean_std)")
    e.add_argument("--mu", action="store_true", help="store the posterior mean instead of a sample")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_encode_latents)


def _config(cls, args):
    from motionstreamer.cli import CLIError
    from motionstreamer.train.common import load_config_file, parse_overrides

    cfg = cls()
    try:
        if args.config:
            cfg = cfg.updated(load_config_file(args.config))
        cfg = cfg.updated(parse_overrides(args.set, cls))
    except (ValueError, OSError) as e:
        raise CLIError(str(e))
    return cfg.updated({"out_dir": args.out, "device": args.device})


def cmd_train_tae(args) -> int:
    from motionstreamer.cli import CLIError
    from motionstreamer.data.humanml3d import load_motions
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.train.tae import TAETrainConfig, train_tae

    cfg = _config(TAETrainConfig, args)
    try:
        motions = list(load_motions(args.data, "train", normalize=True).values())
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    tae_cfg = TAEConfig.official() if args.model_size == "official" else TAEConfig.small()
    torch_seed(cfg.seed)
    res = train_tae(CausalHumanTAE(tae_cfg), motions, cfg, resume=args.resume)
    print(f"trained TAE to step {res.step}: last loss {res.losses[-1][1]:.4f}, {res.samples_per_s:.1f} samples/s; "
          f"checkpoint {res.checkpoint}")
    return 0


def torch_seed(seed: int) -> None:
    import torch
    torch.manual_seed(seed)


def _t2m_model(args, text_dim: int):
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    cfg = T2MConfig.official(cond_dim=text_dim) if args.model_size == "official" else T2MConfig.small(cond_dim=text_dim)
    return TextToMotionModel(cfg)


def cmd_train_t2m(args) -> int:
    from motionstreamer.cli import CLIError
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.train.t2m import T2MTrainConfig, embed_captions, load_latent_examples, train_t2m

    cfg = _config(T2MTrainConfig, args)
    try:
        examples = load_latent_examples(args.latents, args.data, "train", max_latents=cfg.max_latents)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    enc = TextEncoder.load(args.text_encoder)
    emb = embed_captions(examples, enc)
    torch_seed(cfg.seed)
    model = _t2m_model(args, enc.dim)
    res = train_t2m(model, examples, emb, cfg, resume=args.resume, extra_config={"text_encoder": args.text_encoder})
    print(f"trained t2m to step {res.step}: last loss {res.losses[-1][1]:.4f}, {res.samples_per_s:.1f} samples/s; "
          f"checkpoint {res.checkpoint}")
    return 0


def cmd_train_stream(args) -> int:
    import torch

    from motionstreamer.cli import CLIError
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.train.common import load_checkpoint
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import T2MTrainConfig, embed_captions, load_latent_examples, train_t2m

    cfg = _config(T2MTrainConfig, args)
    try:
        examples = load_latent_examples(args.latents, args.data, "train", max_latents=cfg.max_latents)
        examples += load_stream_examples(args.stream_data, args.stream_latents, "train", max_latents=cfg.max_latents)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    enc = TextEncoder.load(args.text_encoder)
    emb = embed_captions(examples, enc)
    torch_seed(cfg.seed)
    model = _t2m_model(args, enc.dim)
    if args.init:
        state = load_checkpoint(args.init)["model"]
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
        model.load_state_dict(state)
    res = train_t2m(model, examples, emb, cfg, name="stream", resume=args.resume,
                    extra_config={"text_encoder": args.text_encoder})
    print(f"trained streaming model to step {res.step}: last loss {res.losses[-1][1]:.4f}; checkpoint {res.checkpoint}")
    return 0


def cmd_encode_latents(args) -> int:
    import torch

    from motionstreamer.cli import CLIError
    from motionstreamer.data.humanml3d import load_motions
    from motionstreamer.train.tae import encode_latents, reference_end_latent

    tae = load_tae(args.tae, args.device)
    try:
        motions = {}
        for split in ("train", "val", "test"):
            motions.update(load_motions(args.data, split, normalize=True, mean_std_dir=args.mean_std,
                                        motion_dir=args.motion_dir, missing_split_ok=True))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    end = reference_end_latent(tae)
    encode_latents(tae, motions, args.out, end, sample=not args.mu, seed=args.seed)
    from motionstreamer.utils import atomic_save_npy
    atomic_save_npy(f"{args.out}/reference_end_latent.npy", end[None].numpy())
    print(f"encoded {len(motions)} clips into {args.out}")
    return 0


def load_tae(path: str, device: str = "auto"):
    """A TAE from a model bundle dir or a TAE training checkpoint."""
    from pathlib import Path

    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.runtime.loading import resolve_device
    from motionstreamer.train.common import ema_or_model_state, load_checkpoint

    dev = resolve_device(device)
    p = Path(path)
    if p.is_dir():
        from motionstreamer.checkpoints import load_bundle
        return load_bundle(p, device=dev).tae.eval()
    ck = load_checkpoint(p)
    if ck.get("trainer") != "tae":
        from motionstreamer.cli import CLIError
        raise CLIError(f"{p} is not a TAE training checkpoint (trainer={ck.get('trainer')!r})")
    tae = CausalHumanTAE(TAEConfig.from_dict(ck["config"]["tae"]))
    state = ema_or_model_state(ck)
    tae.load_state_dict({k[len("tae."):]: v for k, v in state.items() if k.startswith("tae.")})
    return tae.to(dev).eval()
