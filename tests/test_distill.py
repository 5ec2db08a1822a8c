"""Few-step head distillation: the student's sampler, its objective, the trainer, the bundle, the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder
from train_tiny import fitted_teacher, quiet, tiny_t2m, tiny_tae

from motionstreamer.checkpoints import (
    CheckpointError,
    add_student_head,
    load_bundle,
    save_bundle,
)
from motionstreamer.eval.head_quality import (
    energy_distance,
    extrapolated_sampler,
    guidance_capture,
    sliced_wasserstein,
    teacher_sampler,
)
from motionstreamer.models.diffusion import DiffusionHeadConfig
from motionstreamer.models.few_step import (
    StudentHead,
    StudentHeadConfig,
    student_settings,
    student_timesteps,
)
from motionstreamer.models.sampling import SamplerSettings
from motionstreamer.train.distill import (
    Contexts,
    DistillConfig,
    EnergyDistillObjective,
    TeacherBank,
    context_conditions,
    dataset_contexts,
    distill_head,
    energy_score,
    rollout_contexts,
    rollout_schedules,
    teacher_forced_conditions,
    teacher_samples,
)

HEAD = DiffusionHeadConfig(width=64, depth=2, cond_dim=32)


def student(seed=0, **kw):
    torch.manual_seed(seed)
    s = StudentHead(HEAD, StudentHeadConfig(**kw))
    for p in s.parameters():   # the zero-initialised AdaLN/output layers would make every path equal
        p.data.normal_(0, 0.1)
    return s.double()


def test_timesteps_start_where_the_teacher_starts_and_nest():
    assert student_timesteps(48, 1) == [48]
    assert student_timesteps(48, 2) == [24, 48]
    assert student_timesteps(48, 4) == [12, 24, 36, 48]
    assert set(student_timesteps(48, 2)) <= set(student_timesteps(48, 4))
    assert student_timesteps(49, 49) == list(range(1, 50))
    for bad in (0, 49, 2.0, True):
        with pytest.raises(ValueError, match="student steps"):
            student_timesteps(48, bad)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_sampler_equals_its_reference_loop(steps):
    s = student()
    cond = torch.randn(5, 32, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    noise = (torch.randn(10, 16, generator=gen, dtype=torch.float64),
             torch.randn(steps, 10, 16, generator=gen, dtype=torch.float64))
    fast = s.sample(cond.repeat_interleave(2, 0), settings=student_settings(steps), noise=noise)
    ref = s.sample(cond.repeat_interleave(2, 0), settings=student_settings(steps), noise=noise, fast=False)
    rep = s.rollout(cond, steps, noise, repeats=2)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(rep, ref, rtol=0, atol=1e-12)
    # by hand: x0 from eps, then the posterior of the k-step process (noise only between steps)
    proc, x = s.sampling_process(steps), noise[0]
    t = student_timesteps(48, steps)
    for i in reversed(range(steps)):
        eps = s.net(x, torch.full((10,), t[i]), cond.repeat_interleave(2, 0))
        ab = proc.alphas_cumprod[i]
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        ab_prev = proc.alphas_cumprod_prev[i]
        beta = 1 - ab / ab_prev
        mean = (ab_prev ** 0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) * x) / (1 - ab)
        x = mean + (beta * (1 - ab_prev) / (1 - ab)) ** 0.5 * noise[1][i] if i > 0 else mean
    torch.testing.assert_close(ref, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_guided_student_sampler_equals_a_float64_transcription(steps):
    """A student that keeps guidance (cfg_scale != 1) samples on [cond; uncond] with its own network:
    eps_u + w (eps_c - eps_u) at each of its k timesteps round(48 j / k), the cosine schedule's alpha_bar
    from its closed form, the ancestral posterior, no noise at the last step; the training rollout is
    the same sampler."""
    w = 2.5
    s = student(cfg_scale=w)
    g = torch.Generator().manual_seed(3)
    cond, uncond = (torch.randn(3, 32, generator=g, dtype=torch.float64) for _ in range(2))
    noise = (torch.randn(6, 16, generator=g, dtype=torch.float64),
             torch.randn(steps, 6, 16, generator=g, dtype=torch.float64))
    c, u = cond.repeat_interleave(2, 0), uncond.repeat_interleave(2, 0)
    settings = student_settings(steps, cfg_scale=w)
    assert settings.guided and settings.condition_rows == 2
    fast = s.sample(c, u, settings=settings, noise=noise)
    plain = s.sample(c, u, settings=settings, noise=noise, fast=False)
    rep = s.rollout(cond, steps, noise, repeats=2, uncond=uncond)

    def alpha_bar(t):   # Nichol & Dhariwal's cosine schedule over 50 training steps, at timestep t
        f = lambda v: math.cos((v + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return f((t + 1) / 50) / f(0)
    ts = [round(48 * j / steps) for j in range(1, steps + 1)]
    x = noise[0]
    for i in reversed(range(steps)):
        t = torch.full((6,), ts[i])
        e_c, e_u = s.net(x, t, c), s.net(x, t, u)
        eps = e_u + w * (e_c - e_u)
        ab, ab_prev = alpha_bar(ts[i]), (alpha_bar(ts[i - 1]) if i > 0 else 1.0)
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        beta = 1 - ab / ab_prev
        mean = (ab_prev ** 0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) * x) / (1 - ab)
        x = mean + (beta * (1 - ab_prev) / (1 - ab)) ** 0.5 * noise[1][i] if i > 0 else mean
    for got in (fast, plain, rep):
        torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)
    # guidance is not a no-op here, and a guided rollout needs its unconditional rows
    assert (s.sample(c, settings=student_settings(steps), noise=noise) - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match="guided student needs uncond rows"):
        s.rollout(cond, steps, noise, repeats=2)
    with pytest.raises(ValueError, match="guided student needs uncond rows"):
        s.rollout(cond, steps, noise, repeats=2, uncond=uncond[:2])


def test_head_quality_samples_a_guided_student_on_both_rows():
    """evaluate head's student sampler: a student that keeps guidance reads the uncond row of each pair
    (changing it changes the samples; equal rows make guidance a no-op, so the samples are the one-row
    student's), a one-row student never does."""
    from motionstreamer.eval.head_quality import student_sampler

    g = torch.Generator().manual_seed(5)
    c, u = torch.randn(4, 32, generator=g, dtype=torch.float64), torch.randn(4, 32, generator=g, dtype=torch.float64)
    guided, one_row = student(cfg_scale=3.0, steps=(2,), default_steps=2), student(steps=(2,), default_steps=2)
    one_row.load_state_dict(guided.state_dict())

    def draw(s, pairs):
        return student_sampler(s, 2)(pairs, 3, torch.Generator().manual_seed(0))
    pairs, other = torch.stack([c, u], 1), torch.stack([c, u.flip(0)], 1)
    assert (draw(guided, pairs) - draw(guided, other)).abs().max() > 1e-3
    torch.testing.assert_close(draw(one_row, pairs), draw(one_row, other), rtol=0, atol=0)
    same = torch.stack([c, c], 1)
    torch.testing.assert_close(draw(guided, same), draw(one_row, pairs), rtol=1e-9, atol=1e-9)


def test_a_guided_student_cannot_own_a_conditional_path():
    with pytest.raises(ValueError, match="cannot own a conditional path"):
        StudentHeadConfig(cfg_scale=4.0, condition_blocks=1)
    assert StudentHeadConfig(cfg_scale=1.0, condition_blocks=1).condition_blocks == 1
    with pytest.raises(ValueError, match="keep_guidance samples on the teacher's"):
        DistillConfig(keep_guidance=True, condition_blocks=1).check()


def test_student_sampler_checks_its_inputs():
    s = student()
    with pytest.raises(ValueError, match="cond must have shape"):
        s.sample(torch.zeros(2, 31, dtype=torch.float64), settings=student_settings(2))
    with pytest.raises(ValueError, match="step noise must have shape"):
        s.sample(torch.zeros(2, 32, dtype=torch.float64), settings=student_settings(2),
                 noise=(torch.zeros(2, 16), torch.zeros(1, 2, 16)))
    with pytest.raises(ValueError, match="repeats"):
        s.rollout(torch.zeros(2, 32, dtype=torch.float64), 2, None, repeats=0)
    with pytest.raises(ValueError, match="student head samples with 'ddpm'"):
        SamplerSettings(sampling_steps=2, sampler="ddim", head="student")


@pytest.mark.parametrize("field,value,msg", [
    ("steps", [], "steps must be distinct"), ("steps", [1, 1], "steps must be distinct"),
    ("steps", [0, 2], "steps must be distinct"), ("default_steps", 3, "default_steps"),
    ("kind", "ddpm", "kind"), ("teacher_cfg_scale", float("nan"), "teacher_cfg_scale"),
    ("top_timestep", 0, "top_timestep"), ("cfg_scale", float("nan"), "cfg_scale"), ("cfg_scale", True, "cfg_scale"),
    ("cfg_scale", 100.5, "cfg_scale"), ("cfg_scale", "4", "cfg_scale")])
def test_student_config_errors_name_the_field(field, value, msg):
    d = StudentHeadConfig().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=msg):
        StudentHeadConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown student_head field"):
        StudentHeadConfig.from_dict({**StudentHeadConfig().to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="not 3"):
        StudentHeadConfig().check_steps(3)


def test_student_config_reads_the_keys_older_bundles_wrote():
    """Bundles written before the one sampler vocabulary (the embedded model's until it was migrated) name
    the teacher's settings teacher_cfg / teacher_skip_terminal and the recipe method: read as the current
    fields, written back only under the current names; both spellings at once is an error."""
    old = {"kind": "few-step", "steps": [1, 2, 4], "default_steps": 4, "top_timestep": 48, "teacher_cfg": 3.5,
           "teacher_steps": 50, "teacher_skip_terminal": False, "method": "some recipe"}
    c = StudentHeadConfig.from_dict(old)
    assert (c.teacher_cfg_scale, c.teacher_skip_terminal_step, c.distillation) == (3.5, False, "some recipe")
    assert set(c.to_dict()) == {"kind", "steps", "default_steps", "top_timestep", "teacher_cfg_scale", "teacher_steps",
                                "teacher_skip_terminal_step", "distillation", "condition_blocks", "cfg_scale"}
    assert c.condition_blocks is None      # an older student conditions on the teacher's transformer
    assert c.cfg_scale == 1.0              # ... and samples from that one row, unguided
    with pytest.raises(ValueError, match="not both"):
        StudentHeadConfig.from_dict({**old, "teacher_cfg_scale": 3.5})


def test_energy_score_prefers_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 32, 4, generator=g)
    same = torch.randn(64, 32, 4, generator=g)
    shifted, narrow = same + 0.5, same * 0.5
    assert energy_score(same, y) < energy_score(shifted, y)
    assert energy_score(same, y) < energy_score(narrow, y)   # a collapsed sampler scores worse
    # energy distance: unbiased (scatters around 0 for one distribution), positive for different ones
    assert abs(float(energy_distance(same, y).mean())) < 0.02
    assert float(energy_distance(shifted, y).mean()) > 0.1
    assert float(sliced_wasserstein(shifted, y).mean()) > float(sliced_wasserstein(same, y).mean()) + 0.2


def test_guidance_capture_reads_the_share_of_the_mean_shift():
    g = torch.Generator().manual_seed(0)
    unguided, shift = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    noise = torch.randn(8, 4096, 4, generator=g) * 0.1
    for share in (0.0, 0.4, 1.0):
        got = guidance_capture(unguided[:, None] + share * shift[:, None] + noise, unguided + shift, unguided)
        assert abs(got - share) < 0.01, (share, got)


def test_extrapolated_sampler_is_guidance_moved_into_the_condition():
    """One row on u + s (c - u): at s = 1 it is the unguided teacher on c, draw for draw; at s = 0 the
    one on u; a u-predictor replaces u (the probe of what a one-row head can know)."""
    head = student(seed=3).double()
    g = torch.Generator().manual_seed(1)
    pairs = torch.randn(3, 2, HEAD.cond_dim, generator=g, dtype=torch.float64)
    draw = lambda sampler, c: sampler(c, 5, torch.Generator().manual_seed(7))
    on_c = draw(teacher_sampler(head, 1.0, 4, False), pairs)
    torch.testing.assert_close(draw(extrapolated_sampler(head, 1.0, 4, False), pairs), on_c)
    on_u = draw(teacher_sampler(head, 1.0, 4, False), pairs[:, [1, 1]])
    torch.testing.assert_close(draw(extrapolated_sampler(head, 0.0, 4, False), pairs), on_u)
    assert not torch.allclose(on_c, on_u)
    predicted = draw(extrapolated_sampler(head, 0.0, 4, False, predict_uncond=lambda c: c), pairs)
    torch.testing.assert_close(predicted, on_c)


@pytest.mark.parametrize("extra, msg", [(["--samples", "1"], "--samples must be >= 2"),
                                        (["--conditions", "0"], "--conditions must be >= 1"),
                                        (["--checkpoint", "."], "is not a motionstreamer model directory")])
def test_guidance_probe_script_bad_input_is_one_line(extra, msg, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "student_guidance_probe.py"
    r = subprocess.run([sys.executable, str(script), "--data", str(tmp_path), "--latents", str(tmp_path), *extra],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_objective_gradients_are_finite_with_equal_samples():
    s = student().float()
    obj = EnergyDistillObjective(s, (1, 2), 4)
    batch = {"cond": torch.randn(3, 32), "target": torch.zeros(3, 4, 16)}
    loss, logs = obj(batch, 0)
    loss.backward()
    assert set(logs) == {"energy_distance_1", "energy_distance_2"}
    assert all(torch.isfinite(p.grad).all() for p in s.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny teacher bundle (root/teacher) whose head is briefly trained on its transformer's teacher-forced
    conditions (so its guided samples are on the data's scale), and latent examples."""
    root = tmp_path_factory.mktemp("distill")
    _, examples, emb = fitted_teacher(root)
    return root, examples, emb


def test_conditions_are_the_transformers_teacher_forced_outputs(tiny):
    root, examples, emb = tiny
    t2m = load_bundle(root / "teacher").t2m
    pairs = teacher_forced_conditions(t2m, examples, emb)
    assert pairs.shape == (sum(len(e.latents_b) for e in examples), 2, 32)
    ex = examples[1]                                   # history of 1 latent, then B
    seq = torch.cat([torch.from_numpy(ex.latents_a), torch.from_numpy(ex.latents_b)])[None]
    first = len(examples[0].latents_b)
    want_c = t2m(seq, emb[ex.caption][None])[0, 1:1 + len(ex.latents_b)]
    want_u = t2m(seq, emb[""][None])[0, 1:1 + len(ex.latents_b)]
    torch.testing.assert_close(pairs[first:first + len(ex.latents_b), 0], want_c)
    torch.testing.assert_close(pairs[first:first + len(ex.latents_b), 1], want_u)
    sub = teacher_forced_conditions(t2m, examples, emb, count=7, seed=3)
    assert sub.shape == (7, 2, 32)
    # a subset computes only the sequences it needs (other padding, so equal up to rounding)
    assert all(((pairs - r).abs().amax(dim=(1, 2)) < 1e-5).any() for r in sub)


def test_teacher_bank_is_the_runtime_sampler_and_chunk_independent(tiny):
    root, examples, emb = tiny
    t2m = load_bundle(root / "teacher").t2m
    pairs = teacher_forced_conditions(t2m, examples, emb, count=6)
    a = teacher_samples(t2m.diff_loss, pairs, 3, 4.0, 50, True, seed=0, chunk=4)
    assert a.shape == (6, 3, 16) and torch.isfinite(a).all()
    # the first chunk is exactly the guided sampler on [cond; uncond] with its generator's noise
    from motionstreamer.models.sampling import draw_sampling_noise
    gen = torch.Generator().manual_seed(0)
    c = pairs[:4]
    noise = draw_sampling_noise(gen, 12, 49, 16)
    want = t2m.diff_loss.sample(c[:, 0].repeat_interleave(3, 0), c[:, 1].repeat_interleave(3, 0),
                                SamplerSettings(sampling_steps=50, cfg_scale=4.0, skip_terminal_step=True), noise=noise)
    torch.testing.assert_close(a[:4].reshape(12, 16), want)


def test_contexts_of_the_dataset_and_the_teachers_rows_there(tiny):
    root, examples, emb = tiny
    t2m = load_bundle(root / "teacher").t2m
    c = dataset_contexts(examples, emb, t2m.config.block_size)
    ex = examples[2]                                            # history of 2 latents, then B
    assert c.first[2] == 2 and c.lengths[2] == 2 + len(ex.latents_b)
    assert torch.equal(c.latents[2, :2], torch.from_numpy(ex.latents_a)) and torch.equal(c.text[2], emb[ex.caption])
    seq, pos = torch.tensor([2, 0, 2]), torch.tensor([3, 1, 2])
    rows = context_conditions(t2m, c, seq, pos, emb[""])
    full = torch.cat([torch.from_numpy(ex.latents_a), torch.from_numpy(ex.latents_b)])[None]
    torch.testing.assert_close(rows[0, 0], t2m(full, emb[ex.caption][None])[0, 3])
    torch.testing.assert_close(rows[2, 1], t2m(full, emb[""][None])[0, 2])
    e0 = torch.from_numpy(examples[0].latents_b)[None]
    torch.testing.assert_close(rows[1, 0], t2m(e0, emb[examples[0].caption][None])[0, 1])


def test_rollout_contexts_are_the_students_streams(tiny):
    from motionstreamer.runtime.batch import run_schedules
    from motionstreamer.runtime.engine import GenerationConfig
    from motionstreamer.train.distill import EmbeddingTable
    from motionstreamer.train.t2m import LatentExample

    root, examples, emb = tiny
    teacher = load_bundle(root / "teacher")
    s = StudentHead(teacher.t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2, condition_blocks=1),
                    teacher.t2m.config).init_from(teacher.t2m)
    pair = LatentExample("caption 3", np.zeros((2, 16), np.float32), np.zeros((3, 16), np.float32),
                         history_caption="caption 1")
    schedules = rollout_schedules([examples[0], examples[1], pair])
    # example 1 has a history but no history caption: no schedule
    assert schedules == [[("caption 0", len(examples[0].latents_b))], [("caption 1", 2), ("caption 3", 3)]]
    c = rollout_contexts(teacher, s, emb, schedules, 2, seed=5, block_size=teacher.t2m.config.block_size)
    from motionstreamer.eval.selection import with_student
    z = run_schedules(with_student(teacher, s), EmbeddingTable(emb), schedules, GenerationConfig(head="student"),
                      seed=5, latents=True)
    n0 = len(examples[0].latents_b)
    assert c.lengths.tolist() == [n0, 2, 5] and c.first.tolist() == [0, 0, 2]
    assert torch.equal(c.latents[0, :n0], z[0]) and torch.equal(c.latents[2, :5], z[1])
    assert torch.equal(c.latents[1, :2], z[1][:2])
    assert torch.equal(c.text[1], emb["caption 1"]) and torch.equal(c.text[2], emb["caption 3"])


def test_objective_conditions_come_through_the_students_path_and_train_it(tiny):
    root, examples, emb = tiny
    t2m = load_bundle(root / "teacher").t2m
    s = StudentHead(t2m.config.head, StudentHeadConfig(steps=(1,), default_steps=1, condition_blocks=1),
                    t2m.config).init_from(t2m)
    with torch.no_grad():
        s.condition.out_proj.weight.add_(0.1)
    c = dataset_contexts(examples, emb, t2m.config.block_size)
    seq, pos = c.targets()
    bank = TeacherBank(c, seq, pos, context_conditions(t2m, c, seq, pos, emb[""]), torch.randn(len(seq), 3, 16), {})
    batch = bank.sample_batch(torch.Generator().manual_seed(0), 6)
    obj = EnergyDistillObjective(s, (1,), 3, t2m, cfg_scale=4.0, guidance_weight=0.5)
    got = obj.conditions(batch)
    model = s.model(t2m)
    for j in range(6):
        r, p = int(batch["row"][j]), int(batch["pos"][j])
        n = int(batch["lengths"][r])
        want = model(batch["latents"][r:r + 1, :n], batch["text"][r:r + 1])[0, p]
        torch.testing.assert_close(got[j], want, rtol=1e-5, atol=1e-5)
    loss, logs = obj(batch, 0)
    loss.backward()
    assert set(logs) == {"energy_distance_1", "guidance_mse"}
    assert s.condition.blocks[0].attn.c_attn.weight.grad.abs().sum() > 0 and s.net.input_proj.weight.grad is not None
    assert all(p.grad is None for p in t2m.parameters())          # the teacher is frozen


def test_guided_eps_regression_is_zero_for_the_teacher_itself_without_guidance(tiny):
    root, examples, emb = tiny
    t2m = load_bundle(root / "teacher").t2m
    s = StudentHead(t2m.config.head, StudentHeadConfig(steps=(1,), default_steps=1, condition_blocks=0),
                    t2m.config).init_from(t2m)
    c = dataset_contexts(examples, emb, t2m.config.block_size)
    seq, pos = c.targets()
    bank = TeacherBank(c, seq, pos, context_conditions(t2m, c, seq, pos, emb[""]), torch.randn(len(seq), 3, 16), {})
    batch = bank.sample_batch(torch.Generator().manual_seed(0), 8)
    # cfg 1: the guided eps is the teacher's conditional eps, which a student equal to the teacher predicts
    loss, _ = EnergyDistillObjective(s, (1,), 3, t2m, cfg_scale=1.0).guidance_loss(batch, EnergyDistillObjective(
        s, (1,), 3, t2m).conditions(batch))
    assert float(loss) < 1e-10
    loss4, _ = EnergyDistillObjective(s, (1,), 3, t2m, cfg_scale=4.0).guidance_loss(batch, batch["cond"])
    assert float(loss4) > 1e-4


@pytest.mark.parametrize("recipe", [{"condition_blocks": 1, "keep_guidance": False}, {}],
                         ids=["one-row, own block", "guidance kept (the default)"])
def test_rounds_of_rollouts_and_selection_return_the_best_round(tiny, tmp_path, recipe):
    root, examples, emb = tiny
    from motionstreamer.train.t2m import LatentExample
    pairs = [LatentExample(f"caption {i}", examples[i].latents_b[:2], examples[i + 1].latents_b,
                           history_caption=f"caption {i + 1}") for i in range(3)]
    config = quiet(DistillConfig, out_dir=str(tmp_path / "run"), steps=9, batch_size=8, lr=1e-3, warmup_steps=0,
                   conditions=32, teacher_samples=3, student_samples=3, student_steps=(1, 2), save_every=100,
                   log_every=3, rollout_rounds=2, rollout_conditions=12, **recipe)
    assert config.round_ends() == [3, 6, 9]
    seen = []

    def select(student):
        seen.append({k: v.clone() for k, v in student.state_dict().items()})
        return {"score": [2.0, -1.0, 0.5][len(seen) - 1]}        # round 1 is the best
    s, res = distill_head(load_bundle(root / "teacher"), examples + pairs, emb, config, select=select,
                          teacher_name="tiny")
    assert res.step == 9 and len(seen) == 3
    assert json.loads((tmp_path / "run" / "selection.json").read_text())[1] == {"round": 1, "step": 6, "score": -1.0}
    for k, v in s.state_dict().items():
        assert torch.equal(v, seen[1][k]), k
    assert not all(torch.equal(v, seen[2][k]) for k, v in s.state_dict().items())
    for r in (1, 2):
        b = torch.load(tmp_path / "run" / f"rollout_bank_{r}.pt", weights_only=True)
        assert len(b["seq"]) == 12 and set(b["source"].tolist()) == {r} and torch.isfinite(b["samples"]).all()
    assert s.student_config.cfg_scale == (1.0 if recipe else config.cfg_scale)
    assert (s.condition is None) == (not recipe)


def test_distillation_loss_falls_and_the_bundle_round_trips(tiny, tmp_path):
    root, examples, emb = tiny
    teacher = load_bundle(root / "teacher")
    config = quiet(DistillConfig, out_dir=str(tmp_path / "run"), steps=60, batch_size=16, lr=1e-3, warmup_steps=0,
                conditions=64, teacher_samples=8, student_samples=8, student_steps=(1, 2), save_every=30,
                log_every=10, ema_decay=None, keep_guidance=False, condition_blocks=1, rollout_rounds=0)
    s, res = distill_head(teacher, examples, emb, config, teacher_name="tiny")
    first = sum(v for _, v in res.losses[:10]) / 10
    last = sum(v for _, v in res.losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "run" / "teacher_bank.pt").is_file()
    out = add_student_head(root / "teacher", s, tmp_path / "student_bundle")
    for name in ("tae.safetensors", "t2m.safetensors", "stats.safetensors"):
        assert (out / name).read_bytes() == (root / "teacher" / name).read_bytes()
    b = load_bundle(out)
    assert (b.student is not None and b.student.student_config.steps == (1, 2)
            and b.student.student_config.default_steps == 2)
    assert b.student.student_config.top_timestep == 48 and b.student.student_config.teacher_skip_terminal_step
    for k, v in s.state_dict().items():
        assert torch.equal(b.student.state_dict()[k], v)
    assert load_bundle(root / "teacher").student is None
    # resume continues the run from its checkpoint (same bank, read back)
    cfg2 = config.updated({"steps": 70})
    _, res2 = distill_head(load_bundle(root / "teacher"), examples, emb, cfg2, teacher_name="tiny",
                           resume=tmp_path / "run" / "checkpoint_last.pt")
    assert res2.step == 70 and len(res2.losses) == 10


def test_student_bundle_errors_are_clear(tiny, tmp_path):
    root, examples, emb = tiny
    s = StudentHead(load_bundle(root / "teacher").t2m.config.head, StudentHeadConfig(steps=(4,), default_steps=4))
    out = add_student_head(root / "teacher", s, tmp_path / "b")
    from safetensors.torch import load_file, save_file
    f = out / "student_head.safetensors"
    state = load_file(str(f))
    save_file({**state, "net.extra": torch.zeros(1)}, str(f))
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_bundle(out)
    f.unlink()
    with pytest.raises(CheckpointError, match="student_head.safetensors.*names a student head"):
        load_bundle(out)
    save_file(state, str(f))
    config = json.loads((out / "config.json").read_text())
    config["student_head"]["steps"] = [0]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="bad 'student_head' config"):
        load_bundle(out)
    other = StudentHead(DiffusionHeadConfig(width=32, depth=2, cond_dim=32), StudentHeadConfig())
    with pytest.raises(CheckpointError, match="differs from the t2m model's head"):
        add_student_head(root / "teacher", other, tmp_path / "c")


def small_contexts():
    lat = torch.arange(2 * 5 * 16, dtype=torch.float32).reshape(2, 5, 16)
    return Contexts(lat, torch.tensor([5, 3]), torch.tensor([2, 0]), torch.randn(2, 8))


def test_bank_rejects_non_finite_samples_and_targets_outside_their_contexts():
    c = small_contexts()
    seq, pos = torch.tensor([0, 1]), torch.tensor([4, 2])
    with pytest.raises(ValueError, match="NaN"):
        TeacherBank(c, seq, pos, torch.zeros(2, 2, 4), torch.full((2, 3, 16), float("nan")), {})
    with pytest.raises(ValueError, match="outside their contexts"):
        TeacherBank(c, seq, torch.tensor([4, 3]), torch.zeros(2, 2, 4), torch.zeros(2, 3, 16), {})
    with pytest.raises(ValueError, match="every context needs a target"):
        Contexts(c.latents, torch.tensor([5, 3]), torch.tensor([5, 0]), c.text)


def test_contexts_targets_and_batches():
    c = small_contexts()
    seq, pos = c.targets()
    assert seq.tolist() == [0, 0, 0, 1, 1, 1] and pos.tolist() == [2, 3, 4, 0, 1, 2]
    s2, p2 = c.targets(count=4, seed=1)
    assert len(s2) == 4 and set(zip(s2.tolist(), p2.tolist())) <= set(zip(seq.tolist(), pos.tolist()))
    b = c.gather(torch.tensor([1, 1]))
    assert b["latents"].shape == (1, 3, 16) and torch.equal(b["latents"][0], c.latents[1, :3])
    assert b["row"].tolist() == [0, 0] and b["lengths"].tolist() == [3]
    both = c.cat(Contexts(torch.ones(1, 7, 16), torch.tensor([7]), torch.tensor([6]), torch.zeros(1, 8)))
    assert both.latents.shape == (3, 7, 16) and both.first.tolist() == [2, 0, 6]
    assert torch.equal(both.latents[:2, :5], c.latents) and not both.latents[:2, 5:].any()   # padded with zeros


def test_switch_share_draws_targets_right_after_a_prompt_change():
    """switch_share of the drawn targets sit in the first 3 positions after a history (a prompt change);
    0 draws uniformly; more than there are takes them all and fills up with the rest."""
    L = 30
    ctx = Contexts(torch.zeros(40, L, 16), torch.full((40,), L), torch.tensor([0] * 20 + [10] * 20), torch.zeros(40, 8))
    # 20 switch contexts x 3 switch positions = 60 of 20 * 30 + 20 * 20 = 1000 targets
    def near(seq, pos):
        return sum(1 for q, p in zip(seq.tolist(), pos.tolist()) if q >= 20 and 10 <= p < 13)
    seq, pos = ctx.targets(200, seed=0, switch_share=0.25)
    assert len(seq) == 200 and near(seq, pos) == 50
    assert len(set(zip(seq.tolist(), pos.tolist()))) == 200                       # without replacement
    seq, pos = ctx.targets(400, seed=0, switch_share=0.5)                       # 200 asked, 60 exist
    assert len(seq) == 400 and near(seq, pos) == 60
    seq, pos = ctx.targets(500, seed=0)                                        # uniform: about 6% of 500
    assert 15 <= near(seq, pos) <= 45
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="switch_share"):
            ctx.targets(10, switch_share=bad)


def test_merged_bank_draws_the_new_rounds_share():
    c = small_contexts()
    mk = lambda n, src: TeacherBank(c, torch.zeros(n, dtype=torch.long), torch.full((n,), 2), torch.zeros(n, 2, 4),  # noqa: E731
                                    torch.zeros(n, 3, 16), {}, torch.full((n,), src))
    bank = mk(300, 0).merged(mk(10, 1), 0.25).merged(mk(50, 2), 0.5)
    idx = torch.multinomial(bank.weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(bank.source[idx], minlength=3).float() / 20000
    # round 2 gets half; the earlier mix keeps its proportions in the other half (0.75 / 0.25)
    torch.testing.assert_close(share, torch.tensor([0.375, 0.125, 0.5]), atol=0.015, rtol=0)


# ----------------------------------------------------------------------------- the CLI, one process and torchrun
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from train_tiny import encode_dataset, make_synth

    from motionstreamer.train.t2m import (
        embed_captions,
        load_latent_examples,
        save_text_embeddings,
    )

    root = tmp_path_factory.mktemp("distill_cli")
    data = make_synth(root / "data", clips=20, pairs=4)
    tae = tiny_tae()
    lat, _ = encode_dataset(tae, data, root)
    t2m = tiny_t2m()
    save_bundle(root / "teacher", tae, t2m.eval(), torch.zeros(272), torch.ones(272), torch.zeros(16),
                text_encoder=FakeTextEncoder.name)
    cache = root / "text.pt"
    save_text_embeddings(cache, embed_captions(load_latent_examples(lat, data, "train"), FakeTextEncoder()),
                         FakeTextEncoder.name)
    return root, data, lat, cache


def distill_args(root, data, lat, cache, out, run, *extra):
    return ["distill-head", "--checkpoint", str(root / "teacher"), "--data", str(data), "--latents", str(lat),
            "--out", str(out), "--run-dir", str(run), "--text-cache", str(cache), "--student-steps", "1,2",
            "--set", "steps=4", "--set", "batch_size=4", "--set", "conditions=24", "--set", "teacher_samples=3",
            "--set", "student_samples=3", "--set", "bank_chunk=8", "--set", "progress=false",
            "--set", "tensorboard=false", "--device", "cpu", *extra]


def test_cli_distill_head_writes_a_student_bundle(cli_setup, tmp_path, capsys):
    from motionstreamer.cli import main

    root, data, lat, cache = cli_setup
    assert main(distill_args(root, data, lat, cache, tmp_path / "out", tmp_path / "run")) == 0
    assert "distilled a 1,2-step head in 4 steps" in capsys.readouterr().out
    b = load_bundle(tmp_path / "out")
    assert b.student.student_config.steps == (1, 2) and b.student.student_config.top_timestep == 49   # teacher: no skip
    assert (tmp_path / "out" / "t2m.safetensors").read_bytes() == (root / "teacher" / "t2m.safetensors").read_bytes()
    # no silent overwrite of a bundle
    with pytest.raises(SystemExit) as e:
        main(distill_args(root, data, lat, cache, tmp_path / "out", tmp_path / "run"))
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--student-steps", "1,x"], "--student-steps must be a comma-separated list"),
    (["--student-steps", "0"], "distinct positive"),
    (["--set", "teacher_samples=1"], "teacher_samples must be >= 2"),
    (["--stream-data", "x"], "give both --stream-data and --stream-latents"),
    (["--set", "nonsense=1"], "unknown config field"),
])
def test_cli_distill_head_bad_arguments(cli_setup, tmp_path, capsys, extra, msg):
    from motionstreamer.cli import main

    root, data, lat, cache = cli_setup
    with pytest.raises(SystemExit) as e:
        main(distill_args(root, data, lat, cache, tmp_path / "out", tmp_path / "run", *extra))
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_cli_distill_head_under_torchrun_shares_the_bank(cli_setup, tmp_path):
    from test_train_ddp import torchrun

    from motionstreamer.cli import main

    root, data, lat, cache = cli_setup
    torchrun(["-m", "motionstreamer"] + distill_args(root, data, lat, cache, tmp_path / "ddp", tmp_path / "ddp_run"))
    assert main(distill_args(root, data, lat, cache, tmp_path / "one", tmp_path / "one_run")) == 0
    a, b = (torch.load(tmp_path / r / "teacher_bank.pt", weights_only=True) for r in ("ddp_run", "one_run"))
    assert torch.equal(a["pairs"], b["pairs"]) and torch.equal(a["samples"], b["samples"])
    assert load_bundle(tmp_path / "ddp").student is not None


def test_head_report_compares_student_teacher_floor_and_respaced(cli_setup, tmp_path):
    from motionstreamer.eval.commands import parse_step_list
    from motionstreamer.eval.head_quality import head_report

    root, data, lat, _ = cli_setup
    teacher = load_bundle(root / "teacher")
    torch.manual_seed(3)
    s = StudentHead(teacher.t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2, top_timestep=49))
    for p in s.parameters():
        p.data.normal_(0, 0.1)
    out = add_student_head(root / "teacher", s, tmp_path / "b")
    report = head_report(load_bundle(out), FakeTextEncoder(), data, lat, "train", conditions=4, samples=8,
                         respaced=[2])
    names = set(report["samplers"])
    assert names == {"teacher, other seeds (noise floor)", "student 1 steps", "student 2 steps",
                     "respaced teacher 2 steps"}, names
    for r in report["samplers"].values():
        assert r["conditions"] == 4 and r["samples"] == 8 and np.isfinite(r["energy"]["mean"])
    assert teacher.student is None
    assert parse_step_list("1,2,4", "--respaced") == [1, 2, 4] and parse_step_list(" ", "--respaced") == []
    from motionstreamer.cli import CLIError
    for bad in ("1,,2", "0", "2,2"):
        with pytest.raises(CLIError, match="--respaced"):
            parse_step_list(bad, "--respaced")
