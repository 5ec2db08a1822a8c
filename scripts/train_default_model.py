#!/usr/bin/env python
"""Reproduce the embedded default model from scratch (seeded), on CPU, with the project's trainers.

    python scripts/train_default_model.py --out motionstreamer/assets/default_model

Steps: synthetic dataset (clips + BABEL-stream pairs) -> Causal TAE (small) -> latents (sampled z +
reference end latent) -> text-to-motion/streaming model (small, MiniLM text, Two-Forward, plain clips
and A/B pairs together) -> bundle (safetensors + config) + training_summary.json.
The evaluator is trained separately (scripts/train_default_evaluator.py) on the same data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="motionstreamer/assets/default_model")
    ap.add_argument("--work", default="runs/default_model")
    ap.add_argument("--clips", type=int, default=1600)
    ap.add_argument("--stream-pairs", type=int, default=600)
    ap.add_argument("--tae-steps", type=int, default=3000)
    ap.add_argument("--t2m-steps", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="continue from the work folder's checkpoints (data, TAE and latents are reused)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.data.humanml3d import load_mean_std, load_motions
    from motionstreamer.data.synth import make_dataset
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import T2MTrainConfig, embed_captions, load_latent_examples, train_t2m
    from motionstreamer.train.tae import TAETrainConfig, encode_latents, reference_end_latent, train_tae

    work = Path(args.work)
    data = work / "data"
    summary = {"seed": args.seed, "clips": args.clips, "stream_pairs": args.stream_pairs}
    t0 = time.time()
    if not (data / "synth_meta.json").exists():
        make_dataset(data, args.clips, seed=args.seed, stream_pairs=args.stream_pairs)
    mean, std = load_mean_std(data / "mean_std")

    # 1. Causal TAE
    torch.manual_seed(args.seed)
    tae = CausalHumanTAE(TAEConfig(hidden=128, width=128))
    motions = load_motions(data, "train", normalize=True)
    tcfg = TAETrainConfig(out_dir=str(work / "tae"), steps=args.tae_steps, batch_size=args.batch, lr=4e-4,
                          schedule="cosine", warmup_steps=100, milestones=(), grad_clip=1.0, save_every=1000,
                          log_every=50, seed=args.seed, window=64)
    tae_ck = work / "tae" / "checkpoint_last.pt"
    res = train_tae(tae, list(motions.values()), tcfg, resume=tae_ck if args.resume and tae_ck.exists() else None)
    summary["tae"] = {"steps": res.step, "params": sum(p.numel() for p in tae.parameters()), **loss_summary(work / "tae")}
    tae.eval()

    # 2. latents
    end = reference_end_latent(tae)
    all_motions = {}
    for split in ("train", "val", "test"):
        all_motions.update(load_motions(data, split, normalize=True))
    encode_latents(tae, all_motions, work / "latents", end, sample=True, seed=args.seed)
    stream_root = data / "babel_stream"
    for split in ("train", "val"):
        folder = stream_root / f"{split}_stream"
        if folder.is_dir():
            sm = {p.stem: (np.load(p) - mean) / std for p in sorted(folder.glob("*.npy"))}
            encode_latents(tae, sm, work / "stream_latents", end, sample=True, seed=args.seed)

    # 3. text-to-motion + streaming, one model
    enc = TextEncoder.load("minilm")
    examples = load_latent_examples(work / "latents", data, "train")
    n_plain = len(examples)
    examples += load_stream_examples(stream_root, work / "stream_latents", "train")
    emb = embed_captions(examples, enc)
    torch.manual_seed(args.seed)
    cfg = T2MConfig(n_layer=4, n_head=4, n_embd=128, cond_dim=enc.dim, block_size=78)
    cfg.head.width, cfg.head.depth = 256, 3
    model = TextToMotionModel(cfg)
    mcfg = T2MTrainConfig(out_dir=str(work / "t2m"), steps=args.t2m_steps, batch_size=args.batch, lr=5e-4,
                          warmup_steps=args.t2m_steps // 10, weight_decay=1e-6, grad_clip=1.0, save_every=1000,
                          log_every=50, seed=args.seed, batch_mul=2)
    t2m_ck = work / "t2m" / "checkpoint_last.pt"
    res = train_t2m(model, examples, emb, mcfg, name="t2m", extra_config={"text_encoder": "minilm"},
                    resume=t2m_ck if args.resume and t2m_ck.exists() else None)
    summary["t2m"] = {"steps": res.step, "examples": len(examples), "plain_examples": n_plain,
                      "params": sum(p.numel() for p in model.parameters()), **loss_summary(work / "t2m")}
    model.eval()

    out = Path(args.out)
    finish_bundle(out, tae, model, mean, std, end, work, data, args.seed)
    summary["minutes"] = (time.time() - t0) / 60
    summary["end_threshold"] = json.loads((out / "config.json").read_text()).get("end_threshold_calibration")
    from motionstreamer.utils import atomic_write_json
    atomic_write_json(out / "training_summary.json", summary)
    print(json.dumps(summary, indent=1))
    return 0


def loss_summary(run_dir: Path) -> dict:
    """First/last logged loss and throughput from a run's log.jsonl (survives resumed runs)."""
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"first_logged_loss": recs[0]["loss"], "last_logged_loss": recs[-1]["loss"],
            "mean_loss_last_10_logs": float(np.mean([r["loss"] for r in recs[-10:]])),
            "samples_per_s_last": recs[-1]["samples_per_s"]}


def finish_bundle(out, tae, model, mean, std, end, work, data, seed: int) -> None:
    """Save the bundle (fp32 safetensors) with its sampler defaults, then calibrate its end threshold.

    skip_terminal_step: a briefly trained head cannot predict eps precisely enough at the cosine
    schedule's degenerate last step (alpha_bar ~1e-6), see DiffLoss.sampling_process."""
    from motionstreamer.checkpoints import save_bundle

    save_bundle(out, tae, model, mean, std, end, text_encoder="minilm",
                description="motionstreamer default: small TAE + t2m/streaming model trained on synthetic motions "
                            "(scripts/train_default_model.py, seed %d)" % seed,
                extra_config={"sampler": {"skip_terminal_step": True}})
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import calibrate_end_threshold
    calibrate_end_threshold.main(["--bundle", str(out), "--data", str(data), "--latents", str(work / "latents"),
                                  "--seed", str(seed)])


if __name__ == "__main__":
    sys.exit(main())
