"""`motionstreamer generate` / `stream` end to end on a small bundle (also live: prompts piped in,
real-time pacing, JSON lines out), and their argument errors."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fakes import save_small_bundle

from motionstreamer.cli import main
from motionstreamer.representation.features import recover_joints


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return save_small_bundle(tmp_path_factory.mktemp("bundle"))


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_stream_three_prompts_is_one_continuous_motion(bundle_dir, tmp_path, capsys):
    code, out = run(["stream", "--prompt", "walk forward@1", "--prompt", "turn left@0.8", "--prompt", "wave@0.5",
                     "--checkpoint", str(bundle_dir), "--out", "s", "--out-dir", str(tmp_path), "--sampling-steps", "5",
                     "--bvh", "--seed", "3"], capsys)
    assert code == 0
    feats = np.load(tmp_path / "s.npy")
    joints = np.load(tmp_path / "s_joints.npy")
    latents = 8 + 6 + 4          # durations rounded to whole latents (7.5 per second)
    assert feats.shape == (4 * latents, 272) and joints.shape == (4 * latents, 22, 3)
    assert (tmp_path / "s.bvh").read_text().count("\n") > 4 * latents
    assert "prompt_change" in out.err and "real-time factor" in out.err and "first-latent latency" in out.err


def test_stream_stdin_realtime_jsonl(bundle_dir, tmp_path):
    """The live path: prompts arrive on stdin while the motion streams, chunks leave as JSON lines at
    30 fps, a new prompt steers the next latents, and the files hold what was printed."""
    cmd = [sys.executable, "-m", "motionstreamer", "stream", "--stdin", "--realtime", "--jsonl", "--quiet",
           "--checkpoint", str(bundle_dir), "--out", "live", "--out-dir", str(tmp_path), "--sampling-steps", "2",
           "--max-seconds", "2"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, times = [], []
    try:
        proc.stdin.write("a person walks forward\n")
        proc.stdin.flush()
        for line in proc.stdout:
            lines.append(json.loads(line))
            times.append(time.perf_counter())
            if len(lines) == 1:                          # the next prompt arrives while the motion streams
                proc.stdin.write("a person turns left\n")
                proc.stdin.close()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        err = proc.stderr.read()
    finally:
        proc.kill()
    # --quiet: no progress bar, the text encoder's neither
    assert "Loading weights" not in err and "it/s" not in err, err
    n = 15                                              # --max-seconds 2: 2 * 30 / 4 latents
    assert [c["start_frame"] for c in lines] == list(range(0, 4 * n, 4))
    joints = np.array([c["joints"] for c in lines])
    assert joints.shape == (n, 4, 22, 3) and np.isfinite(joints).all()
    prompts = [c["prompt"] for c in lines]
    switch = prompts.index("a person turns left")       # the piped prompt steers the stream from then on
    assert prompts == ["a person walks forward"] * switch + ["a person turns left"] * (n - switch)
    assert 1 <= switch <= 5, prompts                    # sent right after the first chunk (133 ms per latent)
    # real-time pacing once the new prompt is in (encoding it may stall one step): the chunks after it
    # leave 4 frames / 30 fps apart, less one step's generation time
    assert times[-1] - times[switch] >= (n - 1 - switch) * 4 / 30 - 0.15, np.diff(times)
    # the files hold the motion that was printed: the saved features recover the printed joints (the
    # _joints.npy file holds them fitted to one rigid skeleton and grounded: tests/test_io_exports.py)
    saved = np.load(tmp_path / "live.npy")
    assert saved.shape == (4 * n, 272) and np.load(tmp_path / "live_joints.npy").shape == (4 * n, 22, 3)
    recovered = recover_joints(torch.from_numpy(saved)).numpy()
    printed = joints.reshape(-1, 22, 3)
    np.testing.assert_allclose(recovered, printed, atol=1e-5 * max(1.0, np.abs(printed).max()))


def test_generate_writes_outputs(bundle_dir, tmp_path, capsys):
    code, out = run(["generate", "a person walks", "--checkpoint", str(bundle_dir), "--out", "sub/g",
                     "--out-dir", str(tmp_path), "--sampling-steps", "3", "--max-seconds", "1"], capsys)
    assert code == 0
    assert np.load(tmp_path / "sub" / "g.npy").shape == (32, 272)
    assert "checkpoint" in out.err


def test_generate_and_stream_with_onnx_equal_the_pytorch_models(bundle_dir, tmp_path, capsys):
    """`--onnx DIR` runs the same engine with its model calls in onnxruntime: the fp32 export of the bundle gives
    the PyTorch run's frames (within 1e-4: fp32 graph parity, carried through the stream), prompt changes
    included; a head the export lacks is a clear error naming the variant to export."""
    pytest.importorskip("onnxruntime")
    from motionstreamer.checkpoints import load_bundle
    from motionstreamer.export.onnx_export import export_bundle
    export_bundle(load_bundle(bundle_dir), tmp_path / "export", variants=[("ddpm", 3)])
    for verb in (["generate", "a person walks"], ["stream", "--prompt", "walk forward@0.6", "--prompt", "wave@0.6"]):
        feats = {}
        sources = (("torch", ["--checkpoint", str(bundle_dir)]), ("onnx", ["--onnx", str(tmp_path / "export")]))
        for name, source in sources:
            code, out = run(verb + source + ["--out", name, "--out-dir", str(tmp_path), "--sampling-steps", "3",
                                             "--max-seconds", "1.2", "--seed", "5"], capsys)
            assert code == 0, out.err
            feats[name] = np.load(tmp_path / f"{name}.npy")
        assert "onnxruntime, fp32" in out.err
        assert feats["onnx"].shape == feats["torch"].shape and feats["torch"].shape[0] >= 32
        err = np.abs(feats["onnx"] - feats["torch"]).max()
        print(f"{verb[0]}: max |onnx - torch| = {err:.2e} (|torch| max {np.abs(feats['torch']).max():.2f})")
        assert err < 1e-4
    with pytest.raises(SystemExit):
        main(["generate", "walk", "--onnx", str(tmp_path / "export"), "--sampling-steps", "7", "--out", "x",
              "--out-dir", str(tmp_path)])
    assert "re-export with --variant ddpm:7" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["generate", "   "], "empty"),
    (["generate", "walk " * 300], "too long"),
    (["generate", "walk", "--out", ""], "has no file name"),
    (["generate", "walk", "--out", "."], "has no file name"),
    (["generate", "walk", "--out", ".."], "has no file name"),
    (["generate", "walk", "--out", "sub/"], "has no file name"),
    (["generate", "walk", "--checkpoint", "/nonexistent/dir"], "not found"),
    (["stream", "--prompt", "walk@4x"], "not a number"),
    (["stream", "--prompt", "walk@-1"], "must be in"),
    (["stream"], "at least one --prompt"),
    (["generate", "walk", "--max-seconds", "0"], "max-seconds"),
    (["generate", "walk", "--threads", "0"], "threads"),
    (["generate", "walk", "--onnx", "/nonexistent/dir"], "not an exported model folder"),
    (["generate", "walk", "--onnx", "/nonexistent/dir", "--checkpoint", "/tmp"], "leave out --checkpoint"),
    (["generate", "walk", "--onnx", "/nonexistent/dir", "--dtype", "bf16"], "leave out --checkpoint, --dtype"),
])
def test_bad_arguments_are_clear_errors(args, msg, tmp_path, capsys):
    if "--out" not in args:
        args = args + ["--out", "x"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_out_is_trusted_anywhere_and_tilde_expanded(bundle_dir, tmp_path, capsys, monkeypatch):
    """Issue 16 item 9: a user's own --out may be absolute, outside the current folder, or start with ~."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "motions").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    common = ["--checkpoint", str(bundle_dir), "--sampling-steps", "2", "--max-seconds", "0.3", "--quiet"]
    assert run(["generate", "a person walks", "--out", "~/motions/walk"] + common, capsys)[0] == 0
    assert (home / "motions" / "walk.npy").is_file() and (home / "motions" / "walk_joints.npy").is_file()
    assert run(["generate", "a person walks", "--out", str(tmp_path / "abs" / "w")] + common, capsys)[0] == 0
    assert (tmp_path / "abs" / "w.npy").is_file()
    assert run(["generate", "a person walks", "--out", "../up"] + common, capsys)[0] == 0
    assert (tmp_path / "up.npy").is_file()
    with pytest.raises(SystemExit) as e:            # a prefix that names a folder
        main(["generate", "a person walks", "--out", str(home / "motions")] + common)
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_stream_clean_feet_cleans_live_chunks_causally_and_files_offline(bundle_dir, tmp_path, capsys):
    import json

    from motionstreamer.io.rig import prepare_motion
    from motionstreamer.representation.feet import FootCleaner

    def jsonl(prefix, extra):
        code, out = run(["stream", "--prompt", "walk forward@1.2", "--checkpoint", str(bundle_dir), "--sampling-steps",
                         "3", "--seed", "5", "--jsonl", "--quiet", "--out", str(tmp_path / prefix)] + extra, capsys)
        assert code == 0
        return np.concatenate([np.array(json.loads(line)["joints"]) for line in out.out.splitlines()])

    raw = jsonl("raw", [])
    cleaned = jsonl("clean", ["--clean-feet"])
    np.testing.assert_array_equal(np.load(tmp_path / "raw.npy"), np.load(tmp_path / "clean.npy"))   # same motion
    cleaner = FootCleaner()
    expected = np.concatenate([cleaner(raw[s:s + 4]) for s in range(0, len(raw), 4)])
    np.testing.assert_allclose(cleaned, expected, atol=1e-4)          # the printed chunks: causal clean-up
    assert np.abs(cleaned - raw).max() > 0.01 and any(c.any() for c in cleaner.contacts)
    features = np.load(tmp_path / "clean.npy").astype(np.float64)
    np.testing.assert_allclose(np.load(tmp_path / "clean_joints.npy"),
                               prepare_motion(features, clean_feet=True).joints, atol=1e-5)   # files: offline
