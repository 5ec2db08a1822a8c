"""Trainer configs: the official defaults, overrides from --set and --config files (precedence, types,
named errors), config.json beside every checkpoint, and the learning-rate schedules."""
import argparse
import json
import math

import numpy as np
import pytest
import torch
from train_tiny import quiet, tiny_tae

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.cli import main
from motionstreamer.train.commands import _config
from motionstreamer.train.common import CHECKPOINT_NAME, load_config_file, lr_lambda, parse_overrides
from motionstreamer.train.t2m import T2MTrainConfig
from motionstreamer.train.tae import TAETrainConfig, train_tae

torch.set_num_threads(1)


def test_official_defaults():
    tae = TAETrainConfig()
    assert (tae.lr, tae.batch_size, tae.steps, tae.milestones, tae.gamma, tae.warmup_steps) == \
        (5e-5, 128, 2_000_000, (1_900_000,), 0.05, 1000)
    assert (tae.schedule, tae.betas, tae.weight_decay, tae.root_weight, tae.window, tae.grad_clip) == \
        ("multistep", (0.9, 0.99), 0.0, 7.0, 64, None)
    t2m = T2MTrainConfig()
    assert (t2m.lr, t2m.batch_size, t2m.steps, t2m.warmup_steps, t2m.weight_decay, t2m.schedule) == \
        (1e-4, 256, 100_000, 10_000, 1e-6, "cosine")
    assert (t2m.text_dropout, t2m.max_latents, t2m.drop_edge_prob, t2m.diffmlps_batch_mul, t2m.two_forward,
            t2m.grad_clip) == \
        (0.1, 78, 1 / 3, 4, True, None)


def test_overrides_parse_json_values():
    o = parse_overrides(["steps=10", "lr=2e-4", "betas=[0.9, 0.95]", "ema_decay=null", "schedule=constant",
                         "two-forward=false", "milestones=[5, 8]"], T2MTrainConfig)
    config = T2MTrainConfig().updated(o)
    assert (config.steps, config.lr, config.betas, config.ema_decay, config.schedule, config.two_forward,
            config.milestones) == \
        (10, 2e-4, (0.9, 0.95), None, "constant", False, (5, 8))
    assert T2MTrainConfig().updated({"steps": 1e3}).steps == 1000      # 1e3 from JSON is a whole number


@pytest.mark.parametrize("item, message", [
    ("stepz=3", r"unknown config field 'stepz' for T2MTrainConfig; known: .*steps"),
    ("steps", r"bad override 'steps': use key=value"),
    ("steps=abc", r"T2MTrainConfig.steps must be int, got 'abc'"),
    ("steps=1.5", r"T2MTrainConfig.steps must be int, got 1.5"),
    ("steps=true", r"T2MTrainConfig.steps must be int, got True"),
    ("steps=0", r"T2MTrainConfig.steps must be >= 1"),
    ("lr=-1", r"T2MTrainConfig.lr must be > 0"),
    ("schedule=linear", r"schedule must be cosine\|multistep\|constant, got 'linear'"),
    ("text_dropout=2", r"T2MTrainConfig.text_dropout must be in \[0, 1\]"),
    ("betas=[0.9]", r"betas must be two numbers"),
    ("ema_decay=1.5", r"ema_decay must be in \(0, 1\)"),
    ("grad_clip=\"x\"", r"grad_clip must be float \| None, got 'x'"),
    ("max_latents=1", r"max_latents must be >= 2"),
])
def test_bad_overrides_name_the_field(item, message):
    with pytest.raises(ValueError, match=message):
        T2MTrainConfig().updated(parse_overrides([item], T2MTrainConfig))


def test_tae_window_must_be_whole_latents():
    with pytest.raises(ValueError, match="window must be a positive multiple of 4"):
        TAETrainConfig(window=30)


def test_config_files_yaml_json_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 20\nlr: 3.0e-4\nmilestones: [10]\n")
    (tmp_path / "c.json").write_text(json.dumps({"steps": 30, "batch_size": 8}))
    assert TAETrainConfig().updated(load_config_file(tmp_path / "c.yaml")).milestones == (10,)
    assert TAETrainConfig().updated(load_config_file(tmp_path / "c.json")).batch_size == 8
    (tmp_path / "u.yaml").write_text("steps: 20\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"unknown TAETrainConfig field\(s\) \['learning_rate'\]"):
        TAETrainConfig().updated(load_config_file(tmp_path / "u.yaml"))
    (tmp_path / "bad.json").write_text("{steps: 3")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list.yaml: a config file must hold a mapping"):
        load_config_file(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match=r"cannot read config file .*missing.yaml"):
        load_config_file(tmp_path / "missing.yaml")


def test_precedence_defaults_file_set_out(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 20\nlr: 3.0e-4\nout_dir: from_file\n")
    args = argparse.Namespace(config=str(tmp_path / "c.yaml"), set=["lr=1e-3"], out=None, device=None)
    config = _config(T2MTrainConfig, args)
    assert (config.steps, config.lr, config.out_dir, config.batch_size, config.device) == \
        (20, 1e-3, "from_file", 256, "auto")
    args = argparse.Namespace(config=str(tmp_path / "c.yaml"), set=[], out="cli_out", device="cpu")
    assert (_config(T2MTrainConfig, args).out_dir, _config(T2MTrainConfig, args).device) == ("cli_out", "cpu")


def test_cli_reports_config_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "tae", "--data", str(tmp_path), "--set", "stepz=3"])
    assert e.value.code == 2 and "unknown config field 'stepz'" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("window: 30\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "tae", "--data", str(tmp_path), "--config", str(tmp_path / "c.yaml")])
    assert e.value.code == 2 and "window must be a positive multiple of 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                 # a missing dataset is named, no traceback
        main(["train", "tae", "--data", str(tmp_path / "nope"), "--set", "steps=1"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err


def test_config_json_is_written_at_start_and_beside_each_checkpoint(tmp_path):
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    motions = [rng.standard_normal((40, 272)).astype(np.float32) for _ in range(3)]
    config = quiet(TAETrainConfig, out_dir=str(out), steps=3, batch_size=2, window=16, save_every=2, lr=1e-3)
    train_tae(tiny_tae(), motions, config, stop_after=1)
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["trainer"] == "tae" and run_config["train"] == config.to_dict() and run_config["world_size"] == 1
    assert run_config["tae"]["hidden"] == 32
    train_tae(tiny_tae(), motions, config, resume=out / CHECKPOINT_NAME)
    ck = load_training_checkpoint(out / CHECKPOINT_NAME)
    assert ck["step"] == 3 and ck["config"] == json.loads((out / "config.json").read_text())
    # a run's config.json can seed the next run (--config runs/x/config.json): its train fields are used
    assert TAETrainConfig().updated(load_config_file(out / "config.json")) == config


def test_lr_schedules_match_their_formulas():
    c = TAETrainConfig(steps=100, warmup_steps=10, schedule="cosine")
    f = lr_lambda(c)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    m = lr_lambda(TAETrainConfig(steps=100, warmup_steps=0, schedule="multistep", milestones=(30, 60), gamma=0.1))
    assert (m(29), m(30), m(59), m(60)) == pytest.approx((1.0, 0.1, 0.1, 0.01))
    assert lr_lambda(TAETrainConfig(schedule="constant", warmup_steps=0))(12345) == 1.0


def test_ema_follows_the_model_to_its_device():
    # a resumed EMA arrives on the CPU (checkpoints load there) while the model trains on its device;
    # the meta device stands in for CUDA on machines without one
    from motionstreamer.train.common import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    ema.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    model.to("meta")
    ema.update(model)
    assert {v.device.type for v in ema.state_dict().values()} == {"meta"}
