"""What the streaming engine needs from the models, behind one small interface.

The engine (runtime/engine.py) owns prompts, queues, end-of-action logic, window slides, noise and
joint recovery; a backend owns the four model calls on its slot-indexed state:
  prefill(text (2, text_dim), history (L, latent), slot) -> conditions (2, n_embd)
  decode(latents (n, latent), slots) -> next conditions (2n, n_embd) as [cond rows; uncond rows]
  sample(cond (n, E), uncond (n, E), noise, ...) -> latents (n, latent)
  num_sampling_steps(steps, method, skip_terminal) -> how many noise draws one sample takes
  tae_step(latents (n, latent), slots) -> normalised frames (n, 4, 272)
  reset(slot)
TorchBackend runs the PyTorch modules (KV cache, fast head, streaming TAE); export/ort_engine.py
provides the onnxruntime one.
"""
from __future__ import annotations

import torch


class TorchBackend:
    def __init__(self, bundle, capacity: int, device: torch.device, dtype: torch.dtype):
        self.tae, self.t2m = bundle.tae, bundle.t2m
        self.capacity, self.device, self.dtype = capacity, device, dtype
        self.block_size = self.t2m.config.block_size
        self.latent_dim = self.t2m.config.latent_dim
        self.cache = self.t2m.new_kv_cache(2 * capacity, self.block_size, device=device, dtype=dtype)
        self.tae_state = self.tae.init_decode_state(capacity, device=device, dtype=dtype)

    def reset(self, slot: int) -> None:
        self.tae.reset_decode_state(self.tae_state, torch.tensor([slot], device=self.device))

    def prefill(self, text: torch.Tensor, history: torch.Tensor, slot: int) -> torch.Tensor:
        lat = history.to(self.device, self.dtype).unsqueeze(0).expand(2, -1, -1)
        rows = torch.tensor([slot, self.capacity + slot], device=self.device)
        return self.t2m.prefill(text.to(self.device, self.dtype), lat, self.cache, rows=rows)

    def decode(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        s = torch.tensor(slots, device=self.device)
        z = z.to(self.device, self.dtype)
        return self.t2m.decode_step(torch.cat([z, z]), self.cache, rows=torch.cat([s, s + self.capacity]))

    def num_sampling_steps(self, steps: int, method: str, skip_terminal: bool) -> int:
        return self.t2m.diff_loss.sampling_process(steps, skip_terminal).num_timesteps

    def sample(self, cond, uncond, noise, cfg_scale: float, temperature: float, steps: int, method: str,
               skip_terminal: bool = False):
        noise = (noise[0].to(self.device, self.dtype), noise[1].to(self.device, self.dtype))
        return self.t2m.diff_loss.sample(cond, uncond=uncond, cfg=cfg_scale, temperature=temperature,
                                         steps=steps, method=method, noise=noise, fast=True,
                                         skip_terminal=skip_terminal)

    def tae_step(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        rows = torch.tensor(slots, device=self.device)
        return self.tae.decode_step(z.to(self.device, self.dtype)[:, None, :], self.tae_state, rows=rows)
