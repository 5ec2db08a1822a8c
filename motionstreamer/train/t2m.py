"""Text-to-motion training (Two-Forward, CFG text dropout), and the streaming variant on A/B pairs.

Original recipe (train_t2m.py): latents are the TAE's sampled z per clip with the reference end
latent appended; up to 78 latents, sub-captions crop at int(sec*30/4); with probability 1/3 the
first or the last latent is dropped; 10% of captions are replaced by '' each step (CFG); the
Two-Forward strategy replaces a growing random subset of token positions (the same positions for
the whole batch) by the head's x0 prediction before a second forward whose diffusion loss is
trained (masked by length, 4 repeats per token). AdamW lr 1e-4, global batch 256, 100k steps,
warm-up total/10 then cosine.

Streaming (train_motionstreamer.py): sequence [text token of B, latents of A, latents of B]; the loss
covers B's positions only; Two-Forward never replaces A's latents. Plain clips are pairs with an
empty A, so one model learns both.

Text embeddings are computed once per distinct caption and cached (the text encoder never runs in
the loop), as is the empty caption.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionstreamer.train.common import TrainConfig, train_loop


@dataclass
class T2MTrainConfig(TrainConfig):
    out_dir: str = "runs/t2m"
    steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple = (0.9, 0.99)
    schedule: str = "cosine"
    warmup_steps: int = 10_000        # total/10, as the original
    grad_clip: float | None = None     # the original does not clip
    text_dropout: float = 0.1
    max_latents: int = 78              # block_size: text token + 77 inputs
    drop_edge_prob: float = 1 / 3      # drop first or last latent with this probability
    two_forward: bool = True
    batch_mul: int = 4                 # diffmlps_batch_mul


# ----------------------------------------------------------------------------- data
@dataclass
class LatentExample:
    caption: str
    latents_a: np.ndarray              # (La, 16) history (empty for plain text-to-motion clips)
    latents_b: np.ndarray              # (Lb, 16) target latents, end latent included
    edge_drop: bool = True             # plain clips may lose their first/last latent (augmentation)


class LatentTextData:
    """In-memory examples + cached text embeddings; sample_batch draws everything from a generator."""

    def __init__(self, examples: list[LatentExample], text_embeddings: dict[str, torch.Tensor], cfg: T2MTrainConfig):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.emb, self.cfg = examples, text_embeddings, cfg
        self.latent_dim = examples[0].latents_b.shape[-1]
        self.text_dim = next(iter(text_embeddings.values())).shape[-1]
        if "" not in self.emb:
            raise ValueError("text embeddings must include the empty caption '' (CFG)")

    def sample_batch(self, gen: torch.Generator, batch_size: int):
        cfg = self.cfg
        L = cfg.max_latents - 1                      # inputs after the text token
        idx = torch.randint(len(self.examples), (batch_size,), generator=gen).tolist()
        latents = torch.zeros(batch_size, L, self.latent_dim)
        a_len = torch.zeros(batch_size, dtype=torch.long)
        total = torch.zeros(batch_size, dtype=torch.long)
        texts = []
        for row, i in enumerate(idx):
            ex = self.examples[i]
            b = ex.latents_b
            r = torch.rand(2, generator=gen).tolist()
            if ex.edge_drop and r[0] < cfg.drop_edge_prob and len(b) > 1:
                b = b[:-1] if r[1] < 0.5 else b[1:]
            a = ex.latents_a[-max(0, L - len(b)):] if len(ex.latents_a) else ex.latents_a
            seq = np.concatenate([a, b]) if len(a) else b
            seq = seq[:L]
            latents[row, :len(seq)] = torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32))
            a_len[row] = min(len(a), len(seq))
            total[row] = len(seq)
            texts.append(ex.caption)
        drop = torch.rand(batch_size, generator=gen) < cfg.text_dropout
        texts = ["" if d else t for t, d in zip(texts, drop.tolist())]
        text = torch.stack([self.emb[t] for t in texts])
        # trim padding beyond the longest row (causal attention: it never affects valid positions);
        # Two-Forward replaces the same fraction of positions either way
        L_eff = int(total.max())
        perm = torch.randperm(L_eff, generator=gen)  # Two-Forward positions, drawn here so resume is exact
        return {"latents": latents[:, :L_eff], "a_len": a_len, "len": total, "text": text, "perm": perm}


def replace_fraction(step: int, total: int) -> float:
    """Two-Forward: fraction of token positions replaced by predictions, 0 -> 1 over training."""
    return 1.0 - 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


class TwoForwardObjective(torch.nn.Module):
    """The original objective as a module, so DDP wraps one forward that uses every parameter."""

    def __init__(self, model, total_steps: int, batch_mul: int = 4, two_forward: bool = True):
        super().__init__()
        self.model, self.total_steps, self.batch_mul, self.two_forward = model, total_steps, batch_mul, two_forward

    def forward(self, batch: dict, step: int):
        model = self.model
        dev = next(model.parameters()).device
        lat = batch["latents"].to(dev)
        text = batch["text"].to(dev)
        b, l, d = lat.shape
        pos = torch.arange(l, device=dev)[None]
        a_len = batch["a_len"].to(dev)[:, None]
        target_mask = (pos < batch["len"].to(dev)[:, None]) & (pos >= a_len)
        inputs = lat
        frac = replace_fraction(step, self.total_steps) if self.two_forward else 0.0
        if self.two_forward:
            replace = torch.zeros(b, l, dtype=torch.bool, device=dev)
            replace[:, batch["perm"][: int(l * frac)].to(dev)] = True   # same positions for the batch
            replace &= target_mask                                       # history (A) and padding stay
            if replace.any():
                with torch.no_grad():  # first forward; the head's x0 only where it will be used
                    cond = model(lat, text)[:, :-1]
                    x0 = model.diff_loss.predict_x0(lat[replace], cond[replace])
                inputs = lat.clone()
                inputs[replace] = x0.to(lat.dtype)
        cond = model(inputs, text)[:, :-1]
        # valid target tokens, each repeated batch_mul times with its own t and noise
        tgt = lat[target_mask].repeat(self.batch_mul, 1)
        z = cond[target_mask].repeat(self.batch_mul, 1)
        return model.diff_loss.loss(tgt, z), {"replace_fraction": frac}


# ----------------------------------------------------------------------------- loading latents
def load_latent_examples(latent_dir: str | Path, data_root: str | Path, split: str = "train",
                         max_latents: int = 78, fps: int = 30, unit_length: int = 4) -> list[LatentExample]:
    """Read per-clip latents written by `encode-latents` and the captions of a HumanML3D-272 layout.

    Sub-captions (start/end seconds) crop the latents at int(sec*fps/unit_length) as the original.
    """
    from motionstreamer.data.humanml3d import read_split, read_text_file

    latent_dir, data_root = Path(latent_dir), Path(data_root)
    examples = []
    for name in read_split(data_root, split):
        path = latent_dir / f"{name}.npy"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no latents for clip {name!r} of split {split!r}; run encode-latents")
        lat = np.load(path, allow_pickle=False)
        if lat.ndim != 2 or not np.all(np.isfinite(lat)):
            raise ValueError(f"{path}: expected finite (L, latent_dim) latents, got shape {lat.shape}")
        for cap in read_text_file(data_root / "texts" / f"{name}.txt"):
            if cap.start == 0.0 and cap.end == 0.0:
                seq = lat
            else:
                a, b = int(cap.start * fps / unit_length), int(cap.end * fps / unit_length)
                if a >= b:
                    continue
                seq = lat[a:b]
            examples.append(LatentExample(cap.caption, lat[:0], seq[:max_latents]))
    return examples


def embed_captions(examples, text_encoder, batch: int = 256) -> dict[str, torch.Tensor]:
    caps = sorted({e.caption for e in examples} | {""})
    out = {}
    for i in range(0, len(caps), batch):
        chunk = caps[i:i + batch]
        emb = text_encoder.encode(chunk)
        for c, e in zip(chunk, emb):
            out[c] = e.detach().float().cpu()
    return out


def train_t2m(model, examples: list[LatentExample], text_embeddings: dict, cfg: T2MTrainConfig,
              name: str = "t2m", resume=None, stop_after=None, extra_config=None):
    data = LatentTextData(examples, text_embeddings, cfg)
    objective = TwoForwardObjective(model, cfg.steps, cfg.batch_mul, cfg.two_forward)
    return train_loop(objective, cfg, data.sample_batch, lambda m, batch, step: m(batch, step), name=name,
                      resume=resume, stop_after=stop_after,
                      extra_config={"t2m": model.config.to_dict(), **(extra_config or {})})
