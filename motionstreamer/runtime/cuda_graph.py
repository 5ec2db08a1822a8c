"""GPU path: the per-latent work replayed as CUDA graphs, so it costs no Python or launch overhead.

When every slot of the engine is active (the steady state of a serving batch), one latent is three
graph replays: the head's sampling loop (guided teacher or few-step student) (all steps, precomputed
AdaLN modulations), the transformer decode step over the static KV cache, and the streaming TAE
decoder step. Each graph is captured once per batch shape on static buffers; inputs are copied in,
outputs copied out. Partial batches, prefills and anything on the CPU take the eager TorchBackend
path, which is also the reference the graphs are tested against (same kernels, same order).
"""
from __future__ import annotations

import torch

from motionstreamer.models.goal import no_goal
from motionstreamer.runtime.backend import MAX_CONDITION_ROWS, TorchBackend, every_slot, goals_by_cache_row


class GraphedBackend(TorchBackend):
    """Graphs are keyed by what they bake in: the decode step by its condition rows, the head loop by
    (batch, SamplerSettings) (frozen, hashable), the TAE step by nothing."""

    def __init__(self, bundle, capacity: int, device: torch.device, dtype: torch.dtype,
                 condition_rows: int = MAX_CONDITION_ROWS, head: str = "teacher", warmup: int = 2):
        super().__init__(bundle, capacity, device, dtype, condition_rows, head)
        self.enabled = device.type == "cuda"
        self.warmup = warmup
        self._graphs = {}

    # ---- helpers
    def _full(self, slots) -> bool:
        return self.enabled and every_slot(slots, self.capacity)

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
    def decode(self, z, slots, rows, goal=None):
        if not self._full(slots):
            return super().decode(z, slots, rows, goal)
        key = ("decode", rows)
        if key not in self._graphs:
            n = rows * self.capacity
            zs = torch.zeros(n, self.latent_dim, device=self.device, dtype=self.dtype)
            # a goal model's graph always takes the goal (all-zero rows: no goal, which adds exactly 0)
            gs = no_goal(n, device=self.device) if self.goals else None
            index = None if n == self.cache.batch else torch.arange(n, device=self.device)   # all rows: no gather
            self._capture(key, lambda: self.t2m.decode_step(zs, self.cache, rows=index, check=False, goal=gs),
                          [zs] + ([gs] if self.goals else []), self._cache_tensors())
        graph, inputs, out = self._graphs[key]
        if int(self.cache.length.max()) >= self.cache.max_len:
            raise ValueError("KV cache full: re-prefill a shorter window")
        inputs[0].copy_(z.to(self.device, self.dtype).repeat(rows, 1))
        if self.goals and goal is None:
            inputs[1].zero_()
        elif self.goals:
            inputs[1].copy_(goals_by_cache_row(goal.to(self.device, torch.float32)))
        elif goal is not None:
            raise ValueError("this model has no goal module: it was not trained with goals")
        graph.replay()
        return out.clone().view(rows, self.capacity, -1).transpose(0, 1)

    def sample(self, conditions, noise, settings):
        n = conditions.shape[0]
        if not self.enabled or n != self.capacity:
            return super().sample(conditions, noise, settings)
        key = ("head", n, settings)
        if key not in self._graphs:
            c = torch.zeros_like(conditions, device=self.device, dtype=self.dtype)
            x = torch.zeros(n, self.latent_dim, device=self.device, dtype=self.dtype)
            nz = torch.zeros(noise[1].shape[0], n, self.latent_dim, device=self.device, dtype=self.dtype)
            head = self.head_module(settings)   # the guided teacher or the student (its own rows and guidance)
            self._capture(key, lambda: head.sample(*c.unbind(1), settings=settings, noise=(x, nz)), [c, x, nz], [])
        graph, (c, x, nz), out = self._graphs[key]
        c.copy_(conditions)
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
