"""The text-to-motion transformer (LLaMA blocks with QK-Norm and RoPE) + its diffusion head.

Checkpoint-compatible with the released `t2m_model` ('trans'): transformer.{wte, cond_embed, h.*,
ln_f}, out_proj, diff_loss.net.* (spec reference-model §2, §7). Sequence: [cond_embed(text),
wte(latent_0), ..., wte(latent_{L-1})]; output position i is the condition for latent i.

Attention: q and k are L2-normalised per head, then rotated by RoPE (adjacent pairs, base 10000)
at their ABSOLUTE positions, and logits are scaled by the per-layer scalar `scale`
(log2(block^2 - block) at init; the original reads it with .item(), so it never trains).

Attention backend (T2MConfig.attn_backend; set_fast_paths also sets the head's): "auto" (default)
runs the Triton kernels of motionstreamer.kernels on CUDA (fused QK-Norm + RoPE + flash attention
for training/prefill, fused decode with the cache append, fused head sampling loop) and SDPA
elsewhere; "sdpa", "math" (reference) and "triton" force one path.

One block loop (run_blocks -> Block.forward) serves the training forward, prefill, the decode step
and the ONNX graphs; a KVWriter argument says how attention meets the cache (gpt-fast style).

Incremental decoding uses a static KV cache (keys stored after norm and RoPE). Each row of the
cache has its own length, so independent streams at different positions share one decode step.
(The original's only cache path, `forward_discrete`, rotates the new query from position 0; here
a decoded token is rotated at its true position, so decode equals the full forward.)
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from motionstreamer.config import ConfigDict, check_positive_ints
from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
from motionstreamer.models.goal import GOAL_DIM, GoalEmbed

ATTN_BACKENDS = ("auto", "math", "sdpa", "triton")


@dataclass
class T2MConfig(ConfigDict):
    latent_dim: int = 16
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 78
    cond_dim: int = 768                 # text embedding width (sentence-t5-xxl: 768, MiniLM: 384)
    head: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    diffmlps_batch_mul: int = 4         # the released config's; training reads T2MTrainConfig.diffmlps_batch_mul
    rope_base: float = 10000.0
    attn_backend: str = "auto"          # "auto" (fastest: "triton" on CUDA with triton installed, else
                                        # "sdpa"), "math" (reference), "sdpa", "triton"
    goal: bool = False                  # a goal module (models/goal.py): trained with goals beside the text;
                                        # False = the original model (official checkpoints)

    def __post_init__(self):
        if isinstance(self.head, dict):
            self.head = DiffusionHeadConfig.from_dict(self.head)
        if not isinstance(self.head, DiffusionHeadConfig):
            raise ValueError(f"T2MConfig.head must be a DiffusionHeadConfig or dict, got {type(self.head).__name__}")
        check_positive_ints(self, ("latent_dim", "n_layer", "n_head", "n_embd", "block_size", "cond_dim",
                                   "diffmlps_batch_mul"))
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd {self.n_embd} / n_head {self.n_head} must give an even head size (RoPE pairs)")
        if not isinstance(self.goal, bool):
            raise ValueError(f"T2MConfig.goal must be true or false, got {self.goal!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"T2MConfig.attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if self.block_size < 3:   # the text token and two latents: a full window slides to half of it
            raise ValueError(f"T2MConfig.block_size must be >= 3 (text token + 2 latents), got {self.block_size}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) \
                or not 1 < self.rope_base < math.inf:
            raise ValueError(f"T2MConfig.rope_base must be a finite number > 1, got {self.rope_base!r}")
        # the head samples latents conditioned on the transformer output: its widths follow ours
        # (a copy, so a head config shared between model configs is never mutated)
        self.head = replace(self.head, cond_dim=self.n_embd, latent_dim=self.latent_dim)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU width as the original: int(2/3 * 4 * n_embd) rounded up to a multiple of 256."""
        n = int(2 * 4 * self.n_embd / 3)
        return ((n - 1) // 256) * 256 + 256

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not self.goal:       # a text-only config writes (and round-trips) as it did before goals existed
            del d["goal"]
        return d

    @classmethod
    def official(cls, cond_dim: int = 768) -> "T2MConfig":
        """The released `Normal_size` model (sentence-t5-xxl text features: cond_dim 768)."""
        return cls(cond_dim=cond_dim)

    @classmethod
    def small(cls, cond_dim: int = 384) -> "T2MConfig":
        return cls(n_layer=4, n_head=4, n_embd=128, cond_dim=cond_dim,
                   head=DiffusionHeadConfig(width=256, depth=3))



# ----------------------------------------------------------------------------- pieces
class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.scale * (x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps))


def rope_tables(max_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of position * theta_i, theta_i = base^(-2i/head_dim): (max_len, head_dim/2) each."""
    theta = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), theta)
    return torch.cos(ang), torch.sin(ang)


def rope_rotation_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as matrices: (L, D, D) with x @ table[p] == apply_rope(x, cos[p], sin[p]) for a row x (D,) at
    position p (each pair (2i, 2i+1) a 2x2 rotation block, zeros elsewhere)."""
    L, half = cos.shape
    dtype = torch.float64 if cos.dtype == torch.float64 else torch.float32   # fp32 at least, as apply_rope
    cos, sin = cos.to(dtype), sin.to(dtype)
    table = torch.zeros(L, 2 * half, 2 * half, dtype=dtype, device=cos.device)
    even, odd = torch.arange(0, 2 * half, 2, device=cos.device), torch.arange(1, 2 * half, 2, device=cos.device)
    table[:, even, even], table[:, odd, odd] = cos, cos
    table[:, even, odd], table[:, odd, even] = sin, -sin
    return table


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by the angles in cos/sin; computed in fp32.

    The original's complex product (x[2i] + j x[2i+1]) * e^{j angle}, written with real ops so
    it exports to ONNX. x (..., T, D); cos/sin broadcastable to (..., T, D/2)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)


_warned_triton = False


def _exporting() -> bool:
    """Tracing or ONNX export: the Triton kernels cannot be traced, the torch ops can."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _kernels():
    """motionstreamer.kernels.integration, or None when it cannot be imported."""
    global _warned_triton
    try:
        from motionstreamer.kernels import integration
    except ImportError:
        if not _warned_triton:
            warnings.warn("triton attention backend unavailable (motionstreamer.kernels); using sdpa")
            _warned_triton = True
        return None
    return integration


def resolve_attention_backend(backend: str, device: torch.device) -> str:
    """The backend that runs: "auto" is "triton" on a CUDA device where the kernels run (not while
    tracing/exporting), else "sdpa"; "triton" is "sdpa" when the kernels cannot be imported."""
    if backend == "auto":
        if device.type != "cuda" or _exporting():
            return "sdpa"
        integration = _kernels()
        return "triton" if integration is not None and integration.available(device) else "sdpa"
    if backend == "triton" and (_exporting() or _kernels() is None):
        return "sdpa"
    return backend


def attention(q, k, v, scale: float, mask: torch.Tensor | None = None, causal: bool = False,
              attn_backend: str = "sdpa") -> torch.Tensor:
    """The one attention call: softmax(scale * q k^T [masked]) v.

    q (B,H,Tq,D), k/v (B,H,Tk,D); mask: bool broadcastable to (B,H,Tq,Tk), True = attend;
    causal: query i (the last Tq of Tk positions) sees keys up to its own position.
    attn_backend: 'math' (plain matmul/softmax, the reference), 'sdpa' (torch), 'triton'
    (motionstreamer.kernels when installed; otherwise sdpa, with a warning), 'auto' (see
    resolve_attention_backend)."""
    backend = attn_backend
    if backend in ("auto", "triton"):
        backend = resolve_attention_backend(backend, q.device)
        if backend == "triton":
            return _kernels().attention(q, k, v, scale, mask=mask, causal=causal)
    Tq, Tk = q.shape[-2], k.shape[-2]
    if causal and (mask is not None or Tq != Tk):
        # SDPA takes a mask or is_causal (top-left aligned): fold bottom-right causality into the mask
        cm = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        mask, causal = (cm if mask is None else mask & cm), False
    if backend == "sdpa" and scale <= 0:
        backend = "math"   # torch's CPU SDPA returns NaN for a non-positive scale with a causal mask
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    if backend != "math":
        raise ValueError(f"unknown attention backend {backend!r}; known: {ATTN_BACKENDS}")
    att = (q @ k.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att.float(), dim=-1).type_as(q) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: T2MConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        b = config.block_size
        # a checkpoint tensor, but the original reads it with .item(): it never receives a gradient
        self.scale = nn.Parameter(torch.tensor(math.log2(b * b - b)), requires_grad=False)
        self.attn_backend = config.attn_backend
        self._scale_cache = (None, None, None, 0.0)

    def scale_value(self) -> float:
        """`scale` as a Python float, read from the device only when the tensor changed (loaded,
        moved, cast), so steady-state decoding has no host sync (CUDA-graph capture needs that)."""
        s = self.scale
        src, ptr, version, value = self._scale_cache
        if src is not s or ptr != s.data_ptr() or version != s._version:
            value = float(s)
            self._scale_cache = (s, s.data_ptr(), s._version, value)
        return value

    def qkv(self, x, cos, sin):
        """x (B, T, C) -> q, k (L2-normalised per head, rotated), v: each (B, H, T, D)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        q = apply_rope(F.normalize(q, p=2, dim=-1), cos, sin)
        k = apply_rope(F.normalize(k, p=2, dim=-1), cos, sin)
        return q, k, v

    def qkv_decode(self, x, rotation):
        """qkv() for one token per row (a decode step), with RoPE given as each row's rotation matrix
        (R, D, D) (rope_rotation_table): q and k of all heads normalised in one op and rotated in one
        batched matmul, where qkv() spends some 35 small ops (at batch 1 on a CPU the call costs, not the
        arithmetic, are a decode step's time). Same maths; RoPE in fp32 as apply_rope."""
        B, _, C = x.shape
        H, D = self.n_head, C // self.n_head
        qkv = self.c_attn(x).view(B, 3 * H, D)
        qk = torch.bmm(F.normalize(qkv[:, :2 * H], p=2, dim=-1).to(rotation.dtype), rotation).to(x.dtype)
        q, k = qk.view(B, 2, H, 1, D).unbind(1)
        return q, k, qkv[:, 2 * H:].view(B, H, 1, D)

    def out(self, y):
        B, H, T, D = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(B, T, H * D))

    def forward(self, x, cos, sin, kv: "KVWriter", layer: int):
        """x (B, T, C) after rms_1 -> (B, T, C). `kv` says where the keys come from and go to: the new
        tokens alone (training forward, prefill) or the cache (a decode step); it stores this layer's
        normalised, rotated k and v as its cache needs. cos/sin: RoPE at the tokens' positions."""
        backend = kv.attn_backend or resolve_attention_backend(self.attn_backend, x.device)
        if backend == "triton":   # fused QK-Norm + RoPE + attention (+ cache append), forward and backward
            return kv.fused(self, x, cos, sin, layer)
        if kv.rotation is not None and x.shape[1] == 1:
            q, k, v = self.qkv_decode(x, kv.rotation)
        else:
            q, k, v = self.qkv(x, cos, sin)
        k, v = kv.update(layer, k, v)
        return self.out(attention(q, k, v, self.scale_value(), mask=kv.mask, causal=kv.causal, attn_backend=backend))


class MLP(nn.Module):
    """SwiGLU: c_proj(silu(c_fc1 x) * c_fc2 x), no biases."""

    def __init__(self, config: T2MConfig):
        super().__init__()
        h = config.mlp_hidden
        self.c_fc1 = nn.Linear(config.n_embd, h, bias=False)
        self.c_fc2 = nn.Linear(config.n_embd, h, bias=False)
        self.c_proj = nn.Linear(h, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.silu(self.c_fc1(x)) * self.c_fc2(x))


class Block(nn.Module):
    """x + attn(rms_1(x)), then + mlp(rms_2(x)). `kv` (a KVWriter) is how attention meets the cache."""

    def __init__(self, config: T2MConfig):
        super().__init__()
        self.rms_1 = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.rms_2 = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv: "KVWriter", layer: int):
        x = x + self.attn(self.rms_1(x), cos, sin, kv, layer)
        return x + self.mlp(self.rms_2(x))


@dataclass
class KVCache:
    """Static cache: per layer (B, H, max_len, D) keys (normed + rotated) and values, and each
    row's length (the number of tokens, text token included, it holds). Entries at or beyond a
    row's length are stale and never attended."""
    k: list
    v: list
    length: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def reset(self, rows: torch.Tensor | None = None) -> None:
        if rows is None:
            self.length.zero_()
        else:
            self.length[rows] = 0


def decode_mask(pos: torch.Tensor, max_len: int) -> torch.Tensor:
    """(R, 1, 1, max_len) bool: a token decoded at position pos[r] sees cache positions <= pos[r]."""
    return (torch.arange(max_len, device=pos.device)[None, :] <= pos[:, None])[:, None, None, :]


class KVWriter:
    """How one pass through the blocks meets the keys and values (gpt-fast's `kv_cache.update`, passed
    as an argument so training, prefill, decode and the ONNX graphs share one block loop).

    This base class is the training forward: each token attends causally to the new tokens, nothing
    is stored. update(layer, k, v) stores what a cache needs and returns the keys/values to attend
    to; fused() is the same through the Triton kernels. key_lengths (B,), optional: valid tokens per
    row of a padded batch (only the kernel uses it, to skip padding keys: with causal attention
    padding never reaches a valid position). attn_backend overrides the layers' own switch."""
    causal = True
    mask = None
    attn_backend = None
    rotation = None   # (B, D, D) RoPE matrices of one-token rows (a decode step): CausalSelfAttention.qkv_decode

    def __init__(self, key_lengths: torch.Tensor | None = None):
        self.key_lengths = key_lengths

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return k, v

    def fused(self, attn, x, cos, sin, layer: int):
        y, k, v = _kernels().self_attention(attn, x, cos, sin, self.key_lengths)
        self.update(layer, k, v)
        return y


class PrefillWriter(KVWriter):
    """Prefill: the tokens attend causally among themselves and their k/v fill positions 0..T-1 of
    cache rows `rows`."""

    def __init__(self, cache: KVCache, rows: torch.Tensor, key_lengths: torch.Tensor | None = None):
        super().__init__(key_lengths)
        self.cache, self.rows = cache, rows

    def update(self, layer, k, v):
        T = k.shape[2]
        self.cache.k[layer][self.rows, :, :T] = k.to(self.cache.k[layer].dtype)
        self.cache.v[layer][self.rows, :, :T] = v.to(self.cache.v[layer].dtype)
        return k, v


class DecodeWriter(KVWriter):
    """A decode step: one new token per row, written at its row's own position `pos` (R,) of cache rows
    `rows` (R,), attending to the cache up to that position; full: `rows` are all the cache's rows, in
    order (no gather). rope: the model's full cos/sin tables (the fused kernel rotates at `pos` itself)."""
    causal = False

    def __init__(self, cache: KVCache, pos: torch.Tensor, rows: torch.Tensor, full: bool, rope: tuple,
                 rotation: torch.Tensor | None = None):
        super().__init__()
        self.cache, self.pos, self.rows, self.full, self.rope = cache, pos, rows, full, rope
        self.mask = decode_mask(pos, cache.max_len)
        self.rotation = rotation

    def update(self, layer, k, v):
        K, V = self.cache.k[layer], self.cache.v[layer]
        K[self.rows, :, self.pos] = k[:, :, 0].to(K.dtype)
        V[self.rows, :, self.pos] = v[:, :, 0].to(V.dtype)
        if not self.full:
            K, V = K[self.rows], V[self.rows]
        return K.to(k.dtype), V.to(v.dtype)

    def fused(self, attn, x, cos, sin, layer):
        # one kernel: QK-Norm + RoPE at each row's position, cache append, attention
        return _kernels().decode_self_attention(attn, x, self.cache.k[layer], self.cache.v[layer], self.pos,
                                                *self.rope, None if self.full else self.rows)


# ----------------------------------------------------------------------------- the model
class TextToMotionModel(nn.Module):
    def __init__(self, config: T2MConfig):
        super().__init__()
        self.config = config
        c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Linear(c.latent_dim, c.n_embd),
            cond_embed=nn.Linear(c.cond_dim, c.n_embd),
            h=nn.ModuleList(Block(c) for _ in range(c.n_layer)),
            ln_f=RMSNorm(c.n_embd),
        ))
        self.out_proj = nn.Linear(c.n_embd, c.n_embd)
        self.diff_loss = DiffLoss(c.head)
        # the original leaves torch's default init; N(0, 0.02) linears (GPT-2 style) train as well
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("diff_loss"):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # after the init above, so the other layers draw the same initial weights with or without it
        self.goal_embed = GoalEmbed(c.n_embd) if c.goal else None
        cos, sin = rope_tables(c.block_size, c.head_dim, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)   # not in the checkpoint
        self.register_buffer("rope_sin", sin, persistent=False)
        self._rope_rotation = None

    def assembled(self, blocks=None, ln_f=None, out_proj=None, diff_loss=None) -> "TextToMotionModel":
        """A model made of this one's modules with some replaced, sharing every tensor (no copy): what a
        distilled student runs (models/few_step.py: its own last blocks, ln_f, out_proj and head over
        the teacher's embeddings and first blocks). Prefill, decode, the training forward, the ONNX
        graphs and CUDA graphs run it as they run any model. Build it after moving this model."""
        t = self.transformer
        blocks = list(t.h) if blocks is None else list(blocks)
        if len(blocks) != self.config.n_layer:
            raise ValueError(f"an assembled model needs {self.config.n_layer} blocks, got {len(blocks)}")
        m = TextToMotionModel.__new__(TextToMotionModel)
        nn.Module.__init__(m)
        m.config = self.config
        m.transformer = nn.ModuleDict(dict(wte=t.wte, cond_embed=t.cond_embed, h=nn.ModuleList(blocks),
                                           ln_f=t.ln_f if ln_f is None else ln_f))
        m.out_proj = self.out_proj if out_proj is None else out_proj
        m.diff_loss = self.diff_loss if diff_loss is None else diff_loss
        m.goal_embed = self.goal_embed
        m.register_buffer("rope_cos", self.rope_cos, persistent=False)
        m.register_buffer("rope_sin", self.rope_sin, persistent=False)
        m._rope_rotation = None
        return m

    def set_attention_backend(self, backend: str) -> None:
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attention backend must be one of {ATTN_BACKENDS}, got {backend!r}")
        for b in self.transformer.h:
            b.attn.attn_backend = backend

    def set_fast_paths(self, backend: str) -> None:
        """One switch for the attention and head backends: "auto" (the fastest available: the Triton kernels on CUDA,
        else SDPA and the PyTorch head loop), "triton" (fused attention, decode and head sampling
        wherever the kernels run), or "sdpa" / "math" (PyTorch attention and head loop)."""
        self.set_attention_backend(backend)
        self.diff_loss.set_head_backend(backend if backend in ("auto", "triton") else "torch")

    # ---- input checks (host-side shapes only: safe inside CUDA-graph capture)
    def _check_text(self, text_emb: torch.Tensor, rows: int | None = None) -> None:
        c = self.config.cond_dim
        if text_emb.dim() != 2 or text_emb.shape[1] != c or (rows is not None and text_emb.shape[0] != rows):
            raise ValueError(f"text_emb must have shape ({rows if rows is not None else 'B'}, {c}), "
                             f"got {tuple(text_emb.shape)}")

    def _check_latents(self, latents: torch.Tensor | None, batch: int) -> None:
        if latents is None:
            return
        d = self.config.latent_dim
        if latents.dim() != 3 or latents.shape[0] != batch or latents.shape[2] != d:
            raise ValueError(f"latents must have shape ({batch}, L, {d}), got {tuple(latents.shape)}")

    def _check_lengths(self, lengths, batch: int, L: int) -> torch.Tensor:
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be {batch} integers (latents per row), got {tuple(lengths.shape)} "
                             f"{lengths.dtype}")
        if len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > L):
            raise ValueError(f"lengths must lie in [0, {L}], got {lengths.tolist()}")
        return lengths

    def embed(self, latents: torch.Tensor | None, text_emb: torch.Tensor | None) -> torch.Tensor:
        """Tokens [cond_embed(text), wte(latent_0), ...] (B, T, n_embd); text_emb None: the latents'
        tokens alone (a decode step)."""
        dtype = self.out_proj.weight.dtype
        tokens = [] if text_emb is None else [self.transformer.cond_embed(text_emb.to(dtype))[:, None, :]]
        if latents is not None and latents.shape[1]:
            tokens.append(self.transformer.wte(latents.to(dtype)))
        return torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]

    def with_goal(self, x: torch.Tensor, goal: torch.Tensor | None, at: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens x (B, T, C) plus the goal embedding (models/goal.py): goal (B, T, GOAL_DIM) one per token
        (training), or (B, GOAL_DIM) added to token `at` (B,) only (default the last: the newest token of a
        prefill or a decode step). None: x unchanged (the original model's path)."""
        if goal is None:
            return x
        if self.goal_embed is None:
            raise ValueError("this model has no goal module (its config says goal: false): it was not trained "
                             "with goals")
        B, T = x.shape[:2]
        if tuple(goal.shape) == (B, T, GOAL_DIM):
            return x + self.goal_embed(goal).to(x.dtype)
        if goal.shape != (B, GOAL_DIM):
            raise ValueError(f"goal must have shape ({B}, {GOAL_DIM}) or ({B}, {T}, {GOAL_DIM}), "
                             f"got {tuple(goal.shape)}")
        g = self.goal_embed(goal).to(x.dtype)[:, None, :]
        if T == 1:
            return x + g
        at = torch.full((B,), T - 1, device=x.device) if at is None else at
        onehot = (torch.arange(T, device=x.device)[None, :] == at[:, None]).to(x.dtype)[..., None]
        return x + onehot * g

    def run_blocks(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: KVWriter) -> torch.Tensor:
        """The one block loop (training forward, prefill, decode step, ONNX graphs): kv says how
        attention meets the cache; cos/sin are RoPE at the tokens' positions."""
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cos, sin, kv, layer)
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states -> the diffusion head's conditions (ln_f, out_proj)."""
        return self.out_proj(self.transformer.ln_f(x))

    def rope_at(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for one token per row at positions pos (R,): each (R, 1, 1, head_dim/2)."""
        return self.rope_cos[pos][:, None, None, :], self.rope_sin[pos][:, None, None, :]

    def rope_rotation_at(self, pos: torch.Tensor) -> torch.Tensor:
        """RoPE at positions pos (R,) as rotation matrices (R, head_dim, head_dim), from a table made once
        per device (rope_rotation_table)."""
        table = self._rope_rotation
        if table is None or table.device != self.rope_cos.device or (table.dtype == torch.float64) != (
                self.rope_cos.dtype == torch.float64):
            table = self._rope_rotation = rope_rotation_table(self.rope_cos, self.rope_sin)
        return table[pos]

    def forward(self, latents: torch.Tensor | None, text_emb: torch.Tensor, lengths=None,
                goal: torch.Tensor | None = None) -> torch.Tensor:
        """latents (B, L, 16) (None or L=0: text only), text_emb (B, cond_dim) -> conditions
        (B, L+1, n_embd); position i conditions latent i, position L the one after the last.

        goal (B, L+1, GOAL_DIM), optional (a model with a goal module): the raw goal of each token
        (models/goal.py), as the runtime adds it to the newest token at every prefill and decode step.

        lengths (B,), optional: valid latents per row of a zero-padded batch. Attention is causal,
        so padding after a row's length never reaches its valid positions: conditions 0..lengths[b]
        equal those of the unpadded row, and the caller masks the rest (training losses do). It
        is validated, not needed for a mask.
        """
        self._check_text(text_emb)
        self._check_latents(latents, text_emb.shape[0])
        if lengths is not None:
            self._check_lengths(lengths, text_emb.shape[0], 0 if latents is None else latents.shape[1])
        x = self.with_goal(self.embed(latents, text_emb), goal)
        T = x.shape[1]
        key_lengths = None if lengths is None else torch.as_tensor(lengths).to(x.device) + 1   # + the text token
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens (text + {T - 1} latents) exceeds block_size "
                             f"{self.config.block_size}")
        return self.project(self.run_blocks(x, self.rope_cos[:T], self.rope_sin[:T], KVWriter(key_lengths)))

    # ---- incremental decoding
    def new_kv_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty static cache for `batch` rows of up to max_len tokens (default block_size)."""
        c = self.config
        max_len = max_len or c.block_size
        if max_len > c.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {c.block_size} (RoPE table size)")
        device = device or self.out_proj.weight.device
        dtype = dtype or self.out_proj.weight.dtype
        shape = (batch, c.n_head, max_len, c.head_dim)
        return KVCache([torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)],
                       torch.zeros(batch, dtype=torch.long, device=device))

    def prefill(self, text_emb: torch.Tensor, latents: torch.Tensor | None, cache: KVCache,
                rows: torch.Tensor | None = None, lengths=None, goal: torch.Tensor | None = None) -> torch.Tensor:
        """Fill cache rows (all when None) with [text, latents] at positions 0..L and return the
        conditions for the next latent (R, n_embd).

        goal (R, GOAL_DIM), optional: added to the newest token (position lengths[r], else L) only; the
        history's tokens carry none (as in training, where a goal starts at some position).

        lengths (R,), optional: valid latents per row of a zero-padded `latents`; each row's cache
        length becomes lengths[r] + 1 and its returned condition is the one at position lengths[r]
        (the padded entries beyond are stale: the next decode_step overwrites/masks them)."""
        R = text_emb.shape[0]
        self._check_text(text_emb)
        self._check_latents(latents, R)
        x = self.embed(latents, text_emb)
        T = x.shape[1]
        if T > cache.max_len:
            raise ValueError(f"prefill of {T} tokens exceeds the cache length {cache.max_len}")
        rows = torch.arange(R, device=x.device) if rows is None else rows
        if rows.shape != (R,):
            raise ValueError(f"rows must have shape ({R},), got {tuple(rows.shape)}")
        if lengths is not None:
            lengths = self._check_lengths(lengths, R, T - 1).to(x.device)
        x = self.with_goal(x, goal, lengths)
        key_lengths = None if lengths is None else lengths + 1
        x = self.run_blocks(x, self.rope_cos[:T], self.rope_sin[:T], PrefillWriter(cache, rows, key_lengths))
        if lengths is None:
            cache.length[rows] = T
            return self.project(x[:, -1])
        cache.length[rows] = lengths + 1
        return self.project(x[torch.arange(R, device=x.device), lengths])

    def decode_step(self, latent: torch.Tensor, cache: KVCache, rows: torch.Tensor | None = None,
                    check: bool = True, goal: torch.Tensor | None = None) -> torch.Tensor:
        """Append one latent (R, 16) per row at that row's own position (RoPE at that absolute
        position, k/v written there); returns the next conditions (R, n_embd).

        rows: cache rows to advance (all when None). check=False skips the cache-full test (a host
        sync), as CUDA-graph capture requires. goal (R, GOAL_DIM), optional: added to the new token."""
        d = self.config.latent_dim
        if latent.dim() != 2 or latent.shape[1] != d:
            raise ValueError(f"latent must have shape (R, {d}), got {tuple(latent.shape)}")
        x = self.with_goal(self.embed(latent[:, None, :], None), goal)                 # (R, 1, C)
        R = x.shape[0]
        full = rows is None
        if full and R != cache.batch:
            raise ValueError(f"latent has {R} rows, the cache {cache.batch}: pass rows=")
        rows = torch.arange(R, device=x.device) if full else rows
        if rows.shape != (R,):
            raise ValueError(f"rows must have shape ({R},), got {tuple(rows.shape)}")
        pos = cache.length[rows]                                                        # (R,)
        if check and int(pos.max()) >= cache.max_len:
            raise ValueError(f"KV cache full ({cache.max_len} positions): re-prefill a shorter window")
        kv = DecodeWriter(cache, pos, rows, full, (self.rope_cos, self.rope_sin), self.rope_rotation_at(pos))
        x = self.run_blocks(x, *self.rope_at(pos), kv)
        cache.length[rows] = pos + 1
        return self.project(x[:, 0])
