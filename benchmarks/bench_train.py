"""Training throughput of the text-to-motion model (Two-Forward objective, the project's train_loop).

    python benchmarks/bench_train.py [--small|--quick] [--device cpu|cuda] [--batch N] [--steps N]
    (also run by benchmarks/run.py through run_all)

Per case: samples/s and the median step time over the timed steps (after warm-up steps), for the
official-size model (T2MConfig.official(cond_dim=768), 242M parameters) or the small one; attention
backend 'math' (the plain reference) vs 'sdpa' (PyTorch's fused kernel); on CUDA also bf16 autocast.
Batches are drawn as in training: random synthetic latent sequences of 10-77 latents, 10% empty
captions, Two-Forward replacing half of the positions (the loop's step counter is offset to the
middle of a notional run), 4 diffusion repeats per token. Peak memory: CUDA max_memory_allocated,
or on CPU the process's peak RSS (monotonic over the cases, so read it as an upper bound) next to
the analytic weights + grads + AdamW state size.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile

import numpy as np
import torch


def _examples(n: int, rng: np.random.Generator):
    from motionstreamer.train.t2m import LatentExample

    return [LatentExample(f"caption {i}", np.zeros((0, 16), np.float32),
                          rng.standard_normal((int(rng.integers(10, 78)), 16)).astype(np.float32)) for i in range(n)]


def train_case(model_cfg, batch: int, steps: int, warmup: int, backend: str, bf16: bool, device: torch.device) -> dict:
    from motionstreamer.models.transformer import TextToMotionModel
    from motionstreamer.train.common import Dist, train_loop
    from motionstreamer.train.t2m import LatentTextData, T2MTrainConfig, TwoForwardObjective

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TextToMotionModel(model_cfg)
    model.set_attention_backend(backend)
    examples = _examples(64, rng)
    emb = {e.caption: torch.randn(model_cfg.cond_dim) for e in examples} | {"": torch.zeros(model_cfg.cond_dim)}
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        config = T2MTrainConfig(out_dir=tmp, steps=total, batch_size=batch, warmup_steps=0, save_every=10**9,
                             log_every=10**9, progress=False, tensorboard=False, device=str(device), bf16=bf16)
        data = LatentTextData(examples, emb, config)
        objective = TwoForwardObjective(model, total_steps=2 * total, diffmlps_batch_mul=config.diffmlps_batch_mul)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        res = train_loop(objective, config, data.sample_batch, lambda m, b, step: m(b, step + total // 2),
                         name="t2m", dist_env=Dist(device=device), checkpoints=False)
    times = res.step_times[warmup:]
    n_params = sum(p.numel() for p in model.parameters())
    row = {"case": f"train_t2m_{'bf16' if bf16 and device.type == 'cuda' else 'fp32'}_{backend}",
           "params_m": n_params / 1e6, "batch": batch, "timed_steps": len(times),
           "step_ms": {"min": min(times) * 1e3, "median": statistics.median(times) * 1e3, "max": max(times) * 1e3,
                       "repeats": len(times), "unit": "ms"},
           "samples_per_s": batch / statistics.median(times),
           "state_mb": n_params * 4 * 4 / 2**20}           # fp32 weights + grads + 2 AdamW moments
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del model, objective
    return row


def run_all(device, small: bool, quick: bool, batch: int | None = None, steps: int | None = None) -> list[dict]:
    from motionstreamer.models.transformer import T2MConfig

    device = torch.device(device)
    if quick:
        model_cfg, size, batch, steps, warmup = T2MConfig.small(cond_dim=768), "small", batch or 4, steps or 2, 1
    elif small:
        model_cfg, size, batch, steps, warmup = T2MConfig.small(cond_dim=768), "small", batch or 32, steps or 5, 2
    else:
        model_cfg, size = T2MConfig.official(cond_dim=768), "official"
        batch = batch or (64 if device.type == "cuda" else 8)
        steps, warmup = steps or (10 if device.type == "cuda" else 2), (3 if device.type == "cuda" else 1)
    variants = [("math", False), ("sdpa", False)]
    if device.type == "cuda":
        variants += [("sdpa", True)]
        from motionstreamer.kernels import integration
        if integration.available(device):
            variants += [("triton", True)]     # fused QK-Norm + RoPE flash attention, fwd + bwd
    rows = []
    for backend, bf16 in variants:
        try:
            row = train_case(model_cfg, batch, steps, warmup, backend, bf16, device)
        except torch.cuda.OutOfMemoryError:
            row = {"case": f"train_t2m_{backend}", "error": "out of memory"}
        row["case"] += f"_{size}"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    rows = run_all(torch.device(args.device), args.small, args.quick, args.batch, args.steps)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
