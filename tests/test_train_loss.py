"""Each trainer learns on a tiny synthetic dataset (TAE, text-to-motion, streaming), and the pieces
of the text-to-motion objective match a plain re-derivation: loss on B only, Two-Forward replaces
only B's positions, caption grouping and sub-caption crops, stream-pair parsing."""
import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder
from train_tiny import encode_dataset, make_synth, quiet, tiny_t2m, tiny_tae

from motionstreamer.data.humanml3d import load_motions
from motionstreamer.train.stream import load_stream_examples, parse_stream_line
from motionstreamer.train.t2m import (
    LatentExample,
    LatentTextData,
    T2MTrainConfig,
    TwoForwardObjective,
    draw_diffusion_noise,
    embed_captions,
    load_latent_examples,
    train_t2m,
)
from motionstreamer.train.tae import TAETrainConfig, train_tae

torch.set_num_threads(1)


def mean_loss(losses, sl):
    return float(np.mean([l for _, l in losses[sl]]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 clips + 20 stream pairs, a tiny TAE trained for the loss test, and latents from it."""
    root = tmp_path_factory.mktemp("train_loss")
    d = make_synth(root / "data")
    tae = tiny_tae()
    config = quiet(TAETrainConfig, out_dir=str(root / "tae"), steps=250, batch_size=8, lr=1e-3, schedule="constant",
                warmup_steps=0, milestones=(), window=32, grad_clip=1.0, save_every=1000)
    res = train_tae(tae, list(load_motions(d, "train").values()), config)
    lat, slat = encode_dataset(tae, d, root)
    return {"root": root, "data": d, "tae_losses": res.losses, "latents": lat, "stream_latents": slat}


def test_tae_loss_falls(data):
    losses = data["tae_losses"]
    assert len(losses) == 250 and all(np.isfinite(l) for _, l in losses)
    first, last = mean_loss(losses, slice(0, 25)), mean_loss(losses, slice(-25, None))
    # summed NLL with the optimal shared sigma: per element 1.42 + log(rmse) + KL/root terms, so a
    # 12% drop of the total is a large fall of the reconstruction error (seen: ~19%)
    assert last < 0.88 * first, (first, last)


def _t2m_run(data, examples, name, steps=150):
    emb = embed_captions(examples, FakeTextEncoder())
    config = quiet(T2MTrainConfig, out_dir=str(data["root"] / name), steps=steps, batch_size=8, lr=1e-3,
                warmup_steps=10, save_every=1000, diffmlps_batch_mul=2)
    return train_t2m(tiny_t2m(), examples, emb, config, name=name)


def test_t2m_loss_falls(data):
    examples = load_latent_examples(data["latents"], data["data"], "train")
    res = _t2m_run(data, examples, "t2m")
    first, last = mean_loss(res.losses, slice(0, 15)), mean_loss(res.losses, slice(-15, None))
    assert last < 0.75 * first, (first, last)  # eps-MSE starts near 1 (noise variance)


def test_stream_loss_falls(data):
    examples = load_stream_examples(data["data"] / "babel_stream", data["stream_latents"], "train")
    assert all(len(e.latents_a) > 0 for e in examples)
    res = _t2m_run(data, examples, "stream")
    first, last = mean_loss(res.losses, slice(0, 15)), mean_loss(res.losses, slice(-15, None))
    assert last < 0.75 * first, (first, last)


# ----------------------------------------------------------------------------- objective vs re-derivation
def _stream_batch(seed=0, L_a=5, L_b=6, rows=3, dim=16):
    g = torch.Generator().manual_seed(seed)
    examples = [LatentExample(f"cap {i}", torch.randn(L_a + i, 16, generator=g).numpy(),
                              torch.randn(L_b + i, 16, generator=g).numpy(), edge_drop=False) for i in range(rows)]
    emb = embed_captions(examples, FakeTextEncoder(dim))
    config = T2MTrainConfig(text_dropout=0.0, max_latents=78, diffmlps_batch_mul=3)
    data = LatentTextData(examples, emb, config)
    batch = data.sample_batch(g, rows)
    return draw_diffusion_noise(batch, config.diffmlps_batch_mul, 50, g), config


def _manual_loss(model, batch, replaced_inputs):
    """Per-token loop: mean over B's valid positions and the repeats of (noise - eps)^2."""
    proc = model.diff_loss.train_diffusion
    cond = model(replaced_inputs, batch["text"])[:, :-1]
    terms = []
    for r in range(batch["latents"].shape[0]):
        for p in range(int(batch["a_len"][r]), int(batch["len"][r])):
            for m in range(batch["t"].shape[-1]):
                t = batch["t"][r, p, m:m + 1]
                noise = batch["noise"][r, p, m][None]
                x_t = proc.q_sample(batch["latents"][r, p][None], t, noise)
                eps = model.diff_loss.net(x_t, t, cond[r, p][None])
                terms.append(((noise - eps) ** 2).mean())
    return torch.stack(terms).mean()


def test_loss_covers_only_b_positions_single_forward():
    model = tiny_t2m()
    batch, config = _stream_batch()
    assert (batch["a_len"] > 0).all()
    obj = TwoForwardObjective(model, total_steps=10, diffmlps_batch_mul=config.diffmlps_batch_mul, two_forward=False)
    loss, _ = obj(batch, 5)
    ref = _manual_loss(model, batch, batch["latents"])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_two_forward_replaces_only_b_positions_with_head_x0():
    model = tiny_t2m()
    batch, config = _stream_batch(seed=1)
    obj = TwoForwardObjective(model, total_steps=10, diffmlps_batch_mul=config.diffmlps_batch_mul, two_forward=True)
    seen = []
    orig = model.forward
    model.forward = lambda lat, text, lengths=None: (seen.append(lat.detach().clone()), orig(lat, text))[1]
    loss, logs = obj(batch, 10)           # step == total: every position of B is replaced
    model.forward = orig
    assert logs["replace_fraction"] == 1.0 and len(seen) == 2
    lat, inputs = batch["latents"], seen[1]
    proc = model.diff_loss.train_diffusion
    cond1 = model(lat, batch["text"])[:, :-1]
    expected = lat.clone()
    for r in range(lat.shape[0]):
        a, n = int(batch["a_len"][r]), int(batch["len"][r])
        for p in range(a, n):
            t = batch["t_x0"][r, p][None]
            x_t = proc.q_sample(lat[r, p][None], t, batch["noise_x0"][r, p][None])
            expected[r, p] = proc.predict_x0(x_t, t, model.diff_loss.net(x_t, t, cond1[r, p][None]))[0]
    assert torch.equal(inputs[:, :1][batch["a_len"][:, None] > 0], lat[:, :1][batch["a_len"][:, None] > 0])
    torch.testing.assert_close(inputs, expected, rtol=1e-5, atol=1e-6)
    for r in range(lat.shape[0]):  # history A untouched, padding untouched
        a, n = int(batch["a_len"][r]), int(batch["len"][r])
        assert torch.equal(inputs[r, :a], lat[r, :a]) and torch.equal(inputs[r, n:], lat[r, n:])
        assert not torch.equal(inputs[r, a:n], lat[r, a:n])
    ref = _manual_loss(model, batch, expected)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_two_forward_fraction_follows_cosine_and_shares_positions():
    from motionstreamer.train.t2m import replace_fraction
    assert replace_fraction(0, 100) == 0.0 and replace_fraction(100, 100) == 1.0
    assert abs(replace_fraction(50, 100) - 0.5) < 1e-12
    model = tiny_t2m()
    g = torch.Generator().manual_seed(3)
    examples = [LatentExample("c", np.zeros((0, 16), np.float32), torch.randn(20, 16, generator=g).numpy(), False)]
    emb = embed_captions(examples, FakeTextEncoder())
    data = LatentTextData(examples, emb, T2MTrainConfig(text_dropout=0.0))
    batch = data.sample_batch(g, 4)
    seen = []
    orig = model.forward
    model.forward = lambda lat, text, lengths=None: (seen.append(lat.detach().clone()), orig(lat, text))[1]
    TwoForwardObjective(model, total_steps=100)(batch, 50)
    changed = (seen[1] != batch["latents"]).any(-1)           # (rows, positions)
    assert changed.sum(1).tolist() == [int(20 * 0.5)] * 4       # int(l * frac) positions per row
    assert (changed == changed[:1]).all()                        # the same positions in every row


# ----------------------------------------------------------------------------- data
def test_history_is_capped_to_the_window_newest_first():
    g = torch.Generator().manual_seed(0)
    a = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    b = -np.arange(1, 5 * 16 + 1, dtype=np.float32).reshape(5, 16)
    long_b = np.ones((9, 16), np.float32)
    examples = [LatentExample("x", a, b, edge_drop=False), LatentExample("y", a, long_b, edge_drop=False)]
    emb = embed_captions(examples, FakeTextEncoder())
    data = LatentTextData(examples, emb, T2MTrainConfig(max_latents=10, text_dropout=0.0))  # 9 inputs
    seen = set()
    for _ in range(20):
        batch = data.sample_batch(g, 2)
        for r in range(2):
            n, al = int(batch["len"][r]), int(batch["a_len"][r])
            row = batch["latents"][r, :n].numpy()
            if al == 4:   # 'x': 4 newest history latents then all of B
                np.testing.assert_array_equal(row, np.concatenate([a[-4:], b]))
                seen.add("x")
            else:         # 'y': B fills the window, so no history at all (not the whole of A)
                assert al == 0 and n == 9
                np.testing.assert_array_equal(row, long_b)
                seen.add("y")
    assert seen == {"x", "y"}


def test_text_dropout_and_edge_drop_rates():
    g = torch.Generator().manual_seed(0)
    examples = [LatentExample("walk", np.zeros((0, 16), np.float32), np.ones((12, 16), np.float32))]
    emb = embed_captions(examples, FakeTextEncoder())
    data = LatentTextData(examples, emb, T2MTrainConfig(text_dropout=0.1))
    n, empty, short = 0, 0, 0
    for _ in range(40):
        batch = data.sample_batch(g, 64)
        empty += int((batch["text"] == emb[""]).all(-1).sum())
        short += int((batch["len"] == 11).sum())
        n += 64
    assert abs(empty / n - 0.1) < 0.03 and abs(short / n - 1 / 3) < 0.04


def test_whole_clip_captions_grouped_and_subcaptions_cropped(tmp_path):
    root = tmp_path / "d"
    (root / "split").mkdir(parents=True)
    (root / "texts").mkdir()
    lat_dir = tmp_path / "lat"
    lat_dir.mkdir()
    (root / "split" / "train.txt").write_text("c1\nc2\n")
    (root / "texts" / "c1.txt").write_text("a walk#a/DET#0.0#0.0\na stroll#a/DET#0.0#0.0\njump#j#1.0#2.0\n")
    (root / "texts" / "c2.txt").write_text("wave#w#0.0#0.0\n")
    np.save(lat_dir / "c1.npy", np.arange(20 * 16, dtype=np.float32).reshape(20, 16))
    np.save(lat_dir / "c2.npy", np.ones((6, 16), np.float32))
    ex = load_latent_examples(lat_dir, root, "train")
    by = {e.caption: e for e in ex}
    assert set(by) == {"a walk", "jump", "wave"}
    assert by["a walk"].all_captions() == ("a walk", "a stroll") and len(by["a walk"].latents_b) == 20
    np.testing.assert_array_equal(by["jump"].latents_b, np.load(lat_dir / "c1.npy")[7:15])  # int(s*30/4)
    emb = embed_captions(ex, FakeTextEncoder())
    assert set(emb) == {"", "a walk", "a stroll", "jump", "wave"}
    data = LatentTextData([by["a walk"]], emb, T2MTrainConfig(text_dropout=0.0))
    texts = data.sample_batch(torch.Generator().manual_seed(0), 64)["text"]
    n_walk = int((texts == emb["a walk"]).all(-1).sum())
    assert 10 < n_walk < 54 and n_walk + int((texts == emb["a stroll"]).all(-1).sum()) == 64
    np.save(lat_dir / "c2.npy", np.full((6, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="c2.npy"):
        load_latent_examples(lat_dir, root, "train")
    (lat_dir / "c2.npy").unlink()
    with pytest.raises(FileNotFoundError, match="c2.npy.*encode-latents"):
        load_latent_examples(lat_dir, root, "train")


def test_missing_caption_embedding_is_named():
    ex = [LatentExample("walk", np.zeros((0, 16), np.float32), np.ones((4, 16), np.float32))]
    with pytest.raises(ValueError, match="'walk'"):
        LatentTextData(ex, {"": torch.zeros(16)}, T2MTrainConfig())
    with pytest.raises(ValueError, match="empty caption"):
        LatentTextData(ex, {"walk": torch.zeros(16)}, T2MTrainConfig())
    with pytest.raises(ValueError, match="no cached embedding"):
        embed_captions(ex, None, known={"": torch.zeros(16)})


def test_stream_pairs_split_at_a_frames(tmp_path):
    root = tmp_path / "s"
    (root / "train_stream_text").mkdir(parents=True)
    lat = tmp_path / "lat"
    lat.mkdir()
    np.save(lat / "seq_0.npy", np.arange(30 * 16, dtype=np.float32).reshape(30, 16))
    (root / "train_stream_text" / "seq_0.txt").write_text("walk#w*turn left#t#49\n")
    (ex,) = load_stream_examples(root, lat, "train")
    assert ex.caption == "turn left" and len(ex.latents_a) == 12 and len(ex.latents_b) == 18 and not ex.edge_drop
    assert parse_stream_line("a#x*b#y#64", "f:1") == ("a", "b", 64)
    (root / "train_stream_text" / "seq_0.txt").write_text("walk#w*turn left#t#x\n")
    with pytest.raises(ValueError, match=r"seq_0.txt:1: A_frames 'x'"):
        load_stream_examples(root, lat, "train")
    (root / "train_stream_text" / "seq_0.txt").write_text("walk#w*turn#t#400\n")
    with pytest.raises(ValueError, match=r"seq_0.txt:1: A has 100 latents"):
        load_stream_examples(root, lat, "train")
