"""Hostile input, one section per class of issue #18: every bad input a user can give gets a one-line
`motionstreamer: error: ...` with exit 2 (or a ValueError naming the argument in the API), never a
traceback, never NaN written with exit 0; interrupted or failed output keeps the work; nothing
overwrites a run or dataset unasked; no temporary file is left behind.

Through the real CLI: in-process `main([...])` where that is faithful, a subprocess where the
process itself matters (signals, a closed stdout). The embedded model with 2 sampling steps keeps
it fast. Class 12 (int8 ONNX on CPUs without VNNI) is tested in tests/test_export_onnx.py.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import run_cli

from motionstreamer.runtime.loading import DEFAULT_MODEL_DIR

FAST = ["--sampling-steps", "2", "--quiet"]
UNWRITABLE_DIR = "/sys/motionstreamer-test"   # EACCES/EROFS even for root (tests run as root in CI)


def assert_clear_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("motionstreamer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def out(folder: Path, prefix: str = "x") -> list:
    """--out for generate/stream: a prefix inside --out-dir (the only form every branch accepts)."""
    return ["--out-dir", folder, "--out", prefix]


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def spawn(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "motionstreamer", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from motionstreamer.data.synth import make_dataset

    d = tmp_path_factory.mktemp("synth")
    make_dataset(d, 16, seed=0, progress=False)
    return d


def edited_bundle(tmp_path: Path, edit) -> Path:
    """A copy of the embedded model with config.json (or its files) changed by edit(dir, config)."""
    d = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    config = json.loads((d / "config.json").read_text())
    edit(d, config)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


# ----------------------------------------------------------------------------- 1. non-finite motion
def test_non_finite_generated_motion_fails_with_nothing_written(tmp_path, capsys):
    """A model whose output overflows (Std of 1e38: finite, but the de-normalised frames are inf)."""
    from safetensors.torch import load_file, save_file

    def huge_std(d, config):
        stats = load_file(d / "stats.safetensors")
        stats["std"] = torch.full_like(stats["std"], 1e38)
        save_file(stats, d / "stats.safetensors")
    bundle = edited_bundle(tmp_path, huge_std)
    dest = tmp_path / "out"
    dest.mkdir()
    code, stdout, err = run_cli(["stream", "--prompt", "a person walks", "--checkpoint", bundle, *out(dest),
                                 "--jsonl", *FAST], capsys)
    assert_clear_error(code, err, "non-finite motion", "nothing written")
    assert "NaN" not in stdout and "Infinity" not in stdout
    assert outputs(dest) == []



def test_non_finite_motion_is_an_error_in_the_api_too(tmp_path):
    """StreamingSession.step raises (FloatingPointError naming the latent) instead of handing back NaN."""
    from safetensors.torch import load_file, save_file

    from motionstreamer.runtime.loading import load_models
    from motionstreamer.runtime.policy import NonFiniteMotionError
    from motionstreamer.runtime.session import StreamingSession

    def huge_std(d, config):
        stats = load_file(d / "stats.safetensors")
        stats["std"] = torch.full_like(stats["std"], 1e38)
        save_file(stats, d / "stats.safetensors")
    bundle, text_encoder, _ = load_models(str(edited_bundle(tmp_path, huge_std)), "cpu", None)
    session = StreamingSession(bundle, text_encoder, seed=0)
    session.push_text("a person walks")
    with pytest.raises(NonFiniteMotionError, match=r"non-finite motion \(NaN/inf\) at latent \d+"):
        for _ in range(20):      # the overflow shows once the recovered joints accumulate
            session.step()
    assert issubclass(NonFiniteMotionError, FloatingPointError)

NUMBERS = [   # (verb and arguments, what the one error line names); every case is refused before any work
    *[(["generate", "a person walks", f"{flag}={v}"], flag)
      for flag in ("--cfg-scale", "--temperature", "--end-threshold", "--max-seconds") for v in ("nan", "inf", "-inf")],
    (["generate", "a person walks", "--cfg-scale", "1e30"], "cfg_scale must be a finite number in [-100, 100]"),
    (["generate", "a person walks", "--cfg-scale=-1e30"], "cfg_scale must be a finite number in [-100, 100]"),
    (["generate", "a person walks", "--temperature", "1e30"], "temperature must be a finite number in [0, 10]"),
    (["generate", "a person walks", "--temperature=-1"], "temperature must be a finite number in [0, 10]"),
    (["stream", "--prompt", "walk@1e999"], "must be in (0, 600]"),
    (["evaluate", "t2m", "--data", "missing", "--cfg-scale", "1e30"], "cfg_scale"),
    (["evaluate", "t2m", "--data", "missing", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    (["serve", "--cfg-scale", "inf"], "--cfg-scale must be a finite number"),
    (["serve", "--cfg-scale", "1e30"], "cfg_scale must be a finite number"),
    (["serve", "--idle-timeout", "nan"], "--idle-timeout must be a finite number"),
    (["synth", "--out", "x", "--min-seconds", "nan"], "--min-seconds must be a finite number"),
    (["train", "tae", "--data", "missing", "--out", "run", "--set", "lr=Infinity"], "lr must be a finite number"),
    (["train", "tae", "--data", "missing", "--out", "run", "--set", "grad_clip=NaN"], "grad_clip must be a finite"),
    (["download", "--timeout", "nan"], "--timeout must be a finite number"),
    (["render", "in.npy", "--out", "r.mp4", "--fps", "inf"], "--fps must be a finite number"),
]


@pytest.mark.parametrize("args,msg", NUMBERS, ids=[" ".join(a[1:] if a[0] == "generate" else a) for a, _ in NUMBERS])
def test_non_finite_or_absurd_numbers_are_refused_up_front(args, msg, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if args[0] == "serve":    # a refusal that regressed must fail here, not serve forever
        import uvicorn
        monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started with " + " ".join(args)))
    extra = out(tmp_path) if args[0] in ("generate", "stream") else []
    code, _, err = run_cli(args + extra, capsys)
    assert_clear_error(code, err, msg)
    assert "model:" not in err and outputs(tmp_path) == []      # before any model or data was loaded


def test_api_configs_refuse_non_finite_numbers():
    from motionstreamer.models.sampling import SamplerSettings
    from motionstreamer.runtime.engine import GenerationConfig
    from motionstreamer.serve.app import ServeConfig
    from motionstreamer.serve.protocol import ProtocolError, ServeLimits, parse_client_message

    for kw in ({"cfg_scale": float("nan")}, {"cfg_scale": 1e30}, {"temperature": float("inf")}, {"temperature": -1.0},
               {"end_threshold": float("nan")}, {"max_latents": 2.5}, {"min_action_latents": 0},
               {"history_keep": 0}, {"skip_terminal_step": "yes"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            GenerationConfig(**kw).validate()
    with pytest.raises(ValueError, match="eta"):
        SamplerSettings(sampler="ddim", eta=float("nan"))
    with pytest.raises(ValueError, match="cfg_scale"):
        ServeConfig(cfg_scale=float("inf")).validate()
    for msg in ('{"type": "prompt", "text": "walk", "seconds": NaN}',
                '{"type": "prompt", "text": "walk", "seconds": 1e999}',
                '{"type": "prompt", "text": "wa\\udcff"}'):
        with pytest.raises(ProtocolError):
            parse_client_message(msg, ServeLimits())


# ----------------------------------------------------------------------------- 2. training run folders
def tiny_tae_train(out: Path, steps: int, **kw):
    from train_tiny import quiet, tiny_tae

    from motionstreamer.train.tae import TAETrainConfig, train_tae

    rng = np.random.default_rng(0)
    motions = [rng.standard_normal((70, 272)).astype(np.float32) for _ in range(4)]
    config = quiet(TAETrainConfig, out_dir=str(out), steps=steps, batch_size=2, window=16, warmup_steps=0,
                save_every=3, log_every=1)
    return train_tae(tiny_tae(0), motions, config, **kw)


def log_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_training_into_a_run_folder_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    from motionstreamer.checkpoints import load_training_checkpoint
    from motionstreamer.train.common import CHECKPOINT_NAME

    run = tmp_path / "run"
    tiny_tae_train(run, 6)
    before = (run / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ValueError, match="already holds a training run.*--resume.*--overwrite"):
        tiny_tae_train(run, 2)
    assert (run / CHECKPOINT_NAME).read_bytes() == before and log_steps(run) == [1, 2, 3, 4, 5, 6]
    # the CLI refuses before reading any data (the --data folder does not even exist)
    code, _, err = run_cli(["train", "tae", "--data", tmp_path / "missing", "--out", run], capsys)
    assert_clear_error(code, err, "already holds a training run", "--resume", "--overwrite")
    # --resume elsewhere would also replace it
    other = tmp_path / "other"
    tiny_tae_train(other, 3)
    with pytest.raises(ValueError, match="already holds a training run"):
        tiny_tae_train(run, 8, resume=other / CHECKPOINT_NAME)
    # overwrite replaces the run: a fresh log, a step-2 checkpoint
    tiny_tae_train(run, 2, overwrite=True)
    assert log_steps(run) == [1, 2] and load_training_checkpoint(run / CHECKPOINT_NAME)["step"] == 2


def test_resumed_run_does_not_repeat_lost_steps_in_its_log(tmp_path):
    from motionstreamer.train.common import CHECKPOINT_NAME

    run = tmp_path / "run"
    tiny_tae_train(run, 6, stop_after=3)            # checkpoint at step 3
    with open(run / "log.jsonl", "a") as f:          # steps 4-5 logged, then killed before a checkpoint
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + json.dumps({"step": 5, "loss": 1.0}) + "\n"
                + '{"step": 6, "lo')                 # a line cut short by the kill
    tiny_tae_train(run, 6, resume=run / CHECKPOINT_NAME)
    assert log_steps(run) == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- 3. live stdin
def test_stdin_reader_skips_bad_lines_and_keeps_reading():
    from motionstreamer.runtime.commands import read_prompt_lines

    data = (b"a person walks\n\xff\xfe not utf-8\n" + b"x" * 70_000 + b"\n\n   \n"
            + "a person waves \u00e9\n".encode() + b"last line without newline")
    pieces = iter([data[i:i + 1000] for i in range(0, len(data), 1000)] + [b""])
    got, logs = [], []
    read_prompt_lines(lambda n: next(pieces), got.append, logs.append, max_bytes=16 * 1024)
    assert got == ["a person walks", "a person waves \u00e9", "last line without newline"]
    assert len(logs) == 2 and "not UTF-8 text (byte 0xff" in logs[0] and "longer than 16384 bytes" in logs[1]


def test_stdin_reader_memory_stays_bounded_on_a_line_without_end():
    """`< /dev/zero`: 64 MB without a newline, then a prompt."""
    from motionstreamer.runtime.commands import read_prompt_lines

    pieces = itertools.chain((bytes(65536) for _ in range(1024)), [b"\na person jumps\n"], itertools.repeat(b""))

    def read(n):
        return next(pieces)
    got = []
    tracemalloc.start()
    read_prompt_lines(read, got.append, lambda m: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == ["a person jumps"] and peak < 2 * 1024 * 1024, peak


def test_live_stdin_survives_undecodable_and_huge_lines(tmp_path, monkeypatch, capsys):
    r, w = os.pipe()

    def feed():   # a writer thread: the pipe holds 64 KB, the long line is longer
        with os.fdopen(w, "wb") as f:
            f.write(b"\xff\xfe\n" + b"y" * 100_000 + b"\na person \x1b[31mjumps\na person walks\n")
    threading.Thread(target=feed, daemon=True).start()
    monkeypatch.setattr(sys, "stdin", os.fdopen(r, "r"))
    code, _, err = run_cli(["stream", "--stdin", *out(tmp_path, "live"), "--max-seconds", "1", "--sampling-steps", "2"],
                           capsys)
    assert code == 0, err
    assert "not UTF-8" in err and "longer than" in err and "prompt queued: 'a person walks'" in err
    assert "ignored prompt: prompt contains a control character (U+001B at position 9)" in err
    assert "\x1b" not in err                                    # never echoed to the terminal
    assert np.load(tmp_path / "live.npy").shape == (32, 272)


# ----------------------------------------------------------------------------- 4. the work survives
@pytest.mark.parametrize("where", ["parent is a file", "read-only folder", "a folder named like the file"])
def test_unwritable_out_fails_before_generating(where, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    (tmp_path / "d.npy").mkdir()
    dest = {"parent is a file": out(tmp_path, "f/x"), "read-only folder": out(Path(UNWRITABLE_DIR)),
            "a folder named like the file": out(tmp_path, "d")}[where]
    t = time.perf_counter()
    code, _, err = run_cli(["generate", "a person walks", *dest, *FAST], capsys)
    assert_clear_error(code, err, "--out")
    assert "model:" not in err and time.perf_counter() - t < 5   # the model never ran


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_live_stream_saves_what_was_generated(sig, code, tmp_path):
    p = spawn(["stream", "--stdin", "--realtime", "--jsonl", "--prompt", "a person walks@60", *out(tmp_path, "s"),
               *FAST], stdin=subprocess.PIPE)
    lines = [p.stdout.readline() for _ in range(6)]            # 6 latents out: generation is under way
    assert all(json.loads(ln)["joints"] for ln in lines)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == code, err
    assert "Traceback" not in err and f"interrupted ({sig.name}): saved the" in err
    feats = np.load(tmp_path / "s.npy")
    assert feats.shape[0] >= 24 and np.isfinite(feats).all()
    assert np.load(tmp_path / "s_joints.npy").shape[0] == feats.shape[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "s_joints.npy"]   # no temporaries


def test_closed_stdout_ends_the_stream_and_keeps_the_files(tmp_path):
    p = spawn(["stream", "--jsonl", "--prompt", "a person walks@30", *out(tmp_path, "s"), *FAST])
    json.loads(p.stdout.readline())
    p.stdout.close()                                            # `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "stdout closed: saved the" in err
    assert np.load(tmp_path / "s.npy").shape[0] >= 4


def test_evaluate_checks_out_first_and_prints_before_writing(synth, tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("")
    eval_args = ["evaluate", "gt", "--data", synth, "--split", "train", "--batch", "4", "--quiet"]
    code, out, err = run_cli(eval_args + ["--out", tmp_path / "f" / "r.json"], capsys)
    assert_clear_error(code, err, "--out")
    assert "mean ± 95% CI" not in out                            # refused before evaluating

    import motionstreamer.eval.commands

    real_write = motionstreamer.eval.commands.atomic_write_json

    def disk_full(path, obj):   # only for the results
        if Path(path).name == "r.json":
            raise OSError(28, "No space left on device")
        return real_write(path, obj)
    monkeypatch.setattr(motionstreamer.eval.commands, "atomic_write_json", disk_full)   # the writer evaluate uses
    code, out, err = run_cli(eval_args + ["--out", tmp_path / "r.json"], capsys)
    assert_clear_error(code, err, "No space left on device", "the table above holds them")
    assert "mean ± 95% CI" in out                                # the results were printed first


# ----------------------------------------------------------------------------- 5. temporaries
KILLED_WRITER = """
import os, sys
from motionstreamer.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), 9)
    print("writing", flush=True)
    sys.stdin.read()      # a live writer: holds its temporary until told to finish
"""


def test_checkpoint_temporaries_of_killed_writers_are_removed(tmp_path):
    from motionstreamer.train.common import CHECKPOINT_NAME
    from motionstreamer.utils import temporaries_of

    run = tmp_path / "run"
    tiny_tae_train(run, 3)
    ck = run / CHECKPOINT_NAME
    live = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ck), "live"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == b"writing\n"
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ck), "kill"])
        assert killed.returncode == -9 and len(temporaries_of(ck)) == 2   # the live writer's and the dead one's
        tiny_tae_train(run, 6, resume=ck)                        # a resume cleans before its first save
        left = temporaries_of(ck)
        assert len(left) == 1 and left[0].read_bytes() == b"half a checkpoint"   # the live writer's
    finally:
        live.communicate(b"", timeout=30)
    assert live.returncode == 0 and temporaries_of(ck) == [] and ck.read_bytes() == b"half a checkpoint"


# ----------------------------------------------------------------------------- 6. datasets
def test_synth_onto_a_dataset_is_refused_unless_overwritten(tmp_path, monkeypatch, capsys):
    import motionstreamer.data.synth.writers as writers

    data = tmp_path / "data"
    args = ["synth", "--out", data, "--clips", "3", "--min-seconds", "1", "--max-seconds", "2", "--quiet"]
    assert run_cli(args + ["--stream-pairs", "2"], capsys)[0] == 0
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert any("babel_stream" in str(p) for p in before)
    for other in (data, tmp_path / "notes"):                       # a dataset, or any non-empty folder
        other.mkdir(exist_ok=True)
        (other / "mine.txt").write_text("keep")
        code, _, err = run_cli(args[:2] + [other] + args[3:], capsys)
        assert_clear_error(code, err, "is not empty", "--overwrite")
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and p.name != "mine.txt"} == before

    def fails(out, *a):                                            # a run that dies half-way
        (out / "motion_data").mkdir()
        (out / "motion_data" / "000000.npy").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(writers, "_write_dataset", fails)
        code, _, err = run_cli(args + ["--overwrite"], capsys)
        assert_clear_error(code, err, "No space left on device")
    assert (data / "mine.txt").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes"]

    assert run_cli(args + ["--overwrite", "--seed", "1"], capsys)[0] == 0   # replaced as a whole
    assert not (data / "mine.txt").exists() and not (data / "babel_stream").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes"]   # nothing left beside it


def test_a_killed_dataset_write_is_cleaned_by_the_next(tmp_path):
    from motionstreamer.utils import atomic_dir, temporaries_of

    killed = "import sys; from motionstreamer.utils import atomic_dir\n" \
             "with atomic_dir(sys.argv[1]) as t:\n    (t / 'x').write_text('half'); import os; os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", killed, str(tmp_path / "d")]).returncode == -9
    assert len(temporaries_of(tmp_path / "d")) == 1 and not (tmp_path / "d").exists()
    with atomic_dir(tmp_path / "d") as t:
        (t / "y").write_text("whole")
    assert temporaries_of(tmp_path / "d") == [] and [p.name for p in (tmp_path / "d").iterdir()] == ["y"]


# ----------------------------------------------------------------------------- 7. bundle config vs weights
@pytest.mark.parametrize("edit,msg", [
    (lambda c: c["tae"].update(width=30000), "mis-shaped"),            # would allocate 14+ GB
    (lambda c: c["tae"].update(width=10 ** 9), "bad config"),          # sizes overflow
    (lambda c: c["t2m"].update(n_layer=400), "missing key"),
    (lambda c: c["t2m"]["head"].update(width=10 ** 6), "mis-shaped"),
])
def test_bundle_config_is_checked_against_weights_before_allocating(edit, msg, tmp_path, capsys):
    import resource

    bundle = edited_bundle(tmp_path, lambda d, c: edit(c))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_cli(["generate", "a person walks", "--checkpoint", bundle, *out(tmp_path), *FAST], capsys)
    assert_clear_error(code, err, msg)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 500_000   # KB: nothing big allocated


def test_absurd_json_nesting_is_a_clear_error(tmp_path, capsys):
    bundle = edited_bundle(tmp_path, lambda d, c: None)
    (bundle / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(["generate", "a person walks", "--checkpoint", bundle, *out(tmp_path), *FAST], capsys)
    assert_clear_error(code, err, "nested too deeply")


# ----------------------------------------------------------------------------- 8. errors, not tracebacks
@pytest.mark.parametrize("args,msg", [
    (["generate", "a person \udcff walks"], "not valid UTF-8 text (byte 0xff at position 9)"),   # argv bytes
    (["stream", "--prompt", "walk \udc80@2"], "not valid UTF-8"),
    (["generate", "a person walks", "--sampling-steps", "51"], "sampling steps must be an int in [1, 50]"),
    (["generate", "a person walks", "--device", "bogus"], "unknown device 'bogus'"),
    (["generate", "a person walks", "--device", "cuda:7"], "cuda:7"),
    (["generate", "a person walks", "--seed", str(2 ** 70)], "seed must be in"),
    (["generate", "a person walks", "--seed", str(-2 ** 64)], "seed must be in"),
])
def test_bad_generation_arguments(args, msg, tmp_path, capsys):
    code, _, err = run_cli([args[0], *FAST, *args[1:], *out(tmp_path)], capsys)   # the case's flags win
    assert_clear_error(code, err, msg)
    assert outputs(tmp_path) == []


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c.update(sampler=[1]), "'sampler' must be"),
    (lambda c: c.update(sampler={"skip_terminal_step": "yes"}), "'sampler' must be"),
    (lambda c: c.update(end_threshold="abc"), "'end_threshold' must be a finite number"),
    (lambda c: c.update(end_threshold=[1]), "'end_threshold' must be a finite number"),
    (lambda c: c["t2m"].update(block_size=2), "block_size must be >= 3"),
    (lambda c: c["t2m"].update(block_size=1), "block_size must be >= 3"),
    (lambda c: c["t2m"].update(rope_base=-1.0), "rope_base must be a finite number > 1"),
])
def test_bad_bundle_config_values(edit, msg, tmp_path, capsys):
    bundle = edited_bundle(tmp_path, lambda d, c: edit(c))
    code, _, err = run_cli(["generate", "a person walks", "--checkpoint", bundle, *out(tmp_path), *FAST], capsys)
    assert_clear_error(code, err, msg)


def absurd_npy(path: Path, rows: int = 10 ** 12) -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 272), np.float32))
    header["shape"] = (rows, 272)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(1088))


def test_npy_header_claiming_an_absurd_shape(synth, tmp_path, capsys):
    from motionstreamer.data.humanml3d import DataError, load_motion_file
    from motionstreamer.utils import load_npy

    absurd_npy(tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"claims shape \(1000000000000, 272\).*holds 1088 bytes"):
        load_npy(tmp_path / "a.npy")
    with pytest.raises(DataError, match="a.npy"):
        load_motion_file(tmp_path / "a.npy")
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    clip = (data / "split" / "train.txt").read_text().split()[0]
    absurd_npy(data / "motion_data" / f"{clip}.npy")
    code, _, err = run_cli(["train", "tae", "--data", data, "--out", tmp_path / "run"], capsys)
    assert_clear_error(code, err, f"{clip}.npy", "claims shape")


@pytest.mark.parametrize("verb", ["export-onnx", "convert-checkpoint", "evaluate", "train", "download"])
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_destinations_that_cannot_be_written(verb, where, synth, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    dest = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "x", "read-only": Path(UNWRITABLE_DIR)}[where]
    if verb == "evaluate" and where == "a file":
        dest = tmp_path                                          # a folder where the results file goes
    args = {"export-onnx": ["export-onnx", "--out", dest],
            "convert-checkpoint": ["convert-checkpoint", tmp_path / "official", dest],
            "evaluate": ["evaluate", "gt", "--data", synth, "--out", dest],
            "train": ["train", "tae", "--data", synth, "--out", dest],
            "download": ["download", "--dest", dest]}[verb]
    code, out, err = run_cli(args, capsys)
    assert_clear_error(code, err)
    assert "is a file" in err or "is a folder" in err or "not writable" in err, err


def test_diverging_training_is_a_clear_error(synth, tmp_path, capsys):
    code, _, err = run_cli(["train", "tae", "--data", synth, "--out", tmp_path / "run", "--model-size", "small",
                            "--set", "steps=3", "--set", "batch_size=2", "--set", "lr=1e30",
                            "--set", "progress=false", "--set", "tensorboard=false"], capsys)
    assert_clear_error(code, err, "training diverged", "loss became nan", "--set lr=")


def test_api_durations_must_be_finite():
    from motionstreamer.runtime.session import seconds_to_latents

    for bad in (float("inf"), float("nan"), -1.0, 0, "3", True):
        with pytest.raises(ValueError, match="duration must be a finite number of seconds > 0"):
            seconds_to_latents(bad)
    assert seconds_to_latents(np.float32(2.0)) == 15


# control characters among ordinary text: (what, prompt); the first control's code point and position are
# found here by hand, independently of the check
CONTROL_PROMPTS = [("NUL", "a person\x00 walks"), ("an ESC colour sequence", "a person \x1b[31mwalks\x1b[0m"),
                   ("C1 CSI", "a person \x9b31m walks"), ("BEL", "a person walks\x07"), ("DEL", "walk\x7f forward"),
                   ("file separator (Python whitespace)", "walk\x1cforward"), ("NEL (Python whitespace)", "walk\x85on"),
                   ("one control after 900 good characters", "walk " * 180 + "\x00")]


@pytest.mark.parametrize("what,prompt", CONTROL_PROMPTS, ids=[w for w, _ in CONTROL_PROMPTS])
def test_prompts_with_control_characters_are_refused(what, prompt):
    from motionstreamer.runtime.policy import check_prompt

    first = next(i for i, ch in enumerate(prompt)
                 if ord(ch) < 0x20 and ch not in "\t\n\r\v\f" or 0x7F <= ord(ch) <= 0x9F)
    with pytest.raises(ValueError, match=rf"control character \(U\+{ord(prompt[first]):04X} at position {first}\)"):
        check_prompt(prompt)


def test_ordinary_whitespace_and_non_ascii_text_are_kept():
    from motionstreamer.runtime.policy import check_prompt

    assert check_prompt(" a\tperson\r\n walks\x0b\x0cforward ") == "a person walks forward"
    assert check_prompt("une personne marche à gauche 走路 🚶\u200d") == "une personne marche à gauche 走路 🚶\u200d"


def test_control_characters_are_refused_at_every_entry_point(engine_parts, tmp_path, capsys):
    """The engine (add_stream, push_text), the CLI's prompt arguments; the live stdin and the service's
    are in test_live_stdin_survives_undecodable_and_huge_lines and tests/test_serve_protocol.py."""
    from motionstreamer.runtime.engine import StreamingEngine

    bundle, encoder = engine_parts
    engine = StreamingEngine(bundle, encoder, capacity=1)
    with pytest.raises(ValueError, match="control character"):
        engine.add_stream("a person \x1b[31mwalks", seed=0)
    sid = engine.add_stream("a person walks", seed=0)            # the refused stream left no slot taken
    with pytest.raises(ValueError, match="control character"):
        engine.push_text(sid, "a person\x00jumps")
    assert engine.queue(sid) == ["a person walks"]
    for argv in (["generate", "a person \x1b[2Jwalks"], ["stream", "--prompt", "a person walks\x07@2"]):
        code, _, err = run_cli([*argv, *out(tmp_path), *FAST], capsys)
        assert_clear_error(code, err, "control character")
        assert "\x1b" not in err and "\x07" not in err
    assert outputs(tmp_path) == []


def test_api_push_text_duration_inf_and_bad_prompts(engine_parts):
    from motionstreamer.runtime.session import StreamingSession

    bundle, encoder = engine_parts
    s = StreamingSession(bundle, encoder, seed=0)
    with pytest.raises(ValueError, match="duration"):
        s.push_text("walk", duration=float("inf"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        s.push_text("walk \ud800")
    with pytest.raises(ValueError, match="max_latents must be an integer >= 1"):
        s.push_text("walk", max_latents=2.5)


# ----------------------------------------------------------------------------- 9. global RNG untouched
@pytest.fixture(scope="module")
def engine_parts():
    import tempfile

    from fakes import FakeTextEncoder

    from motionstreamer.checkpoints import load_bundle, save_bundle
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    torch.manual_seed(0)
    d = Path(tempfile.mkdtemp())
    config = T2MConfig.small(cond_dim=16)
    config.block_size = 10
    save_bundle(d, CausalHumanTAE(TAEConfig(hidden=32, width=32)), TextToMotionModel(config), torch.zeros(272),
                torch.ones(272), torch.zeros(16))
    yield load_bundle(d), FakeTextEncoder()
    shutil.rmtree(d)


def test_add_stream_without_seed_leaves_the_global_rng_alone(engine_parts):
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine

    bundle, encoder = engine_parts
    engine = StreamingEngine(bundle, encoder, capacity=2, config=GenerationConfig(sampling_steps=2))
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, _ = engine.add_stream("walk", seed=None), engine.add_stream("walk", seed=None)
    assert torch.equal(torch.get_rng_state(), state)
    chunks = engine.step()
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(chunks[0].latent, chunks[1].latent)    # two fresh seeds, two different draws
    for bad in (2 ** 64, -2 ** 63 - 1, 1.5, "7", True):
        engine.close(a)
        with pytest.raises(ValueError, match="seed must be"):
            engine.add_stream("walk", seed=bad)


# ----------------------------------------------------------------------------- 10. smaller
@pytest.mark.parametrize("spec,expected", [
    ("email me@home", ("email me@home", None)),
    ("walk@4", ("walk", 4.0)),
    ("walk @ 2.5", ("walk ", 2.5)),
    ("meet@@5", ("meet@5", None)),
    ("meet@@5@3", ("meet@5", 3.0)),
    ("a@b@2", ("a@b", 2.0)),
    ("@handle waves", ("@handle waves", None)),
])
def test_only_a_final_at_number_is_a_duration(spec, expected):
    from motionstreamer.runtime.commands import parse_prompt

    assert parse_prompt(spec) == expected


@pytest.mark.parametrize("spec,msg", [("walk@4x", "not a number"), ("walk@", "not a number"),
                                      ("walk@inf", "must be in"), ("walk@nan", "must be in"),
                                      ("walk@-1", "must be in"), ("walk@0", "must be in")])
def test_bad_durations_are_still_errors(spec, msg, tmp_path, capsys):
    code, _, err = run_cli(["stream", "--prompt", spec, *out(tmp_path), *FAST], capsys)
    assert_clear_error(code, err, msg)


def test_at_sign_prompt_runs(tmp_path, capsys):
    code, _, err = run_cli(["stream", "--prompt", "email me@home", "--prompt", "walk@1", *out(tmp_path),
                            "--max-seconds", "1", *FAST], capsys)
    assert code == 0, err


def test_stdin_closed_before_any_prompt(tmp_path, monkeypatch, capsys):
    r, w = os.pipe()
    os.close(w)
    monkeypatch.setattr(sys, "stdin", os.fdopen(r, "r"))
    code, _, err = run_cli(["stream", "--stdin", *out(tmp_path), *FAST], capsys)
    assert_clear_error(code, err, "no prompt was given", "before a prompt line")
    assert "try another seed" not in err
