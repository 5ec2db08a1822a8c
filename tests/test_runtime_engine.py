"""Streaming runtime: the engine equals the original algorithm (reference sampler) latent by latent,
the context window slides to the latest history, a new prompt takes effect at the next latent,
batched streams do not disturb each other, each prompt is encoded once, the engine runs in bf16,
streamed TAE frames equal the full decode, and joint recovery chunk by chunk equals the
whole-sequence inverse.

The diffusion head gets random weights in its zero-initialised layers (fakes.randomize_head):
a fresh head predicts eps = 0, and its samples would depend on the noise alone, so none of these
tests could see a wrong condition, context or guidance row. Latents are compared relative to the
stream's latent scale."""
import copy

import pytest
import torch
from fakes import FakeBundle, FakeTextEncoder, randomize_head

from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.representation.features import recover_joints
from motionstreamer.runtime.backend import TorchBackend
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
from motionstreamer.runtime.kinematics import RootState, recover_joints_step
from motionstreamer.runtime.reference import reference_stream
from motionstreamer.runtime.session import StreamingSession

# fp32, engine vs reference, relative to the stream's largest |latent|: KV-cache attention and
# precomputed AdaLN modulations reorder float sums, and the sampling steps amplify that
# (measured up to 1.1e-6 on these models, 2-core x86 CPU).
LATENT_RTOL = 1e-5
# fp32, a stream batched with others vs the same stream alone: rows of a batched matmul may be
# summed in another order than a single row (measured up to 9e-7 of the scale on the same CPU).
BATCH_RTOL = 1e-5


def assert_latents_close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str = "latents"):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = want.abs().max().clamp_min(1e-6)
    err = (got - want).abs().max() / scale
    assert err <= rtol, f"{what}: max |difference| {err:.3g} of the latent scale {scale:.3g} (allowed {rtol:g})"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    t2m_cfg = T2MConfig.small()
    t2m_cfg.block_size = 12  # small window so tests cross the slide
    tae = CausalHumanTAE(TAEConfig.small()).eval()
    t2m = randomize_head(TextToMotionModel(t2m_cfg)).eval()
    return tae, t2m


def reference_latents(models, text, schedule, seed, config):
    tae, t2m = models
    return reference_stream(t2m, tae, [(text.encode([p])[0], n) for p, n in schedule], text.encode([""])[0],
                            torch.Generator().manual_seed(seed), config, decode_every_latent=False)


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


@pytest.mark.parametrize("steps,sampler,skip", [(50, "ddpm", False), (5, "ddim", False), (10, "ddpm", True)])
def test_session_equals_reference_sampler(models, steps, sampler, skip):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    schedule = [("a person walks forward", 7), ("a person turns left", 9)]  # 16 latents > window of 11
    config = GenerationConfig(sampling_steps=steps, sampler=sampler, cfg_scale=3.0, end_threshold=-1.0,
                           skip_terminal_step=skip)
    session = StreamingSession(FakeBundle(tae, t2m), text, config=config, seed=123)
    for prompt, n in schedule:
        session.push_text(prompt, after_current=True, max_latents=n)
    chunks = list(session)
    assert len(chunks) == 16
    latents = torch.stack([c.latent for c in chunks])
    frames = torch.cat([c.features for c in chunks])

    ref = reference_latents(models, text, schedule, 123, config)
    assert_latents_close(latents, ref.latents, LATENT_RTOL)
    b = FakeBundle(tae, t2m)
    full = tae.decode(latents[None])[0] * b.std + b.mean   # streamed frames == full decode of same latents
    scale = full.abs().max()
    # fp32, relative to the frame scale (conv rounding differs between CPUs: 1.1e-6 seen on one)
    torch.testing.assert_close(frames / scale, full / scale, atol=5e-6, rtol=0)
    # frame indices are continuous
    assert [c.start_frame for c in chunks] == list(range(0, 64, 4))


class RecordingBackend(TorchBackend):
    """The PyTorch backend, recording what every prefill was given and returned."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.prefills = []

    def prefill(self, text, history, slot):
        conditions = super().prefill(text, history, slot)
        self.prefills.append((history.clone(), conditions.clone()))
        return conditions


def test_window_slide_keeps_the_latest_history(models):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    block = t2m.config.block_size             # 12: the text token and 11 latents
    keep = block // 2                         # the default history_keep
    bundle = FakeBundle(tae, t2m)
    backend = RecordingBackend(bundle, 1, torch.device("cpu"), torch.float32)
    config = GenerationConfig(sampling_steps=4, cfg_scale=3.0, end_threshold=-1.0, max_latents=24)
    engine = StreamingEngine(bundle, text, config=config, backend=backend)
    engine.add_stream("a person walks forward", seed=4)
    latents, prefilled_before = [], []
    while engine.active_ids:
        n = len(backend.prefills)
        latents += [c.latent for c in engine.step()]
        if len(backend.prefills) > n:
            prefilled_before.append(len(latents) - 1)
    # a prefill at the start, then whenever the window is full: 11 latents, then 6 kept + 5 new, ...
    assert prefilled_before == [0, block - 1, 2 * block - 2 - keep, 3 * block - 3 - 2 * keep]
    empty, walk = text.encode([""])[0], text.encode(["a person walks forward"])[0]
    for (history, conditions), i in zip(backend.prefills[1:], prefilled_before[1:]):
        want = torch.stack(latents[i - keep:i])          # the latest `keep` latents, oldest first
        torch.testing.assert_close(history, want, atol=0, rtol=0)
        # the conditions are those of a full forward over [text, kept latents] (no cache involved)
        with torch.no_grad():
            full = t2m(want[None].expand(2, -1, -1), torch.stack([walk, empty]))[:, -1]
        torch.testing.assert_close(conditions, full, atol=1e-5, rtol=1e-5)


def test_new_prompt_takes_effect_at_the_next_latent(models):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=10, cfg_scale=3.0, end_threshold=-1.0, skip_terminal_step=True)
    session = StreamingSession(FakeBundle(tae, t2m), text, config=config, seed=7)
    session.push_text("a person walks forward")
    chunks = [session.step() for _ in range(5)]
    session.push_text("a person turns left")       # mid-stream, not queued behind the running action
    chunks += [session.step() for _ in range(4)]
    assert [c.prompt for c in chunks] == ["a person walks forward"] * 5 + ["a person turns left"] * 4
    # the first prompt and the change, each at the latent it takes effect
    assert [(e.kind, e.latent_index) for e in session.events] == [("prompt_change", 0), ("prompt_change", 5)]
    ref = reference_latents(models, text, [("a person walks forward", 5), ("a person turns left", 4)], 7, config)
    assert_latents_close(torch.stack([c.latent for c in chunks]), ref.latents, LATENT_RTOL)


def test_batched_streams_are_independent(models):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=4, cfg_scale=3.0, end_threshold=-1.0)
    plan = [(1, "a person walks forward", 14), (2, "a person jumps twice", 8), (3, "a person waves", 5)]
    solo = {}
    for seed, prompt, n in plan:
        s = StreamingSession(FakeBundle(tae, t2m), text, config=config, seed=seed)
        s.push_text(prompt, max_latents=n)
        solo[prompt] = torch.stack([c.latent for c in s])
    engine = StreamingEngine(FakeBundle(tae, t2m), text, capacity=4, config=config)
    ids = {engine.add_stream(p, seed=sd, max_latents=n): p for sd, p, n in plan[:2]}
    got = {p: [] for p in ids.values()}
    step = 0
    while engine.active_ids:
        if step == 2:  # a stream joins later
            seed, prompt, n = plan[2]
            ids[engine.add_stream(prompt, seed=seed, max_latents=n)] = prompt
            got[prompt] = []
        for c in engine.step():
            got[ids[c.stream_id]].append(c.latent)
        step += 1
    for p, lat in got.items():
        assert_latents_close(torch.stack(lat), solo[p], BATCH_RTOL, what=p)


def test_a_slot_reused_after_a_full_batch_starts_fresh(models):
    """At a full batch (here one slot) the TAE, joint and root states are stepped in place without a gather;
    a stream that takes the slot afterwards must start from zero states: its frames and joints equal those
    of the same stream in a new engine, and its root starts at the origin again."""
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=3, cfg_scale=3.0, end_threshold=-1.0)

    def run(engine, seed):
        sid = engine.add_stream("a person walks forward", seed=seed, max_latents=5)
        chunks = [c for _ in range(5) for c in engine.step()]
        engine.close(sid)
        return torch.cat([c.joints for c in chunks]), torch.cat([c.features for c in chunks])

    reused = StreamingEngine(FakeBundle(tae, t2m), text, capacity=1, config=config)
    with torch.inference_mode():   # as a caller may step the engine: the states must stay writable after
        first = run(reused, 1)
    second = run(reused, 2)
    fresh = run(StreamingEngine(FakeBundle(tae, t2m), text, capacity=1, config=config), 2)
    assert not torch.allclose(first[0], second[0])
    for got, want in zip(second, fresh):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_action_end_and_policies(models):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    # with a huge threshold every latent after the minimum "ends" the action
    for policy, expect_more in [("stop", False), ("continue", True)]:
        config = GenerationConfig(sampling_steps=2, end_threshold=1e9, min_action_latents=3,
                               on_action_end=policy, max_latents=10)
        s = StreamingSession(FakeBundle(tae, t2m, end_latent=torch.zeros(16)), text, config=config, seed=0)
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
    s = StreamingSession(FakeBundle(tae, t2m), FakeTextEncoder(t2m.config.cond_dim), seed=0)
    with pytest.raises(ValueError, match="empty"):
        s.push_text("   ")
    with pytest.raises(ValueError, match="too long"):
        s.push_text("walk " * 500)


def test_text_encoded_once_per_prompt(models):
    tae, t2m = models
    enc = FakeTextEncoder(t2m.config.cond_dim)      # caches nothing: every request is counted
    # every action ends after 10 latents (any latent is "the end" past min_action_latents); "jump" is
    # queued behind "walk", then "continue" restarts it: over 30 latents the stream prefills at the
    # start, at both prompt starts, at the restart and at two window slides, and never needs a
    # prompt encoded again
    config = GenerationConfig(sampling_steps=2, end_threshold=1e9, min_action_latents=10, max_latents=30,
                           on_action_end="continue")
    s = StreamingSession(FakeBundle(tae, t2m, end_latent=torch.zeros(16)), enc, config=config, seed=0)
    s.push_text("walk")
    s.push_text("jump", after_current=True)
    chunks = list(s)
    assert len(chunks) == 30 and [c.prompt for c in chunks] == ["walk"] * 10 + ["jump"] * 20
    assert [e.kind for e in s.events].count("action_end") == 2
    assert sorted(enc.texts) == ["", "jump", "walk"]


def test_engine_in_bf16_follows_fp32(models):
    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=10, cfg_scale=3.0, end_threshold=-1.0, skip_terminal_step=True,
                           max_latents=6)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        bundle = FakeBundle(copy.deepcopy(tae).to(dtype), copy.deepcopy(t2m).to(dtype))
        s = StreamingSession(bundle, text, config=config, seed=3, dtype=dtype)
        s.push_text("a person walks forward")
        out[dtype] = (list(s), bundle)
    chunks, bundle = out[torch.bfloat16]
    latents = torch.stack([c.latent for c in chunks])
    feats = torch.cat([c.features for c in chunks])
    joints = torch.cat([c.joints for c in chunks])
    # what leaves the engine is fp32 and finite, and the joints are integrated in fp32 (as float64 here)
    assert latents.dtype == feats.dtype == joints.dtype == torch.float32
    assert torch.isfinite(latents).all() and torch.isfinite(joints).all()
    whole = recover_joints_step(feats[None].double(), RootState.initial(1, dtype=torch.float64))[0]
    torch.testing.assert_close(joints, whole.float(), atol=1e-4 * float(whole.abs().max()), rtol=0)
    # bf16 weights and activations follow the fp32 stream: measured <= 1.1e-2 of the latent scale
    # over these six latents (rounding compounds through the autoregressive stream)
    fp32 = torch.stack([c.latent for c in out[torch.float32][0]])
    assert_latents_close(latents, fp32, 5e-2, "bf16 stream")


def test_graph_backend_falls_back_on_cpu(models):
    from motionstreamer.runtime.cuda_graph import GraphedBackend

    tae, t2m = models
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=4, end_threshold=-1.0, max_latents=6)
    b = FakeBundle(tae, t2m)
    ref = StreamingEngine(b, text, capacity=2, config=config)
    gb = GraphedBackend(b, 2, torch.device("cpu"), torch.float32)
    assert not gb.enabled
    eng = StreamingEngine(b, text, capacity=2, config=config, backend=gb)
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
    b = FakeBundle(tae, t2m)
    b.mean, b.std = b.mean.cuda(), b.std.cuda()
    text = FakeTextEncoder(t2m.config.cond_dim)
    config = GenerationConfig(sampling_steps=10, end_threshold=-1.0, max_latents=20)
    out = []
    for graphs in (False, True):
        e = StreamingEngine(b, text, capacity=3, config=config, device="cuda", dtype=torch.float32, cuda_graphs=graphs)
        for i in range(3):
            e.add_stream(f"prompt {i}", seed=i)
        out.append(torch.stack([c.latent for _ in range(20) for c in e.step()]))
    torch.testing.assert_close(out[1], out[0], atol=1e-4, rtol=1e-4)
