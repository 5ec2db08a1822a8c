"""The models behind their backend switch: "triton" (the fused kernels, CPU under the Triton
interpreter here) gives what the PyTorch paths give, for training (outputs and gradients),
prefill + decode with the KV cache, head sampling and the streaming engine; "auto" picks the
kernels only on CUDA.

Tolerance (fp32): 1e-4 relative to the largest magnitude (atol = 1e-4 * max(1, max|ref|)): the
kernels sum in another order than SDPA/eager (~1e-6), which the few-step samplers used here
(4-6 steps) amplify only a little.
"""
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from fakes import FakeBundle, FakeTextEncoder

from motionstreamer.kernels import integration
from motionstreamer.models.diffusion import DiffusionHeadConfig
from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise, sample_loop
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel, resolve_attention_backend

pytestmark = pytest.mark.skipif(not integration.available("cpu"),
                                reason="needs triton with TRITON_INTERPRET=1 (tests/conftest.py) for CPU kernels")
TOL = 1e-4


def assert_close(got, ref, tol=TOL, what=""):
    scale = max(ref.float().abs().max().item(), 1.0)
    torch.testing.assert_close(got.float(), ref.float(), atol=tol * scale, rtol=tol, msg=lambda m: f"{what}: {m}")


@contextmanager
def kernel_calls():
    """Counts calls into the kernels, so a test knows the triton path really ran (no silent fallback)."""
    names = ["qknorm_rope_attention", "qknorm_decode_attention", "head_sample_loop", "head_step"]
    spies = {n: mock.patch.object(integration, n, wraps=getattr(integration, n)) for n in names}
    counts = {}
    with spies[names[0]] as a, spies[names[1]] as b, spies[names[2]] as c, spies[names[3]] as d:
        yield counts
        counts.update({n: s.call_count for n, s in zip(names, (a, b, c, d))})


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = T2MConfig(n_layer=2, n_head=2, n_embd=64, block_size=12, cond_dim=24,
                    head=DiffusionHeadConfig(width=32, depth=2))
    m = TextToMotionModel(config)
    with torch.no_grad():   # non-trivial head (its AdaLN/output layers start at zero)
        for p in m.diff_loss.net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_auto_is_the_default_and_resolves_to_sdpa_on_cpu():
    assert T2MConfig().attn_backend == "auto"
    m = tiny_model()
    assert all(b.attn.attn_backend == "auto" for b in m.transformer.h) and m.diff_loss.head_backend == "auto"
    assert resolve_attention_backend("auto", torch.device("cpu")) == "sdpa"   # even under the interpreter
    assert resolve_attention_backend("triton", torch.device("cpu")) == "triton"
    assert resolve_attention_backend("math", torch.device("cpu")) == "math"
    # configs written before "auto" existed keep their explicit backend
    assert T2MConfig.from_dict(dict(T2MConfig().to_dict(), attn_backend="sdpa")).attn_backend == "sdpa"
    with pytest.raises(ValueError, match="head backend must be one of"):
        m.diff_loss.set_head_backend("cuda")
    with pytest.raises(ValueError, match="attention backend must be one of"):
        m.set_fast_paths("flash")


def test_triton_switch_falls_back_where_the_kernels_do_not_apply():
    """float64 (no kernel dtype) and a head size of 16 (not a power of two >= 32) run the PyTorch
    paths under the "triton" switch, with the same results as "sdpa"."""
    torch.manual_seed(0)
    for n_head, dtype in ((2, torch.float64), (4, torch.float32)):
        m = TextToMotionModel(T2MConfig(n_layer=1, n_head=n_head, n_embd=64, block_size=8, cond_dim=8,
                                        head=DiffusionHeadConfig(width=32, depth=1))).to(dtype)
        lat, text = torch.randn(2, 3, 16, dtype=dtype), torch.randn(2, 8, dtype=dtype)
        outs = {}
        for backend in ("sdpa", "triton"):
            m.set_fast_paths(backend)
            with kernel_calls() as calls:
                out = m(lat, text)
                cache = m.new_kv_cache(2)
                m.prefill(text, lat[:, :1], cache)
                nxt = m.decode_step(lat[:, 1], cache)
                z = m.diff_loss.sample(out[:, 0].detach(), out[:, 1].detach(), SamplerSettings(sampling_steps=3),
                                       noise=draw_sampling_noise(torch.Generator().manual_seed(1), 2, 3, 16,
                                                                 dtype=dtype))
            outs[backend] = (out.detach(), nxt, z)
            if dtype == torch.float64:
                assert sum(calls.values()) == 0
        for a, b in zip(outs["triton"], outs["sdpa"]):
            assert_close(a, b, what=f"heads={n_head} {dtype}")


@pytest.mark.parametrize("ref_backend", ["math", "sdpa"])
def test_training_forward_and_gradients_match(ref_backend):
    """Forward + a loss + backward through the fused kernel equals the PyTorch path, padded batch
    included (the kernel masks padding keys via lengths; valid positions are the same)."""
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(3, 9, 16, generator=g), torch.randn(3, 24, generator=g)
    lengths = torch.tensor([9, 4, 0])
    valid = torch.arange(10)[None, :] <= lengths[:, None]                   # (3, 10) incl. the text token
    w = torch.randn(3, 10, 64, generator=g)
    results = {}
    for backend in (ref_backend, "triton"):
        m.set_fast_paths(backend)
        m.zero_grad()
        with kernel_calls() as calls:
            out = m(lat, text, lengths=lengths)
            (out * w * valid[..., None]).sum().backward()
        assert calls["qknorm_rope_attention"] == (2 if backend == "triton" else 0)   # one per layer
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    (o_ref, g_ref), (o, grads) = results[ref_backend], results["triton"]
    assert_close(o[valid], o_ref[valid], what="outputs")
    assert set(grads) == set(g_ref) and "transformer.h.0.attn.c_attn.weight" in grads
    for n in g_ref:
        assert_close(grads[n], g_ref[n], what=f"grad {n}")
    # without lengths: every position
    m.set_fast_paths("triton")
    full = m(lat, text)
    m.set_fast_paths(ref_backend)
    assert_close(full, m(lat, text), what="outputs without lengths")


def test_prefill_decode_and_cache_match_sdpa():
    m = tiny_model(seed=2).eval()
    g = torch.Generator().manual_seed(3)
    lat, text = torch.randn(3, 8, 16, generator=g), torch.randn(3, 24, generator=g)
    lengths = torch.tensor([2, 5, 0])
    out, caches = {}, {}
    with torch.no_grad(), kernel_calls() as calls:
        for backend in ("sdpa", "triton"):
            m.set_fast_paths(backend)
            cache = m.new_kv_cache(4)
            rows = torch.tensor([3, 0, 2])   # cache rows out of order: the rows= path
            conds = [m.prefill(text, lat[:, :5], cache, rows=rows, lengths=lengths)]
            for i in range(3):
                conds.append(m.decode_step(lat[:, 5 + i], cache, rows=rows))   # rows at different positions
            # all rows (rows=None): row 1 has never been prefilled, its length is 0
            conds.append(m.decode_step(lat[:, 0].new_ones(4, 16), cache))
            out[backend], caches[backend] = conds, cache
    assert calls["qknorm_rope_attention"] == 2 and calls["qknorm_decode_attention"] == 4 * 2
    for i, (a, b) in enumerate(zip(out["triton"], out["sdpa"])):
        assert_close(a, b, what=f"conditions after call {i}")
    ct, cs = caches["triton"], caches["sdpa"]
    assert torch.equal(ct.length, cs.length)
    for layer in range(2):
        for r, n in enumerate(cs.length.tolist()):   # valid entries only (padding entries are stale)
            assert_close(ct.k[layer][r, :, :n], cs.k[layer][r, :, :n], what=f"k cache layer {layer} row {r}")
            assert_close(ct.v[layer][r, :, :n], cs.v[layer][r, :, :n], what=f"v cache layer {layer} row {r}")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_head_sampling_switch(sampler):
    m = tiny_model(seed=4)
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    proc = m.diff_loss.sampling_process(6)
    noise = draw_sampling_noise(g, 2, proc.num_timesteps, 16)
    got = {}
    for backend in ("torch", "triton"):
        m.diff_loss.set_head_backend(backend)
        with kernel_calls() as calls:
            got[backend] = m.diff_loss.sample(cond, uncond, SamplerSettings(cfg_scale=2.5, sampling_steps=6,
                                                                            sampler=sampler, eta=0.3), noise=noise)
        assert calls["head_sample_loop"] == (backend == "triton")
    assert_close(got["triton"], got["torch"], what="sampled latents")
    # fast=False stays the reference path; the loop with a tensor cfg_scale (the ONNX head graph) too
    m.diff_loss.set_head_backend("triton")
    ref = m.diff_loss.sample(cond, uncond, SamplerSettings(cfg_scale=2.5, sampling_steps=6, sampler=sampler, eta=0.3),
                             noise=noise, fast=False)
    assert_close(got["triton"], ref, what="vs net.forward sampler")
    c = torch.cat([cond, uncond])
    t = sample_loop(m.diff_loss.eps_function(c, m.diff_loss.model_timesteps(6, "cpu")), noise[0],
                    m.diff_loss.sampling_process(6).step_coefficients(sampler, 0.3), noise[1], torch.tensor(2.5))
    assert_close(t, got["torch"], 1e-6, "tensor cfg_scale")
    # head_forward_with_modulations: one step
    mods = m.diff_loss.net.modulations(c, m.diff_loss.model_timesteps(6, "cpu"))
    x = torch.randn(4, 16, generator=g)
    with torch.no_grad(), kernel_calls() as calls:
        assert_close(integration.head_forward_with_modulations(m.diff_loss.net, x, mods, 2),
                     m.diff_loss.net.forward_with_modulations(x, mods, 2), what="one head step")
    assert calls["head_step"] == 1


def test_streaming_engine_triton_equals_torch():
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine

    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig.small()).eval()
    t2m = tiny_model(seed=6).eval()

    config = GenerationConfig(sampling_steps=4, end_threshold=-1.0, max_latents=14)   # crosses the window slide
    latents, frames = {}, {}
    for backend in ("sdpa", "triton"):
        t2m.set_fast_paths(backend)
        with kernel_calls() as calls:
            eng = StreamingEngine(FakeBundle(tae, t2m), FakeTextEncoder(24), capacity=2, config=config)
            eng.add_stream("walk", seed=1)
            eng.add_stream("jump forward", seed=2)
            chunks = [c for _ in range(14) for c in eng.step()]
        if backend == "triton":   # prefill, decode and head sampling all ran in the kernels
            assert min(calls["qknorm_rope_attention"], calls["qknorm_decode_attention"], calls["head_sample_loop"]) > 0
        latents[backend] = torch.stack([c.latent for c in chunks])
        frames[backend] = torch.stack([c.joints for c in chunks])
    assert latents["triton"].shape[0] == 28
    assert_close(latents["triton"], latents["sdpa"], what="streamed latents")
    assert_close(frames["triton"], frames["sdpa"], what="streamed joints")
