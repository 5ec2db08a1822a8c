"""Goals beside text (models/goal.py, train/goals.py, the engine's set_goal, the CLI's --goal, ONNX).

References are independent of the code under test: the root frame from facing/left unit vectors in
float64 (not the rotation formula), root paths from the synthetic generator's own joints and pelvis
rotations (not the 272 recovery), the engine's goal-carrying KV cache against one full forward with the
per-token goals, the CUDA-graph backend and the ONNX graphs against the eager PyTorch model."""
import math

import numpy as np
import pytest
import torch
from fakes import FakeBundle, FakeTextEncoder, randomize_head, run_cli

from motionstreamer.models.diffusion import DiffusionHeadConfig
from motionstreamer.models.goal import (
    GOAL_DIM,
    HAS_HEADING,
    HAS_SECONDS,
    PRESENT,
    SECONDS,
    GoalEmbed,
    root_frame_offset,
    yaw_of_heading,
)
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime import policy
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine

TEXT_DIM = 16


def goal_model(seed: int = 0, effective: bool = True, block_size: int = 12):
    """A small goal model; effective=False zeroes the goal module's last layer, so a goal changes
    nothing in the motion (the stream's path is then known before its goal is chosen)."""
    torch.manual_seed(seed)
    t2m = TextToMotionModel(T2MConfig(n_layer=2, n_head=2, n_embd=32, cond_dim=TEXT_DIM, block_size=block_size,
                                      head=DiffusionHeadConfig(width=64, depth=2), goal=True))
    randomize_head(t2m)
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for p in t2m.goal_embed.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 if effective else p)
        if not effective:
            t2m.goal_embed.fc2.weight.zero_()
            t2m.goal_embed.fc2.bias.zero_()
    return t2m.eval()


@pytest.fixture(scope="module")
def tae():
    torch.manual_seed(3)
    return CausalHumanTAE(TAEConfig(hidden=32, width=32)).eval()


# ----------------------------------------------------------------------------- the root frame
def test_root_frame_offset_against_facing_and_left_vectors():
    rng = np.random.default_rng(0)
    yaw = rng.uniform(-4, 4, 50)
    root = rng.normal(size=(50, 2)) * 3
    target = rng.normal(size=(50, 2)) * 5
    facing = np.stack([np.sin(yaw), np.cos(yaw)], -1)           # (x, z) of the facing direction
    left = np.stack([np.cos(yaw), -np.sin(yaw)], -1)            # Ry(yaw) applied to +X (the left at yaw 0)
    d = target - root
    want = np.stack([(d * left).sum(-1), (d * facing).sum(-1)], -1)
    got = root_frame_offset(torch.tensor(target), torch.tensor(root), torch.tensor(yaw)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the spec's convention: facing +X (yaw pi/2), a point 1 m further along +X is straight ahead
    ahead = root_frame_offset(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor(math.pi / 2))
    np.testing.assert_allclose(ahead.numpy(), [0.0, 1.0], atol=1e-7)


def test_yaw_of_heading_is_the_facing_of_the_272_heading():
    from scipy.spatial.transform import Rotation

    for yaw in (-2.5, -0.3, 0.0, 1.0, 3.0):
        pelvis = Rotation.from_euler("y", yaw).as_matrix()       # a pelvis turned by yaw about +Y
        facing = pelvis @ [0, 0, 1]
        assert math.isclose(math.atan2(facing[0], facing[2]), yaw, abs_tol=1e-12)
        H = Rotation.from_euler("y", -yaw).as_matrix()          # the 272 heading turns the facing onto +Z
        np.testing.assert_allclose(H @ facing, [0, 0, 1], atol=1e-12)
        assert math.isclose(float(yaw_of_heading(torch.tensor(H))), yaw, abs_tol=1e-9)


# ----------------------------------------------------------------------------- training goals
@pytest.fixture(scope="module")
def circle_clip():
    from motionstreamer.data import synth
    return synth.generate_clip("walk_circle", np.random.default_rng(4), min_seconds=6.0, max_seconds=6.5)


def test_latent_root_path_follows_the_generators_pelvis(circle_clip):
    from motionstreamer.representation.features import joints_to_272
    from motionstreamer.train.goals import latent_root_path

    joints, rotations = circle_clip.canonical()
    features = joints_to_272(joints, rotations)
    n = len(features) // 4
    path = latent_root_path(features, n + 1)                    # + the end latent
    frames = np.clip(np.arange(n + 1) * 4 - 1, 0, None)
    pelvis = joints[frames, 0][:, [0, 2]] - joints[0, 0][[0, 2]]
    facing = rotations[frames, 0] @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(path[:-1, :2], pelvis, atol=2e-5)
    dyaw = np.angle(np.exp(1j * (path[:-1, 2] - np.arctan2(facing[:, 0], facing[:, 2]))))
    assert np.abs(dyaw).max() < 1e-4
    np.testing.assert_array_equal(path[-1], path[-2])            # the end latent moves nothing
    assert np.ptp(path[:, 2]) > 1.0                             # it does turn: the test could see a yaw error


def test_sampled_goals_point_at_the_clips_own_future(circle_clip):
    from motionstreamer.representation.features import joints_to_272
    from motionstreamer.train.goals import latent_root_path, sample_goals

    joints, rotations = circle_clip.canonical()
    n = len(joints) // 4
    path = latent_root_path(joints_to_272(joints, rotations), n + 1)
    seen = 0
    for seed in range(40):
        out = torch.zeros(n + 1, GOAL_DIM)
        sample_goals(path, 2, n, (0.5, 6.0), torch.Generator().manual_seed(seed), out)
        assert not out[:2].any() and not out[n].any()            # not before the target part, never the end latent
        tokens = torch.nonzero(out[:, PRESENT]).flatten().tolist()
        for q in tokens:
            g = out[q]
            yaw = path[q, 2]
            # back to the world with facing/left vectors; it must land on a later state of the path
            world = path[q, :2] + g[0].item() * np.array([np.cos(yaw), -np.sin(yaw)]) \
                + g[1].item() * np.array([np.sin(yaw), np.cos(yaw)])
            later = np.linalg.norm(path[q + 1:, :2] - world, axis=1)
            k = q + 1 + int(np.argmin(later))
            assert later.min() < 1e-4, (seed, q)
            if g[HAS_SECONDS]:
                assert math.isclose(g[SECONDS].item(), (k - q) * 4 / 30, abs_tol=1e-5), (seed, q, k)
            if g[HAS_HEADING]:
                rel = math.atan2(g[2].item(), g[3].item())
                assert abs(np.angle(np.exp(1j * (path[k, 2] - yaw - rel)))) < 1e-4
            seen += 1
    assert seen > 100


def test_training_batches_carry_goals_only_when_asked(tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from train_tiny import encode_dataset, make_synth, tiny_tae

    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import LatentTextData, T2MTrainConfig, load_latent_examples

    data = make_synth(tmp_path / "synth", clips=12, pairs=6)
    lat, slat = encode_dataset(tiny_tae(), data, tmp_path / "enc")
    ex = load_latent_examples(lat, data, "train", paths=True) + \
        load_stream_examples(data / "babel_stream", slat, "train", paths=True)
    emb = {c: torch.randn(8) for e in ex for c in e.all_captions()} | {"": torch.zeros(8)}
    plain = load_latent_examples(lat, data, "train")
    b0 = LatentTextData(plain, emb, T2MTrainConfig()).sample_batch(torch.Generator().manual_seed(0), 16)
    b1 = LatentTextData(ex, emb, T2MTrainConfig()).sample_batch(torch.Generator().manual_seed(0), 16)
    assert "goal" not in b0 and "goal" not in b1                # goal_prob 0: the original batches
    b = LatentTextData(ex, emb, T2MTrainConfig(goal_prob=1.0)).sample_batch(torch.Generator().manual_seed(0), 16)
    goal = b["goal"]
    assert goal.shape == (16, b["latents"].shape[1] + 1, GOAL_DIM)
    pos = torch.arange(goal.shape[1])[None]
    assert not goal[..., PRESENT][pos < b["a_len"][:, None]].any()   # never on the history
    assert not goal[..., PRESENT][pos >= b["len"][:, None]].any()    # nor past the sequence
    assert goal[..., PRESENT].sum() > 0
    with pytest.raises(ValueError, match="needs root paths"):
        LatentTextData(plain, emb, T2MTrainConfig(goal_prob=0.5))


def test_turn_rate_turns_by_each_angle_in_its_time():
    from motionstreamer.data.synth.actions import turn_rate

    t = np.arange(300) / 30.0
    rate = turn_rate(t, [(1.0, 1.2, 0.9), (5.0, 0.6, -1.7)])
    np.testing.assert_allclose(rate.sum() / 30.0, 0.9 - 1.7, atol=1e-9)      # Riemann sum of a sin^2 bump
    np.testing.assert_allclose(rate[(t >= 1.0) & (t < 2.2)].sum() / 30.0, 0.9, atol=1e-9)
    outside = (t < 1.0) | ((t > 2.2 + 1e-9) & (t < 5.0)) | (t > 5.6 + 1e-9)
    assert np.abs(rate[outside]).max() < 1e-12 and np.abs(rate[~outside]).max() > 0.5
    assert not turn_rate(t, ()).any()


def test_steered_clip_turns_where_its_caption_does_not_say(tmp_path):
    from motionstreamer.data.synth.assembly import generate_steered_clip
    from motionstreamer.train.goals import frame_root_path

    turned = []
    for seed in range(6):
        clip = generate_steered_clip(np.random.default_rng(seed), 4.0, 6.0)
        path = frame_root_path(clip.features())
        total = sum(a for _, _, a in clip.params["turns"])
        # the heading change the 272 features recover, against the turns asked for (the pelvis twists by up
        # to ~0.14 rad with the gait, so the recovered facing wobbles about the planned heading)
        yaw = np.unwrap(path[:, 2])
        assert abs((yaw[-1] - yaw[0]) - total) < 0.15, (seed, yaw[-1] - yaw[0], total)
        assert not any(w in c for c in clip.captions for w in ("curv", "veer", "left", "right"))
        turned.append(abs(total))
    assert max(turned) > 0.5


def test_pursuit_clip_heads_for_its_target():
    from motionstreamer.data.synth.assembly import generate_steered_clip
    from motionstreamer.train.goals import frame_root_path

    arrived, bearings = 0, []
    for seed in range(8):
        clip = generate_steered_clip(np.random.default_rng(seed), 2.0, 10.0, pursuit=True)
        path = frame_root_path(clip.features())
        target = np.array(clip.params["target"])
        arrived += np.hypot(*(path[:, :2] - target).T).min() < 0.3       # the 272 path passes the target
        bearings.append(abs(math.atan2(target[0], target[1])))            # 0: straight ahead at the start
        assert not any(w in c for c in clip.captions for w in ("curv", "veer", "left", "right"))
    assert arrived >= 5, arrived
    assert max(bearings) > 1.0                  # targets off to the side too: reaching them needs turning


def tiny_path_examples(tmp_path, text_dim: int = TEXT_DIM):
    """Latent examples with their root paths from 12 tiny synthetic clips (a tiny TAE), and random
    caption embeddings."""
    from train_tiny import encode_dataset, make_synth, tiny_tae

    from motionstreamer.train.t2m import load_latent_examples

    data = make_synth(tmp_path / "synth", clips=12, pairs=0)
    lat, _ = encode_dataset(tiny_tae(), data, tmp_path / "enc")
    ex = load_latent_examples(lat, data, "train", paths=True)
    emb = {c: torch.randn(text_dim) for e in ex for c in e.all_captions()} | {"": torch.zeros(text_dim)}
    return ex, emb


def test_goal_only_examples_always_carry_goals_and_keep_the_plain_draw(tmp_path):
    import dataclasses

    from motionstreamer.train.t2m import LatentTextData, T2MTrainConfig

    ex, emb = tiny_path_examples(tmp_path, 8)
    marked = [dataclasses.replace(e, caption="steer " + e.caption, captions=(), goal_only=True) for e in ex[:3]]
    emb |= {e.caption: torch.randn(8) for e in marked}
    cfg = T2MTrainConfig(goal_prob=0.0, goal_only_share=0.5, drop_edge_prob=0.0, text_dropout=0.0)
    b = LatentTextData(ex + marked, emb, cfg).sample_batch(torch.Generator().manual_seed(0), 64)
    steer = torch.stack([(b["text"][i] == torch.stack([emb[e.caption] for e in marked])).all(-1).any()
                         for i in range(64)])
    has_goal = b["goal"][..., PRESENT].any(-1)
    assert torch.equal(steer, has_goal)                         # goal_prob 0: goals on exactly the goal-only rows
    assert 16 <= int(steer.sum()) <= 48                         # about half of the rows
    # without goal-only examples the draw is the original one (same generator -> same batch)
    ref = torch.randint(len(ex), (8,), generator=torch.Generator().manual_seed(5)).tolist()
    got = LatentTextData(ex, emb, T2MTrainConfig())._draw_examples(torch.Generator().manual_seed(5), 8)
    assert got == ref
    with pytest.raises(ValueError, match="plain examples"):
        LatentTextData(marked, emb, cfg)


def test_goal_lr_mult_scales_the_goal_modules_steps_only(tmp_path):
    from train_tiny import quiet

    from motionstreamer.train.t2m import T2MTrainConfig, train_t2m

    ex, emb = tiny_path_examples(tmp_path)
    moved = {}
    for mult in (1.0, 10.0):
        model = goal_model(seed=0, block_size=24)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = quiet(T2MTrainConfig, out_dir=str(tmp_path / f"run{mult}"), steps=1, batch_size=8, lr=1e-3,
                    warmup_steps=0, weight_decay=0.0, save_every=1000, diffmlps_batch_mul=1, goal_prob=1.0,
                    goal_lr_mult=mult, max_latents=24)
        train_t2m(model.train(), ex, emb, cfg)
        d = {k: (v - before[k]).abs() for k, v in model.state_dict().items() if v.is_floating_point()}
        # Adam's first step moves every weight with a gradient by lr * g / (|g| + eps) = lr * sign(g)
        moved[mult] = (max(float(v.max()) for k, v in d.items() if k.startswith("goal_embed.")),
                       max(float(v.max()) for k, v in d.items() if k.startswith("transformer.")))
    assert math.isclose(moved[1.0][0], 1e-3, rel_tol=0.05) and math.isclose(moved[1.0][1], 1e-3, rel_tol=0.05)
    assert math.isclose(moved[10.0][0], 1e-2, rel_tol=0.05) and math.isclose(moved[10.0][1], 1e-3, rel_tol=0.05)
    with pytest.raises(ValueError, match="goal_lr_mult"):
        T2MTrainConfig(goal_lr_mult=0.0).check()


def test_goal_module_only_leaves_every_other_weight_bit_identical(tmp_path):
    """goal_module_only: two steps move the goal module (Adam's first step: lr * mult per weight) and the
    root-step probe, and not one bit of the rest of the model; without a goal module it is refused."""
    from train_tiny import quiet

    from motionstreamer.train.t2m import T2MTrainConfig, train_t2m

    ex, emb = tiny_path_examples(tmp_path)
    model = goal_model(seed=0, block_size=24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = quiet(T2MTrainConfig, out_dir=str(tmp_path / "run"), steps=2, batch_size=8, lr=1e-3, warmup_steps=0,
                weight_decay=0.0, save_every=1000, diffmlps_batch_mul=1, goal_prob=1.0, goal_lr_mult=10.0,
                max_latents=24, root_aux=1.0, goal_module_only=True)
    train_t2m(model.train(), ex, emb, cfg)
    after = model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("goal_embed.") for k in changed), sorted(changed)[:5]
    assert "goal_embed.fc2.weight" in changed and "goal_embed.fc1.weight" in changed
    step = float((after["goal_embed.fc2.weight"] - before["goal_embed.fc2.weight"]).abs().max())
    assert 0.95e-2 <= step <= 2.05e-2           # two Adam steps of at most lr * 10 each, the first a full one
    plain = TextToMotionModel(T2MConfig(n_layer=1, n_head=2, n_embd=32, cond_dim=TEXT_DIM, block_size=24))
    with pytest.raises(ValueError, match="goal module"):
        train_t2m(plain, ex, emb, quiet(T2MTrainConfig, out_dir=str(tmp_path / "plain"), steps=1, batch_size=8,
                                         max_latents=24, goal_module_only=True))


def test_root_steps_chain_back_into_the_path(circle_clip):
    from motionstreamer.representation.features import joints_to_272
    from motionstreamer.train.goals import ROOT_STEP_SCALE, latent_root_path, root_steps

    joints, rotations = circle_clip.canonical()
    path = latent_root_path(joints_to_272(joints, rotations), len(joints) // 4).astype(np.float64)
    steps = root_steps(path).numpy().astype(np.float64) / ROOT_STEP_SCALE
    # walk the steps from the first state with facing/left vectors: the path comes back
    pos, yaw = path[0, :2].copy(), path[0, 2]
    for k, (x, z, turn) in enumerate(steps):
        pos = pos + x * np.array([np.cos(yaw), -np.sin(yaw)]) + z * np.array([np.sin(yaw), np.cos(yaw)])
        yaw = yaw + turn
        np.testing.assert_allclose(pos, path[k + 1, :2], atol=1e-4)
        assert abs(np.angle(np.exp(1j * (yaw - path[k + 1, 2])))) < 1e-4
    assert np.abs(steps[:, 2]).max() > 0.02 and np.abs(steps[:, 1]).max() > 0.05      # it walks and turns


def test_root_aux_loss_only_on_motion_targets(tmp_path):
    from motionstreamer.train.t2m import LatentTextData, T2MTrainConfig, TwoForwardObjective

    ex, emb = tiny_path_examples(tmp_path)
    cfg = T2MTrainConfig(root_aux=1.0, max_latents=24)
    b = LatentTextData(ex, emb, cfg).sample_batch(torch.Generator().manual_seed(0), 8)
    mask = b["root_step_mask"]
    pos = torch.arange(mask.shape[1])[None]
    assert not mask[pos >= b["len"][:, None]].any() and mask.any()
    assert not b["root_step"][~mask & (pos >= b["len"][:, None])].any()
    model = goal_model(seed=0, block_size=24)
    obj = TwoForwardObjective(model, 10, 1, two_forward=False, root_aux=1.0)
    loss, logs = obj(b, 0)
    with torch.no_grad():   # the auxiliary term by hand: the probe on the conditions of the masked positions
        cond = model(b["latents"], b["text"], goal=b.get("goal"))[:, :-1]
        want = ((obj.root_probe(cond[mask]) - b["root_step"][mask]) ** 2).mean()
    assert math.isclose(logs["root_aux"], float(want), rel_tol=1e-4)
    assert "root_step" not in LatentTextData(ex, emb, T2MTrainConfig(max_latents=24)).sample_batch(
        torch.Generator().manual_seed(0), 8)


# ----------------------------------------------------------------------------- the model
def test_absent_goal_adds_exactly_nothing():
    m = goal_model()
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(3, 5, 16, generator=g), torch.randn(3, TEXT_DIM, generator=g)
    none = m(lat, text)
    zero = m(lat, text, goal=torch.zeros(3, 6, GOAL_DIM))
    torch.testing.assert_close(zero, none, atol=0, rtol=0)
    some = torch.zeros(3, 6, GOAL_DIM)
    some[1, 3] = torch.tensor([2.0, 3.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0])
    out = m(lat, text, goal=some)
    torch.testing.assert_close(out[[0, 2]], none[[0, 2]], atol=0, rtol=0)
    torch.testing.assert_close(out[1, :3], none[1, :3], atol=0, rtol=0)   # causal: earlier tokens unchanged
    assert (out[1, 3:] - none[1, 3:]).abs().max() > 1e-3


def test_only_present_goals_count():
    e = GoalEmbed(8)
    x = torch.randn(4, GOAL_DIM) * 3
    x[:, PRESENT] = 1.0
    x[1, PRESENT] = 0.0
    y = e(x)
    assert not y[1].any() and (y[[0, 2, 3]].abs().sum(-1) > 0).all()


def test_model_without_goal_module_refuses_a_goal():
    torch.manual_seed(0)
    m = TextToMotionModel(T2MConfig(n_layer=1, n_head=2, n_embd=16, cond_dim=TEXT_DIM,
                                    head=DiffusionHeadConfig(width=32, depth=1)))
    assert m.goal_embed is None and not any(k.startswith("goal") for k in m.state_dict())
    with pytest.raises(ValueError, match="not trained with goals"):
        m(torch.zeros(1, 2, 16), torch.zeros(1, TEXT_DIM), goal=torch.zeros(1, 3, GOAL_DIM))
    with pytest.raises(ValueError, match="goal"):
        T2MConfig(goal="yes")


# ----------------------------------------------------------------------------- the engine
def recorded(engine):
    """Wrap the engine's backend so every prefill/decode call (with its goal) is kept."""
    calls, backend = [], engine.backend
    prefill, decode = backend.prefill, backend.decode

    def pf(text, hist, slot, goal=None):
        out = prefill(text, hist, slot, goal)
        calls.append(("prefill", [slot], hist.clone(), None if goal is None else goal[None].clone(), out[None], text))
        return out

    def dc(z, slots, rows, goal=None):
        out = decode(z, slots, rows, goal)
        calls.append(("decode", list(slots), z.clone(), None if goal is None else goal.clone(), out, None))
        return out
    backend.prefill, backend.decode = pf, dc
    return calls


@torch.no_grad()
def test_engine_goal_tokens_equal_one_full_forward(tae):
    """Every condition the engine computes (prefill or decode step, goal set, re-expressed, replaced,
    cleared, across window slides) equals the full forward over its context with each token's goal."""
    t2m = goal_model()
    text = FakeTextEncoder(TEXT_DIM)
    eng = StreamingEngine(FakeBundle(tae, t2m), text, capacity=2,
                          config=GenerationConfig(sampling_steps=4, goal_tolerance=0.0, end_threshold=-1.0))
    calls = recorded(eng)
    a, b = eng.add_stream("walk", seed=0), eng.add_stream("run", seed=1)
    eng.set_goal(a, 1.0, 2.0, heading=0.5, seconds=2.0)
    for i in range(22):                                         # block 12: several slides
        eng.step()
        if i == 6:
            eng.set_goal(b, -1.0, 1.0)
        if i == 9:
            eng.set_goal(a, 3.0, -2.0)
        if i == 14:
            eng.clear_goal(a)
    state = {}
    worst, goal_tokens = 0.0, 0
    for call in calls:   # clones outside inference mode: plain tensors the reference forward may use
        kind, slots, x, goal, out, txt = (c.clone() if isinstance(c, torch.Tensor) else c for c in call)
        for i, slot in enumerate(slots):
            g = torch.zeros(2, GOAL_DIM) if goal is None else goal[i]          # per condition row
            if kind == "prefill":
                state[slot] = (list(x), [torch.zeros(2, GOAL_DIM)] * len(x) + [g], txt)
            else:
                state[slot][0].append(x[i])
                state[slot][1].append(g)
            hist, goals, txt_rows = state[slot]
            goal_tokens += bool(g[0, PRESENT])
            assert not g[1].any()                               # guide_goal: the unconditional row has none
            lat = torch.stack(hist)[None].expand(2, -1, -1) if hist else torch.zeros(2, 0, 16)
            ref = t2m(lat, txt_rows, goal=torch.stack(goals, dim=1))[:, -1]
            worst = max(worst, float((ref - out[i]).abs().max() / ref.abs().max()))
    assert worst < 1e-5 and goal_tokens > 15


def test_goal_is_reexpressed_from_the_current_root(tae):
    """The goal vector at each decode step is the world goal seen from the root the stream's frames
    reached (recomputed here from the emitted pelvis positions and the features' headings)."""
    from motionstreamer.representation.features import recover_joints
    from motionstreamer.train.goals import frame_root_path

    t2m = goal_model()
    b = FakeBundle(tae, t2m)
    eng = StreamingEngine(b, FakeTextEncoder(TEXT_DIM), config=GenerationConfig(sampling_steps=4, goal_tolerance=0.0,
                                                                                 end_threshold=-1.0))
    calls = recorded(eng)
    sid = eng.add_stream("walk", seed=3)
    eng.set_goal(sid, 2.0, 5.0, heading=-1.0, seconds=1.0)
    chunks = [c for _ in range(12) for c in eng.step()]
    feats = torch.cat([c.features for c in chunks]).double()
    joints = recover_joints(feats)
    torch.testing.assert_close(joints.float(), torch.cat([c.joints for c in chunks]), atol=1e-3, rtol=0)  # fp32 stream
    path = frame_root_path(feats.numpy())
    decodes = [c for c in calls if c[0] == "decode"]
    for k, call in enumerate(decodes):
        end = path[4 * k + 3]
        yaw = end[2]
        d = np.array([2.0, 5.0]) - end[:2]
        want_x, want_z = d @ [np.cos(yaw), -np.sin(yaw)], d @ [np.sin(yaw), np.cos(yaw)]
        g = call[3][0, 0]
        assert abs(g[0] - want_x) < 1e-3 and abs(g[1] - want_z) < 1e-3, k
        left = 1.0 - 4 * (k + 1) / 30
        if left > 0:
            assert g[HAS_SECONDS] == 1 and abs(g[SECONDS] - left) < 1e-5
        else:                                                   # past the deadline: no time left to give
            assert g[HAS_SECONDS] == 0 and g[SECONDS] == 0
        rel = math.atan2(g[2], g[3])
        assert abs(np.angle(np.exp(1j * (-1.0 - yaw - rel)))) < 1e-3


def reached_at(tae, goal, tolerance, heading_tolerance=math.pi / 6, on_reached="stop", steps=10):
    """(events, chunks) of a stream whose goal changes nothing in its motion (the goal module's last layer
    is zero, steering is off), so the path is the one of the same seed without a goal."""
    eng = StreamingEngine(FakeBundle(tae, goal_model(effective=False)), FakeTextEncoder(TEXT_DIM),
                          config=GenerationConfig(sampling_steps=4, end_threshold=-1.0, goal_tolerance=tolerance,
                                                  goal_heading_tolerance=heading_tolerance,
                                                  on_goal_reached=on_reached, goal_steering=False))
    sid = eng.add_stream("walk", seed=5)
    if goal is not None:
        eng.set_goal(sid, *goal)
    events, chunks = [], []
    for _ in range(steps):
        chunks += eng.step()
        events += eng.events
    return events, chunks


def test_goal_reached_on_both_sides_of_the_tolerance(tae):
    _, free = reached_at(tae, None, 0.3)
    from motionstreamer.train.goals import frame_root_path
    path = frame_root_path(torch.cat([c.features for c in free]).double().numpy())
    end5 = path[4 * 5 + 3]                                       # the root after latent 5
    others = np.linalg.norm(path[3::4, :2] - end5[:2], axis=1)
    others[5] = np.inf
    margin = others.min() / 4
    assert margin > 1e-4
    # a goal `margin` metres from where latent 5 ends (every other latent ends >= 3 margins from it):
    # reached there exactly when the tolerance covers the margin
    goal = (end5[0] + margin, end5[1])
    for tolerance, hit in ((2 * margin, True), (1.01 * margin, True), (0.99 * margin, False), (0.5 * margin, False)):
        events, chunks = reached_at(tae, goal, tolerance=tolerance)
        kinds = [(e.kind, e.latent_index) for e in events if e.kind != "prompt_change"]   # the first prompt's
        if hit:   # then the action ends there: the stream stops after latent 5 ("finished" counts latents out)
            assert kinds == [("goal_reached", 5), ("finished", 6)] and len(chunks) == 6, (kinds, tolerance / margin)
        else:
            assert kinds == [] and len(chunks) == 10, (kinds, tolerance / margin)
    # the facing counts when the goal gives one: the right facing is reached, the opposite one is not
    events, _ = reached_at(tae, (end5[0], end5[1], float(end5[2])), tolerance=1e-3, heading_tolerance=0.01)
    assert ("goal_reached", 5) in [(e.kind, e.latent_index) for e in events]
    events, _ = reached_at(tae, (end5[0], end5[1], float(end5[2]) + math.pi), tolerance=1e-3)
    assert not any(e.kind == "goal_reached" for e in events)
    # "continue": reported, then the prompt goes on
    events, chunks = reached_at(tae, (end5[0], end5[1]), tolerance=1e-3, on_reached="continue")
    assert ("goal_reached", 5) in [(e.kind, e.latent_index) for e in events] and len(chunks) == 10
    assert not any(e.kind == "finished" for e in events)


def test_goal_reached_starts_the_queued_prompt_and_a_new_goal_resumes(tae):
    eng = StreamingEngine(FakeBundle(tae, goal_model(effective=False)), FakeTextEncoder(TEXT_DIM),
                          config=GenerationConfig(sampling_steps=4, end_threshold=-1.0, goal_tolerance=100.0))
    sid = eng.add_stream("walk", seed=5)
    eng.set_goal(sid, 0.0, 1.0)
    eng.push_text(sid, "wave", after_current=True)
    eng.step()                                                  # the queued prompt is next: the action ended
    # the first prompt's change, then the goal ends the action and the queued prompt starts
    assert [e.kind for e in eng.events] == ["prompt_change", "goal_reached", "prompt_change"]
    assert eng.streams[sid].prompt == "wave"
    assert eng.goal_of(sid) is None
    eng.step()
    assert eng.events == []
    eng.set_goal(sid, 0.0, 2.0)
    eng.step()
    assert [e.kind for e in eng.events] == ["goal_reached", "finished"] and sid not in eng.active_ids
    eng.set_goal(sid, 50.0, 50.0)                               # a finished stream resumes its prompt
    assert sid in eng.active_ids
    assert len(eng.step()) == 1 and eng.streams[sid].prompt == "wave"


@pytest.mark.parametrize("bad,field", [(dict(x=float("nan")), "x"), (dict(z=float("inf")), "z"),
                                       (dict(heading=float("nan")), "heading"), (dict(seconds=0), "seconds"),
                                       (dict(seconds=-1.0), "seconds"), (dict(x="1"), "x"),
                                       (dict(seconds=float("inf")), "seconds"), (dict(x=1e9), "x")])
def test_bad_goal_values_are_refused_by_name(tae, bad, field):
    eng = StreamingEngine(FakeBundle(tae, goal_model()), FakeTextEncoder(TEXT_DIM),
                          config=GenerationConfig(sampling_steps=4))
    sid = eng.add_stream("walk", seed=0)
    args = {"x": 1.0, "z": 2.0, "heading": None, "seconds": None} | bad
    with pytest.raises(ValueError, match=f"goal {field} must"):
        eng.set_goal(sid, **args)
    assert eng.goal_of(sid) is None
    eng.set_goal(sid, 1.0, 2.0, heading=0.0, seconds=3.0)       # the same call with good values is taken
    assert eng.goal_of(sid) == policy.Goal(1.0, 2.0, 0.0, 90)


def test_model_without_goals_is_steered_and_refuses_only_without_steering(tae):
    """A text-only model takes a goal through steering alone: the model sees nothing of it (the latents
    and body pose are those of the same seed without a goal), only the root motion is warped; with
    goal steering off nothing would steer, and set_goal is refused saying so."""
    torch.manual_seed(0)
    t2m = TextToMotionModel(T2MConfig(n_layer=1, n_head=2, n_embd=16, cond_dim=TEXT_DIM,
                                      head=DiffusionHeadConfig(width=32, depth=1))).eval()

    def run(goal, steering=True):
        eng = StreamingEngine(FakeBundle(tae, t2m), FakeTextEncoder(TEXT_DIM),
                              config=GenerationConfig(sampling_steps=4, end_threshold=-1.0, goal_steering=steering))
        sid = eng.add_stream("walk", seed=0)
        if goal is not None:
            eng.set_goal(sid, *goal)
        return [c for _ in range(6) for c in eng.step()]

    free, steered = run(None), run((3.0, -2.0))
    assert all(torch.equal(a.latent, b.latent) for a, b in zip(free, steered))
    assert all(torch.equal(a.features[:, 8:], b.features[:, 8:]) for a, b in zip(free, steered))
    assert not all(torch.equal(a.features[:, :8], b.features[:, :8]) for a, b in zip(free, steered))
    with pytest.raises(ValueError, match="not trained with goals.*steering is off"):
        run((1.0, 2.0), steering=False)


def test_graph_backend_with_goals_equals_eager_on_cpu(tae):
    from motionstreamer.runtime.cuda_graph import GraphedBackend

    t2m = goal_model()
    b = FakeBundle(tae, t2m)
    cfg = GenerationConfig(sampling_steps=4, end_threshold=-1.0, goal_tolerance=0.0)
    out = []
    for graphed in (False, True):
        backend = GraphedBackend(b, 2, torch.device("cpu"), torch.float32) if graphed else None
        e = StreamingEngine(b, FakeTextEncoder(TEXT_DIM), capacity=2, config=cfg, backend=backend)
        s0, _ = e.add_stream("walk", seed=1), e.add_stream("jump", seed=2)
        e.set_goal(s0, 1.0, 3.0, seconds=2.0)
        out.append(torch.stack([c.latent for _ in range(8) for c in e.step()]))
    torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_engine_with_goals_equals_eager():
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig.small()).cuda().eval()
    t2m = goal_model().cuda()
    b = FakeBundle(tae, t2m)
    b.mean, b.std = b.mean.cuda(), b.std.cuda()
    cfg = GenerationConfig(sampling_steps=10, end_threshold=-1.0, max_latents=20, goal_tolerance=0.0)
    out = []
    for graphs in (False, True):
        e = StreamingEngine(b, FakeTextEncoder(TEXT_DIM), capacity=3, config=cfg, device="cuda",
                            dtype=torch.float32, cuda_graphs=graphs)
        ids = [e.add_stream(f"prompt {i}", seed=i) for i in range(3)]
        e.set_goal(ids[0], 2.0, 3.0, heading=1.0, seconds=1.5)
        e.set_goal(ids[2], -1.0, 4.0)
        lat = []
        for k in range(20):
            lat += [c.latent for c in e.step()]
            if k == 10:
                e.clear_goal(ids[2])
        out.append(torch.stack(lat))
    torch.testing.assert_close(out[1], out[0], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- ONNX
REL_TOL = 1e-5   # fp32 graph vs module (tests/test_export_onnx.py: reassociated sums in ORT's kernels)


@pytest.fixture(scope="module")
def exported_goal(tmp_path_factory, tae):
    from motionstreamer.checkpoints import load_bundle, save_bundle
    from motionstreamer.export.onnx_export import export_bundle

    t2m = goal_model(block_size=10)
    d = tmp_path_factory.mktemp("goal_bundle")
    g = torch.Generator().manual_seed(1)
    save_bundle(d, tae, t2m, torch.randn(272, generator=g) * 0.1, torch.rand(272, generator=g) + 0.5,
                torch.randn(16, generator=g), text_encoder="fake")
    bundle = load_bundle(d)
    assert bundle.config.t2m.goal is True                       # the bundle says it takes goals
    out = tmp_path_factory.mktemp("goal_onnx")
    export_bundle(bundle, out, variants=(("ddpm", 4),))
    return bundle, out


def rel_close(a, b):
    a, b = np.asarray(a), np.asarray(b.detach() if hasattr(b, "detach") else b)
    assert np.abs(a - b).max() / max(np.abs(b).max(), 1e-6) < REL_TOL


def test_onnx_goal_graphs_match_the_model(exported_goal):
    import onnxruntime as ort

    bundle, out = exported_goal
    m = bundle.t2m
    g = torch.Generator().manual_seed(2)
    text, lat = torch.randn(3, TEXT_DIM, generator=g), torch.randn(3, 4, 16, generator=g)
    goal = torch.tensor([[2.0, 3.0, 0.5, 0.8, 2.0, 1.0, 1.0, 1.0], [0.0] * 8,
                         [-1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    cache = m.new_kv_cache(3)
    ref = m.prefill(text, lat, cache, goal=goal)
    assert (ref[0] - m.prefill(text, lat, m.new_kv_cache(3))[0]).abs().max() > 1e-3   # the goal matters
    pad = torch.zeros(3, m.config.block_size - 1, 16)
    pad[:, :4] = lat
    sess = ort.InferenceSession(str(out / "prefill.onnx"), providers=["CPUExecutionProvider"])
    cond, k, v = sess.run(None, {"text": text.numpy(), "latents": pad.numpy(), "n_latents": np.full(3, 4),
                                 "goal": goal.numpy()})
    rel_close(cond, ref)
    z = torch.randn(3, 16, generator=g)
    ref2 = m.decode_step(z, cache, goal=goal.flip(0))
    sess = ort.InferenceSession(str(out / "decode_step.onnx"), providers=["CPUExecutionProvider"])
    cond2, _, _ = sess.run(None, {"latent": z.numpy(), "k_cache": k, "v_cache": v, "pos": np.full(3, 5),
                                  "goal": goal.flip(0).numpy()})
    rel_close(cond2, ref2)


def test_ort_engine_with_goal_matches_torch(exported_goal):
    from motionstreamer.runtime.ort_backend import ort_session
    from motionstreamer.runtime.session import StreamingSession

    bundle, out = exported_goal
    cfg = GenerationConfig(sampling_steps=4, end_threshold=-1.0, max_latents=12, goal_tolerance=0.0)
    a = StreamingSession(bundle, FakeTextEncoder(TEXT_DIM), config=cfg, seed=7)
    b = ort_session(out, FakeTextEncoder(TEXT_DIM), config=cfg, seed=7)
    for s in (a, b):
        s.push_text("walk forward")
        s.set_goal(1.5, 2.5, heading=0.3, seconds=1.2)
    ca, cb = list(a), list(b)
    assert len(ca) == len(cb) == 12                             # crosses the 9-latent window: re-prefill
    rel_close(torch.stack([c.latent for c in cb]), torch.stack([c.latent for c in ca]))
    rel_close(torch.cat([c.features for c in cb]), torch.cat([c.features for c in ca]))
    # joints integrate the random model's root velocities over a wandering path (up to ~250 m here): the
    # per-frame differences above add up along it
    ja, jb = torch.cat([c.joints for c in ca]), torch.cat([c.joints for c in cb])
    assert (ja - jb).abs().max() / ja.abs().max() < 1e-4


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("spec,msg", [("nan,1", "finite"), ("1,inf", "finite"), ("1,2@0", "seconds"),
                                      ("1", "X,Z"), ("1,2,3,4", "X,Z"), ("a,b", "numbers"), ("1,2@", "X,Z"),
                                      ("1,2,nan@3", "heading")])
def test_cli_bad_goal_is_one_line(spec, msg, capsys, tmp_path):
    code, _, err = run_cli(["stream", "--prompt", "a person walks", "--goal", spec, "--out", tmp_path / "x", "--quiet"],
                           capsys)
    assert code == 2 and msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["maybe", "ON", ""])
def test_cli_goal_steering_takes_on_or_off(value, capsys, tmp_path):
    code, _, err = run_cli(["stream", "--prompt", "a person walks", "--goal", "1,2", "--goal-steering", value,
                            "--out", tmp_path / "x", "--quiet"], capsys)
    assert code == 2 and "--goal-steering" in err and "on or off" in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_parse_goal():
    from motionstreamer.runtime.commands import parse_goal

    assert parse_goal("3,-2") == (3.0, -2.0, None, None)
    assert parse_goal("3,-2,1.5@4") == (3.0, -2.0, 1.5, 4.0)
    assert parse_goal(" 1 , 2 @ 0.5") == (1.0, 2.0, None, 0.5)


@torch.no_grad()
def test_an_unreached_goal_keeps_its_action_going_within_the_prompts_duration(tae):
    """With on_action_end="stop", an action that ends by itself (here every latent past
    min_action_latents is "the end": end_threshold 1e9) stops a stream without a goal; with a goal not
    yet reached it restarts from the current pose (a context of its last few latents) and goes on for
    what is left of the prompt's duration, not for a new one."""
    def run(goal, **config):
        eng = StreamingEngine(FakeBundle(tae, goal_model(effective=False), end_latent=torch.zeros(16)),
                              FakeTextEncoder(TEXT_DIM),
                              config=GenerationConfig(sampling_steps=2, end_threshold=1e9, min_action_latents=5,
                                                      goal_tolerance=0.01, **config))
        calls = recorded(eng)
        sid = eng.add_stream("walk", seed=1, max_latents=16)
        if goal is not None:
            eng.set_goal(sid, *goal)
        chunks, events = [], []
        while eng.active_ids and len(chunks) < 40:
            chunks += eng.step()
            events += eng.events
        return chunks, [e.kind for e in events], calls

    chunks, kinds, _ = run(None)
    assert len(chunks) == 5 and kinds == ["prompt_change", "action_end", "finished"]
    chunks, kinds, calls = run((50.0, 50.0))                     # far: never reached
    assert len(chunks) == 16 and kinds.count("action_end") == 3 and kinds[-1] == "finished"
    # each restart's prefill sees the last few latents emitted, fewer than the action's five
    latents = torch.stack([c.latent for c in chunks])
    restarts = [c[2] for c in calls if c[0] == "prefill"][1:]
    assert len(restarts) == 3
    n = policy.RESTART_CONTEXT_LATENTS
    assert 0 < n < 5
    for k, hist in zip((5, 10, 15), restarts):
        torch.testing.assert_close(hist, latents[k - n:k].to(hist.dtype), rtol=0, atol=0)
    # "continue" restarts the same way, each time with the prompt's whole duration again
    chunks, kinds, _ = run(None, on_action_end="continue", max_latents=30)
    assert len(chunks) == 30 and "finished" not in kinds[:-1]


@torch.no_grad()
def test_goals_protocol_restarts_ended_actions_and_keeps_each_clips_length(tae):
    """evaluate goals' generator: with goals the model's action ends are on (as in the runtime) and each
    restarts its action, so every stream still has its clip's length; without goals they are off."""
    from motionstreamer.eval.protocols import runtime_goal_generator
    bundle = FakeBundle(tae, goal_model(effective=False), end_latent=torch.zeros(16))
    lengths, goals = [13, 24, 40], [(1.0, 2.0, None, 1.0), (-2.0, 1.0, None, 2.0), (0.0, 3.0, None, 3.0)]
    ending = GenerationConfig(sampling_steps=2, end_threshold=1e9)       # every latent past the 2nd ends
    never = GenerationConfig(sampling_steps=2, end_threshold=-1.0)

    def generate(config, goals):
        return runtime_goal_generator(bundle, FakeTextEncoder(TEXT_DIM), config=config)(["a", "b", "c"], lengths,
                                                                                        goals, 0)
    with_ends, without = generate(ending, goals), generate(never, goals)
    assert [f.shape[0] for f in with_ends] == [f.shape[0] for f in without] == [16, 24, 40]
    assert not torch.equal(with_ends[2], without[2])                      # the restarts changed the motion
    text_only = generate(ending, [None] * 3)
    assert [f.shape[0] for f in text_only] == [16, 24, 40]
