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
the loop), as is the empty caption; `save_text_embeddings`/`load_text_embeddings` keep them in a
file across runs (CLI --text-cache).

Choices where the original is loose: each caption is blanked with probability text_dropout (the
original blanks exactly int(0.1 * B) per batch: the same rate, and it still drops captions in small
batches); a clip's whole-clip captions form one example and one of them is drawn per sample (the
original draws a random caption of the clip); the Two-Forward x0 is computed only where it replaces
an input; batches are trimmed to their longest row. All randomness of a batch is drawn from the data
generator, except the diffusion t/noise (global torch RNG, per rank), which a batch may instead
carry explicitly (`draw_diffusion_noise`, used to check DDP against one process).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.data.humanml3d import read_split, read_text_file
from motionstreamer.models.goal import GOAL_DIM
from motionstreamer.train.common import TrainConfig, atomic_torch_save, train_loop
from motionstreamer.train.goals import goal_window, latent_root_path, root_steps, sample_goals
from motionstreamer.utils import load_npy


@dataclass
class T2MTrainConfig(TrainConfig):
    out_dir: str = "runs/t2m"
    steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6         # betas (0.9, 0.99), cosine schedule: TrainConfig's
    warmup_steps: int = 10_000        # total/10, as the original
    grad_clip: float | None = None     # the original does not clip
    text_dropout: float = 0.1
    max_latents: int = 78              # block_size: text token + 77 inputs
    drop_edge_prob: float = 1 / 3      # drop first or last latent with this probability
    two_forward: bool = True
    diffmlps_batch_mul: int = 4        # each target token's head loss at this many timesteps (the original's name)
    goal_prob: float = 0.0             # share of sequences given a goal (train/goals.py; the model needs a goal
                                       # module); 0: text only, the original recipe
    goal_horizon_s: tuple = (0.5, 6.0)  # how far ahead (seconds) a goal is taken from the clip's own path
    goal_only_share: float = 0.0       # share of rows drawn from the goal-only examples (steered clips), when any
    root_aux: float = 0.0              # weight of an auxiliary loss: each condition predicts its latent's root step
                                       # (train/goals.py root_steps), a low-noise signal for steering; 0: off
    goal_lr_mult: float = 1.0          # the goal module's learning rate over lr: a fine-tune adds it untrained to a
                                       # trained model (at 1x its last layer measured barely moved in 600 steps)
    goal_module_only: bool = False     # train only the goal module (and the root-step probe): the text-only model
                                       # stays bit-identical, a goal steers through the module alone

    def check(self) -> None:
        super().check()
        for k in ("text_dropout", "drop_edge_prob", "goal_prob", "goal_only_share"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"T2MTrainConfig.{k} must be in [0, 1], got {getattr(self, k)}")
        if self.max_latents < 2:
            raise ValueError("T2MTrainConfig.max_latents must be >= 2 (text token + one latent), "
                             f"got {self.max_latents}")
        if not 0.0 <= self.root_aux <= 1000.0:
            raise ValueError(f"T2MTrainConfig.root_aux must be in [0, 1000], got {self.root_aux}")
        if not 0.0 < self.goal_lr_mult <= 1000.0:
            raise ValueError(f"T2MTrainConfig.goal_lr_mult must be in (0, 1000], got {self.goal_lr_mult}")
        if self.diffmlps_batch_mul < 1:
            raise ValueError(f"T2MTrainConfig.diffmlps_batch_mul must be >= 1, got {self.diffmlps_batch_mul}")
        h = tuple(self.goal_horizon_s)
        if len(h) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h) \
                or not 0 < h[0] <= h[1] < math.inf:
            raise ValueError(f"T2MTrainConfig.goal_horizon_s must be (min, max) seconds with 0 < min <= max, got "
                             f"{self.goal_horizon_s!r}")


# ----------------------------------------------------------------------------- data
@dataclass
class LatentExample:
    caption: str
    latents_a: np.ndarray              # (La, 16) history (empty for plain text-to-motion clips)
    latents_b: np.ndarray              # (Lb, 16) target latents, end latent included
    edge_drop: bool = True             # plain clips may lose their first/last latent (augmentation)
    captions: tuple = ()               # all captions of a whole clip; one is drawn per sample (as the original)
    history_caption: str = ""          # the caption the history ran under (stream pairs: A's), when known
    path: np.ndarray | None = None     # (La + Lb + 1, 3) root (x, z, yaw) before each latent of [A, B], for goals
    ends: bool = False                 # latents_b's last row is the end latent
    goal_only: bool = False            # always trained with a goal (steered clips whose turns their captions
                                       # do not name: without the goal they would teach the text-only model to wander)

    def all_captions(self) -> tuple:
        return self.captions or (self.caption,)


class LatentTextData:
    """In-memory examples + cached text embeddings; sample_batch draws everything from a generator."""

    def __init__(self, examples: list[LatentExample], text_embeddings: dict[str, torch.Tensor], config: T2MTrainConfig):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.emb, self.config = examples, text_embeddings, config
        self.latent_dim = examples[0].latents_b.shape[-1]
        if "" not in self.emb:
            raise ValueError("text embeddings must include the empty caption '' (CFG)")
        self.text_dim = self.emb[""].shape[-1]
        for i, ex in enumerate(examples):
            for name, a in (("latents_a", ex.latents_a), ("latents_b", ex.latents_b)):
                if a.ndim != 2 or (len(a) and a.shape[1] != self.latent_dim):
                    raise ValueError(f"example {i} ({ex.caption!r}): {name} must be (L, {self.latent_dim}), "
                                     f"got {a.shape}")
            if len(ex.latents_b) == 0:
                raise ValueError(f"example {i} ({ex.caption!r}): no target latents")
            n_path = len(ex.latents_a) + len(ex.latents_b) + 1
            if ex.path is not None and ex.path.shape != (n_path, 3):
                raise ValueError(f"example {i} ({ex.caption!r}): path must be ({n_path}, 3) (one root state per latent "
                                 f"boundary), got {ex.path.shape}")
            if (config.goal_prob > 0 or ex.goal_only) and ex.path is None:
                raise ValueError(f"example {i} ({ex.caption!r}): goal_prob > 0 needs root paths (load the examples "
                                 f"with paths=True)")
            for c in ex.all_captions():
                e = self.emb.get(c)
                if e is None:
                    raise ValueError(f"example {i}: no text embedding for caption {c!r}")
                if e.shape != (self.text_dim,):
                    raise ValueError(f"text embedding of {c!r} has shape {tuple(e.shape)}, expected ({self.text_dim},)")

        self.plain = [i for i, ex in enumerate(examples) if not ex.goal_only]
        self.goal_only = [i for i, ex in enumerate(examples) if ex.goal_only]
        if not self.plain:
            raise ValueError("every example is goal-only: the text-only model needs plain examples too")

    def _draw_examples(self, gen: torch.Generator, batch_size: int) -> list[int]:
        """Example indices for a batch: uniform over all examples without goal-only ones (the original
        draw), else goal_only_share of the rows from the goal-only examples and the rest from the plain."""
        if not self.goal_only:
            return torch.randint(len(self.examples), (batch_size,), generator=gen).tolist()
        which = (torch.rand(batch_size, generator=gen) < self.config.goal_only_share).tolist()
        plain = torch.randint(len(self.plain), (batch_size,), generator=gen).tolist()
        steer = torch.randint(len(self.goal_only), (batch_size,), generator=gen).tolist()
        return [self.goal_only[s] if w else self.plain[p] for w, p, s in zip(which, plain, steer)]

    def sample_batch(self, gen: torch.Generator, batch_size: int):
        config = self.config
        L = config.max_latents - 1                      # inputs after the text token
        idx = self._draw_examples(gen, batch_size)
        latents = torch.zeros(batch_size, L, self.latent_dim)
        a_len = torch.zeros(batch_size, dtype=torch.long)
        total = torch.zeros(batch_size, dtype=torch.long)
        goals = torch.zeros(batch_size, L + 1, GOAL_DIM) if config.goal_prob > 0 or self.goal_only else None
        steps = torch.zeros(batch_size, L, 3) if config.root_aux > 0 else None
        step_mask = torch.zeros(batch_size, L, dtype=torch.bool) if config.root_aux > 0 else None
        texts = []
        for row, i in enumerate(idx):
            ex = self.examples[i]
            b = ex.latents_b
            lo, hi = 0, len(b)                       # the part of B kept
            r = torch.rand(2, generator=gen).tolist()
            goal_row = goals is not None and (torch.rand(1, generator=gen).item() < config.goal_prob or ex.goal_only)
            window = goal_window(len(b), gen) if goal_row else None
            if window is not None:                   # a goal row may start mid-clip, without history
                lo, hi = window
                b = b[lo:hi]
            elif ex.edge_drop and r[0] < config.drop_edge_prob and len(b) > 1:
                lo, hi = (0, hi - 1) if r[1] < 0.5 else (1, hi)
                b = b[lo:hi]
            keep = max(0, L - len(b)) if window is None else 0   # history that still fits before B (newest kept)
            a = ex.latents_a[len(ex.latents_a) - keep:] if keep else ex.latents_a[:0]
            seq = np.concatenate([a, b]) if len(a) else b
            seq = seq[:L]
            latents[row, :len(seq)] = torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32))
            a_len[row] = min(len(a), len(seq))
            total[row] = len(seq)
            first = len(ex.latents_a) - len(a) if len(a) else len(ex.latents_a) + lo   # seq[0] in [A, B]
            ends = ex.ends and hi == len(ex.latents_b) and len(seq) == len(a) + len(b)
            if goal_row:
                sample_goals(ex.path[first:first + len(seq) + 1], int(a_len[row]), len(seq) - int(ends),
                             config.goal_horizon_s, gen, goals[row])
            if steps is not None and ex.path is not None:
                n_motion = len(seq) - int(ends)
                steps[row, :n_motion] = root_steps(ex.path[first:first + n_motion + 1])
                step_mask[row, int(a_len[row]):n_motion] = True
            caps = ex.all_captions()
            texts.append(caps[int(torch.randint(len(caps), (1,), generator=gen))] if len(caps) > 1 else caps[0])
        drop = torch.rand(batch_size, generator=gen) < config.text_dropout
        texts = ["" if d else t for t, d in zip(texts, drop.tolist())]
        text = torch.stack([self.emb[t] for t in texts])
        # trim padding beyond the longest row (causal attention: it never affects valid positions);
        # Two-Forward replaces the same fraction of positions either way
        L_eff = int(total.max())
        perm = torch.randperm(L_eff, generator=gen)  # Two-Forward positions, drawn here so resume is exact
        batch = {"latents": latents[:, :L_eff], "a_len": a_len, "len": total, "text": text, "perm": perm}
        if goals is not None:                        # one raw goal per token: text token + L_eff latents
            batch["goal"] = goals[:, :L_eff + 1]
        if steps is not None:
            batch["root_step"], batch["root_step_mask"] = steps[:, :L_eff], step_mask[:, :L_eff]
        return batch


def draw_diffusion_noise(batch: dict, diffmlps_batch_mul: int, num_timesteps: int, generator: torch.Generator) -> dict:
    """Add explicit per-position diffusion randomness to a batch: t/noise for the loss (each of the
    diffmlps_batch_mul repeats) and t_x0/noise_x0 for the Two-Forward first pass. A batch carrying them has a
    loss that is a pure function of its rows, so it can be split across processes and give the same
    gradients as one process (tests/test_train_ddp.py). Without them the objective draws from the
    global torch RNG (faster on GPU: no host-side noise)."""
    b, l, d = batch["latents"].shape
    g = generator
    return {**batch,
            "t": torch.randint(num_timesteps, (b, l, diffmlps_batch_mul), generator=g),
            "noise": torch.randn(b, l, diffmlps_batch_mul, d, generator=g),
            "t_x0": torch.randint(num_timesteps, (b, l), generator=g),
            "noise_x0": torch.randn(b, l, d, generator=g)}


def split_batch_rows(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of a batch; the Two-Forward positions ('perm') are shared by all rows."""
    return {k: (v if k == "perm" else v[start:stop]) for k, v in batch.items()}


def replace_fraction(step: int, total: int) -> float:
    """Two-Forward: fraction of token positions replaced by predictions, 0 -> 1 over training."""
    return 1.0 - 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


class TwoForwardObjective(torch.nn.Module):
    """The original objective as a module, so DDP wraps one forward that uses every parameter."""

    def __init__(self, model, total_steps: int, diffmlps_batch_mul: int = 4, two_forward: bool = True,
                 root_aux: float = 0.0):
        super().__init__()
        self.model, self.total_steps = model, total_steps
        self.diffmlps_batch_mul, self.two_forward = diffmlps_batch_mul, two_forward
        # training only (never in a bundle): a linear read-out of each condition's root step (root_aux)
        self.root_aux = root_aux
        self.root_probe = torch.nn.Linear(model.out_proj.out_features, 3) if root_aux > 0 else None

    def forward(self, batch: dict, step: int):
        model, diff = self.model, self.model.diff_loss
        proc = diff.train_diffusion
        w = next(model.parameters())
        dev, dtype = w.device, w.dtype
        lat = batch["latents"].to(dev, dtype)
        text = batch["text"].to(dev, dtype)
        goal = batch["goal"].to(dev) if "goal" in batch else None
        goal_kw = {} if goal is None else {"goal": goal}   # a text-only batch calls the model as it always did
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
                    cond = model(lat, text, **goal_kw)[:, :-1]
                    x, c = lat[replace], cond[replace]
                    if "t_x0" in batch:
                        t0, n0 = batch["t_x0"].to(dev)[replace], batch["noise_x0"].to(dev, dtype)[replace]
                    else:  # same draws, in the same order, as DiffLoss.predict_x0
                        t0 = torch.randint(0, proc.num_timesteps, (x.shape[0],), device=dev)
                        n0 = torch.randn_like(x)
                    x_t = proc.q_sample(x, t0, n0)
                    x0 = proc.predict_x0(x_t, t0, diff.net(x_t, t0, c))
                inputs = lat.clone()
                inputs[replace] = x0.to(lat.dtype)
        cond = model(inputs, text, **goal_kw)[:, :-1]
        # valid target tokens, each repeated diffmlps_batch_mul times with its own t and noise
        tgt = lat[target_mask].repeat(self.diffmlps_batch_mul, 1)
        z = cond[target_mask].repeat(self.diffmlps_batch_mul, 1)
        t = noise = None
        if "t" in batch:  # (b, l, mul) -> valid (n, mul) -> repeat-major (mul * n), the order of tgt/z
            t = batch["t"].to(dev)[target_mask].T.reshape(-1)
            noise = batch["noise"].to(dev, dtype)[target_mask].transpose(0, 1).reshape(-1, d)
        loss, logs = diff.loss(tgt, z, t, noise), {"replace_fraction": frac}
        if self.root_probe is not None and "root_step" in batch:
            mask = batch["root_step_mask"].to(dev)
            if mask.any():
                aux = torch.nn.functional.mse_loss(self.root_probe(cond[mask]), batch["root_step"].to(dev, dtype)[mask])
                loss = loss + self.root_aux * aux
                logs["root_aux"] = float(aux.detach())
        return loss, logs


# ----------------------------------------------------------------------------- loading latents
def load_latent_examples(latent_dir: str | Path, data_root: str | Path, split: str = "train",
                         max_latents: int = 78, fps: int = FPS, unit_length: int = FRAMES_PER_LATENT,
                         paths: bool = False) -> list[LatentExample]:
    """Read per-clip latents written by `encode-latents` and the captions of a HumanML3D-272 layout.

    A clip's whole-clip captions (start = end = 0) make one example; one of them is drawn per sample,
    as the original draws a random caption of the clip. Each sub-caption (start/end seconds) is its own
    example, its latents cropped at int(sec*fps/unit_length) as the original.

    paths=True also reads each clip's motion (data_root/motion_data) for its root path at the latent
    boundaries (train/goals.py: what goals are sampled from).
    """

    latent_dir, data_root = Path(latent_dir), Path(data_root)
    examples = []
    for name in read_split(data_root, split):
        path = latent_dir / f"{name}.npy"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no latents for clip {name!r} of split {split!r}; run encode-latents")
        try:
            lat = load_npy(path)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a numeric .npy array ({e})") from None
        if lat.ndim != 2 or len(lat) == 0 or not np.all(np.isfinite(lat)):
            raise ValueError(f"{path}: expected finite (L, latent_dim) latents, got shape {lat.shape}")
        root = motion_root_path(data_root / "motion_data" / f"{name}.npy", len(lat), unit_length) if paths else None

        def example(caption, a, b, **kw):
            b = min(b, a + max_latents)
            return LatentExample(caption, lat[:0], lat[a:b], path=None if root is None else root[a:b + 1],
                                 ends=b == len(lat), **kw)
        whole = []
        for cap in read_text_file(data_root / "texts" / f"{name}.txt"):
            if cap.start == 0.0 and cap.end == 0.0:
                whole.append(cap.caption)
                continue
            a, b = int(cap.start * fps / unit_length), int(cap.end * fps / unit_length)
            if a >= b or a >= len(lat):
                continue
            examples.append(example(cap.caption, a, min(b, len(lat))))
        if whole:
            examples.append(example(whole[0], 0, len(lat), captions=tuple(whole)))
    return examples


def motion_root_path(motion_file: Path, n_latents: int, unit_length: int = FRAMES_PER_LATENT) -> np.ndarray:
    """The root path at the latent boundaries (train/goals.py) of a latent file of n_latents rows, from
    the de-normalised motion it was encoded from."""
    try:
        motion = load_npy(motion_file)
    except (ValueError, OSError) as e:
        raise ValueError(f"{motion_file}: cannot read the motion for its root path ({e})") from None
    if motion.ndim != 2 or len(motion) < unit_length or not np.all(np.isfinite(motion)):
        raise ValueError(f"{motion_file}: expected finite (frames, 272) features, got shape {motion.shape}")
    return latent_root_path(motion, n_latents, unit_length)


def embed_captions(examples, text_encoder, batch: int = 256,
                   known: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """{caption: embedding} for every caption of the examples (their history captions too) and '' (CFG),
    encoded once each.

    Captions already in `known` (e.g. a --text-cache file) are not encoded again; text_encoder may be
    None when `known` covers them all."""
    caps = sorted({c for e in examples for c in e.all_captions()} | {e.history_caption for e in examples} | {""})
    out = {c: known[c] for c in caps if known and c in known}
    missing = [c for c in caps if c not in out]
    if missing and text_encoder is None:
        raise ValueError(f"{len(missing)} caption(s) have no cached embedding and no text encoder was given, "
                         f"e.g. {missing[0]!r}")
    for i in range(0, len(missing), batch):
        chunk = missing[i:i + batch]
        emb = text_encoder.encode(chunk)
        for c, e in zip(chunk, emb):
            out[c] = e.detach().float().cpu()
    return out


TEXT_CACHE_FORMAT = "motionstreamer-text-embeddings"


def save_text_embeddings(path: str | Path, embeddings: dict[str, torch.Tensor], encoder: str) -> None:
    """One file of caption embeddings (loads with torch.load(weights_only=True)), written atomically."""

    caps = sorted(embeddings)
    atomic_torch_save(path, {"format": TEXT_CACHE_FORMAT, "encoder": encoder, "captions": caps,
                             "embeddings": torch.stack([embeddings[c].float().cpu() for c in caps])})


def load_text_embeddings(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(embeddings, encoder name) from save_text_embeddings; errors name the file."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read text embeddings {path}: {e}") from None
    if not isinstance(d, dict) or d.get("format") != TEXT_CACHE_FORMAT:
        raise ValueError(f"{path}: not a motionstreamer text-embedding file")
    caps, emb = d["captions"], d["embeddings"]
    if emb.ndim != 2 or len(caps) != len(emb):
        raise ValueError(f"{path}: {len(caps)} captions but embeddings of shape {tuple(emb.shape)}")
    return dict(zip(caps, emb)), str(d["encoder"])


def train_t2m(model, examples: list[LatentExample], text_embeddings: dict, config: T2MTrainConfig,
              name: str = "t2m", resume=None, stop_after=None, extra_config=None, overwrite: bool = False):
    data = LatentTextData(examples, text_embeddings, config)
    objective = TwoForwardObjective(model, config.steps, config.diffmlps_batch_mul, config.two_forward,
                                    config.root_aux)
    trainable = None
    if config.goal_module_only:
        if getattr(model, "goal_embed", None) is None:
            raise ValueError("T2MTrainConfig.goal_module_only needs a model with a goal module (T2MConfig(goal=True))")
        goal = {id(p) for p in model.goal_embed.parameters()}
        in_model = {id(p) for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in goal)
        probe = [p for p in objective.parameters() if id(p) not in in_model]     # the root-step probe
        trainable = [{"params": list(model.goal_embed.parameters()), "lr": config.lr * config.goal_lr_mult}]
        trainable += [{"params": probe}] if probe else []
    elif config.goal_lr_mult != 1.0 and getattr(model, "goal_embed", None) is not None:
        goal = {id(p) for p in model.goal_embed.parameters()}
        trainable = [{"params": [p for p in objective.parameters() if p.requires_grad and id(p) not in goal]},
                     {"params": list(model.goal_embed.parameters()), "lr": config.lr * config.goal_lr_mult}]
    return train_loop(objective, config, data.sample_batch, lambda m, batch, step: m(batch, step), name=name,
                      resume=resume, stop_after=stop_after, overwrite=overwrite, trainable=trainable,
                      extra_config={"t2m": model.config.to_dict(), **(extra_config or {})})
