"""Causal TAE: 272-dim frames <-> 16-dim latents, 4x in time, causal convolutions only.

Key layout equals the released Causal_TAE/net_last.pth ('net'): tae.decode_proj, tae.encoder.model.*,
tae.encoder.proj, tae.decoder.model.* (spec reference-model §1, §7). Every convolution pads on the
left only, so the decoder can run as a stream: each conv keeps the last (k-1)*dilation inputs it
saw, and one new latent yields its 4 frames without recomputing the past (`decode_step`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TAEConfig:
    in_dim: int = 272
    hidden: int = 1024
    width: int = 1024
    down_t: int = 2
    stride_t: int = 2
    depth: int = 3
    dilation_growth: int = 3
    latent_dim: int = 16
    logvar_clip: tuple = (-30.0, 20.0)
    activation: str = "relu"

    @classmethod
    def official(cls) -> "TAEConfig":
        return cls()

    @classmethod
    def small(cls) -> "TAEConfig":
        return cls(hidden=128, width=128)

    @property
    def frames_per_latent(self) -> int:
        return self.stride_t ** self.down_t

    def to_dict(self) -> dict:
        d = asdict(self)
        d["logvar_clip"] = list(self.logvar_clip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TAEConfig":
        d = dict(d)
        if "logvar_clip" in d:
            d["logvar_clip"] = tuple(d["logvar_clip"])
        return cls(**d)


def _conv(x, conv: nn.Conv1d, pad: int) -> torch.Tensor:
    """The one place a TAE convolution runs (reference path: explicit left pad + Conv1d)."""
    from motionstreamer.ops import conv_backend
    return conv_backend.conv1d(x, conv, pad)


class CausalConv1d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.pad = (k - 1) * dilation + (1 - stride)
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation)

    def forward(self, x):
        return _conv(x, self.conv, self.pad)

    # streaming (stride 1 only: the decoder's convs)
    def state_size(self) -> int:
        return self.pad

    def step(self, x, state):
        xx = torch.cat([state, x], dim=-1)
        return _conv(xx, self.conv, 0), xx[..., xx.shape[-1] - self.pad:]


class CausalResBlock(nn.Module):
    """x + conv1x1(act(conv_k3_dilated(leftpad(act(x)))))"""

    def __init__(self, n: int, dilation: int, activation: str = "relu"):
        super().__init__()
        if activation != "relu":
            raise ValueError(f"only relu activation is supported, got {activation!r}")
        self.left_padding = 2 * dilation
        self.conv1 = nn.Conv1d(n, n, 3, dilation=dilation)
        self.conv2 = nn.Conv1d(n, n, 1)

    def forward(self, x):
        h = F.relu(_conv(F.relu(x), self.conv1, self.left_padding))
        return x + _conv(h, self.conv2, 0)

    def state_size(self) -> int:
        return self.left_padding

    def step(self, x, state):
        xx = torch.cat([state, F.relu(x)], dim=-1)
        h = F.relu(_conv(xx, self.conv1, 0))
        return x + _conv(h, self.conv2, 0), xx[..., xx.shape[-1] - self.left_padding:]


class CausalResnet1D(nn.Module):
    def __init__(self, n: int, depth: int, growth: int, activation: str = "relu"):
        super().__init__()
        blocks = [CausalResBlock(n, growth ** d, activation) for d in range(depth)]
        self.model = nn.Sequential(*blocks[::-1])   # reverse_dilation=True: 9, 3, 1

    def forward(self, x):
        return self.model(x)


class CausalEncoder(nn.Module):
    def __init__(self, c: TAEConfig):
        super().__init__()
        self.logvar_clip = c.logvar_clip
        blocks = [CausalConv1d(c.in_dim, c.width, 3), nn.ReLU()]
        for _ in range(c.down_t):
            blocks.append(nn.Sequential(CausalConv1d(c.width, c.width, 2 * c.stride_t, c.stride_t),
                                        CausalResnet1D(c.width, c.depth, c.dilation_growth, c.activation)))
        blocks.append(CausalConv1d(c.width, c.hidden, 3))
        self.model = nn.Sequential(*blocks)
        self.proj = nn.Linear(c.width, 2 * c.latent_dim)

    def forward(self, x):
        """x (B, C, T) -> mu, logvar (B, T/4, latent)."""
        h = self.proj(self.model(x).transpose(1, 2))
        mu, logvar = h.chunk(2, dim=2)
        return mu, logvar.clamp(*self.logvar_clip)


class CausalDecoder(nn.Module):
    def __init__(self, c: TAEConfig):
        super().__init__()
        blocks = [CausalConv1d(c.hidden, c.width, 3), nn.ReLU()]
        for _ in range(c.down_t):
            blocks.append(nn.Sequential(CausalResnet1D(c.width, c.depth, c.dilation_growth, c.activation),
                                        nn.Upsample(scale_factor=2, mode="nearest"),
                                        CausalConv1d(c.width, c.width, 3)))
        blocks += [CausalConv1d(c.width, c.width, 3), nn.ReLU(), CausalConv1d(c.width, c.in_dim, 3)]
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)

    def stateful_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (CausalConv1d, CausalResBlock))]

    def step(self, x, states: list[torch.Tensor]):
        """x (B, C, n) new inputs -> (B, 272, 4n) frames; returns new states in layer order."""
        new = []

        def run(module, h):
            if isinstance(module, (CausalConv1d, CausalResBlock)):
                out, s = module.step(h, states[len(new)])
                new.append(s)
                return out
            if isinstance(module, (nn.Sequential, CausalResnet1D)):
                for child in (module.model if isinstance(module, CausalResnet1D) else module):
                    h = run(child, h)
                return h
            return module(h)   # ReLU, Upsample: stateless

        return run(self.model, x), new


@dataclass
class TAEDecodeState:
    """Per decoder layer, the last inputs it saw: (B, C, (k-1)*dilation) each."""
    buffers: list = field(default_factory=list)


class CausalTAE(nn.Module):
    def __init__(self, c: TAEConfig):
        super().__init__()
        self.decode_proj = nn.Linear(c.latent_dim, c.width)
        self.encoder = CausalEncoder(c)
        self.decoder = CausalDecoder(c)


class CausalHumanTAE(nn.Module):
    """The released wrapper (`Causal_HumanTAE`): parameters live under `.tae`."""

    def __init__(self, config: TAEConfig | None = None):
        super().__init__()
        self.config = config or TAEConfig.official()
        self.tae = CausalTAE(self.config)

    def _check(self, x):
        if x.ndim != 3 or x.shape[-1] != self.config.in_dim:
            raise ValueError(f"TAE input must be (batch, frames, {self.config.in_dim}), got {tuple(x.shape)}")
        if x.shape[1] % self.config.frames_per_latent:
            raise ValueError(f"TAE input length {x.shape[1]} is not a multiple of {self.config.frames_per_latent}")

    def encode(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """x (B, T, 272) normalised -> (z, mu, logvar), each (B, T/4, latent).

        z is the reparameterised sample (the original returns it flattened to (B*L, latent))."""
        self._check(x)
        mu, logvar = self.tae.encoder(x.transpose(1, 2).to(self.tae.decode_proj.weight.dtype))
        if not sample:
            return mu, mu, logvar
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device) if generator is not None \
            else torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, latent) -> frames (B, 4L, 272)."""
        h = self.tae.decode_proj(z.to(self.tae.decode_proj.weight.dtype)).transpose(1, 2)
        return self.tae.decoder(h).transpose(1, 2)

    def forward(self, x: torch.Tensor):
        z, mu, logvar = self.encode(x)
        return self.decode(z), mu, logvar

    # ---- streaming decode
    def init_decode_state(self, batch: int, device=None, dtype=None) -> TAEDecodeState:
        w = self.tae.decode_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        bufs = []
        for layer in self.tae.decoder.stateful_layers():
            cin = layer.conv.in_channels if isinstance(layer, CausalConv1d) else layer.conv1.in_channels
            bufs.append(torch.zeros(batch, cin, layer.state_size(), device=device, dtype=dtype))
        return TAEDecodeState(bufs)

    @staticmethod
    def reset_decode_state(state: TAEDecodeState, rows: torch.Tensor) -> None:
        for b in state.buffers:
            b[rows] = 0

    def decode_step_functional(self, z: torch.Tensor, buffers: list) -> tuple[torch.Tensor, list]:
        """(latents (R, n, latent), per-layer buffers) -> (frames (R, 4n, 272), new buffers); no mutation."""
        h = self.tae.decode_proj(z.to(self.tae.decode_proj.weight.dtype)).transpose(1, 2)
        out, new = self.tae.decoder.step(h, buffers)
        return out.transpose(1, 2), new

    def decode_step(self, z: torch.Tensor, state: TAEDecodeState, rows: torch.Tensor | None = None) -> torch.Tensor:
        """New latents z (R, n, latent) -> their frames (R, 4n, 272); updates `state` (rows of it)."""
        bufs = state.buffers if rows is None else [b[rows] for b in state.buffers]
        out, new = self.decode_step_functional(z, bufs)
        for b, nb in zip(state.buffers, new):   # in place: the buffers keep their storage (CUDA graphs)
            if rows is None:
                b.copy_(nb)
            else:
                b[rows] = nb
        return out
