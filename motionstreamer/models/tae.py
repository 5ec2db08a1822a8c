"""Causal TAE: 272-dim frames <-> 16-dim latents, 4x in time, causal convolutions only.

Key layout equals the released Causal_TAE/net_last.pth ('net'): tae.decode_proj, tae.encoder.model.*,
tae.encoder.proj, tae.decoder.model.* (spec reference-model.md §1, §7).

Every convolution pads on the left only, so the decoder can run as a stream: each decoder conv keeps
the last (k-1)*dilation inputs it saw (a zero state is exactly the zero left padding of a full
decode), and n new latents yield their 4n frames without recomputing the past (`decode_step`).
Every convolution, full or streamed, runs through `causal_conv`, the one place where the conv
backend (PyTorch reference or the native op, motionstreamer.ops.causal_conv) is chosen; the streamed
decoder runs the op's streaming update (`causal_conv1d_update`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from motionstreamer import FEATURE_DIM
from motionstreamer.config import ConfigDict, check_positive_ints
from motionstreamer.ops import causal_conv as ops

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


@dataclass
class TAEConfig(ConfigDict):
    in_dim: int = FEATURE_DIM      # motion feature width (normalised 272-dim frames)
    hidden: int = 1024             # width at the latent projections (the original's hidden_size)
    width: int = 1024              # conv width (the released wrapper sets it to hidden_size)
    down_t: int = 2                # number of 2x temporal down/upsampling stages
    stride_t: int = 2
    depth: int = 3                 # residual blocks per stage
    dilation_growth: int = 3       # dilations growth**d, applied in reverse order (9, 3, 1)
    latent_dim: int = 16
    logvar_clip: tuple = (-30.0, 20.0)
    activation: str = "relu"       # inside the residual blocks; the stage ReLUs are fixed, as in the original

    def __post_init__(self):
        self.logvar_clip = tuple(float(v) for v in self.logvar_clip)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TAEConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if len(self.logvar_clip) != 2 or self.logvar_clip[0] > self.logvar_clip[1]:
            raise ValueError(f"TAEConfig.logvar_clip must be (low, high) with low <= high, got {self.logvar_clip}")
        check_positive_ints(self, ("in_dim", "hidden", "width", "stride_t", "depth", "dilation_growth", "latent_dim"))
        if self.down_t < 0:
            raise ValueError(f"TAEConfig.down_t must be >= 0, got {self.down_t}")

    @classmethod
    def official(cls) -> "TAEConfig":
        return cls()

    @classmethod
    def small(cls, width: int = 128) -> "TAEConfig":
        """Same layout, narrow convs: for tests and CPU experiments."""
        return cls(hidden=width, width=width)

    @property
    def frames_per_latent(self) -> int:
        return self.stride_t ** self.down_t



def causal_conv(conv: nn.Conv1d, x: torch.Tensor, pad: int, state: torch.Tensor | None = None, **fused):
    """The one place a TAE convolution runs: motionstreamer.ops.causal_conv, which runs the PyTorch
    reference or the native op (its conv backend switch). Returns (output, new state).

    Full sequence (state None): x (B, C, T) is left-padded with `pad` zeros -> (B, C', T_out), new state
    None. Streaming (state (B, C, pad)): the state stands in for the padding (the native update op reads
    it in place) and the new state is the last `pad` inputs; chaining steps equals one full call on the
    concatenation. fused: pre_relu / post_relu / residual, done inside the op."""

    if state is None:
        return ops.conv_forward_full(conv, x, pad=pad, **fused), None
    return ops.conv_forward_step(conv, x, state, **fused)


class CausalConv1d(nn.Module):
    """Left pad (k-1)*dilation + (1-stride), then an unpadded Conv1d (held as `.conv`, as in the original)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.pad = (k - 1) * dilation + (1 - stride)
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation)

    def forward(self, x):
        return causal_conv(self.conv, x, self.pad)[0]

    # streaming (stride 1 only: the decoder's convs)
    def state_shape(self) -> tuple[int, int]:
        return self.conv.in_channels, self.pad

    def step(self, x, state):
        return causal_conv(self.conv, x, self.pad, state)


class CausalResBlock(nn.Module):
    """x + conv2_1x1(act(conv1_k3_dilated(leftpad(act(x))))); the state holds act(x) (what conv1 sees).
    With ReLU (the released TAE) both activations and the residual add run inside the conv op."""

    def __init__(self, n: int, dilation: int, activation: str = "relu"):
        super().__init__()
        self.act = ACTIVATIONS[activation]()
        self.fused_relu = activation == "relu"
        self.left_padding = 2 * dilation
        self.conv1 = nn.Conv1d(n, n, 3, dilation=dilation)
        self.conv2 = nn.Conv1d(n, n, 1)

    def forward(self, x):
        return self._conv_pair(x, None)[0]

    def state_shape(self) -> tuple[int, int]:
        return self.conv1.in_channels, self.left_padding

    def step(self, x, state):
        return self._conv_pair(x, state)

    def _conv_pair(self, x, state):
        relu = self.fused_relu
        h, new_state = causal_conv(self.conv1, x if relu else self.act(x), self.left_padding, state,
                                   pre_relu=relu, post_relu=relu)
        return causal_conv(self.conv2, h if relu else self.act(h), 0, residual=x)[0], new_state


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
        self.proj = nn.Linear(c.hidden, 2 * c.latent_dim)   # registered first: the released key order
        blocks = [CausalConv1d(c.in_dim, c.width, 3), nn.ReLU()]
        for _ in range(c.down_t):
            blocks.append(nn.Sequential(CausalConv1d(c.width, c.width, 2 * c.stride_t, c.stride_t),
                                        CausalResnet1D(c.width, c.depth, c.dilation_growth, c.activation)))
        blocks.append(CausalConv1d(c.width, c.hidden, 3))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        """x (B, C, T) -> mu, clamped logvar, each (B, T/4, latent)."""
        h = self.proj(self.model(x).transpose(1, 2))
        mu, logvar = h.chunk(2, dim=2)
        return mu, logvar.clamp(*self.logvar_clip)


class CausalDecoder(nn.Module):
    def __init__(self, c: TAEConfig):
        super().__init__()
        blocks = [CausalConv1d(c.hidden, c.width, 3), nn.ReLU()]
        for _ in range(c.down_t):   # residual blocks, then upsample, then conv (the original's order)
            blocks.append(nn.Sequential(CausalResnet1D(c.width, c.depth, c.dilation_growth, c.activation),
                                        nn.Upsample(scale_factor=c.stride_t, mode="nearest"),
                                        CausalConv1d(c.width, c.width, 3)))
        blocks += [CausalConv1d(c.width, c.width, 3), nn.ReLU(), CausalConv1d(c.width, c.in_dim, 3)]
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)

    def stateful_layers(self) -> list[nn.Module]:
        """The layers that keep streaming state, in execution order (= the order of the state buffers)."""
        return [m for m in self.modules() if isinstance(m, (CausalConv1d, CausalResBlock))]

    def step(self, x, states: list[torch.Tensor]):
        """x (B, C, n) new inputs -> (B, in_dim, 4n) frames, new states in layer order (no mutation)."""
        if self._native_chain_applies(x, states):
            return self._native_step(x, states)
        new: list[torch.Tensor] = []

        def run(module, h):
            if isinstance(module, (CausalConv1d, CausalResBlock)):
                out, s = module.step(h, states[len(new)])
                new.append(s)
                return out
            if isinstance(module, (nn.Sequential, CausalResnet1D)):
                for child in (module.model if isinstance(module, CausalResnet1D) else module):
                    h = run(child, h)
                return h
            return module(h)   # ReLU, Upsample: pointwise in time, stateless

        return run(self.model, x), new

    # ---- the streaming step as one prepared chain of native calls
    def _chain(self) -> list[tuple]:
        """The step's layers flattened in execution order, made once: ("conv", conv, state length, relu
        after it), ("res", conv1, conv2, state length) or ("up", scale); a ReLU right after a conv runs
        inside the conv's op (the same values: ReLU is exact)."""
        chain = getattr(self, "_chain_cache", None)
        if chain is None:
            flat: list[nn.Module] = []

            def walk(module):
                if isinstance(module, (CausalConv1d, CausalResBlock, nn.ReLU, nn.Upsample)):
                    flat.append(module)
                elif isinstance(module, (nn.Sequential, CausalResnet1D)):
                    for child in (module.model if isinstance(module, CausalResnet1D) else module):
                        walk(child)
                else:
                    raise TypeError(f"no native chain for {type(module).__name__}")
            walk(self.model)
            chain = []
            for i, m in enumerate(flat):
                if isinstance(m, CausalConv1d):
                    if m.conv.stride[0] != 1 or m.conv.groups != 1:
                        raise TypeError("the streaming decoder's convs have stride 1 and one group")
                    chain.append(("conv", m.conv, m.pad, i + 1 < len(flat) and isinstance(flat[i + 1], nn.ReLU)))
                elif isinstance(m, CausalResBlock):
                    if not m.fused_relu:
                        raise TypeError("the native chain needs the ReLU residual blocks")
                    chain.append(("res", m.conv1, m.conv2, m.left_padding))
                elif isinstance(m, nn.Upsample):
                    if m.mode != "nearest" or m.size is not None or float(m.scale_factor) != int(m.scale_factor):
                        raise TypeError("the native chain upsamples by an integer factor, nearest")
                    chain.append(("up", int(m.scale_factor)))
                elif not (i > 0 and isinstance(flat[i - 1], CausalConv1d)):
                    raise TypeError("a ReLU that does not follow a conv")
            self._chain_cache = chain
        return chain

    def _native_chain_applies(self, x: torch.Tensor, states: list[torch.Tensor]) -> bool:
        """Whether this step may run as _native_step: the conv switch picks the native op for its widest
        call (ops.resolve_conv_backend: the op built, CPU fp32, not tracing, "auto" and few enough columns
        or "native"), no gradient is wanted, and every state is a CPU fp32 tensor of its layer's shape. What
        causal_conv1d_update checks on each of its 17 calls is so checked once per step."""
        if x.dim() != 3 or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return False
        try:
            chain = self._chain()
        except TypeError:
            return False
        B, _, n = x.shape
        ups = 1
        for entry in chain:
            ups *= entry[1] if entry[0] == "up" else 1
        if ops.resolve_conv_backend(x, None, B * n * ups) != "native":
            return False
        stateful = [e for e in chain if e[0] != "up"]
        if len(states) != len(stateful):
            return False
        width = x.shape[1]
        for entry, st in zip(stateful, states):
            conv, pad = (entry[1], entry[2]) if entry[0] == "conv" else (entry[1], entry[3])
            w = conv.weight
            if w.dtype != torch.float32 or w.device.type != "cpu" or w.shape[1] != width or \
                    st.dtype != torch.float32 or st.device.type != "cpu" or st.shape != (B, width, pad):
                return False
            width = w.shape[0] if entry[0] == "conv" else entry[2].weight.shape[0]
        return True

    def _native_step(self, x: torch.Tensor, states: list[torch.Tensor]):
        """step() as the prepared chain of native calls (the same op and arguments as the layer by layer
        path, so the same numbers: tests/test_tae_streaming.py)."""
        new: list[torch.Tensor] = []
        h = x
        for entry in self._chain():
            if entry[0] == "up":
                h = h.repeat_interleave(entry[1], dim=2)   # nearest, integer factor
                continue
            st = states[len(new)]
            if entry[0] == "conv":
                _, conv, pad, relu = entry
                h, s = ops.native_update_unchecked(h, conv.weight, conv.bias, st, conv.dilation[0], pad,
                                                   post_relu=relu)
            else:
                _, conv1, conv2, pad = entry
                inner, s = ops.native_update_unchecked(h, conv1.weight, conv1.bias, st, conv1.dilation[0], pad,
                                                       pre_relu=True, post_relu=True)
                h = ops.native_update_unchecked(inner, conv2.weight, conv2.bias, None, 1, 0, residual=h)[0]
            new.append(s)
        return h, new


@dataclass
class TAEDecodeState:
    """Streaming decoder state: per stateful decoder layer (in execution order) the last inputs it
    saw, (B, C_i, S_i) with S_i = (k-1)*dilation. All zeros = the start of a sequence."""
    buffers: list = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.buffers[0].shape[0] if self.buffers else 0

    def clone(self) -> "TAEDecodeState":
        return TAEDecodeState([b.clone() for b in self.buffers])


class CausalTAE(nn.Module):
    def __init__(self, c: TAEConfig):
        super().__init__()
        self.decode_proj = nn.Linear(c.latent_dim, c.hidden)
        self.encoder = CausalEncoder(c)
        self.decoder = CausalDecoder(c)


class CausalHumanTAE(nn.Module):
    """The released wrapper (`Causal_HumanTAE`): parameters live under `.tae`."""

    def __init__(self, config: TAEConfig | None = None):
        super().__init__()
        self.config = config or TAEConfig.official()
        self.tae = CausalTAE(self.config)

    @property
    def _dtype(self) -> torch.dtype:
        return self.tae.decode_proj.weight.dtype

    def _check_latents(self, z: torch.Tensor, what: str = "latents") -> None:
        if z.ndim != 3 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"TAE {what} must be (batch, length, {self.config.latent_dim}), got {tuple(z.shape)}")

    def encode(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """x (B, T, in_dim) normalised frames, T a multiple of 4 -> (z, mu, logvar), each (B, T/4, latent).

        z = mu + eps * exp(logvar / 2) (the reparameterised sample; mu itself when sample=False);
        logvar is clamped to config.logvar_clip. The original returns z flattened to (B*L, latent);
        here it keeps its batch axis."""
        if x.ndim != 3 or x.shape[-1] != self.config.in_dim:
            raise ValueError(f"TAE input must be (batch, frames, {self.config.in_dim}), got {tuple(x.shape)}")
        f = self.config.frames_per_latent
        if x.shape[1] == 0 or x.shape[1] % f:
            raise ValueError(f"TAE input length {x.shape[1]} is not a positive multiple of {f} frames "
                             f"(crop or pad the motion to a multiple of {f})")
        mu, logvar = self.tae.encoder(x.transpose(1, 2).to(self._dtype))
        if not sample:
            return mu, mu, logvar
        if generator is None:
            eps = torch.randn_like(mu)
        else:
            eps = torch.randn(mu.shape, generator=generator, device=generator.device, dtype=mu.dtype).to(mu.device)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, latent) -> frames (B, 4L, in_dim) (the original's forward_decoder)."""
        self._check_latents(z)
        h = self.tae.decode_proj(z.to(self._dtype)).transpose(1, 2)
        return self.tae.decoder(h).transpose(1, 2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """x (B, T, in_dim) -> (reconstruction of the sampled z (B, T, in_dim), mu, logvar)."""
        z, mu, logvar = self.encode(x, sample=True, generator=generator)
        return self.decode(z), mu, logvar

    # ---- streaming decode
    def init_decode_state(self, batch_size: int, device=None, dtype=None) -> TAEDecodeState:
        """Zero state for `batch_size` independent streams (default: the model's device and dtype)."""
        w = self.tae.decode_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        return TAEDecodeState([torch.zeros(batch_size, *layer.state_shape(), device=device, dtype=dtype)
                               for layer in self.tae.decoder.stateful_layers()])

    @staticmethod
    def reset_decode_state(state: TAEDecodeState, rows) -> None:
        """Restart the given rows (indices, list of ints or a bool mask) at a new sequence, in place."""
        if not torch.is_tensor(rows):
            rows = torch.as_tensor(rows, dtype=torch.long)
        for b in state.buffers:
            b[rows.to(b.device)] = 0

    def decode_step_functional(self, z: torch.Tensor, buffers: list) -> tuple[torch.Tensor, list]:
        """(new latents (R, n, latent), per-layer buffers) -> (frames (R, 4n, in_dim), new buffers);
        mutates nothing (the form ONNX export traces)."""
        h = self.tae.decode_proj(z.to(self._dtype)).transpose(1, 2)
        out, new = self.tae.decoder.step(h, buffers)
        return out.transpose(1, 2), new

    def decode_step(self, z: torch.Tensor, state: TAEDecodeState, rows: torch.Tensor | None = None) -> torch.Tensor:
        """New latents z (R, n, latent) -> their frames (R, 4n, in_dim); updates `state` in place.

        rows=None: z has one row per state row. Otherwise z's rows continue the streams `rows` of the
        state (the other rows are untouched). Any chunking of a latent sequence into successive calls
        gives the frames of one full `decode` of it."""
        self._check_latents(z, "streamed latents")
        expected = state.batch_size if rows is None else len(rows)
        if z.shape[0] != expected:
            raise ValueError(f"decode_step got {z.shape[0]} latent rows for {expected} state rows")
        bufs = state.buffers if rows is None else [b[rows] for b in state.buffers]
        out, new = self.decode_step_functional(z, bufs)
        for b, nb in zip(state.buffers, new):   # in place: the buffers keep their storage (CUDA graphs)
            if rows is None:
                b.copy_(nb)
            else:
                b[rows] = nb
        return out
