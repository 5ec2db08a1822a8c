"""Batched generation for evaluation: many captions at once through one StreamingEngine.

Each caption becomes a stream of a fixed number of latents (the ground-truth length, as the
evaluation protocol of the original), all stepping together: one batched transformer decode and one
batched head call per latent for the whole batch.
"""
from __future__ import annotations

import torch

from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine


@torch.no_grad()
def generate_batch(bundle, text_encoder, captions: list[str], n_latents: list[int],
                   config: GenerationConfig | None = None, seed: int = 0, use_end_latent: bool = False,
                   device=None, dtype=None, backend=None) -> list[torch.Tensor]:
    """Returns de-normalised features (4 * n_latents[i], 272) per caption (fewer when use_end_latent
    lets an action end early)."""
    if len(captions) != len(n_latents):
        raise ValueError(f"{len(captions)} captions but {len(n_latents)} lengths")
    if not captions:
        return []
    cfg = config or GenerationConfig()
    if not use_end_latent:
        cfg = GenerationConfig(**{**cfg.__dict__, "end_threshold": -1.0})
    cfg = GenerationConfig(**{**cfg.__dict__, "max_latents": max(n_latents)})
    engine = StreamingEngine(bundle, text_encoder, capacity=len(captions), config=cfg, device=device, dtype=dtype,
                             backend=backend)
    ids = [engine.add_stream(c, seed=seed + i, max_latents=n) for i, (c, n) in enumerate(zip(captions, n_latents))]
    frames = {i: [] for i in ids}
    while engine.active_ids:
        for chunk in engine.step():
            frames[chunk.stream_id].append(chunk.features.cpu())
    return [torch.cat(frames[i]) if frames[i] else torch.zeros(0, 272) for i in ids]
