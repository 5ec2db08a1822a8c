"""The CLI pipeline on a tiny synthetic dataset: `train tae` -> `encode-latents` (clips and stream
pairs) -> `train t2m` (MiniLM text, --text-cache) -> `train stream --init` -> `make-bundle` -> the
streaming engine runs the bundle. Latent files are (L+1, 16) with the end latent last and hold the
TAE's sampled z."""
import json

import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder
from train_tiny import make_synth

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.cli import main
from motionstreamer.train.common import CHECKPOINT_NAME

torch.set_num_threads(1)
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def minilm():
    from motionstreamer.models.text import TextEncoder
    return TextEncoder.load("minilm")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """synth -> train tae -> encode-latents for the clips and the stream pairs (run once)."""
    root = tmp_path_factory.mktemp("cli")
    data = make_synth(root / "data", clips=40, pairs=20)
    assert main(["train", "tae", "--data", str(data), "--out", str(root / "tae"), "--model-size", "small",
                 "--device", "cpu", "--set", "steps=4", "--set", "batch_size=4", "--set", "save_every=2",
                 "--set", "warmup_steps=1", *QUIET]) == 0
    tae_ck = root / "tae" / CHECKPOINT_NAME
    assert main(["encode-latents", "--data", str(data), "--tae", str(tae_ck), "--out", str(root / "latents"),
                 "--device", "cpu", "--seed", "3"]) == 0
    assert main(["encode-latents", "--data", str(data / "babel_stream"), "--motion-dir", "train_stream",
                 "--all-files", "--mean-std", str(data / "mean_std"), "--tae", str(tae_ck),
                 "--out", str(root / "stream_latents"), "--device", "cpu"]) == 0
    return {"root": root, "data": data, "tae": tae_ck}


def test_train_tae_cli_writes_checkpoint_and_config(pipe):
    from motionstreamer.models.tae import TAEConfig

    ck = load_training_checkpoint(pipe["tae"])
    assert ck["trainer"] == "tae" and ck["step"] == 4 and ck["config"]["tae"] == TAEConfig.small().to_dict()
    assert json.loads((pipe["root"] / "tae" / "config.json").read_text())["train"]["steps"] == 4


def test_encode_latents_files_are_sampled_z_plus_end_latent(pipe, tmp_path, capsys):
    from motionstreamer.checkpoints import load_tae
    from motionstreamer.data.humanml3d import load_motions, read_split
    from motionstreamer.train.tae import reference_end_latent

    data, lat = pipe["data"], pipe["root"] / "latents"
    tae = load_tae(str(pipe["tae"]), "cpu")
    end = reference_end_latent(tae).numpy()
    np.testing.assert_array_equal(np.load(lat / "reference_end_latent.npy"), end[None])
    motions = {}
    for split in ("train", "val", "test"):
        motions.update(load_motions(data, split))
    names = sorted(n for s in ("train", "val", "test") for n in read_split(data, s))
    assert sorted(p.stem for p in lat.glob("*.npy") if p.stem != "reference_end_latent") == names
    standardized = []
    for name, m in motions.items():
        z = np.load(lat / f"{name}.npy")
        assert z.shape == (len(m) // 4 + 1, 16) and z.dtype == np.float32
        np.testing.assert_array_equal(z[-1], end)                           # end latent last
        with torch.no_grad():
            _, mu, logvar = tae.encode(torch.from_numpy(m[: len(m) // 4 * 4])[None], sample=False)
        standardized.append((z[:-1] - mu[0].numpy()) / np.exp(0.5 * logvar[0].numpy()))
    eps = np.concatenate(standardized)
    # sampled z = mu + eps * sigma with eps ~ N(0, 1): not the mean, and eps has unit spread
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05, (eps.mean(), eps.std())
    # --mu stores the mean exactly; the same seed gives the same files
    cli(["encode-latents", "--data", data, "--tae", pipe["tae"], "--out", tmp_path / "mu", "--mu", "--device", "cpu"],
        capsys)
    name = names[0]
    with torch.no_grad():
        _, mu, _ = tae.encode(torch.from_numpy(motions[name][: len(motions[name]) // 4 * 4])[None], sample=False)
    np.testing.assert_allclose(np.load(tmp_path / "mu" / f"{name}.npy")[:-1], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    cli(["encode-latents", "--data", data, "--tae", pipe["tae"], "--out", tmp_path / "again", "--seed", "3",
         "--device", "cpu"], capsys)
    np.testing.assert_array_equal(np.load(tmp_path / "again" / f"{name}.npy"), np.load(lat / f"{name}.npy"))


def test_encode_latents_of_stream_pairs(pipe):
    files = sorted((pipe["data"] / "babel_stream" / "train_stream").glob("*.npy"))
    assert len(files) > 10
    for f in files:
        z = np.load(pipe["root"] / "stream_latents" / f.name)
        assert z.shape == (len(np.load(f)) // 4 + 1, 16)


def test_encode_latents_errors(pipe, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["encode-latents", "--data", str(tmp_path), "--tae", str(pipe["tae"]), "--out", str(tmp_path / "o"),
              "--device", "cpu"])
    assert e.value.code == 2 and "--all-files" in capsys.readouterr().err
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit) as e:
        main(["encode-latents", "--data", str(pipe["data"]), "--tae", str(tmp_path / "x.pt"), "--out",
              str(tmp_path / "o")])
    assert e.value.code == 2 and "x.pt" in capsys.readouterr().err


def test_t2m_stream_bundle_chain(pipe, minilm, tmp_path, capsys):
    from motionstreamer.checkpoints import ema_or_model_state, load_bundle
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import (
        embed_captions,
        load_latent_examples,
        load_text_embeddings,
        save_text_embeddings,
    )

    root, data = pipe["root"], pipe["data"]
    examples = load_latent_examples(root / "latents", data) + \
        load_stream_examples(data / "babel_stream", root / "stream_latents")
    cache = tmp_path / "minilm_cache.pt"   # MiniLM embeddings computed once; the CLI then never loads it
    save_text_embeddings(cache, embed_captions(examples, minilm), "minilm")
    common = ["--data", data, "--latents", root / "latents", "--text-encoder", "minilm", "--text-cache", cache,
              "--model-size", "small", "--device", "cpu", "--set", "batch_size=4", "--set", "warmup_steps=1",
              "--set", "ema_decay=0.9", *QUIET]
    out = cli(["train", "t2m", "--out", tmp_path / "t2m", "--set", "steps=3", *common], capsys)
    assert "trained t2m to step 3" in out
    t2m_ck = tmp_path / "t2m" / CHECKPOINT_NAME
    ck = load_training_checkpoint(t2m_ck)
    assert ck["config"]["text_encoder"] == "minilm" and ck["config"]["t2m"]["cond_dim"] == 384
    # resume through the CLI continues to the new step count
    cli(["train", "t2m", "--out", tmp_path / "t2m", "--set", "steps=5", "--resume", t2m_ck, *common], capsys)
    assert load_training_checkpoint(t2m_ck)["step"] == 5
    out = cli(["train", "stream", "--out", tmp_path / "stream", "--stream-data", data / "babel_stream",
               "--stream-latents", root / "stream_latents", "--init", t2m_ck, "--set", "steps=2", *common], capsys)
    assert "trained streaming model to step 2" in out
    stream_ck = load_training_checkpoint(tmp_path / "stream" / CHECKPOINT_NAME)
    assert stream_ck["trainer"] == "stream"
    # every caption, each stream pair's history caption (what distillation streams before it) and ""
    captions = {c for e in examples for c in e.all_captions()} | {e.history_caption for e in examples} | {""}
    assert len(load_text_embeddings(cache)[0]) == len(captions)
    # bundle from the streaming checkpoint: EMA weights, dataset Mean/Std, the TAE's end latent
    cli(["make-bundle", "--tae", pipe["tae"], "--t2m", tmp_path / "stream" / CHECKPOINT_NAME, "--data", data,
         "--out", tmp_path / "bundle"], capsys)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.text_encoder_name == "minilm"
    ema = ema_or_model_state(stream_ck)
    for k, v in bundle.t2m.state_dict().items():
        assert torch.equal(v, ema[f"model.{k}"]), k
    np.testing.assert_array_equal(bundle.mean.numpy(), np.load(data / "mean_std" / "Mean.npy"))
    np.testing.assert_array_equal(bundle.end_latent.numpy().reshape(-1),
                                  np.load(root / "latents" / "reference_end_latent.npy").reshape(-1))
    engine = StreamingEngine(bundle, minilm, capacity=1,
                             config=GenerationConfig(sampling_steps=4, end_threshold=-1.0, max_latents=3))
    engine.add_stream("a person walks forward", seed=0, max_latents=3)
    chunks = [c for step in engine.run() for c in step]
    assert len(chunks) == 3 and all(torch.isfinite(c.joints).all() for c in chunks)


def test_text_cache_is_updated_and_reused(pipe, tmp_path, monkeypatch):
    from motionstreamer.models import text
    from motionstreamer.train.commands import text_embeddings_for
    from motionstreamer.train.t2m import load_latent_examples, load_text_embeddings

    loads = []
    monkeypatch.setattr(text.TextEncoder, "load",
                        classmethod(lambda cls, name: loads.append(name) or FakeTextEncoder()))
    examples = load_latent_examples(pipe["root"] / "latents", pipe["data"])
    cache = tmp_path / "c.pt"
    first = text_embeddings_for(examples[:3], "fake", str(cache))       # encoder loaded, cache written
    both = text_embeddings_for(examples, "fake", str(cache))            # the rest encoded, cache updated
    again = text_embeddings_for(examples, "fake", str(cache))           # all cached: no encoder load
    assert loads == ["fake", "fake"]
    assert set(load_text_embeddings(cache)[0]) == set(both) == set(again) and set(first) < set(both)
    assert all(torch.equal(both[c], again[c]) for c in both)
    from motionstreamer.cli import CLIError
    with pytest.raises(CLIError, match="holds 'fake' embeddings, not --text-encoder 'minilm'"):
        text_embeddings_for(examples, "minilm", str(cache))


def test_stream_init_with_other_text_width_is_refused(pipe, tmp_path, capsys):
    from motionstreamer.train.stream import load_stream_examples
    from motionstreamer.train.t2m import embed_captions, load_latent_examples, save_text_embeddings

    root, data = pipe["root"], pipe["data"]
    examples = load_latent_examples(root / "latents", data) + \
        load_stream_examples(data / "babel_stream", root / "stream_latents")
    for enc in (FakeTextEncoder(16), FakeTextEncoder(8)):
        save_text_embeddings(tmp_path / f"fake{enc.dim}.pt", embed_captions(examples, enc), f"fake{enc.dim}")

    def args(dim):
        return ["--data", data, "--latents", root / "latents", "--text-encoder", f"fake{dim}", "--text-cache",
                tmp_path / f"fake{dim}.pt", "--model-size", "small", "--device", "cpu", "--set", "steps=1",
                "--set", "batch_size=2", *QUIET]
    cli(["train", "t2m", "--out", tmp_path / "t2m16", *args(16)], capsys)
    with pytest.raises(SystemExit) as e:    # a 16-dim-text checkpoint with 8-dim text: named, no traceback
        main([str(a) for a in ["train", "stream", "--out", tmp_path / "s", "--stream-data", data / "babel_stream",
                               "--stream-latents", root / "stream_latents",
                               "--init", tmp_path / "t2m16" / CHECKPOINT_NAME, *args(8)]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expects 16-dim text embeddings but --text-encoder 'fake8' gives 8" in err, err
