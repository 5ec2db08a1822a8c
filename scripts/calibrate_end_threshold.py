#!/usr/bin/env python
"""Calibrate a bundle's end-of-action threshold (L2 distance of a new latent to the end latent).

The released t2m demo uses 0.1 for its TAE's latent scale; a model with another TAE needs its own.
For validation captions we generate past the ground-truth length with end detection off and record
each latent's distance to the end latent: at the ground-truth end position the model should emit
(something close to) the end latent, before it it should not. The threshold is the midpoint, in log
space, between the 75th percentile of end-position distances and the 5th percentile of earlier ones;
when the two overlap, the threshold is the 2nd percentile of the earlier distances (false ends stay
rare and durations end the rest). It is written into the bundle's config.json ("end_threshold")
with the measured rates.

    python scripts/calibrate_end_threshold.py --bundle motionstreamer/assets/default_model \
        --data runs/default_model/data --latents runs/default_model/latents
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from motionstreamer.checkpoints import load_bundle
    from motionstreamer.models.text import TextEncoder
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
    from motionstreamer.train.t2m import load_latent_examples
    from motionstreamer.utils import atomic_write_json

    bundle = load_bundle(args.bundle)
    enc = TextEncoder.load(bundle.text_encoder_name)
    examples = load_latent_examples(args.latents, args.data, args.split)
    rng = np.random.default_rng(args.seed)
    pick = [examples[i] for i in rng.choice(len(examples), size=min(args.n, len(examples)), replace=False)]
    gt_len = [len(e.latents_b) - 1 for e in pick]          # latents before the appended end latent
    gen = GenerationConfig(max_latents=max(gt_len) + 4, end_threshold=-1.0)   # sampler defaults: the bundle's
    engine = StreamingEngine(bundle, enc, capacity=len(pick), config=gen)
    ids = [engine.add_stream(e.caption, seed=args.seed + i, max_latents=n + 4)
           for i, (e, n) in enumerate(zip(pick, gt_len))]
    dist = {i: [] for i in ids}
    end = bundle.end_latent.reshape(-1).float()
    while engine.active_ids:
        for c in engine.step():
            dist[c.stream_id].append(float(torch.linalg.vector_norm(c.latent - end)))
    at_end, before = [], []
    for sid, n in zip(ids, gt_len):
        d = dist[sid]
        before += d[2:max(2, n - 1)]
        at_end += [min(d[max(0, n - 1):n + 2])]            # the end may come a latent early or late
    at_end, before = np.array(at_end), np.array(before)
    # separable: the log-midpoint between typical end and motion distances; otherwise the threshold
    # that keeps false ends rare (2% of latents) and lets durations end the rest
    hi, lo = np.percentile(at_end, 75), np.percentile(before, 5)
    thr = float(np.exp(0.5 * (np.log(hi) + np.log(lo)))) if hi < lo else float(np.percentile(before, 2))
    stats = {"end_threshold": thr, "end_detect_rate": float((at_end < thr).mean()),
             "false_end_rate_per_latent": float((before < thr).mean()),
             "median_end_distance": float(np.median(at_end)), "median_motion_distance": float(np.median(before))}
    cfg_path = Path(args.bundle) / "config.json"
    config = json.loads(cfg_path.read_text())
    config["end_threshold"] = thr
    config["end_threshold_calibration"] = stats
    atomic_write_json(cfg_path, config)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
