"""Diffusion-head kernels (adaln_layernorm, silu, residual, linear, diffusion_head) vs their
references and vs the model's own head (motionstreamer.models.diffusion).

CPU: Triton interpreter (tests/conftest.py), small widths. `gpu` tests: the official head (width
1792, 9 blocks) at 2/64/512 streams; they skip without CUDA.

Tolerances, relative to the largest reference magnitude (atol = tol * max(1, max|ref|), rtol = tol):
fp32 1e-5, fp16 2e-3, bf16 1.6e-2 for single kernels (the kernels compute in fp32 and round once;
the eager references round after each op, so they differ by a few units in the last place).
Whole head steps / sampling loops: fp32 1e-4 (the first DDPM step of the cosine schedule divides
eps by sqrt(alpha_bar) ~ 1e-3, which amplifies fp32 roundoff), reduced precision 3e-2 on CPU; on the
GPU at the official size the fused path's error against an fp32 run must be at most twice the
eager PyTorch path's in the same dtype.
"""
import itertools

import pytest
import torch
from _kernel_testing import CUDA, DEV, DTYPES, TOL, assert_close, gpu, pytestmark  # noqa: F401

from motionstreamer.kernels import (
    adaln_modulate_layernorm,
    adaln_modulate_layernorm_reference,
    bias_silu,
    bias_silu_reference,
    fused_linear,
    fused_linear_reference,
    gated_residual,
    gated_residual_reference,
    head_sample_loop,
    head_sample_loop_reference,
    head_step,
    head_step_reference,
    integration,
)
from motionstreamer.models.diffusion import DiffLoss, DiffusionHeadConfig
from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise


def randn(*shape, seed=0, dtype=torch.float32, device=DEV, std=1.0, mean=0.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std + mean).to(device, dtype)


# ----------------------------------------------------------------------------- elementwise kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_adaln_layernorm(dtype, affine):
    M, W = 5, 100   # W not a power of two: masked tail
    x = randn(M, W, seed=1, dtype=dtype, std=3, mean=2)
    mods = randn(M, 3, W, seed=2, dtype=dtype)                  # shift/scale as strided views
    w, b = (randn(W, seed=3, dtype=dtype), randn(W, seed=4, dtype=dtype)) if affine else (None, None)
    got = adaln_modulate_layernorm(x, w, b, mods[:, 0], mods[:, 1])
    assert_close(got, adaln_modulate_layernorm_reference(x, w, b, mods[:, 0], mods[:, 1]), TOL[dtype])
    with pytest.raises(ValueError, match="shift must be"):
        adaln_modulate_layernorm(x, w, b, mods[:2, 0], mods[:, 1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_silu_and_gated_residual(dtype, with_bias):
    M, W = 3, 1500   # two column blocks, masked tail
    x, h = randn(M, W, seed=1, dtype=dtype, std=3), randn(M, W, seed=2, dtype=dtype, std=3)
    gate = randn(M, 3, W, seed=3, dtype=dtype)[:, 2]
    bias = randn(W, seed=4, dtype=dtype) if with_bias else None
    assert_close(bias_silu(x, bias), bias_silu_reference(x, bias), TOL[dtype], "bias_silu")
    assert_close(gated_residual(x, h, gate, bias), gated_residual_reference(x, h, gate, bias), TOL[dtype],
                 "gated_residual")
    y = x.clone()
    bias_silu(y, bias, out=y)   # in place
    assert_close(y, bias_silu_reference(x, bias), TOL[dtype], "bias_silu in place")


# ----------------------------------------------------------------------------- fused linear
LINEAR_CASES = [(pro, aff, epi, hb) for pro, aff, epi, hb in
                itertools.product([False, True], [False, True], ["none", "silu", "gated_residual"], [False, True])
                if pro or not aff]


@pytest.mark.parametrize("prologue,affine,epilogue,with_bias", LINEAR_CASES,
                         ids=[f"{'ln' if p else 'noln'}{'-affine' if a else ''}-{e}{'-bias' if b else ''}"
                              for p, a, e, b in LINEAR_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_linear_all_prologue_epilogue_combinations(dtype, prologue, affine, epilogue, with_bias):
    M, K, N = 5, 72, 40   # K, N not multiples of the blocks
    x = randn(M, K, seed=1, dtype=dtype, std=2, mean=50)   # a large mean: the one-pass variance must not cancel
    w = randn(N, K, seed=2, dtype=dtype, std=K ** -0.5)
    ln = None
    if prologue:
        mods = randn(M, 2, K, seed=3, dtype=dtype, std=0.3)
        ln = {"weight": randn(K, seed=4, dtype=dtype) if affine else None,
              "bias": randn(K, seed=5, dtype=dtype) if affine else None,
              "shift": mods[:, 0], "scale": mods[:, 1], "eps": 1e-6}
    else:
        x = x - 50
    kw = dict(bias=randn(N, seed=6, dtype=dtype) if with_bias else None, ln=ln, epilogue=epilogue)
    if epilogue == "gated_residual":
        kw.update(residual=randn(M, N, seed=7, dtype=dtype), gate=randn(M, 3, N, seed=8, dtype=dtype)[:, 1])
    assert_close(fused_linear(x, w, **kw), fused_linear_reference(x, w, **kw), TOL[dtype])


def test_fused_linear_errors_are_named():
    x, w = randn(4, 8), randn(6, 8)
    with pytest.raises(ValueError, match="unknown epilogue"):
        fused_linear(x, w, epilogue="gelu")
    with pytest.raises(ValueError, match="needs residual and gate"):
        fused_linear(x, w, epilogue="gated_residual")
    with pytest.raises(ValueError, match="do not match"):
        fused_linear(x, randn(6, 7))


# ----------------------------------------------------------------------------- the head
def _head(width=48, depth=2, latent=6, cond=20, steps=10, seed=0, device=DEV, dtype=torch.float32):
    torch.manual_seed(seed)
    dl = DiffLoss(DiffusionHeadConfig(latent_dim=latent, width=width, depth=depth, cond_dim=cond,
                                      num_train_steps=steps))
    with torch.no_grad():   # the zero-initialised AdaLN/output layers would hide most of the math
        for p in dl.parameters():   # scaled by fan-in so the official width stays well-conditioned
            p.add_(torch.randn_like(p) * (0.35 * p.shape[1] ** -0.5 if p.dim() == 2 else 0.05))
    return dl.to(device, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "cublas"])
def test_head_step_matches_model_head(dtype, fused):
    dl = _head(dtype=dtype)
    N = 6
    c = randn(N, 20, seed=1, dtype=dtype)
    mods = dl.net.modulations(c, dl.model_timesteps(10, DEV))
    x = randn(N, 6, seed=2, dtype=dtype)
    w = integration.head_weights(dl.net)
    for i in (0, 7):
        got = head_step(x, w, mods["blocks"][:, i], mods["final"][i], fused=fused)
        with torch.no_grad():
            ref = dl.net.forward_with_modulations(x, mods, i)
            plain = dl.net(x, dl.model_timesteps(10, DEV)[i].expand(N), c)   # the unbatched reference
        assert got.dtype == dtype and got.shape == (N, 6)
        assert_close(got, ref, 4 * TOL[dtype], f"step {i}")
        assert_close(got, plain, 4 * TOL[dtype], f"step {i} vs net.forward")
        assert_close(head_step_reference(x, w, mods["blocks"][:, i], mods["final"][i]), ref, 1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "cublas"])
def test_head_sample_loop_matches_model_sampler(sampler, guided, fused):
    """The whole loop vs DiffLoss.sample with the same noise (DDPM ancestral; DDIM with eta > 0 so
    the noise path is exercised), guidance on and off, full and respaced step counts."""
    dl = _head()
    B = 3
    cond, uncond = randn(B, 20, seed=1), randn(B, 20, seed=2)
    for steps, skip in ((10, False), (4, True)):
        proc = dl.sampling_process(steps, skip)
        noise = draw_sampling_noise(torch.Generator().manual_seed(steps), B, proc.num_timesteps, 6, DEV)
        eta = 0.5 if sampler == "ddim" else 0.0
        settings = SamplerSettings(cfg_scale=3.0, temperature=0.8, sampling_steps=steps, sampler=sampler, eta=eta,
                                   skip_terminal_step=skip)
        dl.set_head_backend("torch")
        ref = dl.sample(cond, uncond if guided else None, settings, noise=noise)
        if fused:   # what the model calls with the "triton" head backend (the fused path at these sizes)
            dl.set_head_backend("triton")
            got = dl.sample(cond, uncond if guided else None, settings, noise=noise)
            assert_close(got, ref, 1e-4, f"DiffLoss.sample (triton) steps={steps}")
        c = torch.cat([cond, uncond]) if guided else cond
        mods = dl.net.modulations(c, dl.model_timesteps(steps, DEV, skip))
        coefs = proc.step_coefficients(sampler, eta)
        w = integration.head_weights(dl.net)
        x_T, step_noise = noise
        got = head_sample_loop(w, mods, x_T, step_noise, coefs, cfg_scale=3.0 if guided else None, temperature=0.8,
                               fused=fused)
        assert_close(got, ref, 1e-4, f"head_sample_loop steps={steps}")
        with torch.no_grad():
            loop_ref = head_sample_loop_reference(w, mods, x_T, step_noise, coefs, cfg_scale=3.0 if guided else None,
                                                  temperature=0.8)
        assert_close(loop_ref, ref, 1e-4, "head_sample_loop_reference")


def test_head_sample_loop_reduced_precision_and_errors():
    dl = _head(dtype=torch.float16)
    B = 2
    cond, uncond = randn(B, 20, seed=1, dtype=torch.float16), randn(B, 20, seed=2, dtype=torch.float16)
    proc = dl.sampling_process(4, True)
    noise = draw_sampling_noise(torch.Generator().manual_seed(0), B, proc.num_timesteps, 6, DEV, torch.float16)
    settings = SamplerSettings(cfg_scale=2.0, sampling_steps=4, sampler="ddpm", skip_terminal_step=True)
    dl.set_head_backend("triton")
    got = dl.sample(cond, uncond, settings, noise=noise)
    ref = dl.float().sample(cond.float(), uncond.float(), settings, noise=(noise[0].float(), noise[1].float()))
    assert got.dtype == torch.float16
    assert_close(got, ref, 3e-2, "fp16 loop vs fp32 model")
    w = integration.head_weights(dl.net)
    mods = dl.net.modulations(torch.cat([cond, uncond]).float(), dl.model_timesteps(4, DEV, True))
    with pytest.raises(ValueError, match="pass step_noise"):
        head_sample_loop(w, mods, noise[0].float(), None, proc.step_coefficients("ddpm"), cfg_scale=2.0)
    with pytest.raises(ValueError, match="modulations for"):
        head_sample_loop(w, mods, noise[0].float(), noise[1][:proc.num_timesteps].float(),
                         proc.step_coefficients("ddpm"))


# ----------------------------------------------------------------------------- GPU, official head
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("streams", [2, 64, 512])
def test_gpu_official_head(dtype, streams):
    dl = _head(width=1792, depth=9, latent=16, cond=768, steps=50, device="cuda", dtype=dtype)
    B = streams
    cond = randn(B, 768, seed=1, dtype=dtype, device="cuda")
    uncond = randn(B, 768, seed=2, dtype=dtype, device="cuda")
    proc = dl.sampling_process(50, True)
    noise = draw_sampling_noise(torch.Generator().manual_seed(0), B, proc.num_timesteps, 16, "cuda", dtype)
    settings = SamplerSettings(cfg_scale=4.0, sampling_steps=50, sampler="ddpm", skip_terminal_step=True)
    dl.set_head_backend("triton")
    got = dl.sample(cond, uncond, settings, noise=noise)
    dl.set_head_backend("torch")
    eager = dl.sample(cond, uncond, settings, noise=noise)   # the PyTorch loop in the same dtype
    ref = dl.float().sample(cond.float(), uncond.float(), settings, noise=(noise[0].float(), noise[1].float()))
    # 50 steps in reduced precision drift from fp32; the fused loop must drift no more than eager does
    err, err_eager = ((t.float() - ref).abs().max().item() for t in (got, eager))
    assert err <= 2 * err_eager + 1e-2 * ref.abs().max().item(), (err, err_eager)
    dl = dl.to(dtype)
    mods = dl.net.modulations(torch.cat([cond, uncond]), dl.model_timesteps(50, "cuda", True))
    x = randn(2 * B, 16, seed=3, dtype=dtype, device="cuda")
    with torch.no_grad():
        eager = dl.net.forward_with_modulations(x, mods, 10)
        got = {fused: head_step(x, integration.head_weights(dl.net), mods["blocks"][:, 10], mods["final"][10],
                                fused=fused) for fused in (True, False)}
        ref = dl.float().net.forward_with_modulations(x.float(), {k: v.float() for k, v in mods.items()}, 10)
    err_eager = (eager.float() - ref).abs().max().item()
    for fused, g in got.items():
        err = (g.float() - ref).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * ref.abs().max().item(), (fused, err, err_eager)
