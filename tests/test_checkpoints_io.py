"""Checkpoint files and model bundles: weights_only .pth loading (sub-dict keys, wrapper prefixes,
refused pickles), safetensors, strict key checks that list every bad key, and bundle save -> load
round trips that give identical outputs, with clear errors for missing or damaged parts."""
import json
import pickle
from pathlib import Path

import pytest
import torch

from motionstreamer.checkpoints import (
    Bundle,
    CheckpointError,
    load_bundle,
    load_checkpoint_file,
    load_state_dict_strict,
    read_bundle_config,
    save_bundle,
    strip_prefix,
)
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel


def small_models(seed=0):
    torch.manual_seed(seed)
    tae = CausalHumanTAE(TAEConfig.small(32)).eval()
    t2m = TextToMotionModel(T2MConfig.small(384)).eval()
    with torch.no_grad():
        for p in t2m.diff_loss.parameters():     # the zero-initialised head would hide a lost tensor
            p.normal_(0, 0.02)
    return tae, t2m


def stats(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(272, generator=g) * 0.1, torch.rand(272, generator=g) + 0.5, torch.randn(16, generator=g)


# ----------------------------------------------------------------------------- single files
def test_pth_with_net_and_module_prefix_loads(tmp_path):
    tae, _ = small_models()
    sd = tae.state_dict()
    path = tmp_path / "net_last.pth"
    torch.save({"net": {"module." + k: v for k, v in sd.items()}, "nb_iter": 5}, path)
    loaded = load_checkpoint_file(path, key="net")
    assert list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    other = CausalHumanTAE(TAEConfig.small(32))
    load_state_dict_strict(other, loaded, str(path))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))


def test_pth_with_trans_and_optimizer_state_loads_the_model_only(tmp_path):
    _, t2m = small_models()
    opt = torch.optim.AdamW(t2m.parameters(), lr=1e-4)
    t2m(torch.zeros(1, 2, 16), torch.zeros(1, 384)).sum().backward()
    opt.step()
    path = tmp_path / "latest.pth"
    torch.save({"trans": t2m.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": {"warmup_iters": 10, "total_iters": 100, "min_lr": 0}}, path)
    loaded = load_checkpoint_file(path, key="trans")
    assert set(loaded) == set(t2m.state_dict())


def test_prefix_stripping_variants():
    t = torch.zeros(1)
    assert list(strip_prefix({"module._orig_mod.a.b": t, "c": t})) == ["a.b", "c"]
    with pytest.raises(CheckpointError, match="'a' appears twice"):
        strip_prefix({"module.a": t, "a": t})


def test_container_errors_name_the_file_and_what_was_found(tmp_path):
    tae, _ = small_models()
    path = tmp_path / "ckpt.pth"
    torch.save({"net": tae.state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"ckpt.pth: no 'trans' entry \(found \['epoch', 'net'\]\)"):
        load_checkpoint_file(path, key="trans")
    with pytest.raises(CheckpointError, match=r"ckpt.pth: 2 entries are not tensors \(net, epoch\); it holds "
                                              r"sub-dicts \['net'\]: pick one with key="):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth: refused or failed to load"):
        load_checkpoint_file(tmp_path / "garbage.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable safetensors file"):
        load_checkpoint_file(tmp_path / "garbage.safetensors")


class Payload:
    """Unpickling this would create a marker file: weights_only must refuse it before that happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_python_objects_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"net": {"w": torch.zeros(2)}, "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth: refused or failed to load with "
                                              r"torch.load\(weights_only=True\).*arbitrary code"):
        load_checkpoint_file(path, key="net")
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:            # a bare pickle (not a torch zip) is refused too
        pickle.dump({"w": Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="plain.pkl: refused"):
        load_checkpoint_file(tmp_path / "plain.pkl")
    assert not marker.exists()


def test_strict_load_lists_missing_unexpected_and_misshaped_keys():
    tae, _ = small_models()
    sd = dict(tae.state_dict())
    del sd["tae.decode_proj.bias"]
    sd["tae.encoder.extra.weight"] = torch.zeros(3)
    sd["tae.encoder.proj.weight"] = torch.zeros(30, 32)
    target = CausalHumanTAE(TAEConfig.small(32))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(target, sd, "some/file.safetensors")
    msg = str(e.value)
    assert msg.startswith("some/file.safetensors does not match CausalHumanTAE")
    assert "1 missing key(s): tae.decode_proj.bias" in msg
    assert "1 unexpected key(s): tae.encoder.extra.weight" in msg
    assert "1 mis-shaped key(s): tae.encoder.proj.weight: file [30, 32] vs model [32, 32]" in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())   # nothing half-loaded


def test_strict_load_refuses_nan_weights():
    tae, _ = small_models()
    sd = dict(tae.state_dict())
    sd["tae.decoder.model.6.conv.bias"] = sd["tae.decoder.model.6.conv.bias"].clone()
    sd["tae.decoder.model.6.conv.bias"][3] = float("nan")
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) with NaN/inf: tae.decoder.model.6.conv.bias"):
        load_state_dict_strict(CausalHumanTAE(TAEConfig.small(32)), sd, "f")


# ----------------------------------------------------------------------------- bundles
@torch.no_grad()
def outputs(tae, t2m):
    g = torch.Generator().manual_seed(9)
    x, z = torch.randn(2, 8, 272, generator=g), torch.randn(2, 3, 16, generator=g)
    text = torch.randn(2, 384, generator=g)
    return tae.encode(x, sample=False)[1], tae.decode(z), t2m(z, text)


def test_bundle_round_trip_gives_identical_outputs(tmp_path):
    tae, t2m = small_models()
    mean, std, end = stats()
    d = save_bundle(tmp_path / "b", tae, t2m, mean, std, end, text_encoder="minilm", description="unit test",
                    extra_config={"sampler": {"skip_terminal_step": True}})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "stats.safetensors", "t2m.safetensors",
                                                   "tae.safetensors"]
    config = json.loads((d / "config.json").read_text())
    assert config["format"] == "motionstreamer-bundle" and config["version"] == 1 and config["fps"] == 30
    assert config["tae"] == tae.config.to_dict() and config["t2m"] == t2m.config.to_dict()
    assert config["text_encoder"] == "minilm" and config["text_dim"] == 384 and config["description"] == "unit test"
    assert config["sampler"] == {"skip_terminal_step": True}
    b = load_bundle(d)
    assert isinstance(b, Bundle) and b.path == d and b.text_encoder_name == "minilm" and b.evaluator_path is None
    assert not b.tae.training and not b.t2m.training
    for got, want in zip(outputs(b.tae, b.t2m), outputs(tae, t2m)):
        assert torch.equal(got, want)
    for name, t in (("mean", mean), ("std", std), ("end_latent", end)):
        assert torch.equal(getattr(b, name), t)
    assert b.tae.config == tae.config and b.t2m.config.to_dict() == t2m.config.to_dict()
    b64 = load_bundle(d, dtype=torch.float64)
    assert b64.tae.tae.decode_proj.weight.dtype == torch.float64 and b64.mean.dtype == torch.float32

    class Enc:
        dim = 768
    with pytest.raises(CheckpointError, match="takes 384-dim text embeddings .* gives 768"):
        b.check_text_encoder(Enc())


def test_bundle_errors_name_the_broken_part(tmp_path):
    tae, t2m = small_models()
    mean, std, end = stats()
    d = save_bundle(tmp_path / "b", tae, t2m, mean, std, end)
    with pytest.raises(CheckpointError, match="model bundle directory not found"):
        load_bundle(tmp_path / "nope")
    (d / "t2m.safetensors").rename(d / "t2m.bak")
    with pytest.raises(CheckpointError, match=r"model bundle .*/b is missing t2m.safetensors"):
        load_bundle(d)
    (d / "t2m.bak").rename(d / "t2m.safetensors")
    # weights of another TAE width under this config: every mis-shaped key is listed, with the file
    save_bundle(tmp_path / "wide", CausalHumanTAE(TAEConfig.small(40)), t2m, mean, std, end)
    (d / "tae.safetensors").write_bytes((tmp_path / "wide" / "tae.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"tae.safetensors does not match CausalHumanTAE: 68 mis-shaped "
                                              r"key\(s\): tae.decode_proj.bias: file \[40\] vs model \[32\]"):
        load_bundle(d)
    save_bundle(d, tae, t2m, mean, std, end)
    from safetensors.torch import save_file
    save_file({"mean": mean, "std": std}, str(d / "stats.safetensors"))
    with pytest.raises(CheckpointError, match=r"stats.safetensors: no 'end_latent' tensor"):
        load_bundle(d)
    save_file({"mean": mean, "std": -std, "end_latent": end}, str(d / "stats.safetensors"))
    with pytest.raises(CheckpointError, match="stats.safetensors: std has non-positive entries"):
        load_bundle(d)
    save_file({"mean": mean[:100], "std": std, "end_latent": end}, str(d / "stats.safetensors"))
    with pytest.raises(CheckpointError, match="stats.safetensors: mean must hold 272 values, got 100"):
        load_bundle(d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="config.json: invalid JSON"):
        load_bundle(d)
    (d / "config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(CheckpointError, match="format is 'other', expected 'motionstreamer-bundle'"):
        read_bundle_config(d)
    (d / "config.json").write_text(json.dumps({**config, "version": 2}))
    with pytest.raises(CheckpointError, match="bundle version 2 is not supported"):
        read_bundle_config(d)
    (d / "config.json").write_text(json.dumps({**config, "tae": {**config["tae"], "widht": 3}}))
    with pytest.raises(CheckpointError, match=r"bad 'tae' config \(unknown TAEConfig field\(s\) \['widht'\]"):
        load_bundle(d)
    (d / "config.json").write_text(json.dumps({**config, "evaluator": {"latent_dim": 256}}))
    with pytest.raises(CheckpointError, match=r"is missing evaluator.safetensors \(config.json names an evaluator\)"):
        load_bundle(d)


def test_save_refuses_bad_stats_before_writing(tmp_path):
    tae, t2m = small_models()
    mean, std, end = stats()
    bad = std.clone()
    bad[0] = 0.0
    with pytest.raises(CheckpointError, match="std has non-positive entries"):
        save_bundle(tmp_path / "b", tae, t2m, mean, bad, end)
    with pytest.raises(CheckpointError, match="end_latent must hold 16 values, got 15"):
        save_bundle(tmp_path / "b", tae, t2m, mean, std, end[:15])
    nan_mean = mean.clone()
    nan_mean[5] = float("nan")
    with pytest.raises(CheckpointError, match="mean contains NaN/inf"):
        save_bundle(tmp_path / "b", tae, t2m, nan_mean, std, end)
    with pytest.raises(CheckpointError, match=r"extra_config may not set \['format'\]"):
        save_bundle(tmp_path / "b", tae, t2m, mean, std, end, extra_config={"format": "x"})
    assert not (tmp_path / "b").exists()
    with pytest.warns(UserWarning, match="'sentence-t5-xxl' gives 768-dim embeddings but the t2m model takes "
                                         "cond_dim 384"):
        save_bundle(tmp_path / "w", tae, t2m, mean, std, end, text_encoder="sentence-t5-xxl")
    np_stats = save_bundle(tmp_path / "np", tae, t2m, mean.numpy(), std.numpy()[None], end.numpy()[None])
    assert torch.equal(load_bundle(np_stats).std, std)                  # numpy and (1, n) inputs accepted


def test_interrupted_save_never_looks_complete(tmp_path, monkeypatch):
    import motionstreamer.checkpoints.bundle as ck

    tae, t2m = small_models()
    mean, std, end = stats()
    d = save_bundle(tmp_path / "b", tae, t2m, mean, std, end)
    real = ck.save_safetensors

    def crash_on_t2m(path, state):
        if path.name == "t2m.safetensors":
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(ck, "save_safetensors", crash_on_t2m)
    tae2, t2m2 = small_models(seed=5)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(d, tae2, t2m2, mean, std, end)
    assert not (d / "config.json").exists()                             # the mix of old and new is not a bundle
    assert not list(d.glob(".*tmp*"))                                   # no temporary files left behind
    with pytest.raises(CheckpointError, match="no config.json; an interrupted save leaves none"):
        load_bundle(d)


def test_bundle_with_evaluator_entry(tmp_path):
    tae, t2m = small_models()

    class TinyEvaluator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 2)
            self.config = type("C", (), {"to_dict": staticmethod(lambda: {"latent_dim": 2})})

    d = save_bundle(tmp_path / "b", tae, t2m, *stats(), evaluator=TinyEvaluator())
    b = load_bundle(d)
    assert b.config.evaluator == {"latent_dim": 2} and b.evaluator_path == d
    assert set(load_checkpoint_file(d / "evaluator.safetensors")) == {"proj.weight", "proj.bias"}


# ----------------------------------------------------------------------------- BundleConfig
def test_bundle_config_is_the_json_on_disk_typed():
    """The embedded model's config.json read into a BundleConfig and written back is the same JSON: every
    key it holds is either typed or kept (provenance, calibration), nothing is added or dropped."""
    from motionstreamer.checkpoints import BundleConfig
    from motionstreamer.models.few_step import StudentHeadConfig
    from motionstreamer.runtime.loading import default_model_dir

    raw = json.loads((default_model_dir() / "config.json").read_text())
    config = read_bundle_config(default_model_dir())
    assert config.to_dict() == raw
    assert isinstance(config.tae, TAEConfig) and isinstance(config.t2m, T2MConfig)
    assert isinstance(config.student_head, StudentHeadConfig) and config.student_head.teacher_cfg_scale == 4.0
    assert config.sampler.skip_terminal_step is True and config.sampler.head == "student"   # its distilled default
    assert config.student_head.cfg_scale == 4.0 and config.student_head.steps == (4,)
    assert config.end_threshold == raw["end_threshold"] and "end_threshold_calibration" in config.extra
    assert BundleConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("key,value,msg", [
    ("sampler", {"skip_terminal_step": 1}, "'sampler' must be"),
    ("sampler", {"head": "teachr"}, "'sampler' must be"),
    ("sampler", {"skip_terminal_step": True, "steps": 3}, "'sampler' must be"),
    ("end_threshold", float("nan"), "'end_threshold' must be a finite number"),
    ("end_threshold", True, "'end_threshold' must be a finite number"),
    ("student_head", {"steps": [1], "default_steps": 2}, "bad 'student_head' config"),
    ("t2m", {"n_layer": 0}, "bad 't2m' config"),
    ("evaluator", [1], "'evaluator' must be a mapping"),
    ("example_prompts", "walk", "'example_prompts' must be a list"),
])
def test_bundle_config_errors_name_the_key(key, value, msg, tmp_path):
    from motionstreamer.checkpoints import BundleConfig

    good = BundleConfig.from_dict({"sampler": {"skip_terminal_step": True}, "end_threshold": 2.5})
    assert good.sampler.skip_terminal_step and good.end_threshold == 2.5        # one bad key among good ones
    with pytest.raises(ValueError, match=msg):
        BundleConfig.from_dict({"sampler": {"skip_terminal_step": True}, "end_threshold": 2.5, key: value})
    tae, t2m = small_models()
    mean, std, end = stats()
    with pytest.raises(CheckpointError, match="may not set" if key == "student_head" else msg):   # before writing
        save_bundle(tmp_path / "b", tae, t2m, mean, std, end, extra_config={key: value})
    assert not (tmp_path / "b").exists()


def test_bundle_config_reads_old_student_keys_and_writes_new_ones(tmp_path):
    """A bundle written before the one sampler vocabulary (student_head.teacher_cfg, teacher_skip_terminal,
    method) loads with the same meaning; a student added to it is recorded under the current names."""
    from motionstreamer.checkpoints import add_student_head
    from motionstreamer.models.few_step import StudentHead, StudentHeadConfig

    tae, t2m = small_models()
    mean, std, end = stats()
    d = save_bundle(tmp_path / "b", tae, t2m, mean, std, end)
    student = StudentHead(t2m.config.head, StudentHeadConfig(steps=(2,), default_steps=2, teacher_cfg_scale=3.0,
                                                             teacher_skip_terminal_step=False))
    add_student_head(d, student)
    raw = json.loads((d / "config.json").read_text())
    assert raw["student_head"]["teacher_cfg_scale"] == 3.0 and "teacher_cfg" not in raw["student_head"]
    old = dict(raw["student_head"])
    old["teacher_cfg"] = old.pop("teacher_cfg_scale")
    old["teacher_skip_terminal"] = old.pop("teacher_skip_terminal_step")
    old["method"] = old.pop("distillation")
    (d / "config.json").write_text(json.dumps({**raw, "student_head": old}))
    b = load_bundle(d)
    assert b.config.student_head == student.student_config
