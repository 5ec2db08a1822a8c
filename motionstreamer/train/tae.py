"""Causal TAE training and latent extraction.

Loss (utils/losses.py of the original): Gaussian NLL with the optimal (sigma-VAE) shared sigma over
all 272 dims, sigma = softclip(rmse, min log-sigma -6), summed; + KL (summed over latent dims and
time, averaged over the batch, weight 1); + root_weight (7.0) x the same NLL over dims 0:8.
Optimiser AdamW(betas 0.9/0.99, wd 0), lr 5e-5, batch 128, random windows of 64 frames,
1000 warm-up steps, multi-step decay (gamma 0.05) at 1.9M of 2M iterations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from motionstreamer.train.common import TrainConfig, train_loop
from motionstreamer.utils import atomic_save_npy


@dataclass
class TAETrainConfig(TrainConfig):
    out_dir: str = "runs/tae"
    steps: int = 2_000_000
    batch_size: int = 128
    lr: float = 5e-5                   # weight decay 0, betas (0.9, 0.99), gamma 0.05: TrainConfig's
    schedule: str = "multistep"
    milestones: tuple = (1_900_000,)
    warmup_steps: int = 1000
    grad_clip: float | None = None     # the original does not clip
    window: int = 64
    root_weight: float = 7.0

    def check(self) -> None:
        super().check()
        if self.window < 4 or self.window % 4:
            raise ValueError(f"TAETrainConfig.window must be a positive multiple of 4 frames, got {self.window}")
        if self.root_weight < 0:
            raise ValueError(f"TAETrainConfig.root_weight must be >= 0, got {self.root_weight}")


def _softclip(x: torch.Tensor, low: float) -> torch.Tensor:
    return low + F.softplus(x - low)


def optimal_sigma_nll(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed Gaussian NLL with one shared sigma set to the batch RMSE (soft-clipped at log -6)."""
    log_sigma = _softclip(((target - pred) ** 2).mean().sqrt().log(), -6.0)
    return (0.5 * ((target - pred) / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)).sum()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL to N(0, I) summed over all but the batch dim, averaged over the batch."""
    dims = tuple(range(1, mu.ndim))
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=dims)).mean()


def tae_loss(recon, target, mu, logvar, root_weight: float = 7.0):
    rec = optimal_sigma_nll(recon, target)
    kl = kl_loss(mu, logvar)
    root = optimal_sigma_nll(recon[..., :8], target[..., :8])
    return rec + kl + root_weight * root, {"recons": rec.detach(), "kl": kl.detach(), "root": root.detach()}


class WindowData:
    """Random fixed-length windows from normalised clips (clips shorter than the window are skipped)."""

    def __init__(self, motions: list[np.ndarray], window: int):
        self.motions = [m for m in motions if len(m) >= window]
        if not self.motions:
            raise ValueError(f"no clip is at least {window} frames long")
        self.window = window

    def sample_batch(self, gen: torch.Generator, batch_size: int) -> torch.Tensor:
        idx = torch.randint(len(self.motions), (batch_size,), generator=gen).tolist()
        out = []
        for i in idx:
            m = self.motions[i]
            start = int(torch.randint(len(m) - self.window + 1, (1,), generator=gen))
            out.append(torch.from_numpy(np.ascontiguousarray(m[start:start + self.window], dtype=np.float32)))
        return torch.stack(out)


class TAEObjective(torch.nn.Module):
    def __init__(self, tae, root_weight: float):
        super().__init__()
        self.tae, self.root_weight = tae, root_weight

    def forward(self, x: torch.Tensor):
        x = x.to(next(self.tae.parameters()).device)
        recon, mu, logvar = self.tae(x)
        return tae_loss(recon, x, mu, logvar, self.root_weight)


def train_tae(tae, motions: list[np.ndarray], config: TAETrainConfig, resume=None, stop_after=None, extra_config=None,
              overwrite: bool = False):
    data = WindowData(motions, config.window)
    objective = TAEObjective(tae, config.root_weight)
    return train_loop(objective, config, data.sample_batch, lambda m, batch, step: m(batch), name="tae",
                      resume=resume, stop_after=stop_after, overwrite=overwrite,
                      extra_config={"tae": tae.config.to_dict(), **(extra_config or {})})


@torch.no_grad()
def encode_latents(tae, motions: dict[str, np.ndarray], out_dir: str | Path, end_latent: torch.Tensor | None,
                   sample: bool = True, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Encode whole clips into per-clip latent files `out_dir/<name>.npy` of shape (L+1, latent_dim):
    the L = T//4 latents of the clip, then `end_latent` as the last row (when given).

    Why the SAMPLED z (mu + eps * sigma, eps from `seed`) and not mu: the original get_latent.py
    stores the sample, and the TAE decoder was trained on samples, so a model trained to predict
    samples produces latents from the distribution the decoder knows; its spread also acts as data
    augmentation. `sample=False` stores mu instead. The end latent is appended as the final token so
    the text-to-motion model learns when an action ends (the runtime stops on reaching it).
    Frames beyond the last multiple of 4 are dropped; clips shorter than 4 frames are skipped.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = next(tae.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    result = {}
    for name, m in tqdm(sorted(motions.items()), desc="encode latents", disable=not progress):
        if m.ndim != 2 or m.shape[1] != tae.config.in_dim or not np.all(np.isfinite(m)):
            raise ValueError(f"clip {name!r}: expected finite (frames, {tae.config.in_dim}) features, got {m.shape}")
        T = (len(m) // tae.config.frames_per_latent) * tae.config.frames_per_latent
        if T == 0:
            continue
        x = torch.from_numpy(np.ascontiguousarray(m[:T], dtype=np.float32))[None].to(dev)
        _, mu, logvar = tae.encode(x, sample=False)
        if sample:
            eps = torch.randn(mu.shape, generator=gen).to(dev)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        z = z[0].float().cpu()
        if end_latent is not None:
            z = torch.cat([z, end_latent.reshape(1, -1).float().cpu()])
        arr = z.numpy()
        atomic_save_npy(out_dir / f"{name}.npy", arr)
        result[name] = arr
    return result


@torch.no_grad()
def reference_end_latent(tae) -> torch.Tensor:
    """The TAE encoding (mean) of an all-zero 4-frame normalised pose, as the released end latent."""
    dev = next(tae.parameters()).device
    _, mu, _ = tae.encode(torch.zeros(1, 4, tae.config.in_dim, device=dev))
    return mu[0, 0].float().cpu()
