"""Official-release conversion and hub download, without the released files or the network:
fake files in the released layout (official key names, 'net'/'trans' containers, 'module.'
prefixes, optimizer state, Mean/Std/end-latent .npy) built from small configs given by the
override flags; the converted bundle reproduces the source models exactly. Download fails fast
offline and asks the hub for exactly the released folders."""
import json
import socket

import numpy as np
import pytest
import torch

import motionstreamer.checkpoints as ck
from motionstreamer.checkpoints import CheckpointError, convert_official, download_official, load_bundle
from motionstreamer.cli import main
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def release(tmp_path, with_end=True):
    """A folder laid out as the hub download + the GitHub end latent, small configs."""
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig.small(32)).eval()
    t2m = TextToMotionModel(T2MConfig.small(cond_dim=384)).eval()
    with torch.no_grad():
        for p in t2m.diff_loss.parameters():
            p.normal_(0, 0.02)
    src = tmp_path / "official"
    (src / "Causal_TAE").mkdir(parents=True)
    (src / "Experiments" / "t2m_model").mkdir(parents=True)
    (src / "humanml3d_272" / "mean_std").mkdir(parents=True)
    torch.save({"net": tae.state_dict()}, src / "Causal_TAE" / "net_last.pth")
    opt = torch.optim.AdamW(t2m.parameters())
    torch.save({"trans": {"module." + k: v for k, v in t2m.state_dict().items()},   # accelerate-wrapped keys
                "scheduler": {"warmup_iters": 10000, "total_iters": 100000, "min_lr": 0},
                "optimizer": opt.state_dict()}, src / "Experiments" / "t2m_model" / "latest.pth")
    g = np.random.default_rng(0)
    mean, std = g.normal(size=272).astype(np.float32), (g.random(272) + 0.5).astype(np.float32)
    end = g.normal(size=(1, 16)).astype(np.float32)                  # the released file is (1, 16)
    np.save(src / "humanml3d_272" / "mean_std" / "Mean.npy", mean)
    np.save(src / "humanml3d_272" / "mean_std" / "Std.npy", std)
    if with_end:
        np.save(src / "reference_end_latent_t2m_272.npy", end)
    (tmp_path / "tae.json").write_text(json.dumps(tae.config.to_dict()))
    (tmp_path / "t2m.json").write_text(json.dumps(t2m.config.to_dict()))
    return src, tae, t2m, mean, std, end


def flags(tmp_path):
    return ["--tae-config", str(tmp_path / "tae.json"), "--t2m-config", str(tmp_path / "t2m.json")]


def test_convert_checkpoint_cli_reproduces_the_source_models(tmp_path, capsys):
    src, tae, t2m, mean, std, end = release(tmp_path)
    dst = tmp_path / "bundle"
    assert main(["convert-checkpoint", str(src), str(dst), "--text-encoder", "minilm", *flags(tmp_path)]) == 0
    assert f"wrote model bundle {dst}" in capsys.readouterr().out
    b = load_bundle(dst)
    assert b.text_encoder_name == "minilm" and b.config.text_dim == 384
    assert b.config.extra["end_latent_source"].endswith("reference_end_latent_t2m_272.npy")
    for ours, theirs in ((b.tae, tae), (b.t2m, t2m)):
        a, c = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(c) and all(torch.equal(a[k], c[k]) for k in a)
    assert np.array_equal(b.mean.numpy(), mean) and np.array_equal(b.std.numpy(), std)
    assert np.array_equal(b.end_latent.numpy(), end[0])
    z, text = torch.randn(1, 3, 16), torch.randn(1, 384)
    with torch.no_grad():
        assert torch.equal(b.tae.decode(z), tae.decode(z)) and torch.equal(b.t2m(z, text), t2m(z, text))


def test_convert_with_explicit_files_and_computed_end_latent(tmp_path):
    src, tae, t2m, mean, std, end = release(tmp_path, with_end=False)
    elsewhere = tmp_path / "stats_elsewhere"
    elsewhere.mkdir()
    (src / "humanml3d_272" / "mean_std" / "Mean.npy").rename(elsewhere / "m.npy")
    files = {"dir": src, "mean": elsewhere / "m.npy"}
    with pytest.raises(CheckpointError, match=r"end_latent \(looked for reference_end_latent_t2m_272.npy\).*"
                                              r"GitHub repository.*compute_end_latent=True"):
        convert_official(files, tmp_path / "b", tae_config=tae.config, t2m_config=t2m.config, text_encoder="minilm")
    with pytest.raises(CheckpointError, match=r"unknown official file name\(s\) \['meen'\]"):
        convert_official({**files, "meen": "x"}, tmp_path / "b")
    out = convert_official(files, tmp_path / "b", tae_config=tae.config, t2m_config=t2m.config,
                           text_encoder="minilm", compute_end_latent=True)
    b = load_bundle(out)
    with torch.no_grad():
        want = tae.encode(torch.zeros(1, 4, 272), sample=False)[1].reshape(-1)
    assert torch.equal(b.end_latent, want) and b.config.extra["end_latent_source"].startswith("computed")
    assert b.config.extra["source"]["mean"] == str((elsewhere / "m.npy").resolve())


def test_convert_validates_against_the_official_config(tmp_path, capsys):
    src, *_ = release(tmp_path)
    # no --tae-config: the small fake TAE is checked against the official layout and refused by shape
    with pytest.raises(SystemExit) as e:
        main(["convert-checkpoint", str(src), str(tmp_path / "b")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "net_last.pth ['net'] does not match CausalHumanTAE: 68 mis-shaped key(s)" in err
    assert "tae.decode_proj.bias: file [32] vs model [1024]" in err
    assert not (tmp_path / "b").exists()


def test_convert_errors_name_files_and_flags(tmp_path, capsys):
    src, tae, t2m, *_ = release(tmp_path)
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", str(tmp_path / "nowhere"), str(tmp_path / "b")])
    assert "official files folder not found" in capsys.readouterr().err
    np.save(src / "humanml3d_272" / "mean_std" / "Std.npy", np.zeros(263, np.float32))
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", str(src), str(tmp_path / "b"), *flags(tmp_path)])
    assert "Std.npy: Std must hold 272 finite values, got shape (263,)" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", str(src), str(tmp_path / "b"), "--tae-config", str(tmp_path / "bad.json")])
    assert "--tae-config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", str(src), str(tmp_path / "b"), "--t2m", str(tmp_path / "none.pth")])
    assert "t2m file not found" in capsys.readouterr().err
    torch.save({"trans": {"transformer.wte.weight": torch.zeros(2, 2)}}, tmp_path / "partial.pth")
    with pytest.raises(SystemExit):
        main(["convert-checkpoint", str(src), str(tmp_path / "b"), "--t2m", str(tmp_path / "partial.pth"),
              *flags(tmp_path)])
    err = capsys.readouterr().err
    assert "partial.pth ['trans'] does not match TextToMotionModel" in err and "missing key(s)" in err
    assert not (tmp_path / "b" / "config.json").exists()


def test_download_fails_fast_when_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="offline mode is on"):
        download_official(tmp_path / "dl")
    with pytest.raises(SystemExit) as e:
        main(["download", "--dest", str(tmp_path / "dl"), "--components", "tae"])
    assert e.value.code == 2 and "offline mode is on" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['weights'\]"):
        download_official(tmp_path / "dl", ["weights"])


def test_download_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(ck.hub, "hub_offline", lambda: False)
    seen = {}

    def unreachable(self, repo_id, repo_type=None, timeout=None, **kw):
        seen["timeout"] = timeout
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    with pytest.raises(ConnectionError, match=r"cannot download \['Causal_TAE/\*'\] from the hub model repository "
                                              r"lxxiao/MotionStreamer \(offline or unreachable\?\)"):
        download_official(tmp_path / "dl", ["tae"], timeout=3.0)
    assert seen["timeout"] == 3.0


def test_download_asks_for_the_released_folders(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(ck.hub, "hub_offline", lambda: False)
    calls = []

    class Info:
        sha = "0" * 40

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kw: Info())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw))
    out = download_official(tmp_path / "dl")
    assert out == tmp_path / "dl"
    by_repo = {(c["repo_id"], c["repo_type"]): c for c in calls}
    model = by_repo[("lxxiao/MotionStreamer", "model")]
    assert model["allow_patterns"] == ["Causal_TAE/*", "Experiments/t2m_model/*", "Evaluator_272/*"]
    assert model["local_dir"] == str(tmp_path / "dl") and model["revision"] == "0" * 40
    stats = by_repo[("lxxiao/272-dim-HumanML3D", "dataset")]
    assert stats["allow_patterns"] == ["mean_std/*"] and stats["local_dir"] == str(tmp_path / "dl" / "humanml3d_272")
    # the download layout is what convert-checkpoint looks for
    assert ck.OFFICIAL_FILES["tae"][0].startswith("Causal_TAE/")
    assert ck.OFFICIAL_FILES["t2m"][0].startswith("Experiments/t2m_model/")
    assert ck.OFFICIAL_FILES["mean"][0] == "humanml3d_272/mean_std/Mean.npy"
