"""Streaming runtime: the engine equals the original algorithm (reference sampler), streamed TAE
frames equal the full decode, joint recovery chunk by chunk equals the whole-sequence inverse, and
batched independent streams do not disturb each other."""
import pytest
import torch

from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.representation.features import recover_joints
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
from motionstreamer.runtime.kinematics import RootState, recover_joints_step
from motionstreamer.runtime.reference import reference_stream
from motionstreamer.runtime.session import StreamingSession

# fp32 tolerance for engine vs reference: KV-cache attention and precomputed AdaLN modulations
# reorder float sums; 50 ancestral steps amplify that to ~1e-5 on the latents.
LATENT_ATOL = 1e-4


class HashTextEncoder:
    def __init__(self, dim):
        self.dim, self.calls = dim, 0

    def encode(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 % 2**31)
            out.append(torch.randn(self.dim, generator=g))
        return torch.stack(out)


class Bundle:
    def __init__(self, tae, t2m, end_latent=None):
        self.tae, self.t2m = tae, t2m
        g = torch.Generator().manual_seed(1)
        self.mean = torch.randn(272, generator=g) * 0.1
        self.std = torch.rand(272, generator=g) + 0.5
        self.end_latent = end_latent if end_latent is not None else torch.full((16,), 100.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tae_cfg = TAEConfig.small()
    t2m_cfg = T2MConfig.small()
    t2m_cfg.block_size = 12  # small window so tests cross the slide
    tae = CausalHumanTAE(tae_cfg).eval()
    t2m = TextToMotionModel(t2m_cfg).eval()
    return tae, t2m


def test_recover_joints_step_matches_whole_sequence():
    g = torch.Generator().manual_seed(0)
    T = 23
    feats = torch.randn(2, T, 272, generator=g, dtype=torch.float64) * 0.05
    feats[..., 2:8] = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
    ang = torch.randn(2, T, generator=g, dtype=torch.float64) * 0.05
    feats[..., 2], feats[..., 4] = torch.cos(ang), torch.sin(ang)
    whole = recover_joints(feats)
    state = RootState.initial(2, dtype=torch.float64)
    parts, start = [], 0
    for n in (1, 4, 7, 11):
        parts.append(recover_joints_step(feats[:, start:start + n], state))
        start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-10, rtol=0)


@pytest.mark.parametrize("steps,method,skip", [(50, "ddpm", False), (5, "ddim", False), (10, "ddpm", True)])
def test_session_equals_reference_sampler(models, steps, method, skip):
    tae, t2m = models
    text = HashTextEncoder(t2m.config.cond_dim)
    schedule = [("a person walks forward", 7), ("a person turns left", 9)]  # 16 latents > window of 11
    cfg = GenerationConfig(sampling_steps=steps, sampler=method, cfg_scale=3.0, end_threshold=-1.0,
                           skip_terminal_step=skip)
    session = StreamingSession(Bundle(tae, t2m), text, config=cfg, seed=123)
    for prompt, n in schedule:
        session.push_text(prompt, after_current=True, max_latents=n)
    chunks = list(session)
    assert len(chunks) == 16
    latents = torch.stack([c.latent for c in chunks])
    frames = torch.cat([c.features for c in chunks])

    ref = reference_stream(t2m, tae, [(text.encode([p])[0], n) for p, n in schedule], text.encode([""])[0],
                           torch.Generator().manual_seed(123), cfg_scale=3.0, steps=steps, method=method,
                           skip_terminal=skip)
    torch.testing.assert_close(latents, ref.latents, atol=LATENT_ATOL, rtol=0)
    b = Bundle(tae, t2m)
    full = tae.decode(latents[None])[0] * b.std + b.mean   # streamed frames == full decode of same latents
    scale = full.abs().max()
    # fp32, relative to the frame scale (conv rounding differs between CPUs: 1.1e-6 seen on one)
    torch.testing.assert_close(frames / scale, full / scale, atol=5e-6, rtol=0)
    # frame indices are continuous
    assert [c.start_frame for c in chunks] == list(range(0, 64, 4))


def test_batched_streams_are_independent(models):
    tae, t2m = models
    text = HashTextEncoder(t2m.config.cond_dim)
    cfg = GenerationConfig(sampling_steps=4, end_threshold=-1.0)
    solo = {}
    for seed, prompt, n in [(1, "walk", 5), (2, "jump", 8), (3, "wave", 3)]:
        s = StreamingSession(Bundle(tae, t2m), text, config=cfg, seed=seed)
        s.push_text(prompt, max_latents=n)
        solo[prompt] = torch.stack([c.latent for c in s])
    engine = StreamingEngine(Bundle(tae, t2m), text, capacity=4, config=cfg)
    ids = {engine.add_stream(p, seed=sd, max_latents=n): p for sd, p, n in [(1, "walk", 5), (2, "jump", 8)]}
    got = {p: [] for p in ids.values()}
    step = 0
    while engine.active_ids:
        if step == 2:  # a stream joins later
            ids[engine.add_stream("wave", seed=3, max_latents=3)] = "wave"
            got["wave"] = []
        for c in engine.step():
            got[ids[c.stream_id]].append(c.latent)
        step += 1
    for p, lat in got.items():
        torch.testing.assert_close(torch.stack(lat), solo[p], atol=LATENT_ATOL, rtol=0)


def test_action_end_and_policies(models):
    tae, t2m = models
    text = HashTextEncoder(t2m.config.cond_dim)
    # with a huge threshold every latent after the minimum "ends" the action
    for policy, expect_more in [("stop", False), ("continue", True)]:
        cfg = GenerationConfig(sampling_steps=2, end_threshold=1e9, min_action_latents=3,
                               on_action_end=policy, max_latents=10)
        s = StreamingSession(Bundle(tae, t2m, end_latent=torch.zeros(16)), text, config=cfg, seed=0)
        s.push_text("walk")
        chunks = list(s)
        kinds = [e.kind for e in s.events]
        assert "action_end" in kinds
        if expect_more:
            assert len(chunks) == 10  # keeps going until max_latents
        else:
            assert len(chunks) == 3


def test_prompt_validation(models):
    tae, t2m = models
    s = StreamingSession(Bundle(tae, t2m), HashTextEncoder(t2m.config.cond_dim), seed=0)
    with pytest.raises(ValueError, match="empty"):
        s.push_text("   ")
    with pytest.raises(ValueError, match="too long"):
        s.push_text("walk " * 500)


def test_text_encoded_once_per_prompt(models):
    tae, t2m = models

    class Counting(HashTextEncoder):
        def __init__(self, dim):
            super().__init__(dim)
            self.cache = {}

        def encode(self, texts):
            key = tuple(texts)
            if key not in self.cache:
                self.cache[key] = super().encode(texts)
            return self.cache[key]

    enc = Counting(t2m.config.cond_dim)
    cfg = GenerationConfig(sampling_steps=2, end_threshold=-1.0, max_latents=12)
    s = StreamingSession(Bundle(tae, t2m), enc, config=cfg, seed=0)
    s.push_text("walk")
    list(s)
    assert enc.calls == 2  # the prompt and the empty prompt, once each


def test_graph_backend_falls_back_on_cpu(models):
    from motionstreamer.runtime.cuda_graph import GraphedBackend

    tae, t2m = models
    text = HashTextEncoder(t2m.config.cond_dim)
    cfg = GenerationConfig(sampling_steps=4, end_threshold=-1.0, max_latents=6)
    b = Bundle(tae, t2m)
    ref = StreamingEngine(b, text, capacity=2, config=cfg)
    gb = GraphedBackend(b, 2, torch.device("cpu"), torch.float32)
    assert not gb.enabled
    eng = StreamingEngine(b, text, capacity=2, config=cfg, backend=gb)
    for e in (ref, eng):
        e.add_stream("walk", seed=1)
        e.add_stream("jump", seed=2)
    a = [c.latent for _ in range(6) for c in ref.step()]
    g = [c.latent for _ in range(6) for c in eng.step()]
    torch.testing.assert_close(torch.stack(g), torch.stack(a), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_engine_equals_eager():
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig.small()).cuda().eval()
    t2m = TextToMotionModel(T2MConfig.small()).cuda().eval()
    for p in t2m.diff_loss.net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    b = Bundle(tae, t2m)
    b.mean, b.std = b.mean.cuda(), b.std.cuda()
    text = HashTextEncoder(t2m.config.cond_dim)
    cfg = GenerationConfig(sampling_steps=10, end_threshold=-1.0, max_latents=20)
    out = []
    for graphs in (False, True):
        e = StreamingEngine(b, text, capacity=3, config=cfg, device="cuda", dtype=torch.float32, cuda_graphs=graphs)
        for i in range(3):
            e.add_stream(f"prompt {i}", seed=i)
        out.append(torch.stack([c.latent for _ in range(20) for c in e.step()]))
    torch.testing.assert_close(out[1], out[0], atol=1e-4, rtol=1e-4)
