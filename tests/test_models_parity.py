"""Checkpoint compatibility and math parity of the model family, without the released files:
state-dict key/shape tables written from the spec (reference-model.md §7) for the official configs,
parameter counts, and every block re-derived with plain tensor math on random weights (fp32, 1e-5)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
from motionstreamer.models.sampling import SamplerSettings, cosine_betas, draw_sampling_noise
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

TOL = dict(atol=1e-5, rtol=1e-5)


def tae_table() -> dict:
    t = {"tae.decode_proj.weight": (1024, 16), "tae.decode_proj.bias": (1024,),
         "tae.encoder.proj.weight": (32, 1024), "tae.encoder.proj.bias": (32,),
         "tae.encoder.model.0.conv.weight": (1024, 272, 3), "tae.encoder.model.0.conv.bias": (1024,),
         "tae.encoder.model.4.conv.weight": (1024, 1024, 3), "tae.encoder.model.4.conv.bias": (1024,),
         "tae.decoder.model.0.conv.weight": (1024, 1024, 3), "tae.decoder.model.0.conv.bias": (1024,),
         "tae.decoder.model.4.conv.weight": (1024, 1024, 3), "tae.decoder.model.4.conv.bias": (1024,),
         "tae.decoder.model.6.conv.weight": (272, 1024, 3), "tae.decoder.model.6.conv.bias": (272,)}
    for s in (2, 3):
        t[f"tae.encoder.model.{s}.0.conv.weight"] = (1024, 1024, 4)
        t[f"tae.encoder.model.{s}.0.conv.bias"] = (1024,)
        t[f"tae.decoder.model.{s}.2.conv.weight"] = (1024, 1024, 3)
        t[f"tae.decoder.model.{s}.2.conv.bias"] = (1024,)
        for b in range(3):
            for prefix in (f"tae.encoder.model.{s}.1.model.{b}", f"tae.decoder.model.{s}.0.model.{b}"):
                t[f"{prefix}.conv1.weight"] = (1024, 1024, 3)
                t[f"{prefix}.conv1.bias"] = (1024,)
                t[f"{prefix}.conv2.weight"] = (1024, 1024, 1)
                t[f"{prefix}.conv2.bias"] = (1024,)
    return t


def test_official_tae_keys_shapes_and_size():
    with torch.device("meta"):
        sd = CausalHumanTAE(TAEConfig.official()).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == tae_table()
    assert len(sd) == 70
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 1) == 76.2


# The official text-to-motion key table and sizes: tests/test_transformer_model.py.


@pytest.fixture(scope="module")
def small_t2m():
    torch.manual_seed(0)
    m = TextToMotionModel(T2MConfig.small()).eval()
    for name, p in m.named_parameters():   # random everything but the attention scales
        if not name.endswith("attn.scale"):   # (the head is zero-initialised by design)
            torch.nn.init.normal_(p, std=0.05)
    return m


def rope_complex(x, pos, base=10000.0):
    """RoPE as the original: complex multiply of adjacent pairs (x: (B, H, T, D))."""
    D = x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, D, 2).float() / D))
    rot = torch.polar(torch.ones(len(pos), D // 2), torch.outer(pos.float(), theta))
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot).flatten(-2)


def transformer_by_hand(m, latents, text):
    c = m.config
    x = torch.cat([text @ m.transformer.cond_embed.weight.T + m.transformer.cond_embed.bias,
                   latents @ m.transformer.wte.weight.T + m.transformer.wte.bias], 0)[None]   # (1, 1+L, E)
    B, T, E = x.shape
    H, D = c.n_head, E // c.n_head

    def rms(v, w):
        return w * v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5)
    pos = torch.arange(T)
    for blk in m.transformer.h:
        h = rms(x, blk.rms_1.scale)
        q, k, v = (h @ blk.attn.c_attn.weight.T).split(E, -1)
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        q = rope_complex(q / q.norm(dim=-1, keepdim=True), pos)
        k = rope_complex(k / k.norm(dim=-1, keepdim=True), pos)
        att = (q @ k.transpose(-1, -2)) * float(blk.attn.scale)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, E) @ blk.attn.c_proj.weight.T
        h = rms(x, blk.rms_2.scale)
        x = x + (F.silu(h @ blk.mlp.c_fc1.weight.T) * (h @ blk.mlp.c_fc2.weight.T)) @ blk.mlp.c_proj.weight.T
    return rms(x, m.transformer.ln_f.scale) @ m.out_proj.weight.T + m.out_proj.bias


def test_transformer_matches_hand_derivation(small_t2m):
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(7, 16, generator=g), torch.randn(1, small_t2m.config.cond_dim, generator=g)
    torch.testing.assert_close(small_t2m(lat[None], text)[0], transformer_by_hand(small_t2m, lat, text)[0], **TOL)


def test_kv_cache_equals_full_forward_at_true_positions(small_t2m):
    g = torch.Generator().manual_seed(2)
    lat, text = torch.randn(2, 9, 16, generator=g), torch.randn(2, small_t2m.config.cond_dim, generator=g)
    full = small_t2m(lat, text)
    cache = small_t2m.new_kv_cache(2)
    outs = [small_t2m.prefill(text, lat[:, :3], cache)]
    outs += [small_t2m.decode_step(lat[:, i], cache) for i in range(3, 9)]
    torch.testing.assert_close(torch.stack(outs, 1), full[:, 3:], **TOL)
    # the original's cache path rotated the new query from position 0: that would not match
    wrong = rope_complex(torch.ones(1, 1, 1, 32), torch.tensor([0]))
    right = rope_complex(torch.ones(1, 1, 1, 32), torch.tensor([9]))
    assert (wrong - right).abs().max() > 0.1


def head_by_hand(net, x, t, c):
    def lin(v, layer):
        return v @ layer.weight.T + layer.bias
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None].float() * freqs[None]
    temb = lin(F.silu(lin(torch.cat([torch.cos(args), torch.sin(args)], -1), net.time_embed.mlp[0])),
               net.time_embed.mlp[2])
    y = temb + lin(c, net.cond_embed)
    h = lin(x, net.input_proj)
    for b in net.res_blocks:
        shift, scale, gate = lin(F.silu(y), b.adaLN_modulation[1]).chunk(3, -1)
        n = F.layer_norm(h, (h.shape[-1],), b.in_ln.weight, b.in_ln.bias, 1e-6)
        h = h + gate * lin(F.silu(lin(n * (1 + scale) + shift, b.mlp[0])), b.mlp[2])
    shift, scale = lin(F.silu(y), net.final_layer.adaLN_modulation[1]).chunk(2, -1)
    n = F.layer_norm(h, (h.shape[-1],), eps=1e-6)
    return lin(n * (1 + scale) + shift, net.final_layer.linear)


def test_head_reference_and_fast_path_match_hand_derivation(small_t2m):
    net = small_t2m.diff_loss.net
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(5, 16, generator=g), torch.randn(5, net.config.cond_dim, generator=g)
    t = torch.tensor([0, 7, 13, 30, 49])
    torch.testing.assert_close(net(x, t, c), head_by_hand(net, x, t, c), **TOL)
    mods = net.modulations(c[:1].expand(5, -1), t)
    for i in range(5):
        torch.testing.assert_close(net.forward_with_modulations(x, mods, i),
                                   net(x, t[i].expand(5), c[:1].expand(5, -1)), **TOL)


def test_cosine_schedule_and_posterior_formulas():
    betas = cosine_betas(50)

    def abar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    ac = np.cumprod(1 - betas)
    for t in (0, 10, 25, 48):
        assert math.isclose(ac[t], abar((t + 1) / 50) / abar(0), rel_tol=1e-9)
    assert betas[-1] == pytest.approx(0.999)
    head = DiffLoss(DiffusionHeadConfig(width=32, depth=1, cond_dim=8))
    d = head.train_diffusion
    g = torch.Generator().manual_seed(4)
    x0, xt = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    for t in (1, 20, 49):
        tt = torch.full((4,), t)
        ab, ab_prev, b = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
        mean = math.sqrt(ab_prev) * b / (1 - ab) * x0 + math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab) * xt
        torch.testing.assert_close(d.posterior_mean(x0, xt, tt), mean)
        assert d.posterior_variance[t] == pytest.approx((1 - ab_prev) / (1 - ab) * b)
        eps = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        torch.testing.assert_close(d.predict_x0(xt, tt, eps), x0)
    p10 = head.sampling_process(10)   # respaced betas reproduce the kept steps' alpha_bar
    np.testing.assert_allclose(p10.alphas_cumprod, ac[p10.timestep_map], rtol=1e-12)
    assert list(p10.timestep_map) == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]


def test_sampler_cfg_and_noise_conventions(small_t2m):
    head = small_t2m.diff_loss
    g = torch.Generator().manual_seed(5)
    E = small_t2m.config.n_embd
    c, u = torch.randn(3, E, generator=g), torch.randn(3, E, generator=g)
    noise = draw_sampling_noise(g, 3, 50, 16)
    plain = head.sample(c, None, SamplerSettings(cfg_scale=1.0), noise=noise)
    # cfg_scale 1 == unguided
    torch.testing.assert_close(head.sample(c, u, SamplerSettings(cfg_scale=1.0), noise=noise), plain, **TOL)
    torch.testing.assert_close(head.sample(c, u, SamplerSettings(cfg_scale=3.0), noise=noise, fast=True),
                               head.sample(c, u, SamplerSettings(cfg_scale=3.0), noise=noise, fast=False), **TOL)
    zero_t = head.sample(c, u, SamplerSettings(cfg_scale=3.0, temperature=1.0), noise=(noise[0], noise[1] * 0))
    torch.testing.assert_close(head.sample(c, u, SamplerSettings(cfg_scale=3.0, temperature=0.0), noise=noise),
                               zero_t, **TOL)
    d5 = draw_sampling_noise(g, 3, 5, 16)
    a = head.sample(c, u, SamplerSettings(cfg_scale=3.0, sampling_steps=5, sampler="ddim"), noise=d5)
    b = head.sample(c, u, SamplerSettings(cfg_scale=3.0, sampling_steps=5, sampler="ddim"),
                    noise=(d5[0], torch.randn_like(d5[1])))
    torch.testing.assert_close(a, b)   # DDIM eta=0 ignores step noise


def test_diffusion_loss_is_eps_mse(small_t2m):
    head = small_t2m.diff_loss
    g = torch.Generator().manual_seed(6)
    x0, c = torch.randn(8, 16, generator=g), torch.randn(8, small_t2m.config.n_embd, generator=g)
    t, n = torch.randint(0, 50, (8,), generator=g), torch.randn(8, 16, generator=g)
    xt = head.train_diffusion.q_sample(x0, t, n)
    assert (head.loss(x0, c, t=t, noise=n).item()
            == pytest.approx(((head.net(xt, t, c) - n) ** 2).mean().item(), rel=1e-6))


def tae_conv(x, conv, pad):
    return F.conv1d(F.pad(x, (pad, 0)), conv.weight, conv.bias, stride=conv.stride, dilation=conv.dilation)


def test_tae_encoder_decoder_match_plain_convs():
    torch.manual_seed(7)
    tae = CausalHumanTAE(TAEConfig(hidden=24, width=24)).eval()
    x = torch.randn(2, 16, 272)
    enc = tae.tae.encoder.model
    h = F.relu(tae_conv(x.transpose(1, 2), enc[0].conv, 2))
    for s in (2, 3):
        h = tae_conv(h, enc[s][0].conv, 2)               # k4 stride 2: pad (4-1) + (1-2) = 2
        for blk, dil in zip(enc[s][1].model, (9, 3, 1)):
            h = h + tae_conv(F.relu(tae_conv(F.relu(h), blk.conv1, 2 * dil)), blk.conv2, 0)
    h = tae_conv(h, enc[4].conv, 2).transpose(1, 2)
    mu, logvar = (h @ tae.tae.encoder.proj.weight.T + tae.tae.encoder.proj.bias).chunk(2, -1)
    z, mu2, lv2 = tae.encode(x, sample=False)
    torch.testing.assert_close(mu2, mu, **TOL)
    torch.testing.assert_close(lv2, logvar.clamp(-30, 20), **TOL)
    dec = tae.tae.decoder.model
    h = (mu @ tae.tae.decode_proj.weight.T + tae.tae.decode_proj.bias).transpose(1, 2)
    h = F.relu(tae_conv(h, dec[0].conv, 2))
    for s in (2, 3):
        for blk, dil in zip(dec[s][0].model, (9, 3, 1)):
            h = h + tae_conv(F.relu(tae_conv(F.relu(h), blk.conv1, 2 * dil)), blk.conv2, 0)
        h = tae_conv(F.interpolate(h, scale_factor=2, mode="nearest"), dec[s][2].conv, 2)
    h = tae_conv(F.relu(tae_conv(h, dec[4].conv, 2)), dec[6].conv, 2)
    torch.testing.assert_close(tae.decode(mu), h.transpose(1, 2), **TOL)


@pytest.mark.parametrize("chunks", [[1] * 9, [3, 3, 3], [2, 5, 1, 1], [9]])
def test_tae_streaming_decode_equals_full_decode(chunks):
    torch.manual_seed(8)
    tae = CausalHumanTAE(TAEConfig(hidden=32, width=32)).eval()
    z = torch.randn(2, 9, 16)
    full = tae.decode(z)
    st = tae.init_decode_state(2)
    out, i = [], 0
    for n in chunks:
        out.append(tae.decode_step(z[:, i:i + n], st))
        i += n
    torch.testing.assert_close(torch.cat(out, 1), full, **TOL)


def test_tae_rejects_bad_input():
    tae = CausalHumanTAE(TAEConfig(hidden=16, width=16))
    with pytest.raises(ValueError, match="multiple of 4"):
        tae.encode(torch.zeros(1, 10, 272))
    with pytest.raises(ValueError, match="272"):
        tae.encode(torch.zeros(1, 8, 200))
