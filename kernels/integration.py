"""Adapters between the models (motionstreamer.models.transformer / diffusion) and the kernels.

Each function takes the model's own modules and tensors, so wiring a kernel in is one call at the
place the model computes the same thing, behind its backend switch:

  attention(q, k, v, scale, mask, causal)        the transformer's `attention(..., attn_backend="triton")` hook
  self_attention(attn, x, cos, sin, lengths)     CausalSelfAttention.forward (QKV proj -> fused QK-Norm,
                                                 RoPE, causal attention -> out proj); returns (y, k, v)
  decode_self_attention(attn, x, k_cache, v_cache, positions, cos, sin, rows)
                                                 one decode step of a layer, cache append fused
  head_forward_with_modulations(net, x, mods, step)  SimpleMLPAdaLN.forward_with_modulations
  sample_loop_fused(net, c, model_t, x_T, ...)   models.diffusion.sample_loop, the whole loop fused
                                                 (DiffLoss.sample's "triton" head backend)

Every function but sample_loop_fused (whose caller checks `available`) falls back to the plain
PyTorch path when the kernels cannot run on the tensors' device (no triton, or CPU without
TRITON_INTERPRET=1), so a "triton" switch is always safe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import HAS_TRITON, SUPPORTED_DTYPES, interpreting, kernels_usable
from .diffusion_head import BlockWeights, HeadWeights, head_sample_loop, head_step
from .qknorm_attention import attention_reference, qknorm_rope_attention, qknorm_rope_reference
from .qknorm_decode import qknorm_decode_attention, qknorm_decode_attention_reference


def available(device: torch.device | str) -> bool:
    """True when the Triton kernels run on this device."""
    device = torch.device(device)
    if not HAS_TRITON:
        return False
    return (device.type == "cuda" and not interpreting()) or (device.type == "cpu" and interpreting())


# ----------------------------------------------------------------------------- transformer
def _sdpa(q, k, v, scale, mask, causal):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)


def attention(q, k, v, scale: float, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """The transformer's attention hook: q (B, H, Tq, D), k/v (B, H, Tk, D) already normalised and
    rotated. Causal self-attention without a mask runs the flash kernel; anything else (an
    arbitrary boolean mask, Tq != Tk, odd head sizes, or no usable kernels) runs SDPA."""
    if mask is None and causal and q.shape[-2] == k.shape[-2] and _attention_kernels_take(q, k, v):
        return qknorm_rope_attention(q, k, v, scale, None, None, causal=True, norm_rope=False)
    return _sdpa(q, k, v, scale, mask, causal)


def _split_heads(qkv: torch.Tensor, n_head: int):
    """(B, T, 3C) -> q, k, v views (B, H, T, D) without copies."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    return [t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2)]


def kernel_head_size(D: int) -> bool:
    """Head sizes the attention kernels take: powers of two >= 32 (others fall back to PyTorch)."""
    return D >= 32 and not D & (D - 1)


def _attention_kernels_take(*tensors) -> bool:
    """Device, head size and dtype the attention kernels take (anything else runs in PyTorch)."""
    q = tensors[0]
    return (kernels_usable(*tensors) and kernel_head_size(q.shape[-1])
            and all(t.dtype in SUPPORTED_DTYPES for t in tensors))


def self_attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   lengths: torch.Tensor | None = None):
    """CausalSelfAttention.forward with the fused kernel: returns (y (B, T, C), k_rot, v) where
    k_rot/v (B, H, T, D) are what the KV cache stores. Differentiable (training uses it).

    lengths (B,), optional: valid tokens per row; keys at or beyond it are masked (rows' valid
    positions are unaffected: attention is causal), and the kernel skips those key blocks."""
    qkv = attn.c_attn(x)
    q, k, v = _split_heads(qkv, attn.n_head)
    if not _attention_kernels_take(q):
        T = x.shape[1]
        qr, kr = qknorm_rope_reference(q, cos[:T], sin[:T]), qknorm_rope_reference(k, cos[:T], sin[:T])
        if lengths is None:
            o = _sdpa(qr, kr, v, float(attn.scale), None, True)
        else:
            o = attention_reference(qr, kr, v, float(attn.scale), lengths, causal=True)
        return attn.out(o), kr, v
    o, k_rot = qknorm_rope_attention(q, k, v, attn.scale, cos, sin, lengths=lengths, causal=True, return_k=True)
    return attn.out(o), k_rot, v


def decode_self_attention(attn, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          rows: torch.Tensor | None = None) -> torch.Tensor:
    """One layer's attention for one new token per row: x (R, 1, C) (after rms_1) -> (R, 1, C).

    Appends the new normalised/rotated k and v at `positions` (R,) of cache rows `rows` (default
    0..R-1) in place; cos/sin are the model's full rope tables. No host sync (CUDA-graph safe)."""
    R, _, C = x.shape
    H = attn.n_head
    qkv = attn.c_attn(x)[:, 0]                                    # (R, 3C)
    q, k, v = (t.view(R, H, C // H) for t in qkv.split(C, dim=1))
    if not _attention_kernels_take(q, k_cache):
        o = qknorm_decode_attention_reference(q, k, v, k_cache, v_cache, positions, float(attn.scale), cos, sin, rows)
    else:
        o = qknorm_decode_attention(q, k, v, k_cache, v_cache, positions, attn.scale, cos, sin, rows=rows)
    return attn.c_proj(o.reshape(R, 1, C))


# ----------------------------------------------------------------------------- diffusion head
def head_weights(net) -> HeadWeights:
    """The explicit tensors of a SimpleMLPAdaLN (official parameter names)."""
    blocks = [BlockWeights(b.in_ln.weight, b.in_ln.bias, b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight, b.mlp[2].bias)
              for b in net.res_blocks]
    fl = net.final_layer
    return HeadWeights(net.input_proj.weight, net.input_proj.bias, blocks, fl.linear.weight, fl.linear.bias,
                       eps=float(fl.norm_final.eps))


def head_forward_with_modulations(net, x: torch.Tensor, mods: dict, step: int) -> torch.Tensor:
    """SimpleMLPAdaLN.forward_with_modulations(x, mods, step) with the fused step kernels."""
    if not kernels_usable(x, mods["blocks"]):
        return net.forward_with_modulations(x, mods, step)
    return head_step(x, head_weights(net), mods["blocks"][:, step], mods["final"][step])


@torch.no_grad()
def sample_loop_fused(net, c: torch.Tensor, model_t: torch.Tensor, x_T: torch.Tensor, step_noise: torch.Tensor,
                      coefs, cfg_scale: float | None, temperature: float) -> torch.Tensor:
    """models.diffusion.sample_loop with the fused kernels (DiffLoss.sample calls it for the "triton"
    head backend): condition rows c ([cond; uncond] when cfg_scale is given), model timesteps
    model_t, x_T (B, L), step_noise (>= S, B, L), coefs (S, 6) from step_coefficients."""
    mods = net.modulations(c, model_t)
    out = head_sample_loop(head_weights(net), mods, x_T, step_noise[:coefs.shape[0]], coefs, cfg_scale=cfg_scale,
                           temperature=temperature)
    return out.to(c.dtype)


__all__ = ["available", "kernel_head_size", "attention", "self_attention", "decode_self_attention", "head_weights",
           "head_forward_with_modulations", "sample_loop_fused"]
