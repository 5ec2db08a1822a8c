"""Batched generation for evaluation (eval/protocols.py): many prompt schedules at once through one
StreamingEngine.

Each schedule (one caption, or a sequence of prompts) becomes one stream, every prompt running for a
fixed number of latents (the ground-truth length, as the original's evaluation protocol), the next
queued right behind it; all streams step together: one batched transformer decode and one batched
head call per latent for the whole batch.
"""
from __future__ import annotations

import dataclasses

import torch

from motionstreamer import FEATURE_DIM
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine


@torch.no_grad()
def run_schedules(bundle, text_encoder, schedules: list[list[tuple[str, int]]], config: GenerationConfig | None = None,
                  seed: int = 0, use_end_latent: bool = False, device=None, dtype=None, backend=None,
                  goals: list | None = None, latents: bool = False) -> list[torch.Tensor]:
    """schedules[i]: [(prompt, n_latents), ...] for stream i (seeded seed + i). Returns de-normalised
    features (frames, 272) per stream: 4 * sum(n_latents), fewer when use_end_latent lets an action end
    early (the end latent then starts the next prompt); latents=True: the sampled latents (n, 16) instead.
    goals[i], optional: (x, z, heading, seconds) or None, set on stream i from its start
    (StreamingEngine.set_goal; the config's goal_tolerance decides whether reaching it ends the stream early)."""
    if not schedules:
        return []
    gen = config or GenerationConfig()
    gen = dataclasses.replace(gen, end_threshold=gen.end_threshold if use_end_latent else -1.0,
                              max_latents=max(sum(n for _, n in sched) for sched in schedules))
    engine = StreamingEngine(bundle, text_encoder, capacity=len(schedules), config=gen, device=device, dtype=dtype,
                             backend=backend)
    ids = []
    for i, sched in enumerate(schedules):
        (prompt, n), rest = sched[0], sched[1:]
        ids.append(engine.add_stream(prompt, seed=seed + i, max_latents=n))
        if goals is not None and goals[i] is not None:
            engine.set_goal(ids[-1], *goals[i])
        for prompt, n in rest:
            engine.push_text(ids[-1], prompt, max_latents=n, after_current=True)
    out = {i: [] for i in ids}
    while engine.active_ids:
        for chunk in engine.step():
            out[chunk.stream_id].append(chunk.latent[None].cpu() if latents else chunk.features.float().cpu())
    width = engine.latent_dim if latents else FEATURE_DIM
    return [torch.cat(out[i]) if out[i] else torch.zeros(0, width) for i in ids]

