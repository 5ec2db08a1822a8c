"""Native causal conv (motionstreamer._C) vs the PyTorch reference (F.pad + F.conv1d: cuDNN / oneDNN).

Cases, each timed for backend "native" and "torch" on the same random weights (official TAE shapes,
spec reference-model §1, at a chosen width):
  layer_*         one conv k3 (dilation 9) layer, full sequence
  decode_full_*   the TAE decoder stack on L latents -> 4L frames (decode_proj, conv, 2x(3 resblocks,
                  upsample, conv), conv, relu, conv -> 272)
  encode_full_*   the TAE encoder stack on 4L frames (conv 272->w, 2x(conv k4 s2, 3 resblocks), conv, proj)
  decode_step_*   one streaming decode step: one latent -> 4 frames through the per-layer states;
                  on CUDA also captured in a CUDA graph ("_graph"), as the runtime runs it
Every function returns {name: {"min", "median", "max", "repeats", "unit": "ms"}}; nothing runs at import.
`python benchmarks/bench_causal_conv.py [--device cuda] [--width 1024]` prints the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from motionstreamer.ops import causal_conv as cc

BACKENDS = ("native", "torch")


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, repeats: int = 20, warmup: int = 3) -> dict:
    """Wall time per call in ms (device synchronised around each call)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "repeats": repeats,
            "unit": "ms"}


# ----------------------------------------------------------------------------- TAE-shaped stacks
class TAEStacks:
    """Random weights with the official TAE layer shapes at `width`, run through causal_conv ops."""

    def __init__(self, width=1024, in_dim=272, latent=16, depth=3, growth=3, down_t=2, device="cpu",
                 dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.width, self.in_dim, self.down_t = width, in_dim, down_t
        self.dilations = [growth ** d for d in range(depth)][::-1]  # reverse_dilation: 9, 3, 1

        def conv(cout, cin, k):
            w = torch.randn(cout, cin, k, generator=g) * (cin * k) ** -0.5
            return w.to(device, dtype), (torch.randn(cout, generator=g) * 0.1).to(device, dtype)

        def resnet():
            return [(*conv(width, width, 3), *conv(width, width, 1)) for _ in self.dilations]

        self.decode_proj = conv(width, latent, 1)
        self.dec_in = conv(width, width, 3)
        self.dec_up = [(resnet(), conv(width, width, 3)) for _ in range(down_t)]
        self.dec_out = conv(width, width, 3)
        self.dec_final = conv(in_dim, width, 3)
        self.enc_in = conv(width, in_dim, 3)
        self.enc_down = [(conv(width, width, 4), resnet()) for _ in range(down_t)]
        self.enc_out = conv(width, width, 3)
        self.enc_proj = conv(2 * latent, width, 1)

    # full sequence
    def _resnet(self, h, blocks, backend):
        for (w1, b1, w2, b2), d in zip(blocks, self.dilations):
            h = cc.causal_resblock(h, w1, b1, w2, b2, d, backend=backend)
        return h

    def decode(self, z, backend):
        """z (B, L, latent) -> frames (B, in_dim, 4L)."""
        h = F.linear(z, self.decode_proj[0][:, :, 0], self.decode_proj[1]).transpose(1, 2)
        h = cc.causal_conv1d(h, *self.dec_in, post_relu=True, backend=backend)
        for blocks, up in self.dec_up:
            h = self._resnet(h, blocks, backend).repeat_interleave(2, dim=2)
            h = cc.causal_conv1d(h, *up, backend=backend)
        h = cc.causal_conv1d(h, *self.dec_out, post_relu=True, backend=backend)
        return cc.causal_conv1d(h, *self.dec_final, backend=backend)

    def encode(self, x, backend):
        """x (B, in_dim, T) -> (B, T/4, 2*latent) (mu | logvar)."""
        h = cc.causal_conv1d(x, *self.enc_in, post_relu=True, backend=backend)
        for down, blocks in self.enc_down:
            h = cc.causal_conv1d(h, *down, stride=2, backend=backend)
            h = self._resnet(h, blocks, backend)
        h = cc.causal_conv1d(h, *self.enc_out, backend=backend)
        return F.linear(h.transpose(1, 2), self.enc_proj[0][:, :, 0], self.enc_proj[1])

    # streaming decode
    def init_decode_states(self, batch, device, dtype):
        w = self.width
        sizes = [2] + ([2 * d for d in self.dilations] + [2]) * self.down_t + [2, 2]
        return [torch.zeros(batch, w, s, device=device, dtype=dtype) for s in sizes]

    def decode_step(self, z, states, backend):
        """z (B, 1, latent), states (in place) -> frames (B, in_dim, 4)."""
        new = []
        h = F.linear(z, self.decode_proj[0][:, :, 0], self.decode_proj[1]).transpose(1, 2)
        h, s = cc.causal_conv1d_update(h, states[0], *self.dec_in, post_relu=True, backend=backend)
        new.append(s)
        for blocks, up in self.dec_up:
            for (w1, b1, w2, b2), d in zip(blocks, self.dilations):
                h, s = cc.causal_resblock_update(h, states[len(new)], w1, b1, w2, b2, d, backend=backend)
                new.append(s)
            h, s = cc.causal_conv1d_update(h.repeat_interleave(2, dim=2), states[len(new)], *up, backend=backend)
            new.append(s)
        h, s = cc.causal_conv1d_update(h, states[len(new)], *self.dec_out, post_relu=True, backend=backend)
        new.append(s)
        h, s = cc.causal_conv1d_update(h, states[len(new)], *self.dec_final, backend=backend)
        new.append(s)
        for old, n in zip(states, new):
            old.copy_(n)
        return h


# ----------------------------------------------------------------------------- cases
def _backends(x) -> list[str]:
    return [b for b in BACKENDS if b == "torch" or cc.supports(x)]


def bench_layer(device="cpu", dtype=torch.float32, batch=1, frames=64, width=1024, k=3, dilation=9,
                repeats=20) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, frames, generator=g).to(device, dtype)
    w = (torch.randn(width, width, k, generator=g) * (width * k) ** -0.5).to(device, dtype)
    b = torch.randn(width, generator=g).to(device, dtype)
    name = f"layer_w{width}_k{k}_d{dilation}_b{batch}_t{frames}"
    with torch.no_grad():
        return {f"{name}/{be}": time_fn(lambda: cc.causal_conv1d(x, w, b, dilation=dilation, backend=be), device,
                                        repeats) for be in _backends(x)}


def bench_tae_full(device="cpu", dtype=torch.float32, batch=1, latents=16, width=1024, repeats=10,
                   stacks: TAEStacks | None = None) -> dict:
    st = stacks or TAEStacks(width, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, latents, 16, generator=g).to(device, dtype)
    x = torch.randn(batch, st.in_dim, 4 * latents, generator=g).to(device, dtype)
    out = {}
    with torch.no_grad():
        for be in _backends(x):
            out[f"decode_full_w{width}_b{batch}_l{latents}/{be}"] = time_fn(lambda: st.decode(z, be), device, repeats)
            out[f"encode_full_w{width}_b{batch}_t{4 * latents}/{be}"] = time_fn(lambda: st.encode(x, be), device,
                                                                                 repeats)
    return out


def bench_decode_step(device="cpu", dtype=torch.float32, batch=1, width=1024, repeats=50,
                      stacks: TAEStacks | None = None, cuda_graph: bool = True) -> dict:
    st = stacks or TAEStacks(width, device=device, dtype=dtype)
    device = torch.device(device)
    z = torch.randn(batch, 1, 16, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    out = {}
    with torch.no_grad():
        for be in _backends(z):
            states = st.init_decode_states(batch, device, dtype)
            name = f"decode_step_w{width}_b{batch}/{be}"
            out[name] = time_fn(lambda: st.decode_step(z, states, be), device, repeats)
            if cuda_graph and device.type == "cuda":
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        st.decode_step(z, states, be)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    st.decode_step(z, states, be)
                out[name + "_graph"] = time_fn(graph.replay, device, repeats)
    return out


def run(device="cpu", dtype=torch.float32, width=1024, batches=(1, 256), latents=16, repeats=10) -> dict:
    """Every case at one width; {name: stats}."""
    st = TAEStacks(width, device=device, dtype=dtype)
    res = bench_layer(device, dtype, 1, 4 * latents, width, repeats=repeats)
    for b in batches:
        res.update(bench_tae_full(device, dtype, b, latents, width, repeats, stacks=st))
        res.update(bench_decode_step(device, dtype, b, width, max(repeats, 20), stacks=st))
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
