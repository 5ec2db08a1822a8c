"""ONNX export: every graph passes onnx.checker and matches its PyTorch module (fp32); a short stream
through the onnxruntime engine matches the PyTorch session with the same noise."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from motionstreamer.checkpoints import load_bundle, save_bundle
from motionstreamer.export.onnx_export import export_bundle
from motionstreamer.export.ort_engine import ort_session
from motionstreamer.models.diffusion import draw_sampling_noise
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime.engine import GenerationConfig
from motionstreamer.runtime.session import StreamingSession

# fp32 graph vs module: reassociated sums in ORT's fused kernels; relative to the output scale
REL_TOL = 1e-5


class HashEncoder:
    dim = 384

    def encode(self, texts):
        return torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t)) + 1))
                            for t in texts])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig(hidden=32, width=32))
    cfg = T2MConfig.small()
    cfg.block_size = 10
    t2m = TextToMotionModel(cfg)
    for p in t2m.diff_loss.net.parameters():   # the zero-initialised head would hide errors
        torch.nn.init.normal_(p, std=0.02)
    d = tmp_path_factory.mktemp("bundle")
    g = torch.Generator().manual_seed(1)
    save_bundle(d, tae, t2m, torch.randn(272, generator=g) * 0.1, torch.rand(272, generator=g) + 0.5,
                torch.randn(16, generator=g))
    bundle = load_bundle(d)
    out = tmp_path_factory.mktemp("onnx")
    export_bundle(bundle, out, head_variants=(("ddpm", 50), ("ddim", 5)))
    return bundle, out


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def close(a, b):
    a, b = np.asarray(a), np.asarray(b.detach() if hasattr(b, "detach") else b)
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() / scale < REL_TOL, (np.abs(a - b).max(), scale)


def test_graphs_pass_checker(exported):
    _, out = exported
    for f in out.glob("*.onnx"):
        onnx.checker.check_model(onnx.load(str(f)))


def test_prefill_and_decode_match_kv_cache_model(exported):
    bundle, out = exported
    m = bundle.t2m
    g = torch.Generator().manual_seed(2)
    text = torch.randn(3, m.config.cond_dim, generator=g)
    lat = torch.randn(3, 4, 16, generator=g)
    cache = m.new_kv_cache(3)
    ref = m.prefill(text, lat, cache)
    pad = torch.zeros(3, m.config.block_size - 1, 16)
    pad[:, :4] = lat
    cond, k, v = run(out / "prefill.onnx", {"text": text.numpy(), "latents": pad.numpy(), "n_latents": np.full(3, 4)})
    close(cond, ref)
    close(k[:, :, :, :5], torch.stack(cache.k)[:, :, :, :5])
    z = torch.randn(3, 16, generator=g)
    ref2 = m.decode_step(z, cache)
    cond2, k2, _ = run(out / "decode_step.onnx", {"latent": z.numpy(), "k_cache": k, "v_cache": v,
                                                  "pos": np.full(3, 5)})
    close(cond2, ref2)
    close(k2[:, :, :, :6], torch.stack(cache.k)[:, :, :, :6])


@pytest.mark.parametrize("method,steps", [("ddpm", 50), ("ddim", 5)])
def test_head_graph_matches_sampler(exported, method, steps):
    bundle, out = exported
    g = torch.Generator().manual_seed(3)
    E = bundle.t2m.config.n_embd
    cond, unc = torch.randn(2, E, generator=g), torch.randn(2, E, generator=g)
    x, n = draw_sampling_noise(g, 2, steps, 16)
    ref = bundle.t2m.diff_loss.sample(cond, unc, cfg=3.0, temperature=0.9, steps=steps, method=method, noise=(x, n))
    sess = ort.InferenceSession(str(out / f"head_{method}{steps}.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"cond": cond.numpy(), "uncond": unc.numpy(), "x_T": x.numpy(), "step_noise": n.numpy(),
             "cfg": np.array([3.0], np.float32), "temperature": np.array([0.9], np.float32)}
    names = {i.name for i in sess.get_inputs()}
    close(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0], ref)


def test_tae_step_graph_matches_streaming_decoder(exported):
    bundle, out = exported
    tae = bundle.tae
    z = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(4))
    st = tae.init_decode_state(2)
    states = [b.numpy().copy() for b in st.buffers]
    frames = []
    for i in range(3):
        res = run(out / "tae_decode_step.onnx", {"z": z[:, i].numpy(), **{f"state_{j}": s for j, s in enumerate(states)}})
        frames.append(res[0])
        states = res[1:]
    close(np.concatenate(frames, 1), tae.decode(z))


def test_ort_stream_matches_torch_session(exported):
    bundle, out = exported
    cfg = GenerationConfig(sampling_steps=50, end_threshold=-1.0, max_latents=14, cfg_scale=2.5)
    a = StreamingSession(bundle, HashEncoder(), config=cfg, seed=7)
    b = ort_session(out, HashEncoder(), config=cfg, seed=7)
    for s in (a, b):
        s.push_text("walk forward", max_latents=6)
        s.push_text("turn left", after_current=True)   # crosses the 9-latent window: re-prefill
    ca, cb = list(a), list(b)
    assert len(ca) == len(cb) == 14
    close(torch.stack([c.latent for c in cb]), torch.stack([c.latent for c in ca]))
    close(torch.cat([c.joints for c in cb]), torch.cat([c.joints for c in ca]))


def test_missing_head_variant_is_a_clear_error(exported):
    bundle, out = exported
    s = ort_session(out, HashEncoder(), config=GenerationConfig(sampling_steps=20, end_threshold=-1.0), seed=0)
    s.push_text("walk")
    with pytest.raises(ValueError, match="no exported head"):
        s.step()
