"""Multi-process training on CPU (torchrun, gloo): DDP gradients of the text-to-motion objective equal
one process's full-batch gradients, and `motionstreamer train t2m` runs end to end under torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_grad_check
import pytest
import torch
from fakes import FakeTextEncoder
from train_tiny import encode_dataset, free_port, make_synth, tiny_tae

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.train.common import CHECKPOINT_NAME

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def torchrun(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port())] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    torchrun([str(HERE / "ddp_grad_check.py"), str(tmp_path / "ddp")])
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rows"], r1["rows"], r0["world_size"]) == ([0, 2], [2, 4], 2)
    full = ddp_grad_check.run(tmp_path / "single")                   # one process, all 4 rows
    half = ddp_grad_check.run(tmp_path / "half", rows=(0, 2))        # one process, rank 0's rows only
    assert set(full["grads"]) == set(r0["grads"]) and len(full["grads"]) > 40
    for k, g in full["grads"].items():
        # float64: only the summation order differs
        torch.testing.assert_close(r0["grads"][k], g, rtol=1e-9, atol=1e-13, msg=lambda m: f"{k}: {m}")
        assert torch.equal(r0["grads"][k], r1["grads"][k]), k         # all-reduced: the same on both ranks
    # the check can fail: half the batch alone gives clearly different gradients
    worst = max(float((half["grads"][k] - full["grads"][k]).abs().max()) for k in full["grads"])
    assert worst > 1e-3
    # after the optimiser step both replicas hold the same weights, equal to the one-process step
    for k, v in full["params"].items():
        assert torch.equal(r0["params"][k], r1["params"][k]), k
        torch.testing.assert_close(r0["params"][k], v, rtol=1e-9, atol=1e-12)
    # each rank logs its own half's loss; their mean is the full batch's loss
    (_, l0), (_, l1), (_, lf) = r0["losses"][0], r1["losses"][0], full["losses"][0]
    assert abs((l0 + l1) / 2 - lf) < 1e-12 and abs(l0 - l1) > 1e-4


def test_cli_train_t2m_under_torchrun(tmp_path):
    from motionstreamer.train.t2m import embed_captions, load_latent_examples, save_text_embeddings

    data = make_synth(tmp_path / "data", clips=20, pairs=4)
    lat, _ = encode_dataset(tiny_tae(), data, tmp_path)
    enc = FakeTextEncoder()
    cache = tmp_path / "text.pt"
    save_text_embeddings(cache, embed_captions(load_latent_examples(lat, data), enc), enc.name)
    out = tmp_path / "run"
    r = torchrun(["-m", "motionstreamer", "train", "t2m", "--data", str(data), "--latents", str(lat),
                  "--text-encoder", enc.name, "--text-cache", str(cache), "--model-size", "small",
                  "--out", str(out), "--device", "cpu", "--set", "steps=3", "--set", "batch_size=4",
                  "--set", "warmup_steps=1", "--set", "save_every=2", "--set", "progress=false",
                  "--set", "tensorboard=false"])
    assert r.stdout.count("trained t2m to step 3") == 1, r.stdout      # printed by rank 0 only
    ck = load_training_checkpoint(out / CHECKPOINT_NAME)
    assert ck["step"] == 3 and len(ck["rng"]) == 2                    # both ranks' RNG states kept
    assert not torch.equal(ck["rng"][0]["data"], ck["rng"][1]["data"])
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["train"]["batch_size"] == 4 and config["t2m"]["cond_dim"] == 16
    assert len((out / "log.jsonl").read_text().splitlines()) >= 1
