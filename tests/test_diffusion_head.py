"""Diffusion head and sampler: schedule and posterior against closed forms / Bayes' rule, respacing,
the fast AdaLN-modulation path against the reference network, and the sampler against a literal
transcription of the original algorithm (MAR/DiT p_sample_loop with _WrappedModel timesteps and
forward_with_cfg on 2B rows), plus the CFG, noise, temperature and DDIM conventions and the loss."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig, SimpleMLPAdaLN, timestep_embedding
from motionstreamer.models.sampling import (
    GaussianDiffusion,
    SamplerSettings,
    cosine_betas,
    draw_sampling_noise,
    space_timesteps,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def randomize(module, seed=0):
    """Random weights everywhere (the zero-initialised AdaLN/output layers would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return module


@pytest.fixture(scope="module")
def head():
    return randomize(DiffLoss(DiffusionHeadConfig(width=48, depth=3, cond_dim=20))).eval()


def conds(B=3, E=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, E, generator=g), torch.randn(B, E, generator=g)


# ----------------------------------------------------------------------------- schedule
def test_cosine_alpha_bar_closed_form():
    T = 50
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    d = GaussianDiffusion(cosine_betas(T))
    # the betas telescope: alpha_bar_t = f((t+1)/T) / f(0) while no beta is clipped
    clipped = np.flatnonzero(d.betas >= 0.999)
    assert clipped.tolist() == [T - 1]                       # only the last step (f(1) = 0)
    for t in range(T - 1):
        assert d.alphas_cumprod[t] == pytest.approx(f((t + 1) / T) / f(0), rel=1e-12)
    assert d.alphas_cumprod[T - 1] == pytest.approx(d.alphas_cumprod[T - 2] * 0.001, rel=1e-12)
    assert d.alphas_cumprod[0] == pytest.approx(1 - d.betas[0]) and d.alphas_cumprod_prev[0] == 1.0


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ N(x_{t-1}; sqrt(ab_prev) x0, 1-ab_prev) N(x_t; sqrt(a) x_{t-1}, beta)."""
    d = GaussianDiffusion(cosine_betas(50))
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    t = torch.arange(50)
    for i in range(50):
        ab_prev, beta = d.alphas_cumprod_prev[i], d.betas[i]
        alpha = 1 - beta
        if i > 0:
            precision = 1 / (1 - ab_prev) + alpha / beta
            var = 1 / precision
            mean = var * (math.sqrt(ab_prev) * x0[i] / (1 - ab_prev) + math.sqrt(alpha) * xt[i] / beta)
            assert d.posterior_variance[i] == pytest.approx(var, rel=1e-9)
        else:   # t=0: the posterior is the point x0
            mean = x0[i]
            assert d.posterior_variance[0] == 0.0
        torch.testing.assert_close(d.posterior_mean(x0, xt, t)[i], mean, rtol=1e-9, atol=1e-9)
    # log variance clipped: step 0 borrows step 1's value
    assert d.posterior_log_variance_clipped[0] == pytest.approx(math.log(d.posterior_variance[1]))
    np.testing.assert_allclose(d.posterior_log_variance_clipped[1:], np.log(d.posterior_variance[1:]), rtol=1e-12)
    # predict_x0 inverts q_sample
    noise = torch.randn(50, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(d.predict_x0(d.q_sample(x0, t, noise), t, noise), x0)


def test_respacing_50_to_10_keeps_alpha_bar_at_kept_steps():
    base = GaussianDiffusion(cosine_betas(50))
    kept = space_timesteps(50, "10")
    assert kept == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]   # stride 49/9, Python rounding
    d = GaussianDiffusion(cosine_betas(50), kept)
    assert d.num_timesteps == 10 and d.timestep_map.tolist() == kept
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    prev = np.append(1.0, base.alphas_cumprod[kept][:-1])
    np.testing.assert_allclose(d.betas, 1 - base.alphas_cumprod[kept] / prev, rtol=1e-12)
    # the head's sampling process maps respaced index k to the network timestep kept[k]
    h = DiffLoss(DiffusionHeadConfig(width=8, depth=1, cond_dim=4))
    assert h.model_timesteps(10, "cpu").tolist() == kept
    assert h.sampling_process(50).timestep_map.tolist() == list(range(50))
    np.testing.assert_allclose(h.sampling_process(50).betas, base.betas, rtol=1e-12)


def test_space_timesteps_sections_and_ddim():
    # the original's docstring example: 300 steps, sections [10, 15, 20] over thirds
    steps = space_timesteps(300, [10, 15, 20])
    assert len(steps) == 45 and steps == sorted(steps)
    for lo, count in ((0, 10), (100, 15), (200, 20)):
        sec = [s for s in steps if lo <= s < lo + 100]
        assert len(sec) == count and sec[0] == lo and sec[-1] == lo + 99      # each section spans its third
        gaps = np.diff(sec)
        assert gaps.max() - gaps.min() <= 1                                    # evenly strided
    assert space_timesteps(50, "ddim10") == list(range(0, 50, 5))
    assert space_timesteps(50, "1") == [0] and space_timesteps(50, 50) == list(range(50))
    with pytest.raises(ValueError, match="cannot divide section of 50 steps into 60"):
        space_timesteps(50, "60")
    with pytest.raises(ValueError, match="exactly 11 steps"):
        space_timesteps(50, "ddim11")


def test_time_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 3.0, 49.0])
    e = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(e[:, :4], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(e[:, 4:], torch.sin(t[:, None] * freqs))


# ----------------------------------------------------------------------------- network
def hand_net(net, x, t, c):
    """SimpleMLPAdaLN with explicit math (LayerNorm eps 1e-6, final LN without affine)."""
    lin = lambda m, z: z @ m.weight.T + m.bias
    ln = lambda z, w=None, b=None: ((z - z.mean(-1, keepdim=True))
                                    / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
                                    * (1 if w is None else w) + (0 if b is None else b))
    emb = timestep_embedding(t, 256)
    y = lin(net.time_embed.mlp[2], F.silu(lin(net.time_embed.mlp[0], emb))) + lin(net.cond_embed, c)
    h = lin(net.input_proj, x)
    W = net.config.width
    for blk in net.res_blocks:
        m = lin(blk.adaLN_modulation[1], F.silu(y))
        shift, scale, gate = m[:, :W], m[:, W:2 * W], m[:, 2 * W:]
        z = ln(h, blk.in_ln.weight, blk.in_ln.bias) * (1 + scale) + shift
        h = h + gate * lin(blk.mlp[2], F.silu(lin(blk.mlp[0], z)))
    m = lin(net.final_layer.adaLN_modulation[1], F.silu(y))
    return lin(net.final_layer.linear, ln(h) * (1 + m[:, W:]) + m[:, :W])


def test_network_matches_hand_and_fast_path_matches_reference(head):
    net = head.net
    g = torch.Generator().manual_seed(2)
    c = torch.randn(4, 20, generator=g)
    x = torch.randn(4, 16, generator=g)
    timesteps = torch.tensor([0, 7, 23, 49])
    with torch.no_grad():
        torch.testing.assert_close(net(x, timesteps, c), hand_net(net, x, timesteps, c), **TOL)
        mods = net.modulations(c, timesteps)                   # all steps x rows at once
        assert mods["blocks"].shape == (3, 4, 4, 3, 48) and mods["final"].shape == (4, 4, 2, 48)
        worst = 0.0
        for s in range(4):
            fast = net.forward_with_modulations(x, mods, s)
            ref = net(x, timesteps[s].expand(4), c)
            worst = max(worst, (fast - ref).abs().max().item())
            torch.testing.assert_close(fast, ref, **TOL)
    assert worst < 1e-5


def test_official_keys_of_the_head():
    with torch.device("meta"):
        net = SimpleMLPAdaLN(DiffusionHeadConfig())
    keys = set(net.state_dict())
    assert len(keys) == 84
    assert {"time_embed.mlp.0.weight", "time_embed.mlp.2.bias", "cond_embed.weight", "input_proj.bias",
            "res_blocks.8.in_ln.weight", "res_blocks.8.mlp.0.weight", "res_blocks.8.mlp.2.bias",
            "res_blocks.8.adaLN_modulation.1.weight", "final_layer.linear.weight",
            "final_layer.adaLN_modulation.1.bias"} <= keys
    assert not any("norm_final" in k for k in keys)           # final LayerNorm has no affine


# ----------------------------------------------------------------------------- sampler
def original_sample(head, cond, uncond, config, temperature, steps, x_T, step_noise, uncond_noise):
    """Literal transcription of the original: SpacedDiffusion.p_sample_loop over 2B rows with
    noise = cat([x_T, x_T]); the model is _WrappedModel(forward_with_cfg) (respaced t -> base t);
    p_mean_variance (FIXED_SMALL, eps prediction, no clipping); p_sample draws fresh noise for all
    2B rows (here the cond half gets step_noise, the uncond half uncond_noise)."""
    proc = head.sampling_process(steps)
    tmap = torch.tensor(proc.timestep_map)
    net = head.net
    B = cond.shape[0]

    def forward_with_cfg(x, t, c):
        half = x[: len(x) // 2]
        out = net(torch.cat([half, half]), t, c)
        ce, ue = out.chunk(2)
        e = ue + config * (ce - ue)
        return torch.cat([e, e])

    ex = lambda arr, t: torch.as_tensor(arr)[t].to(x_T.dtype)[:, None]
    img = torch.cat([x_T, x_T])
    z = torch.cat([cond, uncond])
    for i in reversed(range(proc.num_timesteps)):
        t = torch.full((2 * B,), i)
        eps = forward_with_cfg(img, tmap[t], z)
        x0 = ex(proc.sqrt_recip_alphas_cumprod, t) * img - ex(proc.sqrt_recipm1_alphas_cumprod, t) * eps
        mean = ex(proc.posterior_mean_coef1, t) * x0 + ex(proc.posterior_mean_coef2, t) * img
        noise = torch.cat([step_noise[i], uncond_noise[i]])
        nonzero = (t != 0).float()[:, None]
        img = mean + nonzero * torch.exp(0.5 * ex(proc.posterior_log_variance_clipped, t)) * noise * temperature
    return img[:B]


@pytest.mark.parametrize("steps", [50, 10])
def test_sampler_equals_original_algorithm(head, steps):
    # float64: the same algorithm must agree to rounding; in fp32 the first step's division by
    # sqrt(alpha_bar) ~ 1e-3 magnifies matmul rounding, which differs between CPUs' BLAS kernels
    # (a 16-core machine's fp32 run differed by 2e-4 relative at 50 steps)
    head = copy.deepcopy(head).double()
    cond, uncond = (c.double() for c in conds())
    g = torch.Generator().manual_seed(3)
    x_T, step_noise = (n.double() for n in draw_sampling_noise(g, 3, steps, 16))
    other = torch.randn(steps, 3, 16, generator=g).double()    # the original's uncond-half noise
    with torch.no_grad():
        want = original_sample(head, cond, uncond, 4.0, 0.8, steps, x_T, step_noise, other)
    for fast in (True, False):
        got = head.sample(cond, uncond, SamplerSettings(cfg_scale=4.0, temperature=0.8, sampling_steps=steps),
                          noise=(x_T, step_noise), fast=fast)
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_cfg_conventions(head):
    cond, uncond = conds()
    g = torch.Generator().manual_seed(4)
    noise = draw_sampling_noise(g, 3, 10, 16)
    plain = head.sample(cond, None, SamplerSettings(sampling_steps=10), noise=noise)
    # cfg_scale == 1 runs unguided even with an uncond given
    torch.testing.assert_close(head.sample(cond, uncond, SamplerSettings(cfg_scale=1.0, sampling_steps=10),
                                           noise=noise), plain, atol=0, rtol=0)
    # both halves share x_t and noise: with uncond == cond any scale gives the unguided sample
    # (float64: the first step divides by sqrt(alpha_bar) ~ 1e-3, which would magnify the last
    # bits of fp32 matmuls of 2B vs B rows)
    h64 = copy.deepcopy(head).double()
    n64 = (noise[0].double(), noise[1].double())
    torch.testing.assert_close(h64.sample(cond.double(), cond.double(),
                                          SamplerSettings(cfg_scale=4.0, sampling_steps=10), noise=n64),
                               h64.sample(cond.double(), None, SamplerSettings(sampling_steps=10), noise=n64),
                               atol=1e-10, rtol=1e-10)
    guided = head.sample(cond, uncond, SamplerSettings(cfg_scale=4.0, sampling_steps=10), noise=noise)
    assert (guided - plain).abs().max() > 1e-3
    # rows are independent: one row alone gives the same as inside a batch
    one = h64.sample(cond[1:2].double(), uncond[1:2].double(), SamplerSettings(cfg_scale=4.0, sampling_steps=10),
                     noise=(n64[0][1:2], n64[1][:, 1:2]))
    all3 = h64.sample(cond.double(), uncond.double(), SamplerSettings(cfg_scale=4.0, sampling_steps=10), noise=n64)
    torch.testing.assert_close(one, all3[1:2], atol=1e-10, rtol=1e-10)
    # fp32 vs fp64: the 10-step sampler magnifies fp32 rounding (1.2e-4 relative seen on one CPU)
    torch.testing.assert_close(all3.float(), guided, atol=1e-3, rtol=1e-3)


def test_noise_temperature_and_reproducibility(head):
    cond, uncond = conds()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = head.sample(cond, uncond, SamplerSettings(sampling_steps=10), generator=g1)
    b = head.sample(cond, uncond, SamplerSettings(sampling_steps=10), generator=g2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    x_T, n1 = draw_sampling_noise(torch.Generator().manual_seed(6), 3, 10, 16)
    n2 = torch.randn_like(n1)
    # temperature 0: the step noise is irrelevant, the result depends on x_T only
    t0 = head.sample(cond, uncond, SamplerSettings(sampling_steps=10, temperature=0.0), noise=(x_T, n1))
    torch.testing.assert_close(head.sample(cond, uncond, SamplerSettings(sampling_steps=10, temperature=0.0),
                                           noise=(x_T, n2)), t0, atol=0, rtol=0)
    t1 = head.sample(cond, uncond, SamplerSettings(sampling_steps=10, temperature=1.0), noise=(x_T, n1))
    assert (head.sample(cond, uncond, SamplerSettings(sampling_steps=10, temperature=1.0),
                        noise=(x_T, n2)) - t1).abs().max() > 1e-3
    # step_noise[0] is never used by DDPM (no noise at the last step)
    n3 = n1.clone()
    n3[0] = 100.0
    torch.testing.assert_close(head.sample(cond, uncond, SamplerSettings(sampling_steps=10), noise=(x_T, n3)), t1,
                               atol=0, rtol=0)


def hand_ddim(head, cond, uncond, config, steps, x_T, eta, step_noise):
    proc = head.sampling_process(steps)
    tmap = proc.timestep_map
    x = x_T
    for i in reversed(range(proc.num_timesteps)):
        t = torch.full((x.shape[0],), int(tmap[i]))
        e_c, e_u = head.net(x, t, cond), head.net(x, t, uncond)
        eps = e_u + config * (e_c - e_u)
        ab, ab_prev = proc.alphas_cumprod[i], proc.alphas_cumprod_prev[i]
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps
        if i > 0:
            x = x + sigma * step_noise[i]
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_hand_and_eta0_is_deterministic(head, eta):
    cond, uncond = conds()
    x_T, n1 = draw_sampling_noise(torch.Generator().manual_seed(7), 3, 10, 16)
    h64 = copy.deepcopy(head).double()    # float64: exact comparison with the hand formulas
    with torch.no_grad():
        want = hand_ddim(h64, cond.double(), uncond.double(), 3.0, 10, x_T.double(), eta, n1.double())
    got64 = h64.sample(cond.double(), uncond.double(),
                       SamplerSettings(cfg_scale=3.0, sampling_steps=10, sampler="ddim", eta=eta),
                       noise=(x_T.double(), n1.double()))
    torch.testing.assert_close(got64, want, atol=1e-10, rtol=1e-10)
    got = head.sample(cond, uncond, SamplerSettings(cfg_scale=3.0, sampling_steps=10, sampler="ddim", eta=eta),
                      noise=(x_T, n1))
    if eta == 0.0:
        again = head.sample(cond, uncond, SamplerSettings(cfg_scale=3.0, sampling_steps=10, sampler="ddim"),
                            noise=(x_T, torch.randn_like(n1)))
        torch.testing.assert_close(again, got, atol=0, rtol=0)
        ddpm = head.sample(cond, uncond, SamplerSettings(cfg_scale=3.0, sampling_steps=10, sampler="ddpm"),
                           noise=(x_T, n1))
        assert (ddpm - got).abs().max() > 1e-3


def test_sampler_errors_are_named(head):
    cond, uncond = conds()
    with pytest.raises(ValueError, match="sampler must be one of"):
        head.sample(cond, uncond, SamplerSettings(sampler="euler"))
    with pytest.raises(ValueError, match=r"sampling steps must be an int in \[1, 50\]"):
        head.sample(cond, uncond, SamplerSettings(sampling_steps=51))
    with pytest.raises(ValueError, match=r"uncond must have shape \(3, 20\)"):
        head.sample(cond, uncond[:2])
    with pytest.raises(ValueError, match=r"cond must have shape \(N, 20\)"):
        head.sample(cond[:, :4])
    x_T, n = draw_sampling_noise(None, 3, 5, 16)
    with pytest.raises(ValueError, match=r"step noise must have shape \(>= 10, 3, 16\)"):
        head.sample(cond, uncond, SamplerSettings(sampling_steps=10), noise=(x_T, n))
    with pytest.raises(ValueError, match=r"noise x_T must have shape \(3, 16\)"):
        head.sample(cond, uncond, SamplerSettings(sampling_steps=5), noise=(x_T[:2], n))


def test_one_step_process_and_skip_terminal():
    h = randomize(DiffLoss(DiffusionHeadConfig(width=16, depth=1, cond_dim=4)))
    c = torch.randn(2, 4)
    x = h.sample(c, None, SamplerSettings(sampling_steps=1), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and torch.isfinite(x).all()
    p = h.sampling_process(50, skip_terminal_step=True)
    assert p.timestep_map.tolist() == list(range(49))


# ----------------------------------------------------------------------------- loss
def test_loss_is_masked_eps_mse_with_batch_mul(head):
    g = torch.Generator().manual_seed(8)
    N = 5
    x0, c = torch.randn(N, 16, generator=g), torch.randn(N, 20, generator=g)
    t = torch.randint(0, 50, (4 * N,), generator=g)
    noise = torch.randn(4 * N, 16, generator=g)
    mask = torch.tensor([True, False, True, True, False])
    d = head.train_diffusion
    with torch.no_grad():
        X0, C, M = x0.repeat(4, 1), c.repeat(4, 1), mask.repeat(4)      # tiled like .repeat(mul, 1)
        ab = torch.as_tensor(d.alphas_cumprod, dtype=torch.float32)[t][:, None]
        xt = ab.sqrt() * X0 + (1 - ab).sqrt() * noise
        row = ((head.net(xt, t, C) - noise) ** 2).mean(-1)
        want = row[M].mean()
        got = head.loss(x0, c, t, noise, mask=mask, diffmlps_batch_mul=4)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        assert head.loss(X0, C, t, noise).item() == pytest.approx(row.mean().item(), rel=1e-6)
        # masked rows never reach the network: NaN padding does not leak
        bad = x0.clone()
        bad[~mask] = float("nan")
        assert (head.loss(bad, c, t, noise, mask=mask, diffmlps_batch_mul=4).item()
                == pytest.approx(want.item(), rel=1e-6))
        # float mask = weights
        w = mask.float() * 2
        assert head.loss(x0, c, t, noise, mask=w, diffmlps_batch_mul=4).item() == pytest.approx(want.item(), rel=1e-6)
        assert head.loss(x0, c, mask=torch.zeros(N, dtype=torch.bool)).item() == 0.0
    # gradients flow into the head
    loss = head.loss(x0, c, t, noise, mask=mask, diffmlps_batch_mul=4)
    loss.backward()
    assert head.net.input_proj.weight.grad.abs().sum() > 0
    head.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match=r"t must have shape \(20,\)"):
        head.loss(x0, c, t[:N], noise, diffmlps_batch_mul=4)
    with pytest.raises(ValueError, match=r"mask must have shape \(5,\)"):
        head.loss(x0, c, mask=mask[:3])
    with pytest.raises(ValueError, match=r"cond must have shape \(5, 20\)"):
        head.loss(x0, c[:4])


# ----------------------------------------------------------------------------- official size
def test_official_head_samples_on_cpu():
    torch.manual_seed(0)
    h = DiffLoss(DiffusionHeadConfig()).eval()
    assert sum(p.numel() for p in h.parameters()) == 156_156_688
    with torch.no_grad():   # small random AdaLN/output weights so the math is exercised
        for p in (*[b.adaLN_modulation[1].weight for b in h.net.res_blocks],
                  h.net.final_layer.adaLN_modulation[1].weight, h.net.final_layer.linear.weight):
            p.normal_(0, 0.01)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 768, generator=g), torch.randn(1, 768, generator=g)
    noise = draw_sampling_noise(g, 1, 2, 16)
    fast = h.sample(cond, uncond, SamplerSettings(cfg_scale=4.0, sampling_steps=2), noise=noise)
    ref = h.sample(cond, uncond, SamplerSettings(cfg_scale=4.0, sampling_steps=2), noise=noise, fast=False)
    assert fast.shape == (1, 16) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
