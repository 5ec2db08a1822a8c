"""The text-to-motion transformer (LLaMA blocks with QK-Norm and RoPE) + its diffusion head.

Checkpoint-compatible with the released `t2m_model` ('trans'): transformer.{wte, cond_embed, h.*,
ln_f}, out_proj, diff_loss.net.* (spec reference-model §2, §7). Sequence: [cond_embed(text),
wte(latent_0), ..., wte(latent_{L-1})]; output position i is the condition for latent i.

Attention: q and k are L2-normalised per head, then rotated by RoPE (adjacent pairs, base 10000)
at their ABSOLUTE positions, and logits are scaled by the per-layer scalar `scale`
(log2(block^2 - block) at init; the original reads it with .item(), so it never trains).

Incremental decoding uses a static KV cache (keys stored after norm and RoPE). Each row of the
cache has its own length, so independent streams at different positions share one decode step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig


@dataclass
class T2MConfig:
    latent_dim: int = 16
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 78
    cond_dim: int = 768                 # text embedding width (sentence-t5-xxl: 768, MiniLM: 384)
    head: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    rope_base: float = 10000.0
    attn_backend: str = "sdpa"          # "math" (reference), "sdpa", "triton" (when available)

    def __post_init__(self):
        if isinstance(self.head, dict):
            self.head = DiffusionHeadConfig.from_dict(self.head)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        self.head.cond_dim = self.n_embd
        self.head.latent_dim = self.latent_dim

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU width as the original: 2/3 of 4*n_embd rounded up to a multiple of 256."""
        n = int(2 * 4 * self.n_embd / 3)
        return ((n - 1) // 256) * 256 + 256

    @classmethod
    def official(cls, cond_dim: int = 768) -> "T2MConfig":
        return cls(cond_dim=cond_dim)

    @classmethod
    def small(cls, cond_dim: int = 384) -> "T2MConfig":
        return cls(n_layer=4, n_head=4, n_embd=128, cond_dim=cond_dim,
                   head=DiffusionHeadConfig(width=256, depth=3))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head"] = self.head.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "T2MConfig":
        return cls(**{**d, "head": DiffusionHeadConfig.from_dict(d["head"]) if isinstance(d.get("head"), dict) else d.get("head", DiffusionHeadConfig())})


# ----------------------------------------------------------------------------- pieces
class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.scale * (x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps))


def rope_tables(max_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    theta = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), theta)
    return torch.cos(ang), torch.sin(ang)                                  # (max_len, head_dim/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by the angles in cos/sin; computed in fp32.

    x (..., T, D); cos/sin broadcastable to (..., T, D/2)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def attention(q, k, v, scale: float, mask: torch.Tensor | None = None, causal: bool = False,
              backend: str = "sdpa") -> torch.Tensor:
    """The one attention call. q (B,H,Tq,D), k/v (B,H,Tk,D); mask: bool, True = attend."""
    if backend == "triton":
        try:
            from motionstreamer.kernels import integration
            return integration.attention(q, k, v, scale, mask=mask, causal=causal)
        except ImportError:
            backend = "sdpa"
    if backend == "sdpa" and scale <= 0:
        backend = "math"   # torch's CPU SDPA returns NaN for a non-positive scale with a causal mask
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    if backend != "math":
        raise ValueError(f"unknown attention backend {backend!r}")
    att = (q @ k.transpose(-1, -2)) * scale
    Tq, Tk = q.shape[-2], k.shape[-2]
    if causal:
        cm = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        mask = cm if mask is None else (mask & cm)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att.float(), dim=-1).type_as(q) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: T2MConfig):
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        b = cfg.block_size
        self.scale = nn.Parameter(torch.tensor(math.log2(b * b - b)), requires_grad=False)
        self.backend = cfg.attn_backend

    def qkv(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))      # (B, H, T, D)
        q = apply_rope(F.normalize(q, p=2, dim=-1), cos, sin)
        k = apply_rope(F.normalize(k, p=2, dim=-1), cos, sin)
        return q, k, v

    def out(self, y):
        B, H, T, D = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(B, T, H * D))

    def forward(self, x, cos, sin):
        q, k, v = self.qkv(x, cos, sin)
        return self.out(attention(q, k, v, float(self.scale), causal=True, backend=self.backend)), k, v


class MLP(nn.Module):
    def __init__(self, cfg: T2MConfig):
        super().__init__()
        h = cfg.mlp_hidden
        self.c_fc1 = nn.Linear(cfg.n_embd, h, bias=False)
        self.c_fc2 = nn.Linear(cfg.n_embd, h, bias=False)
        self.c_proj = nn.Linear(h, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.silu(self.c_fc1(x)) * self.c_fc2(x))


class Block(nn.Module):
    def __init__(self, cfg: T2MConfig):
        super().__init__()
        self.rms_1 = RMSNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.rms_2 = RMSNorm(cfg.n_embd)
        self.mlp = MLP(cfg)


@dataclass
class KVCache:
    """Static cache: per layer (B, H, max_len, D) keys (normed + rotated) and values; per-row length."""
    k: list
    v: list
    length: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


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
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("diff_loss"):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        cos, sin = rope_tables(c.block_size, c.n_embd // c.n_head, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def set_attention_backend(self, backend: str) -> None:
        for b in self.transformer.h:
            b.attn.backend = backend

    def _tokens(self, latents: torch.Tensor | None, text_emb: torch.Tensor) -> torch.Tensor:
        text_tok = self.transformer.cond_embed(text_emb.to(self.out_proj.weight.dtype))[:, None, :]
        if latents is None or latents.shape[1] == 0:
            return text_tok
        return torch.cat([text_tok, self.transformer.wte(latents.to(text_tok.dtype))], dim=1)

    def _head(self, x):
        return self.out_proj(self.transformer.ln_f(x))

    def forward(self, latents: torch.Tensor | None, text_emb: torch.Tensor, lengths=None) -> torch.Tensor:
        """latents (B, L, 16), text_emb (B, cond_dim) -> conditions (B, L+1, n_embd).

        Attention is causal, so padding after a row's length never changes its valid positions;
        `lengths` is accepted for API symmetry and needs no mask.
        """
        x = self._tokens(latents, text_emb)
        T = x.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for blk in self.transformer.h:
            a, _, _ = blk.attn(blk.rms_1(x), cos, sin)
            x = x + a
            x = x + blk.mlp(blk.rms_2(x))
        return self._head(x)

    # ---- incremental decoding
    def new_kv_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        c = self.config
        max_len = max_len or c.block_size
        device = device or self.out_proj.weight.device
        dtype = dtype or self.out_proj.weight.dtype
        shape = (batch, c.n_head, max_len, c.n_embd // c.n_head)
        return KVCache([torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in range(c.n_layer)],
                       torch.zeros(batch, dtype=torch.long, device=device))

    def prefill(self, text_emb: torch.Tensor, latents: torch.Tensor | None, cache: KVCache,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fill cache rows (all when None) with [text, latents]; returns the last conditions (R, n_embd)."""
        x = self._tokens(latents, text_emb)
        T = x.shape[1]
        if T > cache.max_len:
            raise ValueError(f"prefill of {T} tokens exceeds the cache length {cache.max_len}")
        rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for i, blk in enumerate(self.transformer.h):
            a, k, v = blk.attn(blk.rms_1(x), cos, sin)
            cache.k[i][rows, :, :T] = k.to(cache.k[i].dtype)
            cache.v[i][rows, :, :T] = v.to(cache.v[i].dtype)
            x = x + a
            x = x + blk.mlp(blk.rms_2(x))
        cache.length[rows] = T
        return self._head(x[:, -1])

    def decode_step(self, latent: torch.Tensor, cache: KVCache, rows: torch.Tensor | None = None,
                    check: bool = True) -> torch.Tensor:
        """Append one latent per row at that row's position; returns the next conditions (R, n_embd).

        check=False skips the cache-full test (a host sync), as CUDA-graph capture requires."""
        x = self.transformer.wte(latent.to(self.out_proj.weight.dtype))[:, None, :]   # (R, 1, C)
        R = x.shape[0]
        full = rows is None
        rows = torch.arange(R, device=x.device) if full else rows
        pos = cache.length[rows]                                                        # (R,)
        if check and int(pos.max()) >= cache.max_len:
            raise ValueError(f"KV cache full ({cache.max_len} positions): re-prefill a shorter window")
        cos, sin = self.rope_cos[pos][:, None, None, :], self.rope_sin[pos][:, None, None, :]   # (R,1,1,D/2)
        mask = (torch.arange(cache.max_len, device=x.device)[None, :] <= pos[:, None])[:, None, None, :]
        for i, blk in enumerate(self.transformer.h):
            q, k, v = blk.attn.qkv(blk.rms_1(x), cos, sin)                              # (R, H, 1, D)
            cache.k[i][rows, :, pos] = k[:, :, 0].to(cache.k[i].dtype)
            cache.v[i][rows, :, pos] = v[:, :, 0].to(cache.v[i].dtype)
            K = cache.k[i] if full else cache.k[i][rows]
            V = cache.v[i] if full else cache.v[i][rows]
            y = attention(q, K.to(q.dtype), V.to(q.dtype), float(blk.attn.scale), mask=mask, backend=blk.attn.backend)
            x = x + blk.attn.out(y)
            x = x + blk.mlp(blk.rms_2(x))
        cache.length[rows] = pos + 1
        return self._head(x[:, 0])
