"""Few-step head distillation: the student's sampler, its objective, the trainer, the bundle, the CLI."""
import json

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
    DistillConfig,
    EnergyDistillObjective,
    TeacherBank,
    distill_head,
    energy_score,
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
    ("top_timestep", 0, "top_timestep")])
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
                                "teacher_skip_terminal_step", "distillation"}
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


def test_distillation_loss_falls_and_the_bundle_round_trips(tiny, tmp_path):
    root, examples, emb = tiny
    teacher = load_bundle(root / "teacher")
    config = quiet(DistillConfig, out_dir=str(tmp_path / "run"), steps=60, batch_size=16, lr=1e-3, warmup_steps=0,
                conditions=64, teacher_samples=8, student_samples=8, student_steps=(1, 2), save_every=30,
                log_every=10, ema_decay=None)
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


def test_bank_rejects_non_finite_samples():
    with pytest.raises(ValueError, match="NaN"):
        TeacherBank(torch.zeros(2, 2, 4), torch.full((2, 3, 16), float("nan")), {})


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
