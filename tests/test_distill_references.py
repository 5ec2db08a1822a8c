"""The few-step student against references that do not come from its own code: its samples must follow
their own condition's teacher samples (and a student trained on a zeroed condition must fail that
check), the guidance-distillation term against its closed form in the guidance scale, a cached teacher
bank reused only when everything it was built from matches, the head-quality metrics against plain
transcriptions and their seeding against a recording sampler, and every configuration bound on both
sides. One thread: these are tiny networks, and spare threads only spin on a busy machine."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from train_tiny import fitted_teacher, quiet

from motionstreamer.checkpoints import load_bundle
from motionstreamer.eval.head_quality import (
    compare_samplers,
    energy_distance,
    mean_ci,
    sliced_wasserstein,
    summarize_floor,
)
from motionstreamer.models.diffusion import DiffusionHeadConfig
from motionstreamer.models.few_step import (
    StudentHead,
    StudentHeadConfig,
    student_settings,
    student_timesteps,
    teacher_top_timestep,
)
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.train import distill
from motionstreamer.train.distill import (
    Contexts,
    DistillConfig,
    EnergyDistillObjective,
    TeacherBank,
    bank_meta,
    distill_head,
    energy_score,
    teacher_forced_conditions,
    teacher_samples,
)
from motionstreamer.train.t2m import LatentExample

HEAD = DiffusionHeadConfig(width=64, depth=2, cond_dim=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return fitted_teacher(tmp_path_factory.mktemp("teacher"))


# the one-row recipe (its own last block, no rollouts) these references were written for; GUIDED: the
# default recipe's student (guidance kept, two rows)
ONE_ROW = dict(keep_guidance=False, condition_blocks=1, rollout_rounds=0, switch_share=0.0)
GUIDED = dict(keep_guidance=True, condition_blocks=None, rollout_rounds=0, switch_share=0.0)


def config(out_dir, **kw):
    base = dict(out_dir=str(out_dir), steps=200, batch_size=16, lr=2e-3, warmup_steps=0, conditions=64,
                teacher_samples=8, student_samples=8, student_steps=(1, 2), save_every=1000, log_every=10,
                ema_decay=None, **ONE_ROW)
    return quiet(DistillConfig, **{**base, **kw})


def own_vs_shuffled(student, t2m, pairs, steps: int = 2, n: int = 32, student_rows=None) -> tuple[float, float]:
    """Mean energy distance of the student's samples to the teacher's for the same condition, and to the
    teacher's for another condition (a fixed derangement). student_rows: the student's own condition
    rows for the same contexts (its conditional path), default the teacher's cond rows."""
    C = pairs.shape[0]
    rows = pairs[:, 0] if student_rows is None else student_rows
    w = student.student_config.cfg_scale     # a student that keeps guidance samples on both rows
    uncond = pairs[:, 1].repeat_interleave(n, 0) if w != 1.0 else None
    with torch.no_grad():
        ref = teacher_samples(t2m.diff_loss, pairs, n, 4.0, 50, True, seed=11)
        got = student.sample(rows.repeat_interleave(n, 0), uncond, settings=student_settings(steps, cfg_scale=w),
                             generator=torch.Generator().manual_seed(12)).reshape(C, n, -1)
    perm = torch.roll(torch.arange(C), 1)
    return float(energy_distance(got, ref).mean()), float(energy_distance(got, ref[perm]).mean())


@pytest.fixture(scope="module")
def eval_pairs(teacher):
    bundle_dir, examples, emb = teacher
    t2m = load_bundle(bundle_dir).t2m
    # one condition per clip (its first target position): neighbours in the list belong to other clusters
    pairs = teacher_forced_conditions(t2m, examples, emb)
    firsts = torch.from_numpy(np.cumsum([0] + [len(e.latents_b) for e in examples])[:-1])

    def student_rows(student):
        """The student's own condition rows at the same contexts (its conditional path over them)."""
        with torch.no_grad():
            return teacher_forced_conditions(student.model(t2m), examples, emb)[firsts, 0]

    return t2m, pairs[firsts], student_rows


def test_student_samples_follow_their_own_condition(teacher, eval_pairs, tmp_path):
    """Energy distance of the student's samples to the teacher's for the same condition, against the
    teacher's for a neighbouring clip's condition (another cluster): at 1 and 2 steps it is under a fifth
    of it (the teacher's own: ~0 against ~10; the student before distillation: 0.75 of it)."""
    bundle_dir, examples, emb = teacher
    t2m, pairs, student_rows = eval_pairs
    student, res = distill_head(load_bundle(bundle_dir), examples, emb, config(tmp_path / "run"), teacher_name="t")
    for steps in (1, 2):
        own, other = own_vs_shuffled(student, t2m, pairs, steps, student_rows=student_rows(student))
        assert own < 0.2 * other, (steps, own, other)


def test_guided_student_samples_follow_their_own_condition(teacher, eval_pairs, tmp_path):
    """The default recipe's student (guidance kept: the teacher's [cond; uncond] rows, its own network)
    passes the same check at 2 and 4 steps, and distillation is what makes it pass at 2: before, the
    teacher's network on the student's 2 timesteps is further from the teacher's 50 guided steps."""
    bundle_dir, examples, emb = teacher
    t2m, pairs, _ = eval_pairs
    cfg = config(tmp_path / "run", student_steps=(2, 4), **GUIDED)
    student, res = distill_head(load_bundle(bundle_dir), examples, emb, cfg, teacher_name="t")
    assert student.condition is None and student.student_config.cfg_scale == cfg.cfg_scale == 4.0
    trained = {k: own_vs_shuffled(student, t2m, pairs, k) for k in (2, 4)}
    for steps, (own, other) in trained.items():
        assert own < 0.2 * other, (steps, own, other)
    fresh = StudentHead(t2m.config.head, student.student_config, t2m.config).init_from(t2m)
    before, _ = own_vs_shuffled(fresh, t2m, pairs, 2)
    assert trained[2][0] < before, (trained[2], before)


def test_a_student_trained_on_a_zeroed_condition_fails_that_check(teacher, eval_pairs, tmp_path, monkeypatch):
    """The negative control of the test above: with the condition zeroed in training the student learns
    the average over conditions (what is left of the condition is the teacher's initialisation), and its
    samples stay far from their own condition's teacher samples (0.39 of the other condition's here)."""
    bundle_dir, examples, emb = teacher
    t2m, pairs, student_rows = eval_pairs
    real = EnergyDistillObjective.conditions

    def zeroed(self, batch):       # the student's condition row, from its conditional path, zeroed
        return torch.zeros_like(real(self, batch))
    monkeypatch.setattr(EnergyDistillObjective, "conditions", zeroed)
    student, _ = distill_head(load_bundle(bundle_dir), examples, emb, config(tmp_path / "run"), teacher_name="t")
    own, other = own_vs_shuffled(student, t2m, pairs, 1, student_rows=student_rows(student))
    assert own > 0.3 * other, (own, other)


# ----------------------------------------------------------------------------- guidance distillation
def random_head(seed: int) -> StudentHead:
    torch.manual_seed(seed)
    s = StudentHead(HEAD, StudentHeadConfig())
    for p in s.parameters():
        p.data.normal_(0, 0.1)
    return s.double()


def as_teacher(head: StudentHead) -> torch.nn.Module:
    """A frozen 'teacher model' whose head's network is `head`'s (all the guidance term reads of it)."""
    m = torch.nn.Module()
    m.diff_loss = head
    return m


def guidance_batch(B=6, n=4):
    g = torch.Generator().manual_seed(3)
    return {"cond": torch.randn(B, 32, generator=g, dtype=torch.float64),
            "uncond": torch.randn(B, 32, generator=g, dtype=torch.float64),
            "target": torch.randn(B, n, 16, generator=g, dtype=torch.float64)}


def guidance_loss(student, teacher_head, cfg_scale, batch):
    torch.manual_seed(5)                      # the same x_t, t and sample for every scale
    obj = EnergyDistillObjective(student, (1,), 2, as_teacher(teacher_head), cfg_scale, guidance_steps=1)
    loss, logs = obj(batch, 0)
    assert set(logs) == {"guidance_mse"} and torch.equal(logs["guidance_mse"], loss.detach())
    return float(loss.detach())


def test_guidance_term_is_quadratic_in_the_scale_around_one():
    """A student with the teacher's weights regresses eps_u + s (eps_c - eps_u) with its eps_c, so the
    loss is (s - 1)^2 E|eps_c - eps_u|^2: zero at s = 1, equal at s = 0 and 2, four times it at s = 3."""
    teacher_head = random_head(0)
    student = random_head(0)
    batch = guidance_batch()
    loss = {s: guidance_loss(student, teacher_head, s, batch) for s in (0.0, 1.0, 2.0, 3.0)}
    assert loss[1.0] < 1e-20 and loss[0.0] > 1e-6
    assert loss[2.0] == pytest.approx(loss[0.0], rel=1e-9)
    assert loss[3.0] == pytest.approx(4 * loss[0.0], rel=1e-9)
    other = random_head(1)                                   # another network: off at s = 1 too
    assert guidance_loss(other, teacher_head, 1.0, batch) > 1e-6


def test_guidance_steps_come_first_then_the_energy_score():
    teacher_head, student = random_head(0), random_head(1)
    batch = guidance_batch()
    obj = EnergyDistillObjective(student, (1, 2), 2, as_teacher(teacher_head), 3.0, guidance_steps=3)
    assert set(obj(batch, 2)[1]) == {"guidance_mse"}                 # the last guidance step
    assert set(obj(batch, 3)[1]) == {"energy_distance_1", "energy_distance_2"}


def test_guidance_weight_adds_the_weighted_term():
    teacher_head, student = random_head(0), random_head(1)
    batch = guidance_batch()

    def total(weight):
        torch.manual_seed(9)
        obj = EnergyDistillObjective(student, (1, 2), 2, as_teacher(teacher_head), 3.0, guidance_weight=weight)
        loss, logs = obj(batch, 0)
        return float(loss.detach()), logs

    plain, logs0 = total(0.0)
    weighted, logs = total(0.5)
    assert "guidance_mse" not in logs0 and set(logs) == {"energy_distance_1", "energy_distance_2", "guidance_mse"}
    assert weighted == pytest.approx(plain + 0.5 * float(logs["guidance_mse"]), rel=1e-9)


def test_guidance_needs_the_teachers_network():
    s = random_head(0)
    for kw in ({"guidance_steps": 1}, {"guidance_weight": 0.1}):
        with pytest.raises(ValueError, match="guidance distillation needs the teacher's network"):
            EnergyDistillObjective(s, (1,), 2, None, **kw)
    EnergyDistillObjective(s, (1,), 2, None)                                  # neither: fine


# ----------------------------------------------------------------------------- the cached teacher bank
def bank_of(pairs, samples, meta) -> TeacherBank:
    """A bank of N one-latent contexts (target i: sequence i, position 0) with these rows and samples."""
    N = pairs.shape[0]
    contexts = Contexts(torch.zeros(N, 1, 16), torch.ones(N, dtype=torch.long), torch.zeros(N, dtype=torch.long),
                        torch.zeros(N, 8))
    return TeacherBank(contexts, torch.arange(N), torch.zeros(N, dtype=torch.long), pairs, samples, meta)


def test_bank_is_reused_only_with_the_same_metadata(tmp_path):
    c = config(tmp_path)
    meta = bank_meta(c, True, "teacher A")
    pairs, samples = torch.randn(5, 2, 32), torch.randn(5, 3, 16)
    bank_of(pairs, samples, meta).save(tmp_path / "bank.pt")
    same = TeacherBank.load(tmp_path / "bank.pt", dict(meta))
    assert torch.equal(same.pairs, pairs) and torch.equal(same.samples, samples)
    changed = {"teacher": "teacher B", "cfg_scale": 2.0, "teacher_steps": 49, "skip_terminal_step": False,
               "conditions": 65, "teacher_samples": 9, "seed": 1, "all_captions": False, "switch_share": 0.5}
    assert set(changed) == set(meta)                         # every input of the bank is in its metadata
    for key, value in changed.items():
        assert TeacherBank.load(tmp_path / "bank.pt", {**meta, key: value}) is None, key
    torch.save({"format": "something else", "pairs": pairs, "samples": samples, "meta": meta}, tmp_path / "x.pt")
    assert TeacherBank.load(tmp_path / "x.pt", meta) is None


def test_distill_rebuilds_a_stale_bank_and_reuses_a_matching_one(teacher, tmp_path, monkeypatch):
    bundle_dir, examples, emb = teacher
    calls = []
    real = distill.teacher_samples
    monkeypatch.setattr(distill, "teacher_samples", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_a = tmp_path / "a"
    distill_head(load_bundle(bundle_dir), examples, emb, config(run_a, steps=2, conditions=16), teacher_name="t")
    assert len(calls) == 1
    bank = torch.load(run_a / "teacher_bank.pt", weights_only=True)
    for name, kw, teacher_name, rebuilt in (("same", {}, "t", False), ("cfg", {"cfg_scale": 2.0}, "t", True),
                                            ("samples", {"teacher_samples": 4}, "t", True),
                                            ("teacher", {}, "u", True)):
        run = tmp_path / name
        run.mkdir()
        torch.save(bank, run / "teacher_bank.pt")
        calls.clear()
        distill_head(load_bundle(bundle_dir), examples, emb, config(run, steps=2, conditions=16, **kw),
                     teacher_name=teacher_name)
        assert len(calls) == int(rebuilt), name
        saved = torch.load(run / "teacher_bank.pt", weights_only=True)
        assert saved["meta"] == bank_meta(config(run, steps=2, conditions=16, **kw), True, teacher_name)


@pytest.mark.parametrize("pairs,samples", [((3, 2, 8), (3, 4, 16)), ((3, 1, 8), (3, 4, 16)), ((3, 2, 8), (2, 4, 16)),
                                           ((3, 2), (3, 4, 16)), ((3, 2, 8), (3, 16))])
def test_bank_shapes(pairs, samples):
    if pairs == (3, 2, 8) and samples == (3, 4, 16):
        bank_of(torch.zeros(pairs), torch.zeros(samples), {})
        return
    with pytest.raises(ValueError, match="bank shapes do not fit"):
        bank_of(torch.zeros(pairs), torch.zeros(samples), {})


@pytest.mark.parametrize("which", ["pairs", "samples"])
@pytest.mark.parametrize("where", [0, -1])
def test_one_non_finite_value_in_the_bank_is_refused(which, where):
    pairs, samples = torch.zeros(3, 2, 8), torch.zeros(3, 4, 16)
    {"pairs": pairs, "samples": samples}[which].view(-1)[where] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        bank_of(pairs, samples, {})


# ----------------------------------------------------------------------------- metrics against transcriptions
def energy_distance_loops(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    d = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    xy = sum(d(a, b) for a in x for b in y) / (n * m)
    xx = sum(d(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(d(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return 2 * xy - xx - yy


def test_energy_distance_and_score_equal_plain_loops():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 7, 3)) + 0.5
    got = energy_distance(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), [energy_distance_loops(x[i], y[i]) for i in range(2)], rtol=1e-12)
    # the energy score: E|X - Y| - 1/2 E|X - X'| (distinct pairs), the mean over the batch
    want = np.mean([(energy_distance_loops(x[i], y[i]) + sum(
        float(np.linalg.norm(y[i][a] - y[i][b])) for a in range(7) for b in range(7) if a != b) / 42) / 2
        for i in range(2)])
    # (rtol: the score's distances carry a 1e-12 under the root, for a finite gradient at 0)
    np.testing.assert_allclose(float(energy_score(torch.from_numpy(x), torch.from_numpy(y))), want, rtol=1e-6)
    for f in (energy_distance, energy_score):
        with pytest.raises(ValueError, match=">= 2"):
            f(torch.zeros(1, 1, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match=">= 2 samples on each side"):
        energy_distance(torch.zeros(1, 4, 3), torch.zeros(1, 1, 3))
    energy_distance(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))                 # two on each side: fine


def test_sliced_wasserstein_in_one_dimension_is_the_sorted_difference():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 50, 1)), rng.normal(size=(3, 50, 1)) * 2 + 1
    want = np.sqrt(((np.sort(x[..., 0], 1) - np.sort(y[..., 0], 1)) ** 2).mean(1))    # direction +-1: the same
    got = sliced_wasserstein(torch.from_numpy(x), torch.from_numpy(y), projections=4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match="equal sample counts"):
        sliced_wasserstein(torch.zeros(1, 5, 2), torch.zeros(1, 6, 2))


def test_mean_ci_is_1_96_standard_errors():
    v = torch.tensor([1.0, 2.0, 4.0, 7.0])
    r = mean_ci(v)
    assert r["mean"] == pytest.approx(3.5)
    assert r["ci95"] == pytest.approx(1.96 * np.std([1, 2, 4, 7], ddof=1) / 2)
    assert math.isnan(mean_ci(torch.tensor([1.0]))["ci95"])


class Recording:
    """A sampler drawing N(0, 1) with the generator it is given; remembers its draws."""

    def __init__(self):
        self.first, self.draws = [], []

    def __call__(self, c, n, gen):
        x = torch.randn(c.shape[0], n, 3, generator=gen, dtype=torch.float64)
        self.first.append(float(x[0, 0, 0]))
        self.draws.append(x)
        return x


def test_the_noise_floor_draws_other_noise_than_the_reference():
    """Every candidate and every chunk samples with its own generator stream, the reference with another:
    a floor that reused the reference's noise would compare a sample with itself (a biased, negative
    energy distance) instead of measuring the noise at this sample size."""
    ref, floor, other = Recording(), Recording(), Recording()
    conds = torch.zeros(6, 4)
    result = compare_samplers(conds, ref, {"floor": floor, "other": other}, samples=64, seed=3, chunk=2)
    draws = ref.first + floor.first + other.first
    assert len(draws) == 9 and len(set(draws)) == 9                      # 3 chunks x 3 samplers, all distinct
    again = Recording()
    compare_samplers(conds, again, {"floor": Recording(), "other": Recording()}, samples=64, seed=3, chunk=2)
    assert again.first == ref.first                                      # seeded: the same run again
    e = result["floor"]["energy"]
    assert abs(e["mean"]) < 3 * e["ci95"] and e["ci95"] > 0             # unbiased: around 0 within its CI
    assert result["floor"]["conditions"] == 6 and result["floor"]["samples"] == 64
    # what reusing the noise would read: for X = Y exactly, 2 E|X-Y| - E|X-X'| - E|Y-Y'| = -2 E|X-X'| / n
    fixed = lambda c, n, g: torch.randn(c.shape[0], n, 3, generator=torch.Generator().manual_seed(0),  # noqa: E731
                                        dtype=torch.float64)
    same = compare_samplers(conds, fixed, {"self": fixed}, samples=64)
    x = fixed(conds, 64, None).numpy()
    spread = np.mean([np.linalg.norm(x[c][:, None] - x[c][None], axis=-1).sum() / (64 * 63) for c in range(6)])
    assert same["self"]["energy"]["mean"] == pytest.approx(-2 * spread / 64, rel=1e-9)
    # energy_rel: each condition's energy distance over the reference's own mean distance E|Y - Y'|
    ref_all, floor_all = torch.cat(ref.draws), torch.cat(floor.draws)
    spread = torch.cdist(ref_all, ref_all).sum(dim=(-1, -2)) / (64 * 63)
    rel = np.mean([energy_distance_loops(floor_all[i].numpy(), ref_all[i].numpy()) / float(spread[i])
                   for i in range(6)])
    assert result["floor"]["energy_rel"]["mean"] == pytest.approx(rel, rel=1e-5)      # (samples in float32)
    floors = summarize_floor(result, "floor")
    assert floors["floor"] == pytest.approx(e["mean"] / e["ci95"])
    with pytest.raises(ValueError, match="samples must be >= 2"):
        compare_samplers(conds, ref, {}, samples=1)


# ----------------------------------------------------------------------------- bounds, both sides
def test_teacher_top_timestep_and_the_students_range():
    head = DiffusionHeadConfig(width=64, depth=2, cond_dim=32)        # 50 training timesteps, 0..49
    assert (teacher_top_timestep(head, True), teacher_top_timestep(head, False)) == (48, 49)
    assert student_timesteps(48, 48) == list(range(1, 49))
    with pytest.raises(ValueError, match=r"in \[1, 48\]"):
        student_timesteps(48, 49)
    assert student_timesteps(48, 3) == [16, 32, 48] and student_timesteps(10, 4) == [2, 5, 8, 10]
    StudentHead(head, StudentHeadConfig(top_timestep=49, steps=(1,), default_steps=1))
    with pytest.raises(ValueError, match="top_timestep 50 must be < the head's num_train_steps 50"):
        StudentHead(head, StudentHeadConfig(top_timestep=50, steps=(1,), default_steps=1))


@pytest.mark.parametrize("kw,ok", [({"steps": (1, 48), "default_steps": 48}, True),
                                   ({"steps": (1, 49), "default_steps": 1}, False),
                                   ({"steps": (0, 2), "default_steps": 2}, False),
                                   ({"steps": (2, 1, 4), "default_steps": 4}, True),
                                   ({"steps": (True, 2), "default_steps": 2}, False),
                                   ({"top_timestep": 1, "steps": (1,), "default_steps": 1}, True),
                                   ({"top_timestep": 0, "steps": (1,), "default_steps": 1}, False),
                                   ({"teacher_cfg_scale": float("inf")}, False), ({"teacher_cfg_scale": 7}, True)])
def test_student_config_bounds(kw, ok):
    if ok:
        c = StudentHeadConfig(**kw)
        assert c.steps == tuple(sorted(c.steps)) and isinstance(c.teacher_cfg_scale, float)
    else:
        with pytest.raises(ValueError, match="student_head"):
            StudentHeadConfig(**kw)


@pytest.mark.parametrize("field,good,bad", [
    ("guidance_steps", (0, 9), (-1, 10)), ("teacher_steps", (1,), (0,)), ("conditions", (1,), (0,)),
    ("bank_chunk", (1,), (0,)), ("teacher_samples", (2,), (1,)), ("student_samples", (2,), (1,)),
    ("cfg_scale", (-3.0, 0.0), (float("nan"), float("inf"))),
    ("student_steps", ((1,), (4, 2)), ((), (1, 1), (0,), (True,), (2.0,))),
])
def test_distill_config_bounds(field, good, bad, tmp_path):
    for v in good:
        config(tmp_path, steps=10, **{field: v}).check()
    for v in bad:
        with pytest.raises(ValueError, match=f"DistillConfig.{field}"):
            config(tmp_path, steps=10, **{field: v}).check()
    config(tmp_path, steps=10, student_steps=(1, 2), default_steps=2).check()
    with pytest.raises(ValueError, match="default_steps 4 is not one of student_steps"):
        config(tmp_path, steps=10, student_steps=(1, 2), default_steps=4).check()


def test_condition_count_on_both_sides(teacher):
    bundle_dir, examples, emb = teacher
    t2m = load_bundle(bundle_dir).t2m
    every = teacher_forced_conditions(t2m, examples, emb)
    total = every.shape[0]
    assert total == sum(len(e.latents_b) for e in examples)
    for count in (total, total + 5):
        torch.testing.assert_close(teacher_forced_conditions(t2m, examples, emb, count=count), every)
    one = teacher_forced_conditions(t2m, examples, emb, count=1, seed=4)
    assert one.shape == (1, 2, 32) and ((every - one).abs().amax(dim=(1, 2)) < 1e-5).any()
    a, b = (teacher_forced_conditions(t2m, examples, emb, count=total - 1, seed=s) for s in (0, 1))
    assert a.shape[0] == total - 1 and not torch.equal(a, b)
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        teacher_forced_conditions(t2m, examples, emb, count=0)
    with pytest.raises(ValueError, match="no target positions"):
        teacher_forced_conditions(t2m, [LatentExample("c", np.zeros((2, 16), np.float32),
                                                      np.zeros((0, 16), np.float32))], emb | {"c": emb[""]})


def test_rollout_draws_repeats_per_condition_in_order():
    s = random_head(2)
    cond = torch.randn(3, 32, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    noise = (torch.randn(6, 16, generator=gen, dtype=torch.float64), torch.randn(2, 6, 16, generator=gen,
                                                                                dtype=torch.float64))
    rows = s.rollout(cond, 2, noise, repeats=2)
    for i, j in itertools.product(range(3), range(2)):     # row i * 2 + j: condition i, its own noise
        one = s.rollout(cond[i:i + 1], 2, (noise[0][2 * i + j:2 * i + j + 1], noise[1][:, 2 * i + j:2 * i + j + 1]))
        torch.testing.assert_close(rows[2 * i + j], one[0], rtol=0, atol=1e-12)


def test_logged_energy_distance_is_unbiased_around_zero_for_the_targets_own_distribution():
    """The objective logs 2 * score - E|Y - Y'|, the energy distance: with targets drawn from the student
    itself (other noise) it scatters around 0, far below the targets' own spread."""
    s = random_head(4).float()
    obj = EnergyDistillObjective(s, (1, 2), 8)
    cond = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = {k: s.sample(cond.repeat_interleave(8, 0), settings=student_settings(k),
                               generator=torch.Generator().manual_seed(2)).reshape(256, 8, 16) for k in (1,)}
        torch.manual_seed(3)
        _, logs = obj({"cond": cond, "target": targets[1]}, 0)
    yy = float(torch.cdist(targets[1], targets[1]).sum(dim=(-1, -2)).mean() / 56)        # E|Y - Y'|, 8 x 7 pairs
    assert abs(float(logs["energy_distance_1"])) < 0.1 * yy, (float(logs["energy_distance_1"]), yy)


def test_head_report_floor_is_the_reference_teacher_and_every_candidate_is_there(teacher, monkeypatch):
    """The noise floor is the reference sampler itself (the guided teacher at 50 steps, the bundle's
    skip_terminal_step and the student's guidance scale), drawn with other seeds; the respaced teachers
    keep that scale; a student is compared at each of its step counts; 256 samples unless told."""
    import inspect

    from motionstreamer.eval import head_quality

    bundle_dir, examples, emb = teacher
    bundle = load_bundle(bundle_dir)
    bundle.student = StudentHead(bundle.t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2,
                                                                          teacher_cfg_scale=2.5))
    calls = []
    real = head_quality.teacher_sampler
    monkeypatch.setattr(head_quality, "teacher_sampler", lambda *a: calls.append(a[1:]) or real(*a))
    monkeypatch.setattr(head_quality, "load_latent_examples", lambda latents, data, split: examples)
    monkeypatch.setattr(head_quality, "embed_captions", lambda ex, enc: emb)
    report = head_quality.head_report(bundle, None, "data", "latents", conditions=3, samples=4, respaced=(2,))
    assert report["conditions"] == 3 and report["cfg_scale"] == 2.5 and report["skip_terminal_step"] is True
    floor, respaced, reference = calls
    assert floor == reference == (2.5, 50, True) and respaced == (2.5, 2, True)
    assert set(report["samplers"]) == {"teacher, other seeds (noise floor)", "student 1 steps", "student 2 steps",
                                       "respaced teacher 2 steps"}
    assert inspect.signature(head_quality.head_report).parameters["samples"].default == 256    # docs/student.md


def test_the_teacher_sampler_guides_with_the_unconditional_row():
    """At a guidance scale other than 1 the [c, u] pair's u matters: the same draws on [c, c] differ."""
    from motionstreamer.eval.head_quality import teacher_sampler

    head = random_head(3)
    pairs = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    draw = lambda c, s: teacher_sampler(head, s, 4, False)(c, 5, torch.Generator().manual_seed(7))  # noqa: E731
    assert not torch.allclose(draw(pairs, 3.0), draw(pairs[:, [0, 0]], 3.0))
    torch.testing.assert_close(draw(pairs, 1.0), draw(pairs[:, [0, 0]], 1.0))       # scale 1: the cond row alone


@pytest.mark.parametrize("over", [0, 1, 5])
def test_conditions_stop_at_the_models_window(over):
    """A window of block_size tokens holds the caption and block_size - 1 latents: with 2 latents of A,
    B's latents that fit (5 of them at block_size 8) each give a condition, those past the window none,
    and the ones inside are the transformer's outputs on the window (B exactly filling it, 1 and 5 over)."""
    torch.manual_seed(0)
    t2m = TextToMotionModel(T2MConfig(n_layer=1, n_head=2, n_embd=32, cond_dim=32, block_size=8,
                                      head=DiffusionHeadConfig(width=32, depth=1))).eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 16, generator=g), torch.randn(5 + over, 16, generator=g)
    emb = {"walk": torch.randn(32, generator=g), "": torch.randn(32, generator=g)}
    pairs = teacher_forced_conditions(t2m, [LatentExample("walk", a.numpy(), b.numpy())], emb)
    assert pairs.shape == (5, 2, 32)
    window = torch.cat([a, b[:5]])[None]                           # 7 latents + the caption = 8 tokens
    with torch.no_grad():
        torch.testing.assert_close(pairs[:, 0], t2m(window, emb["walk"][None])[0, 2:7])
        torch.testing.assert_close(pairs[:, 1], t2m(window, emb[""][None])[0, 2:7])
