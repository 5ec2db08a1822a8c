"""Train the TMR-style evaluator (motionstreamer.models.evaluator) on a HumanML3D-272 layout folder.

Losses as the original (`Evaluator_272/mld/models/losses/temos.py`, `infonce.py`, H3D-TMR.yaml):
  reconstruction  SmoothL1(decoder(text latent), motion) + SmoothL1(decoder(motion latent), motion), x1
                  (over the zero-padded batch, the decoder zeroes its padding as the reference is zero)
  KL              KL(text||motion) + KL(motion||text) + KL(text||N(0,I)) + KL(motion||N(0,I)), x1e-5 each
  latent          SmoothL1(text latent sample, motion latent sample), x1e-5
  InfoNCE         symmetric cross-entropy of cosine similarities of the two MEANS / 0.1, x0.1; pairs whose
                  captions are near duplicates (sentence-embedding cosine > 0.85) are removed as negatives
AdamW lr 1e-4 (torch defaults otherwise: betas 0.9/0.999, weight decay 0.01), constant rate, no
clipping, batch 256, 100 epochs in the release.

Differences kept on purpose: the frozen backbone runs once per distinct caption before training and
its token features are cached (the original re-runs it every step; same numbers, the backbone is
frozen and in eval mode); the near-duplicate filter uses the project's offline all-MiniLM-L6-v2
(the original: paraphrase-MiniLM-L6-v2) and also filters identical captions (the original's
`sim < 1.0` test spares them by float rounding). Items are every (clip, caption) pair of the split
(clips over max_frames keep their first max_frames), with the original's length jitter (1 in 3 items
one 4-frame unit shorter at a random offset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.data.humanml3d import HumanML3D272Dataset
from motionstreamer.models.evaluator import EvaluatorConfig, TMREvaluator
from motionstreamer.models.text import TextEncoder
from motionstreamer.train.common import CHECKPOINT_NAME, TrainConfig, TrainResult, check_run_dir, train_loop

TRAINER_NAME = "evaluator"


@dataclass
class EvaluatorTrainConfig(TrainConfig):
    out_dir: str = "runs/evaluator"
    epochs: int = 100                  # steps = epochs * ceil(items / batch_size)
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01         # torch AdamW default, as the original's AdamW(lr=..., params=...)
    betas: tuple = (0.9, 0.999)
    schedule: str = "constant"
    grad_clip: float | None = None
    bf16: bool = False                 # the release trained in fp32
    save_every: int = 1000             # steps between checkpoints (training state + safetensors export)
    lambda_rec: float = 1.0
    lambda_kl: float = 1e-5
    lambda_latent: float = 1e-5
    lambda_infonce: float = 0.1
    infonce_temp: float = 0.1
    filter_model: str = "minilm"       # sentence encoder for the near-duplicate filter; "none" disables it
    filter_threshold: float = 0.85
    min_frames: int = 60
    max_frames: int = 300
    length_jitter: bool = True
    cache_dtype: str = "float16"       # storage of the cached backbone token features

    def check(self) -> None:
        super().check()
        name = type(self).__name__
        if self.epochs < 1:
            raise ValueError(f"{name}.epochs must be >= 1, got {self.epochs}")
        if not self.infonce_temp > 0:
            raise ValueError(f"{name}.infonce_temp must be > 0, got {self.infonce_temp}")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"{name}.cache_dtype must be float16|bfloat16|float32, got {self.cache_dtype!r}")
        if not 4 <= self.min_frames <= self.max_frames:
            raise ValueError(f"{name}: need 4 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")


# ----------------------------------------------------------------------------- losses
def infonce_loss(f_motion: torch.Tensor, f_text: torch.Tensor, text_sim: torch.Tensor | None = None,
                 temperature: float = 0.1, threshold: float = 0.85) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; text_sim (B, B) cosine similarities of the captions: an
    off-diagonal pair above `threshold` is not used as a negative."""
    logits = F.normalize(f_motion, dim=1) @ F.normalize(f_text, dim=1).T
    if text_sim is not None:
        drop = text_sim.detach() > threshold
        drop.fill_diagonal_(False)
        logits = logits.masked_fill(drop, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits / temperature, labels) + F.cross_entropy(logits.T / temperature, labels))


def tmr_losses(out: dict, reference: torch.Tensor, text_sim: torch.Tensor | None, config: EvaluatorTrainConfig):
    """Total weighted loss and the unweighted terms (for logs). `out` is TMRObjective's forward."""
    Normal = torch.distributions.Normal
    d_text = Normal(out["mu_text"], out["std_text"], validate_args=False)
    d_motion = Normal(out["mu_motion"], out["std_motion"], validate_args=False)
    d_ref = Normal(torch.zeros_like(out["mu_text"]), torch.ones_like(out["std_text"]), validate_args=False)

    def kl(q, p):
        return torch.distributions.kl_divergence(q, p).mean()

    terms = {
        "recons_motion": F.smooth_l1_loss(out["feat_motion"], reference),
        "recons_text": F.smooth_l1_loss(out["feat_text"], reference),
        "kl_text2motion": kl(d_text, d_motion),
        "kl_motion2text": kl(d_motion, d_text),
        "kl_text": kl(d_text, d_ref),
        "kl_motion": kl(d_motion, d_ref),
        "latent": F.smooth_l1_loss(out["lat_text"], out["lat_motion"]),
        "infonce": infonce_loss(out["mu_motion"], out["mu_text"], text_sim, config.infonce_temp,
                                config.filter_threshold),
    }
    weights = {"recons": config.lambda_rec, "kl": config.lambda_kl, "latent": config.lambda_latent,
               "infonce": config.lambda_infonce}
    total = sum(weights[k.split("_")[0]] * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


class TMRObjective(torch.nn.Module):
    """The training forward as one module call, so DDP sees it: both encoders, samples, the decoder."""

    def __init__(self, evaluator: TMREvaluator):
        super().__init__()
        self.evaluator = evaluator

    def forward(self, motion, lengths, text_hidden, text_mask) -> dict:
        ev = self.evaluator
        d_text = ev.textencoder.forward_features(text_hidden, text_mask)
        d_motion = ev.motionencoder(motion, lengths)
        lat_text, lat_motion = d_text.rsample(), d_motion.rsample()
        T = motion.shape[1]
        return {"mu_text": d_text.loc, "std_text": d_text.scale,
                "mu_motion": d_motion.loc, "std_motion": d_motion.scale,
                "lat_text": lat_text, "lat_motion": lat_motion,
                "feat_text": ev.motiondecoder(lat_text, lengths, T),
                "feat_motion": ev.motiondecoder(lat_motion, lengths, T)}


# ----------------------------------------------------------------------------- data
class CaptionFeatureCache:
    """Frozen-backbone token features per distinct caption (computed once), padded per batch."""

    def __init__(self, evaluator: TMREvaluator, captions: list[str], dtype=torch.float16, batch: int = 64,
                 progress: bool = True):
        self.index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        order = sorted(self.index, key=len)            # similar lengths together: less padding
        self.features: list[torch.Tensor | None] = [None] * len(self.index)
        it = range(0, len(order), batch)
        if progress:
            it = tqdm(it, desc="text backbone features", dynamic_ncols=True)
        for s in it:
            chunk = order[s:s + batch]
            hidden, mask = evaluator.textencoder.backbone_features(chunk)
            for c, h, m in zip(chunk, hidden, mask):
                self.features[self.index[c]] = h[m].to("cpu", dtype)

    def batch(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [self.features[self.index[c]] for c in captions]
        L = max(f.shape[0] for f in feats)
        hidden = torch.zeros(len(feats), L, feats[0].shape[1])
        mask = torch.zeros(len(feats), L, dtype=torch.bool)
        for i, f in enumerate(feats):
            hidden[i, :f.shape[0]] = f.float()
            mask[i, :f.shape[0]] = True
        return hidden.to(device), mask.to(device)


def caption_similarities(captions: list[str], encoder_name: str) -> tuple[dict, torch.Tensor]:
    """{caption: row} and unit-norm sentence embeddings (rows) for the near-duplicate filter."""
    enc = TextEncoder.load(encoder_name, device="cpu")
    uniq = list(dict.fromkeys(captions))
    emb = torch.cat([enc.encode(uniq[i:i + 256]) for i in range(0, len(uniq), 256)]).float()
    return {c: i for i, c in enumerate(uniq)}, F.normalize(emb, dim=1)


class EpochSampler:
    """Batch for global step s = a slice of epoch(s)'s permutation (seeded by (seed, epoch)); each
    rank takes its share. Depends only on the step, so a resumed run draws the same batches."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int = 0):
        self.n, self.batch, self.seed, self.step = n_items, batch_size, seed, start_step
        self.steps_per_epoch = math.ceil(n_items / batch_size)
        self._perm_epoch, self._perm = -1, None

    def indices(self, local_batch: int, rank: int = 0) -> np.ndarray:
        epoch, k = divmod(self.step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        self.step += 1
        glob = self._perm[k * self.batch:(k + 1) * self.batch]
        if len(glob) < self.batch:   # last, short batch of an epoch: top up from the epoch's start
            glob = np.concatenate([glob, self._perm[: self.batch - len(glob)]])
        return glob[rank * local_batch:(rank + 1) * local_batch]


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def make_batch_fn(items: list[dict], cache: CaptionFeatureCache, sims, sampler: EpochSampler,
                  config: EvaluatorTrainConfig, device_of):
    """sample_batch(generator, local_batch) for train_loop: motions padded with zeros, the original's
    length jitter drawn from the loop's data generator."""
    sim_index, sim_emb = sims if sims is not None else (None, None)

    def sample_batch(gen: torch.Generator, local_batch: int) -> dict:
        idx = sampler.indices(local_batch, _rank())
        picked = [items[i] for i in idx]
        coins = torch.randint(0, 3, (len(picked),), generator=gen).tolist()
        offs = torch.randint(0, 5, (len(picked),), generator=gen).tolist()
        motions = []
        for it, coin, off in zip(picked, coins, offs):
            m = it["motion"]
            if config.length_jitter and coin == 2 and len(m) - 4 >= 4:     # 'double': one unit shorter
                m = m[off:off + len(m) - 4]
            motions.append(m)
        lengths = torch.tensor([len(m) for m in motions])
        motion = torch.zeros(len(motions), int(lengths.max()), motions[0].shape[1])
        for i, m in enumerate(motions):
            motion[i, :len(m)] = torch.from_numpy(np.ascontiguousarray(m))
        captions = [it["caption"] for it in picked]
        dev = device_of()
        hidden, mask = cache.batch(captions, dev)
        text_sim = None
        if sim_emb is not None:
            e = sim_emb[[sim_index[c] for c in captions]]
            text_sim = (e @ e.T).to(dev)
        return {"motion": motion.to(dev), "lengths": lengths.to(dev), "text_hidden": hidden, "text_mask": mask,
                "text_sim": text_sim}

    return sample_batch


# ----------------------------------------------------------------------------- training
def train_evaluator(data_dir: str | Path, config: EvaluatorTrainConfig, model_config: EvaluatorConfig | None = None,
                    resume: str | Path | None = None, split: str = "train", stop_after: int | None = None,
                    dataset=None, overwrite: bool = False) -> tuple[TMREvaluator, TrainResult]:
    """Train; every `save_every` steps and at the end: out_dir/checkpoint_last.pt (full training state,
    for --resume) and out_dir/evaluator/{evaluator.safetensors, config.json} (the model). An out_dir
    holding another run is refused unless overwrite=True (train.common.check_run_dir)."""

    out_dir = Path(config.out_dir)
    check_run_dir(out_dir, resume, overwrite)     # before the dataset and caption features are built
    start_step = 0
    if resume:
        ck = load_training_checkpoint(resume)
        if ck.get("trainer") != TRAINER_NAME:
            raise ValueError(f"{resume} is a {ck.get('trainer')!r} checkpoint, not an evaluator one")
        model_config = EvaluatorConfig.from_dict(ck["config"]["evaluator"])
        start_step = int(ck["step"])
    model_config = model_config or EvaluatorConfig.official()
    if dataset is None:
        dataset = HumanML3D272Dataset(data_dir, split, min_frames=config.min_frames, max_frames=config.max_frames,
                                      captions="all", too_long="crop")
    items = [dataset[i] for i in range(len(dataset))]
    if len(items) < 2:
        raise ValueError(f"{data_dir}: split {split!r} has {len(items)} usable item(s); need at least 2")
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    config = config.updated({"steps": config.epochs * steps_per_epoch})

    torch.manual_seed(config.seed)   # the initial weights (and a random-init backbone) follow the seed
    evaluator = TMREvaluator(model_config)
    if resume:   # before the feature cache: a random-init backbone's weights live in the checkpoint
        prefix = "evaluator."
        evaluator.load_state_dict({k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)})
    captions = [it["caption"] for it in items]
    cache = CaptionFeatureCache(evaluator, captions, dtype=getattr(torch, config.cache_dtype), progress=config.progress)
    sims = None if config.filter_model.lower() == "none" else caption_similarities(captions, config.filter_model)
    objective = TMRObjective(evaluator)
    sampler = EpochSampler(len(items), config.batch_size, config.seed, start_step)
    sample_batch = make_batch_fn(items, cache, sims, sampler, config, lambda: next(evaluator.parameters()).device)

    def loss_fn(model, batch, step):
        out = model(batch["motion"], batch["lengths"], batch["text_hidden"], batch["text_mask"])
        return tmr_losses(out, batch["motion"], batch["text_sim"], config)

    extra = {"evaluator": model_config.to_dict(), "data": str(data_dir), "split": split, "items": len(items),
             "steps_per_epoch": steps_per_epoch}
    step, result, losses = start_step, None, []
    ckpt = resume
    # Chunks of save_every steps, each resuming from the checkpoint the previous one left, so the
    # safetensors export follows every checkpoint.
    while step < config.steps and (stop_after is None or step - start_step < stop_after):
        todo = config.save_every - step % config.save_every
        if stop_after is not None:
            todo = min(todo, stop_after - (step - start_step))
        result = train_loop(objective, config, sample_batch, loss_fn, name=TRAINER_NAME, extra_config=extra,
                            resume=ckpt, stop_after=todo, overwrite=overwrite and result is None)
        losses += result.losses
        step = result.step
        ckpt = out_dir / CHECKPOINT_NAME
        if _rank() == 0:
            evaluator.save(out_dir / "evaluator", extra={"trained_steps": step, "epochs": step / steps_per_epoch})
    if result is None:
        raise ValueError(f"nothing to train: checkpoint step {start_step} >= {config.steps} steps "
                         f"({config.epochs} epochs of {steps_per_epoch})")
    evaluator.eval()
    return evaluator, TrainResult(step, losses, result.samples_per_s, result.checkpoint)
