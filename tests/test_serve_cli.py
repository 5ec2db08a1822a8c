"""`motionstreamer serve` arguments and the Ray Serve config: bad input is a clear CLI error (exit 2,
no traceback) before anything loads; the documented serve_config.yaml builds a deployment with the
options it promises (autoscaling on ongoing streams, one GPU per replica)."""
import subprocess
import sys
from pathlib import Path

import pytest

from motionstreamer.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, msg", [
    (["--host", "0.0.0.0"], "not loopback: give --token"),
    (["--host", "192.168.1.5", "--token", "short"], "token must be at least 8"),
    (["--port", "70000"], "--port must be in"),
    (["--sampling-steps", "0"], "steps must be an integer in [1, 1000]"),
    (["--lookahead", "0"], "lookahead must be"),
    (["--max-streams", "0"], "max_streams must be an integer >= 1"),
    (["--idle-timeout", "nan"], "--idle-timeout must be a finite number"),
    (["--checkpoint", "/nonexistent/bundle"], "not a directory"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_arguments_are_cli_errors(argv, msg, capsys, monkeypatch):
    monkeypatch.delenv("MOTIONSTREAMER_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("motionstreamer: error:") and msg in err and "Traceback" not in err


def test_token_from_environment_allows_other_hosts(monkeypatch):
    import argparse

    from motionstreamer.checkpoints import read_bundle_config
    from motionstreamer.runtime.loading import default_model_dir
    from motionstreamer.serve.commands import config_from_args, register

    monkeypatch.setenv("MOTIONSTREAMER_TOKEN", "env-token-123456")
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    config = config_from_args(p.parse_args(["serve", "--host", "0.0.0.0"]))
    bundle_config = read_bundle_config(default_model_dir())
    gen = config.generation_config(bundle_config)
    assert config.token == "env-token-123456" and config.limits.max_streams == 32
    # the embedded model's default head, its 4-step student; the teacher at the service's 10 steps
    assert (gen.head, gen.sampling_steps) == ("student", 4)
    teacher = config_from_args(p.parse_args(["serve", "--head", "teacher"])).generation_config(bundle_config)
    assert (teacher.head, teacher.sampling_steps) == ("teacher", 10)


def test_token_is_redacted_from_access_logs():
    import logging

    from motionstreamer.serve.commands import RedactToken

    rec = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"',
                            ("127.0.0.1:5", "GET", "/v1/info?token=s3cret-value&x=1"), None)
    RedactToken().filter(rec)
    assert "s3cret" not in rec.getMessage() and "token=***&x=1" in rec.getMessage()


def test_serve_config_yaml_builds_the_documented_deployment():
    pytest.importorskip("ray.serve")
    import yaml

    from motionstreamer.serve.ray_app import build_app

    config = yaml.safe_load((ROOT / "motionstreamer/serve/deploy/serve_config.yaml").read_text())
    app_cfg = config["applications"][0]
    assert app_cfg["import_path"] == "motionstreamer.serve.ray_app:build_app"
    app = build_app(dict(app_cfg["args"]))
    d = app._bound_deployment
    assert d.ray_actor_options["num_gpus"] == 1
    auto = d._deployment_config.autoscaling_config
    assert auto.min_replicas == 1 and auto.max_replicas == 8 and auto.target_ongoing_requests == 384
    assert d._deployment_config.max_ongoing_requests == 512 + 2 + 8
    with pytest.raises(ValueError, match="unknown motionstreamer serve args"):
        build_app({"stepz": 3})


def test_help_lists_serve():
    r = subprocess.run([sys.executable, "-m", "motionstreamer", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "serve" in r.stdout
