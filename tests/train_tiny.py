"""Tiny models and data shared by the training tests (tests/test_train_*.py)
and tests/ddp_grad_check.py. Not a test module itself."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
from fakes import TEXT_DIM, FakeTextEncoder


def tiny_tae(seed: int = 0):
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig

    torch.manual_seed(seed)
    return CausalHumanTAE(TAEConfig(hidden=32, width=32))


def tiny_t2m(seed: int = 0, cond_dim: int = TEXT_DIM):
    from motionstreamer.models.diffusion import DiffusionHeadConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    torch.manual_seed(seed)
    return TextToMotionModel(T2MConfig(n_layer=2, n_head=2, n_embd=32, cond_dim=cond_dim,
                                       head=DiffusionHeadConfig(width=64, depth=2)))


def fitted_teacher(root: Path):
    """A tiny teacher bundle at root/teacher whose head is fitted to four clusters of latents (caption i:
    mean i % 4 in every dimension) over its transformer's teacher-forced conditions, so its guided samples
    are on the data's scale and depend strongly on the condition; (bundle, examples, caption embeddings)."""
    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.train.distill import teacher_forced_conditions
    from motionstreamer.train.t2m import LatentExample

    t2m = tiny_t2m()
    g = torch.Generator().manual_seed(0)
    examples = [LatentExample(f"caption {i}", torch.randn(i % 3, 16, generator=g).numpy(),
                              (torch.randn(4 + i % 5, 16, generator=g) + i % 4).numpy()) for i in range(12)]
    enc = FakeTextEncoder()
    emb = {c: enc.encode([c])[0] for c in [e.caption for e in examples] + [""]}
    pairs = teacher_forced_conditions(t2m, examples, emb)
    targets = torch.cat([torch.from_numpy(e.latents_b) for e in examples])
    opt = torch.optim.Adam(t2m.diff_loss.parameters(), 3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        loss = t2m.diff_loss.loss(targets, pairs[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_bundle(root / "teacher", tiny_tae(), t2m.eval(), torch.zeros(272), torch.ones(272), torch.zeros(16),
                text_encoder=FakeTextEncoder.name, extra_config={"sampler": {"skip_terminal_step": True}})
    return root / "teacher", examples, emb


def quiet(cfg_cls, **kw):
    """A trainer config with no progress bar / TensorBoard (tests)."""
    return cfg_cls(progress=False, tensorboard=False, **kw)


def make_synth(root: Path, clips: int = 40, pairs: int = 20, seed: int = 0) -> Path:
    from motionstreamer.data.synth import make_dataset

    if not (root / "synth_meta.json").exists():
        make_dataset(root, clips, seed=seed, stream_pairs=pairs, progress=False)
    return root


def encode_dataset(tae, data: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Latents of every split's clips -> out/latents, and of the stream pairs -> out/stream_latents."""
    from motionstreamer.data.humanml3d import load_mean_std, load_motions
    from motionstreamer.train.tae import encode_latents, reference_end_latent

    tae.eval()
    end = reference_end_latent(tae)
    motions = {}
    for split in ("train", "val", "test"):
        motions.update(load_motions(data, split, normalize=True))
    encode_latents(tae, motions, out / "latents", end, seed=seed, progress=False)
    mean, std = load_mean_std(data / "mean_std")
    sm = {p.stem: (np.load(p) - mean) / std for p in sorted((data / "babel_stream" / "train_stream").glob("*.npy"))}
    encode_latents(tae, sm, out / "stream_latents", end, seed=seed, progress=False)
    return out / "latents", out / "stream_latents"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_equal(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (bitwise) between two state dicts (nested dicts/lists compared too)."""
    bad = []

    def walk(x, y, key):
        if isinstance(x, dict):
            if set(x) != set(y):
                bad.append(f"{key}: keys differ")
                return
            for k in x:
                walk(x[k], y[k], f"{key}.{k}")
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                bad.append(f"{key}: lengths differ")
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{key}[{i}]")
        elif isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                bad.append(key)
        elif x != y:
            bad.append(key)

    walk(a, b, "")
    return bad
