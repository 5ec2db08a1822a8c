"""GPU path: the per-latent work replayed as CUDA graphs, so it costs no Python or launch overhead.

When every slot of the engine is active (the steady state of a serving batch), one latent is three
graph replays: the guided head sampling loop (all steps, precomputed AdaLN modulations), the
transformer decode step over the static KV cache, and the streaming TAE decoder step. Each graph is
captured once per batch shape on static buffers; inputs are copied in, outputs copied out. Partial
batches, prefills and anything on the CPU take the eager TorchBackend path, which is also the
reference the graphs are tested against (same kernels, same order).
"""
from __future__ import annotations

import torch

from motionstreamer.runtime.backend import TorchBackend


class GraphedBackend(TorchBackend):
    def __init__(self, bundle, capacity: int, device: torch.device, dtype: torch.dtype, warmup: int = 2):
        super().__init__(bundle, capacity, device, dtype)
        self.enabled = device.type == "cuda"
        self.warmup = warmup
        self._graphs = {}

    # ---- helpers
    def _full(self, slots) -> bool:
        return self.enabled and list(slots) == list(range(self.capacity))

    def _capture(self, key, fn, static_inputs: list[torch.Tensor], restore: list[torch.Tensor]):
        """Warm up `fn` on a side stream, then capture it. Tensors in `restore` are state that the
        warm-up runs mutate; they are saved and put back so capture leaves the streams untouched."""
        saved = [t.clone() for t in restore]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        for t, v in zip(restore, saved):
            t.copy_(v)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        for t, v in zip(restore, saved):   # capture records, but be safe: restore once more
            t.copy_(v)
        self._graphs[key] = (graph, static_inputs, out)
        return self._graphs[key]

    def _cache_tensors(self):
        return [*self.cache.k, *self.cache.v, self.cache.length]

    # ---- graphed calls
    def decode(self, z, slots):
        if not self._full(slots):
            return super().decode(z, slots)
        key = "decode"
        if key not in self._graphs:
            zs = torch.zeros(2 * self.capacity, self.latent_dim, device=self.device, dtype=self.dtype)
            self._capture(key, lambda: self.t2m.decode_step(zs, self.cache, rows=None, check=False), [zs],
                          self._cache_tensors())
        graph, (zs,), out = self._graphs[key]
        if int(self.cache.length.max()) >= self.cache.max_len:
            raise ValueError("KV cache full: re-prefill a shorter window")
        z = z.to(self.device, self.dtype)
        zs.copy_(torch.cat([z, z]))
        graph.replay()
        return out.clone()

    def sample(self, cond, uncond, noise, cfg_scale, temperature, steps, method, skip_terminal=False):
        n = cond.shape[0]
        if not self.enabled or n != self.capacity:
            return super().sample(cond, uncond, noise, cfg_scale, temperature, steps, method, skip_terminal)
        key = ("head", n, steps, method, skip_terminal, uncond is None, float(cfg_scale), float(temperature))
        if key not in self._graphs:
            E = cond.shape[1]
            c = torch.zeros(n, E, device=self.device, dtype=self.dtype)
            u = torch.zeros(n, E, device=self.device, dtype=self.dtype) if uncond is not None else None
            x = torch.zeros(n, self.latent_dim, device=self.device, dtype=self.dtype)
            nz = torch.zeros(noise[1].shape[0], n, self.latent_dim, device=self.device, dtype=self.dtype)
            self._capture(key, lambda: self.t2m.diff_loss.sample(
                c, uncond=u, cfg=cfg_scale, temperature=temperature, steps=steps, method=method,
                noise=(x, nz), fast=True, skip_terminal=skip_terminal), [c, u, x, nz], [])
        graph, (c, u, x, nz), out = self._graphs[key]
        c.copy_(cond)
        if u is not None:
            u.copy_(uncond)
        x.copy_(noise[0])
        nz.copy_(noise[1])
        graph.replay()
        return out.clone()

    def tae_step(self, z, slots):
        if not self._full(slots):
            return super().tae_step(z, slots)
        key = "tae"
        if key not in self._graphs:
            zs = torch.zeros(self.capacity, 1, self.latent_dim, device=self.device, dtype=self.dtype)
            self._capture(key, lambda: self.tae.decode_step(zs, self.tae_state, rows=None), [zs],
                          list(self.tae_state.buffers))
        graph, (zs,), out = self._graphs[key]
        zs.copy_(z.to(self.device, self.dtype)[:, None, :])
        graph.replay()
        return out.clone()
