"""Native causal conv (motionstreamer._C) vs the PyTorch reference (F.pad + F.conv1d: cuDNN / oneDNN).

Cases, each timed for conv backend "native" and "torch" on the same random weights:
  layer_*         one conv k3 (dilation 9) layer, full sequence
  decode_full_*   the TAE (models/tae.py, official layout at a chosen width) decoding L latents -> 4L frames
  encode_full_*   the TAE encoding 4L frames
  decode_step_*   the TAE's streaming decode step (what the runtime runs per latent): one latent -> 4
                  frames through the per-layer states (native: the fused streaming update op);
                  on CUDA also captured in a CUDA graph ("_graph"), as the runtime runs it
Every function returns {name: {"min", "median", "max", "repeats", "unit": "ms"}}; nothing runs at import.
`python benchmarks/bench_causal_conv.py [--device cuda] [--width 1024]` prints the ratios.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from timing import time_fn  # benchmarks/ is on sys.path (run directly or from run.py)

from motionstreamer.ops import causal_conv as cc

CONV_BACKENDS = ("native", "torch")


@contextlib.contextmanager
def conv_backend(name: str):
    """The global conv backend set to `name` for the block (the TAE reads the global switch)."""
    old = cc.get_conv_backend()
    cc.set_conv_backend(name)
    try:
        yield
    finally:
        cc.set_conv_backend(old)


def make_tae(width: int, device, dtype, seed: int = 0):
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig

    torch.manual_seed(seed)
    return CausalHumanTAE(TAEConfig(hidden=width, width=width)).to(device, dtype).eval()


# ----------------------------------------------------------------------------- cases
def _backends(x) -> list[str]:
    return [b for b in CONV_BACKENDS if b == "torch" or cc.supports(x)]


def bench_layer(device="cpu", dtype=torch.float32, batch=1, frames=64, width=1024, k=3, dilation=9,
                repeats=20) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, frames, generator=g).to(device, dtype)
    w = (torch.randn(width, width, k, generator=g) * (width * k) ** -0.5).to(device, dtype)
    b = torch.randn(width, generator=g).to(device, dtype)
    name = f"layer_w{width}_k{k}_d{dilation}_b{batch}_t{frames}"
    with torch.no_grad():
        return {f"{name}/{be}": time_fn(lambda: cc.causal_conv1d(x, w, b, dilation=dilation, conv_backend=be), device,
                                        repeats) for be in _backends(x)}


def bench_tae(device="cpu", dtype=torch.float32, batch=1, latents=16, width=1024, repeats=10, tae=None,
              cuda_graph: bool = True) -> dict:
    """The TAE's full decode and encode and its streaming decode step, per conv backend."""
    device = torch.device(device)
    tae = tae or make_tae(width, device, dtype)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, latents, 16, generator=g).to(device, dtype)
    x = torch.randn(batch, 4 * latents, tae.config.in_dim, generator=g).to(device, dtype)
    out = {}
    with torch.no_grad():
        for be in _backends(z):
            with conv_backend(be):
                out[f"decode_full_w{width}_b{batch}_l{latents}/{be}"] = time_fn(lambda: tae.decode(z), device, repeats)
                out[f"encode_full_w{width}_b{batch}_t{4 * latents}/{be}"] = time_fn(lambda: tae.encode(x, sample=False),
                                                                                     device, repeats)
                state, z1 = tae.init_decode_state(batch), z[:, :1]
                name = f"decode_step_w{width}_b{batch}/{be}"
                out[name] = time_fn(lambda: tae.decode_step(z1, state), device, max(repeats, 20))
                if cuda_graph and device.type == "cuda":
                    side = torch.cuda.Stream(device)
                    side.wait_stream(torch.cuda.current_stream(device))
                    with torch.cuda.stream(side):
                        for _ in range(2):
                            tae.decode_step(z1, state)
                    torch.cuda.current_stream(device).wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        tae.decode_step(z1, state)
                    out[name + "_graph"] = time_fn(graph.replay, device, max(repeats, 20))
    return out


def run(device="cpu", dtype=torch.float32, width=1024, batches=(1, 256), latents=16, repeats=10) -> dict:
    """Every case at one width; {name: stats}."""
    tae = make_tae(width, device, dtype)
    res = bench_layer(device, dtype, 1, 4 * latents, width, repeats=repeats)
    for b in batches:
        res.update(bench_tae(device, dtype, b, latents, width, repeats, tae=tae))
    return res


def ratios(res: dict) -> dict:
    """{case: torch median / native median} (> 1: native is faster)."""
    out = {}
    for name, stats in res.items():
        case, be = name.rsplit("/", 1)
        if be.startswith("native"):
            ref = res.get(f"{case}/torch{be[len('native'):]}")
            if ref:
                out[case + be[len("native"):]] = ref["median"] / stats["median"]
    return out


def run_all(device, small: bool, quick: bool) -> list[dict]:
    """Rows for benchmarks/run.py: official width 1024 at batch 1 and 256 unless small/quick."""
    device = torch.device(device)
    if quick:
        width, batches, latents, reps = 64, (1, 4), 4, 3
    elif small or device.type == "cpu":
        width, batches, latents, reps = 256, (1, 8), 8, 5
    else:
        width, batches, latents, reps = 1024, (1, 256), 16, 20
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
    rows = []
    for dtype in dtypes:
        res = run(device, dtype, width, batches, latents, reps)
        r = ratios(res)
        for name, stats in res.items():
            case, be = name.rsplit("/", 1)
            rows.append({"case": f"causal_conv/{case}", "backend": be, "dtype": str(dtype).replace("torch.", ""),
                         **stats, "speedup_vs_torch": r.get(case + be[len("native"):]) if be.startswith("native")
                         else None})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--latents", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    cpu = a.device == "cpu"
    width = a.width or (256 if cpu else 1024)
    batches = a.batches or ((1, 8) if cpu else (1, 256))
    res = run(a.device, getattr(torch, a.dtype), width, batches, a.latents, a.repeats)
    r = ratios(res)
    for name, s in res.items():
        case, be = name.rsplit("/", 1)
        extra = f"  speedup {r[case + be[6:]]:.2f}x" if be.startswith("native") and case + be[6:] in r else ""
        print(f"{name:55s} median {s['median']:9.3f} ms  min {s['min']:9.3f}{extra}")


if __name__ == "__main__":
    main()
