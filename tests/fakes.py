"""Test doubles shared by the test modules (not a test module itself): a deterministic text encoder,
a model bundle built from in-memory models, random weights for the diffusion head's
zero-initialised layers, a small saved bundle with random weights for the CLI and service tests
(save_small_bundle), and the CLI run in-process (run_cli)."""
from __future__ import annotations

import hashlib

import torch

TEXT_DIM = 16


class FakeTextEncoder:
    """Deterministic per-text random vectors with the `.dim` / `.encode(list)` surface of TextEncoder.

    It caches nothing, so `calls` and `texts` count every encoding its caller asked for."""

    name = "fake-test-encoder"

    def __init__(self, dim: int = TEXT_DIM):
        self.dim = dim
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts):
        self.calls += 1
        self.texts.extend(texts)
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out) if out else torch.zeros(0, self.dim)


class FakeBundle:
    """What the streaming engine reads from a loaded bundle: the two models, Mean/Std, the end latent
    and the bundle config (sampler defaults)."""

    def __init__(self, tae, t2m, end_latent: torch.Tensor | None = None, config: dict | None = None):
        self.tae, self.t2m = tae, t2m
        g = torch.Generator().manual_seed(1)
        self.mean = torch.randn(272, generator=g) * 0.1
        self.std = torch.rand(272, generator=g) + 0.5
        self.end_latent = end_latent if end_latent is not None else torch.full((16,), 100.0)
        self.config = config or {}


def randomize_head(t2m, std: float = 0.1, seed: int = 5):
    """Random values in the diffusion head's zero-initialised layers (AdaLN modulations and the output
    layer), in place; returns t2m. A freshly initialised head predicts eps = 0 whatever its input, so
    its samples depend on the noise alone and a test on them cannot see the condition, the context or
    the guidance rows; with these weights eps depends on x, t and the condition."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t2m.diff_loss.net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return t2m


def save_small_bundle(directory):
    """A saved bundle (the small transformer, a 32-wide TAE, random weights from seed 0, identity
    statistics, an end latent it never reaches, the MiniLM text encoder): what the CLI and service tests
    load with --checkpoint."""
    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    torch.manual_seed(0)
    t2m = TextToMotionModel(T2MConfig.small(cond_dim=384))
    save_bundle(directory, CausalHumanTAE(TAEConfig(hidden=32, width=32)), t2m, torch.zeros(272), torch.ones(272),
                torch.full((16,), 50.0), text_encoder="minilm")
    return directory


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `motionstreamer ARGV` run in this process."""
    from motionstreamer.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
