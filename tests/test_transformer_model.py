"""Text-to-motion transformer: the official checkpoint layout (spec reference-model §7), every block
re-derived with explicit tensor math (complex RoPE as the original writes it, QK-Norm, causal softmax
attention, RMSNorm, SwiGLU), and the static KV cache against the full forward (fp32, 1e-5), including
independent rows at different positions and a check that would fail with the original's cache bug
(new query rotated from position 0)."""
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from motionstreamer.models.diffusion import DiffusionHeadConfig
from motionstreamer.models.transformer import (
    KVCache,
    T2MConfig,
    TextToMotionModel,
    apply_rope,
    attention,
    rope_rotation_table,
    rope_tables,
)

TOL = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- official layout
def spec_table() -> dict:
    """Spec §7 'Text-to-motion model' table, row by row ({i} expanded)."""
    t = {"transformer.wte.weight": (768, 16), "transformer.wte.bias": (768,),
         "transformer.cond_embed.weight": (768, 768), "transformer.cond_embed.bias": (768,),
         "transformer.ln_f.scale": (768,),
         "diff_loss.net.time_embed.mlp.0.weight": (1792, 256), "diff_loss.net.time_embed.mlp.0.bias": (1792,),
         "diff_loss.net.time_embed.mlp.2.weight": (1792, 1792), "diff_loss.net.time_embed.mlp.2.bias": (1792,),
         "diff_loss.net.cond_embed.weight": (1792, 768), "diff_loss.net.cond_embed.bias": (1792,),
         "diff_loss.net.input_proj.weight": (1792, 16), "diff_loss.net.input_proj.bias": (1792,),
         "diff_loss.net.final_layer.linear.weight": (16, 1792), "diff_loss.net.final_layer.linear.bias": (16,),
         "diff_loss.net.final_layer.adaLN_modulation.1.weight": (3584, 1792),
         "diff_loss.net.final_layer.adaLN_modulation.1.bias": (3584,),
         "out_proj.weight": (768, 768), "out_proj.bias": (768,)}
    for i in range(12):
        p = f"transformer.h.{i}"
        t.update({f"{p}.rms_1.scale": (768,), f"{p}.attn.scale": (), f"{p}.attn.c_attn.weight": (2304, 768),
                  f"{p}.attn.c_proj.weight": (768, 768), f"{p}.rms_2.scale": (768,),
                  f"{p}.mlp.c_fc1.weight": (2048, 768), f"{p}.mlp.c_fc2.weight": (2048, 768),
                  f"{p}.mlp.c_proj.weight": (768, 2048)})
    for i in range(9):
        p = f"diff_loss.net.res_blocks.{i}"
        t.update({f"{p}.in_ln.weight": (1792,), f"{p}.in_ln.bias": (1792,),
                  f"{p}.mlp.0.weight": (1792, 1792), f"{p}.mlp.0.bias": (1792,),
                  f"{p}.mlp.2.weight": (1792, 1792), f"{p}.mlp.2.bias": (1792,),
                  f"{p}.adaLN_modulation.1.weight": (5376, 1792), f"{p}.adaLN_modulation.1.bias": (5376,)})
    return t


def test_official_state_dict_equals_spec_table_and_sizes():
    with torch.device("meta"):
        m = TextToMotionModel(T2MConfig.official())
    sd = m.state_dict()
    table = spec_table()
    assert len(table) == 187
    assert {k: tuple(v.shape) for k, v in sd.items()} == table     # no rope cache, nothing extra
    assert m.config.mlp_hidden == 2048
    n_head = sum(v.numel() for k, v in sd.items() if k.startswith("diff_loss."))
    n_trans = sum(v.numel() for k, v in sd.items() if not k.startswith("diff_loss."))
    # by hand: wte, cond_embed, 12 x (2 RMS + scale + c_attn + c_proj + 3 SwiGLU), ln_f, out_proj
    assert n_trans == (768 * 16 + 768) + (768 * 768 + 768) \
        + 12 * (2 * 768 + 1 + 2304 * 768 + 768 * 768 + 3 * 2048 * 768) + 768 + (768 * 768 + 768) == 86_148_108
    # time MLP, cond, input, 9 x (LN affine + 2 linears + adaLN 3w), final linear + adaLN 2w
    w = 1792
    assert n_head == (256 * w + w + w * w + w) + (768 * w + w) + (16 * w + w) \
        + 9 * (2 * w + 2 * (w * w + w) + 3 * w * w + 3 * w) + (16 * w + 16) + (2 * w * w + 2 * w) == 156_156_688
    assert n_trans + n_head == 242_304_796            # the spec's 242.3M
    assert all(not b.attn.scale.requires_grad for b in m.transformer.h)
    # the original's scale init: log2(block^2 - block)
    small = TextToMotionModel(T2MConfig.small())
    assert small.transformer.h[0].attn.scale.item() == pytest.approx(math.log2(78 * 78 - 78), rel=1e-6)


def test_config_round_trip_and_errors():
    c = T2MConfig.small(cond_dim=32)
    d = c.to_dict()
    assert isinstance(d["head"], dict) and d["head"]["cond_dim"] == 128 and d["diffmlps_batch_mul"] == 4
    assert T2MConfig.from_dict(d) == c
    shared = DiffusionHeadConfig(width=64, depth=2)
    a, b = T2MConfig(n_embd=64, n_head=4, head=shared), T2MConfig(n_embd=32, n_head=4, head=shared)
    assert (a.head.cond_dim, b.head.cond_dim, shared.cond_dim) == (64, 32, 768)   # copied, not mutated
    with pytest.raises(ValueError, match="unknown T2MConfig field.*'n_layers'"):
        T2MConfig.from_dict({**d, "n_layers": 3})
    with pytest.raises(ValueError, match="unknown DiffusionHeadConfig field"):
        T2MConfig.from_dict({**d, "head": {**d["head"], "widht": 3}})
    with pytest.raises(ValueError, match="even head size"):
        T2MConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="attn_backend"):
        T2MConfig(attn_backend="flash")
    with pytest.raises(ValueError, match="n_layer"):
        T2MConfig(n_layer=0)


# ----------------------------------------------------------------------------- hand derivation
def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.scale"):
                p.fill_(3.0 + torch.rand((), generator=g).item())
            elif name.endswith("rms_1.scale") or name.endswith("rms_2.scale") or name.endswith("ln_f.scale"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model


@pytest.fixture(scope="module")
def model():
    config = T2MConfig(n_layer=3, n_head=4, n_embd=64, block_size=16, cond_dim=24,
                    head=DiffusionHeadConfig(width=32, depth=2))
    return randomize(TextToMotionModel(config).eval())


def hand_rms(x, w, eps=1e-5):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w


def hand_rope_complex(x, positions, base=10000.0):
    """The original's form: pairs as complex numbers times e^{j pos theta}, positions per token."""
    D = x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = positions.float()[:, None] * theta[None]                      # (T, D/2)
    rot = torch.polar(torch.ones_like(ang), ang)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2)


def hand_layer_qkv(blk, x, positions, H):
    B, T, C = x.shape
    W = blk.attn.c_attn.weight
    q, k, v = (x @ W[i * C:(i + 1) * C].T for i in range(3))
    split = lambda t: t.reshape(B, T, H, C // H).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    return hand_rope_complex(q, positions), hand_rope_complex(k, positions), v


def hand_forward(m, latents, text, q_positions=None):
    """Whole model, explicit math: tokens, per layer RMS -> QK-Norm -> RoPE -> causal softmax
    attention scaled by `scale` -> c_proj, RMS -> SwiGLU; ln_f; out_proj.
    q_positions overrides the rotation positions of the queries (to model a cache bug)."""
    H = m.config.n_head
    x = torch.cat([(text @ m.transformer.cond_embed.weight.T + m.transformer.cond_embed.bias)[:, None],
                   latents @ m.transformer.wte.weight.T + m.transformer.wte.bias], dim=1)
    B, T, C = x.shape
    pos = torch.arange(T)
    causal = torch.ones(T, T).tril().bool()
    for blk in m.transformer.h:
        h = hand_rms(x, blk.rms_1.scale)
        q, k, v = hand_layer_qkv(blk, h, pos, H)
        if q_positions is not None:
            q, _, _ = hand_layer_qkv(blk, h, q_positions, H)
        logits = (q @ k.transpose(-1, -2)) * blk.attn.scale.item()
        att = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ blk.attn.c_proj.weight.T
        h = hand_rms(x, blk.rms_2.scale)
        x = x + (F.silu(h @ blk.mlp.c_fc1.weight.T) * (h @ blk.mlp.c_fc2.weight.T)) @ blk.mlp.c_proj.weight.T
    x = hand_rms(x, m.transformer.ln_f.scale)
    return x @ m.out_proj.weight.T + m.out_proj.bias


def inputs(m, B=2, L=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, m.config.latent_dim, generator=g), torch.randn(B, m.config.cond_dim, generator=g))


def test_rope_real_form_equals_original_complex_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 16, generator=g)
    cos, sin = rope_tables(12, 16, 10000.0)
    pos = torch.tensor([0, 1, 2, 3, 5, 8, 9, 10, 11])
    torch.testing.assert_close(apply_rope(x, cos[pos], sin[pos]), hand_rope_complex(x, pos), **TOL)
    # rotation: norms kept, position 0 is the identity
    torch.testing.assert_close(apply_rope(x, cos[pos], sin[pos]).norm(dim=-1), x.norm(dim=-1), **TOL)
    torch.testing.assert_close(apply_rope(x[..., :1, :], cos[:1], sin[:1]), x[..., :1, :])


def test_rope_rotation_matrices_equal_the_original_complex_form():
    # the decode step rotates q and k by one matmul with each row's matrix (CausalSelfAttention.qkv_decode)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 16, generator=g)
    cos, sin = rope_tables(12, 16, 10000.0)
    pos = torch.tensor([0, 1, 2, 3, 5, 8, 9, 10, 11])
    table = rope_rotation_table(cos, sin)
    assert table.shape == (12, 16, 16)
    torch.testing.assert_close((x[:, None, :] @ table[pos])[:, 0], hand_rope_complex(x[None, None], pos)[0, 0], **TOL)
    torch.testing.assert_close(table[0], torch.eye(16))


def test_rmsnorm_and_swiglu_match_hand(model):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 64, generator=g)
    blk = model.transformer.h[1]
    with torch.no_grad():
        torch.testing.assert_close(blk.rms_1(x), hand_rms(x, blk.rms_1.scale), **TOL)
        hand = (F.silu(x @ blk.mlp.c_fc1.weight.T) * (x @ blk.mlp.c_fc2.weight.T)) @ blk.mlp.c_proj.weight.T
        torch.testing.assert_close(blk.mlp(x), hand, **TOL)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_full_forward_matches_hand_derivation(model, backend):
    lat, text = inputs(model)
    model.set_attention_backend(backend)
    try:
        with torch.no_grad():
            out = model(lat, text)
            torch.testing.assert_close(out, hand_forward(model, lat, text), **TOL)
            assert out.shape == (2, 8, 64)
            # text only (no latents): position 0 predicts the first latent
            torch.testing.assert_close(model(None, text), out[:, :1], **TOL)
            torch.testing.assert_close(model(lat[:, :0], text), out[:, :1], **TOL)
    finally:
        model.set_attention_backend("sdpa")


def test_attention_backends_agree_with_masks_and_causality():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (4, 6, 6))
    mask = torch.rand(2, 1, 4, 6, generator=g) > 0.3
    mask[..., 0] = True
    for kw in (dict(causal=True), dict(mask=mask), dict(mask=mask, causal=True)):
        a, b = attention(q, k, v, 2.5, attn_backend="math", **kw), attention(q, k, v, 2.5, attn_backend="sdpa", **kw)
        torch.testing.assert_close(a, b, **TOL)
    # causal with Tq < Tk: query i is at position Tk - Tq + i
    logits = (q @ k.transpose(-1, -2)) * 2.5
    allowed = torch.ones(4, 6).tril(diagonal=2).bool()
    hand = torch.softmax(logits.masked_fill(~(allowed & mask), float("-inf")), -1) @ v
    torch.testing.assert_close(attention(q, k, v, 2.5, mask=mask, causal=True, attn_backend="sdpa"), hand, **TOL)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, 1.0, attn_backend="cuda")


def test_scale_is_read_and_tracks_loaded_values(model):
    lat, text = inputs(model, B=1, L=3)
    with torch.no_grad():
        before = model(lat, text)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        sd["transformer.h.0.attn.scale"].fill_(7.0)
        model.load_state_dict(sd)
        assert model.transformer.h[0].attn.scale_value() == 7.0
        after = model(lat, text)
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(after, hand_forward(model, lat, text), **TOL)
        # steady state reads no device scalar (CUDA-graph capture forbids host syncs)
        with mock.patch.object(torch.Tensor, "__float__", side_effect=AssertionError("host read")), \
                mock.patch.object(torch.Tensor, "item", side_effect=AssertionError("host read")):
            model(lat, text)
        sd["transformer.h.0.attn.scale"].fill_(3.2)
        model.load_state_dict(sd)
    assert model.transformer.h[0].attn.scale_value() == pytest.approx(3.2)


def test_padded_batch_keeps_valid_positions(model):
    lat, text = inputs(model, B=3, L=6)
    lengths = torch.tensor([6, 2, 4])
    padded = lat.clone()
    for b, n in enumerate(lengths.tolist()):
        padded[b, n:] = 1e3 * torch.randn_like(padded[b, n:])    # garbage after each row's length
    with torch.no_grad():
        out = model(padded, text, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out[b, :n + 1], model(lat[b:b + 1, :n], text[b:b + 1])[0], **TOL)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 6\]"):
        model(lat, text, lengths=torch.tensor([1, 7, 2]))
    with pytest.raises(ValueError, match="lengths must be 3 integers"):
        model(lat, text, lengths=torch.tensor([1.0, 2.0, 3.0]))


def test_bad_shapes_are_named(model):
    lat, text = inputs(model)
    with pytest.raises(ValueError, match=r"text_emb must have shape \(B, 24\)"):
        model(lat, text[:, :5])
    with pytest.raises(ValueError, match=r"latents must have shape \(2, L, 16\)"):
        model(lat[..., :8], text)
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        model(torch.zeros(2, 16, 16), text)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.new_kv_cache(1, 40)


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("n_prefill", [0, 3])
def test_prefill_then_decode_equals_full_forward(model, backend, n_prefill):
    lat, text = inputs(model, B=2, L=9)
    model.set_attention_backend(backend)
    try:
        with torch.no_grad():
            full = model(lat, text)                                      # (2, 10, C)
            cache = model.new_kv_cache(2)
            outs = [model.prefill(text, lat[:, :n_prefill], cache)]
            assert cache.length.tolist() == [n_prefill + 1] * 2
            outs += [model.decode_step(lat[:, i], cache) for i in range(n_prefill, 9)]
            torch.testing.assert_close(torch.stack(outs, 1), full[:, n_prefill:], **TOL)
            assert cache.length.tolist() == [10, 10]
            with pytest.raises(ValueError, match="KV cache full"):
                small = model.new_kv_cache(2, max_len=4)
                model.prefill(text, lat[:, :2], small)
                model.decode_step(lat[:, 2], small)
                model.decode_step(lat[:, 3], small)
    finally:
        model.set_attention_backend("sdpa")


def test_rows_at_different_positions_decode_together(model):
    """Independent streams in one batch: each row has its own length, RoPE position and mask."""
    lat, text = inputs(model, B=3, L=10, seed=5)
    starts = [0, 4, 2]
    with torch.no_grad():
        fulls = [model(lat[b:b + 1], text[b:b + 1])[0] for b in range(3)]
        cache = model.new_kv_cache(3, max_len=model.config.block_size)
        cache.k[0].normal_()                         # stale garbage must never be attended
        for b, s in enumerate(starts):               # rows prefilled separately, like sessions
            model.prefill(text[b:b + 1], lat[b:b + 1, :s], cache, rows=torch.tensor([b]))
        assert cache.length.tolist() == [1, 5, 3]
        for step in range(4):
            z = torch.stack([lat[b, starts[b] + step] for b in range(3)])
            out = model.decode_step(z, cache)
            for b in range(3):
                torch.testing.assert_close(out[b], fulls[b][starts[b] + step + 1], **TOL)
        # advance only row 1; the others are untouched
        snapshot = [k.clone() for k in cache.k]
        out = model.decode_step(lat[1:2, starts[1] + 4], cache, rows=torch.tensor([1]))
        torch.testing.assert_close(out[0], fulls[1][starts[1] + 5], **TOL)
        assert cache.length.tolist() == [5, 10, 7]
        for k, s in zip(cache.k, snapshot):
            torch.testing.assert_close(k[[0, 2]], s[[0, 2]], atol=0, rtol=0)


def test_prefill_with_per_row_lengths(model):
    lat, text = inputs(model, B=3, L=6, seed=6)
    lengths = torch.tensor([6, 0, 3])
    with torch.no_grad():
        cache = model.new_kv_cache(3)
        first = model.prefill(text, lat, cache, lengths=lengths)
        assert cache.length.tolist() == [7, 1, 4]
        nxt = torch.stack([lat[0, 0], lat[1, 0], lat[2, 3]])          # any next latents
        second = model.decode_step(nxt, cache)
        for b, n in enumerate(lengths.tolist()):
            seq = torch.cat([lat[b, :n], nxt[b:b + 1]])[None]
            full = model(seq, text[b:b + 1])[0]
            torch.testing.assert_close(first[b], full[n], **TOL)
            torch.testing.assert_close(second[b], full[n + 1], **TOL)


def test_decode_rotates_the_query_at_its_absolute_position(model):
    """The original's forward_discrete rotates the new query from position 0. A decode that did the
    same would differ from the full forward; ours equals it."""
    lat, text = inputs(model, B=1, L=6, seed=7)
    with torch.no_grad():
        full = model(lat, text)
        q_pos = torch.tensor([0, 1, 2, 3, 4, 5, 0])                 # past tokens right, the new query at 0
        buggy = hand_forward(model, lat, text, q_positions=q_pos)
        assert (buggy[0, -1] - full[0, -1]).abs().max() > 1e-3
        cache = model.new_kv_cache(1)
        model.prefill(text, lat[:, :5], cache)
        out = model.decode_step(lat[:, 5], cache)
        torch.testing.assert_close(out, full[:, -1], **TOL)
        # and it is not translation invariant: same tokens at shifted positions give other outputs
        c2 = model.new_kv_cache(1)
        model.prefill(text, lat[:, :1], c2)
        assert (model.decode_step(lat[:, 5], c2) - out).abs().max() > 1e-3


def test_cache_layout_and_errors(model):
    cache = model.new_kv_cache(4, max_len=10)
    assert isinstance(cache, KVCache) and cache.batch == 4 and cache.max_len == 10
    assert len(cache.k) == len(cache.v) == 3 and cache.k[0].shape == (4, 4, 10, 16)
    lat, text = inputs(model, B=2, L=3)
    with pytest.raises(ValueError, match="exceeds the cache length"):
        model.prefill(text, torch.zeros(2, 10, 16), cache, rows=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="latent has 2 rows, the cache 4"):
        model.decode_step(lat[:, 0], cache)
    with pytest.raises(ValueError, match=r"latent must have shape \(R, 16\)"):
        model.decode_step(lat[:, :2], cache, rows=torch.tensor([0, 1]))
    cache.length.fill_(3)
    cache.reset(torch.tensor([1]))
    assert cache.length.tolist() == [3, 0, 3, 3]
