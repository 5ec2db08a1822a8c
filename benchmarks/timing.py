"""The one wall-clock timer every benchmark uses."""
from __future__ import annotations

import statistics
import time

import torch


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, repeats: int = 20, warmup: int = 3, iters: int = 1) -> dict:
    """ms per call: `repeats` timings of `iters` back-to-back calls, the device synchronised around each
    batch only (so a few-microsecond kernel is not measured as a host round trip when iters > 1)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3 / iters)
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "repeats": repeats,
            "iters": iters, "unit": "ms"}
