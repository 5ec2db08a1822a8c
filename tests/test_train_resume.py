"""Checkpoints: a resumed run equals an uninterrupted one bit for bit (text-to-motion with Two-Forward,
text dropout, edge drops, EMA, warm-up/cosine, clipping; TAE with multi-step decay), and a run that
dies while writing a checkpoint leaves the previous one intact and loadable."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder
from train_tiny import quiet, state_equal, tiny_t2m, tiny_tae

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.train.common import CHECKPOINT_NAME
from motionstreamer.train.t2m import LatentExample, T2MTrainConfig, embed_captions, train_t2m
from motionstreamer.train.tae import TAETrainConfig, train_tae

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent


def t2m_examples(n=12, seed=0):
    rng = np.random.default_rng(seed)
    ex = [LatentExample(f"caption {i}", np.zeros((0, 16), np.float32),
                        rng.standard_normal((int(rng.integers(5, 20)), 16)).astype(np.float32),
                        captions=(f"caption {i}", f"other caption {i}")) for i in range(n)]
    ex += [LatentExample(f"pair {i}", rng.standard_normal((6, 16)).astype(np.float32),
                         rng.standard_normal((8, 16)).astype(np.float32), edge_drop=False) for i in range(4)]
    return ex


def motions(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(40, 80)), 272)).astype(np.float32) for _ in range(n)]


def compare_checkpoints(a: Path, b: Path):
    ca, cb = load_training_checkpoint(a), load_training_checkpoint(b)
    for ck in (ca, cb):
        ck["config"]["train"].pop("out_dir")
    bad = state_equal(ca, cb)
    assert not bad, f"checkpoints differ at: {bad[:10]}"
    return ca


def t2m_cfg(out, **kw):
    return quiet(T2MTrainConfig, out_dir=str(out), steps=12, batch_size=6, lr=2e-3, warmup_steps=3,
                 weight_decay=1e-6, grad_clip=1.0, ema_decay=0.9, text_dropout=0.3, save_every=100,
                 diffmlps_batch_mul=2, **kw)


def test_t2m_resume_is_bit_exact(tmp_path):
    ex = t2m_examples()
    emb = embed_captions(ex, FakeTextEncoder())
    full = train_t2m(tiny_t2m(seed=0), ex, emb, t2m_cfg(tmp_path / "full"))
    part = train_t2m(tiny_t2m(seed=0), ex, emb, t2m_cfg(tmp_path / "part"), stop_after=5)
    assert part.step == 5 and load_training_checkpoint(tmp_path / "part" / CHECKPOINT_NAME)["step"] == 5
    # a differently initialised model: everything must come from the checkpoint
    rest = train_t2m(tiny_t2m(seed=99), ex, emb, t2m_cfg(tmp_path / "part"),
                     resume=tmp_path / "part" / CHECKPOINT_NAME)
    assert rest.step == 12 and [s for s, _ in rest.losses] == list(range(6, 13))
    assert rest.losses == full.losses[5:]                      # the same losses, exactly
    ck = compare_checkpoints(tmp_path / "full" / CHECKPOINT_NAME, tmp_path / "part" / CHECKPOINT_NAME)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "step", "config"} <= set(ck)
    assert ck["step"] == 12
    # the run really used Two-Forward (fraction > 0 after step 0) and moved away from init
    init = tiny_t2m(seed=0).state_dict()
    assert any(not torch.equal(v, ck["model"][f"model.{k}"]) for k, v in init.items())


def test_tae_resume_is_bit_exact(tmp_path):
    def config(out):
        return quiet(TAETrainConfig, out_dir=str(out), steps=8, batch_size=4, lr=1e-3, warmup_steps=2,
                     milestones=(5,), gamma=0.1, ema_decay=0.8, window=16, save_every=100)
    full = train_tae(tiny_tae(0), motions(), config(tmp_path / "full"))
    train_tae(tiny_tae(0), motions(), config(tmp_path / "part"), stop_after=3)
    rest = train_tae(tiny_tae(7), motions(), config(tmp_path / "part"), resume=tmp_path / "part" / CHECKPOINT_NAME)
    assert rest.losses == full.losses[3:]
    ck = compare_checkpoints(tmp_path / "full" / CHECKPOINT_NAME, tmp_path / "part" / CHECKPOINT_NAME)
    assert ck["scheduler"]["last_epoch"] == 8


def test_resume_refuses_other_trainer_and_other_model(tmp_path):
    train_tae(tiny_tae(0), motions(), quiet(TAETrainConfig, out_dir=str(tmp_path / "tae"), steps=1, batch_size=2,
                                            window=16, save_every=1))
    ex = t2m_examples()
    emb = embed_captions(ex, FakeTextEncoder())
    with pytest.raises(ValueError, match="is a 'tae' checkpoint, not 't2m'"):
        train_t2m(tiny_t2m(), ex, emb, t2m_cfg(tmp_path / "x"), resume=tmp_path / "tae" / CHECKPOINT_NAME)
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    with pytest.raises(ValueError, match="do not fit this model"):
        train_tae(CausalHumanTAE(TAEConfig(hidden=16, width=16)), motions(),
                  quiet(TAETrainConfig, out_dir=str(tmp_path / "y"), steps=2, batch_size=2, window=16),
                  resume=tmp_path / "tae" / CHECKPOINT_NAME)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        train_tae(tiny_tae(0), motions(), quiet(TAETrainConfig, out_dir=str(tmp_path / "z"), steps=2, batch_size=2,
                                                window=16), resume=tmp_path / "junk.pt")


@pytest.mark.parametrize("fail", ["torch.save", "os.replace"])
def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch, fail):
    out = tmp_path / "run"
    config = quiet(TAETrainConfig, out_dir=str(out), steps=6, batch_size=2, window=16, save_every=2)
    calls = {"n": 0}
    if fail == "torch.save":
        real = torch.save

        def broken(obj, f, *a, **k):
            calls["n"] += 1
            if calls["n"] == 2:   # the second checkpoint: write half a file, then die
                Path(f).write_bytes(b"\x00" * 100)
                raise OSError("disk died mid-write")
            return real(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", broken)
    else:
        real = os.replace

        def broken(src, dst, *a, **k):
            if Path(dst).name == CHECKPOINT_NAME:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise OSError("rename failed")
            return real(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        train_tae(tiny_tae(0), motions(), config)
    monkeypatch.undo()
    ck = load_training_checkpoint(out / CHECKPOINT_NAME)          # weights_only load of the last good one
    assert ck["step"] == 2
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp.pt")) == []   # no partial file left
    res = train_tae(tiny_tae(3), motions(), config, resume=out / CHECKPOINT_NAME)
    assert res.step == 6


KILL_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
torch.set_num_threads(1)
from train_tiny import quiet, tiny_tae
from test_train_resume import motions
from motionstreamer.train.tae import TAETrainConfig, train_tae
config = quiet(TAETrainConfig, out_dir=sys.argv[1], steps=10**6, batch_size=2, window=16, save_every=1)
train_tae(tiny_tae(0), motions(), config)
"""


def test_sigkill_during_training_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), str(HERE)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / CHECKPOINT_NAME).exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.05)
        time.sleep(0.7)                       # it saves every step: the kill lands in or near a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ck = load_training_checkpoint(out / CHECKPOINT_NAME)
    assert ck["step"] >= 1
    config = quiet(TAETrainConfig, out_dir=str(out), steps=ck["step"] + 2, batch_size=2, window=16, save_every=1)
    assert train_tae(tiny_tae(5), motions(), config, resume=out / CHECKPOINT_NAME).step == ck["step"] + 2
