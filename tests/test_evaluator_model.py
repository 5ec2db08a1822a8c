"""The TMR-style evaluator: released key layout, official-checkpoint loading, encoders' behaviour."""
import math
import sys
import types

import numpy as np
import pytest
import torch

from motionstreamer.models.evaluator import (
    EvaluatorCheckpointError,
    EvaluatorConfig,
    TMREvaluator,
    read_lightning_state_dict,
)


# ----------------------------------------------------------------------------- the released layout
def _encoder_layer(p, L, ff):
    return {f"{p}.self_attn.in_proj_weight": (3 * L, L), f"{p}.self_attn.in_proj_bias": (3 * L,),
            f"{p}.self_attn.out_proj.weight": (L, L), f"{p}.self_attn.out_proj.bias": (L,),
            f"{p}.linear1.weight": (ff, L), f"{p}.linear1.bias": (ff,),
            f"{p}.linear2.weight": (L, ff), f"{p}.linear2.bias": (L,),
            f"{p}.norm1.weight": (L,), f"{p}.norm1.bias": (L,), f"{p}.norm2.weight": (L,), f"{p}.norm2.bias": (L,)}


def _decoder_layer(p, L, ff):
    d = _encoder_layer(p, L, ff)
    d.update({f"{p}.multihead_attn.in_proj_weight": (3 * L, L), f"{p}.multihead_attn.in_proj_bias": (3 * L,),
              f"{p}.multihead_attn.out_proj.weight": (L, L), f"{p}.multihead_attn.out_proj.bias": (L,),
              f"{p}.norm3.weight": (L,), f"{p}.norm3.bias": (L,)})
    return d


def _distilbert_base(p):
    """DistilBertModel(distilbert-base-uncased) parameters: vocab 30522, dim 768, 6 layers, ffn 3072."""
    d = {f"{p}.embeddings.word_embeddings.weight": (30522, 768),
         f"{p}.embeddings.position_embeddings.weight": (512, 768),
         f"{p}.embeddings.LayerNorm.weight": (768,), f"{p}.embeddings.LayerNorm.bias": (768,)}
    for i in range(6):
        q = f"{p}.transformer.layer.{i}"
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            d[f"{q}.attention.{lin}.weight"], d[f"{q}.attention.{lin}.bias"] = (768, 768), (768,)
        d.update({f"{q}.sa_layer_norm.weight": (768,), f"{q}.sa_layer_norm.bias": (768,),
                  f"{q}.ffn.lin1.weight": (3072, 768), f"{q}.ffn.lin1.bias": (3072,),
                  f"{q}.ffn.lin2.weight": (768, 3072), f"{q}.ffn.lin2.bias": (768,),
                  f"{q}.output_layer_norm.weight": (768,), f"{q}.output_layer_norm.bias": (768,)})
    return d


def released_layout(L=256, ff=1024, layers=4, nfeats=272, text_dim=768):
    """Keys of Evaluator_272/epoch=99.ckpt's 'state_dict' for the three modules, written from the
    original class definitions (temos/textencoder/distillbert_actor.py, motionencoder/actor.py,
    motiondecoder/actor.py, operator/position_encoding_layer.py; H3D-TMR.yaml, vae=True)."""
    t = {"textencoder.mu_token": (L,), "textencoder.logvar_token": (L,),
         "textencoder.projection.1.weight": (L, text_dim), "textencoder.projection.1.bias": (L,),
         "textencoder.sequence_pos_encoding.pe": (5000, 1, L)}
    m = {"motionencoder.skel_embedding.weight": (L, nfeats), "motionencoder.skel_embedding.bias": (L,),
         "motionencoder.mu_token": (L,), "motionencoder.logvar_token": (L,),
         "motionencoder.sequence_pos_encoding.pe": (5000, 1, L)}
    d = {"motiondecoder.sequence_pos_encoding.pe": (5000, 1, L),
         "motiondecoder.final_layer.weight": (nfeats, L), "motiondecoder.final_layer.bias": (nfeats,)}
    for i in range(layers):
        t.update(_encoder_layer(f"textencoder.seqTransEncoder.layers.{i}", L, ff))
        m.update(_encoder_layer(f"motionencoder.seqTransEncoder.layers.{i}", L, ff))
        d.update(_decoder_layer(f"motiondecoder.seqTransDecoder.layers.{i}", L, ff))
    return {**_distilbert_base("textencoder.text_model"), **t, **m, **d}


def test_official_key_table_equals_the_released_layout():
    from transformers import DistilBertConfig, DistilBertModel
    with torch.device("meta"):       # shapes only: no 66M-parameter allocation
        model = TMREvaluator(EvaluatorConfig.official(), DistilBertModel(DistilBertConfig()), tokenizer=object())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = released_layout()
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert len(got) == 281
    # parameters used for metrics and losses (pe tables are buffers)
    n = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith(".pe") and "text_model" not in k)
    assert n == sum(math.prod(s) for k, s in want.items() if not k.endswith(".pe") and "text_model" not in k)
    assert n == 10_869_520


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TMREvaluator(EvaluatorConfig.small("tiny-distilbert")).eval()


@pytest.fixture(scope="module")
def official_dims():
    """Official transformer sizes with the tiny backbone (the 66M DistilBERT is not needed to test loading)."""
    torch.manual_seed(1)
    return TMREvaluator(EvaluatorConfig(text_backbone="tiny-distilbert", text_dim=32)).eval()


def _motion(B=3, T=40, seed=0):
    return torch.randn(B, T, 272, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- behaviour
def test_encode_shapes_and_padding_invariance(tiny):
    x = _motion()
    lengths = torch.tensor([40, 25, 7])
    e = tiny.encode_motion(x, lengths)
    assert e.shape == (3, 64) and e.dtype == torch.float32
    # frames past a row's length (any values, any amount of padding) do not change its embedding
    x2 = torch.cat([x, 100 * torch.randn(3, 30, 272)], 1)
    x2[1, 25:40] = -7.0
    torch.testing.assert_close(tiny.encode_motion(x2, lengths), e, atol=1e-5, rtol=1e-5)
    # each row alone (no padding at all) gives the same embedding
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(tiny.encode_motion(x[i:i + 1, :n], [n]), e[i:i + 1], atol=1e-5, rtol=1e-5)
    t = tiny.encode_text(["a person walks forward", "someone jumps", "a man waves his right hand slowly"])
    assert t.shape == (3, 64)
    # a caption's embedding does not depend on the other captions of its batch (padding)
    torch.testing.assert_close(tiny.encode_text(["someone jumps"]), t[1:2], atol=1e-5, rtol=1e-5)
    assert not tiny.training


def test_encoders_are_deterministic_in_eval_and_stochastic_in_train(tiny):
    x, n = _motion(2, 30), torch.tensor([30, 20])
    torch.testing.assert_close(tiny.encode_motion(x, n), tiny.encode_motion(x, n))
    tiny.train()
    try:
        assert tiny.textencoder.text_model.training is False          # frozen backbone stays in eval
        d1, d2 = tiny.motionencoder(x, n).loc, tiny.motionencoder(x, n).loc
        assert not torch.allclose(d1, d2)                                # dropout on
        e = tiny.encode_motion(x, n)                                     # metrics switch to eval ...
        assert tiny.training                                             # ... and back
        torch.testing.assert_close(e, tiny.eval().encode_motion(x, n))
    finally:
        tiny.eval()
    assert all(not p.requires_grad for p in tiny.textencoder.text_model.parameters())


def test_motion_encoder_matches_a_transcription_of_the_original_forward(tiny):
    """ActorAgnosticEncoder.forward of the original, line by line, on this module's weights."""
    enc = tiny.motionencoder
    x, lengths = _motion(3, 20, seed=3), torch.tensor([20, 11, 16])
    bs, nframes, _ = x.shape
    mask = torch.arange(nframes).expand(bs, nframes) < lengths.unsqueeze(1)
    h = enc.skel_embedding(x).permute(1, 0, 2)
    mu_token = torch.tile(enc.mu_token, (bs,)).reshape(bs, -1)
    logvar_token = torch.tile(enc.logvar_token, (bs,)).reshape(bs, -1)
    xseq = torch.cat((mu_token[None], logvar_token[None], h), 0)
    aug_mask = torch.cat((torch.ones((bs, 2), dtype=bool), mask), 1)
    xseq = xseq + enc.sequence_pos_encoding.pe[: xseq.shape[0], :]            # dropout is off in eval
    final = enc.seqTransEncoder(xseq, src_key_padding_mask=~aug_mask)
    dist = enc(x, lengths)
    torch.testing.assert_close(dist.loc, final[0])
    torch.testing.assert_close(dist.scale, final[1].exp().pow(0.5))


def test_positional_table_is_the_sinusoid(tiny):
    pe = tiny.motionencoder.sequence_pos_encoding.pe[:, 0]
    pos, i = 37, 10
    assert pe.shape == (5000, 64)
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 64)), abs=1e-5)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 64)), abs=1e-5)


def test_decoder_zeroes_padding(tiny):
    z = torch.randn(3, 64)
    out = tiny.motiondecoder(z, torch.tensor([10, 4, 7]), 12)
    assert out.shape == (3, 12, 272)
    assert torch.all(out[1, 4:] == 0) and torch.all(out[2, 7:] == 0) and torch.all(out[0, 10:] == 0)
    assert out[1, :4].abs().sum() > 0


def test_input_errors(tiny):
    with pytest.raises(ValueError, match=r"\(batch, frames, 272\)"):
        tiny.encode_motion(torch.zeros(2, 10, 263), [10, 10])
    with pytest.raises(ValueError, match="lengths must be in"):
        tiny.encode_motion(torch.zeros(2, 10, 272), [10, 11])
    with pytest.raises(ValueError, match="lengths for a batch"):
        tiny.encode_motion(torch.zeros(2, 10, 272), [10])
    with pytest.raises(ValueError, match="NaN"):
        tiny.encode_motion(torch.full((1, 5, 272), float("nan")), [5])
    with pytest.raises(ValueError, match="text 1 is empty"):
        tiny.encode_text(["fine", "   "])
    with pytest.raises(TypeError):
        tiny.encode_text("not a list")
    with pytest.raises(ValueError, match="more than the backbone's 512"):
        tiny.encode_text(["ok", "walk " * 600])
    with pytest.raises(ValueError, match="not divisible"):
        EvaluatorConfig(latent_dim=30, num_heads=4)


# ----------------------------------------------------------------------------- our safetensors files
def test_save_load_roundtrip(tmp_path, tiny):
    tiny.save(tmp_path / "ev")
    back = TMREvaluator.load(tmp_path / "ev")
    x, n = _motion(2, 16), torch.tensor([16, 9])
    torch.testing.assert_close(back.encode_motion(x, n), tiny.encode_motion(x, n))
    torch.testing.assert_close(back.encode_text(["a person runs"]), tiny.encode_text(["a person runs"]))
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "ev" / "evaluator.safetensors")))
    assert not any(k.endswith(".pe") for k in keys)                       # deterministic tables not stored
    assert any(k.startswith("textencoder.text_model.") for k in keys)     # random-init backbone is stored


def test_pretrained_backbone_is_not_stored(tmp_path):
    torch.manual_seed(2)
    ev = TMREvaluator(EvaluatorConfig.small("minilm")).eval()
    ev.save(tmp_path / "m")
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "m" / "evaluator.safetensors")))
    assert not any(k.startswith("textencoder.text_model.") for k in keys)
    back = TMREvaluator.load(tmp_path / "m")
    torch.testing.assert_close(back.encode_text(["a person runs"]), ev.encode_text(["a person runs"]))


def test_load_errors(tmp_path, tiny):
    with pytest.raises(EvaluatorCheckpointError, match="no config.json"):
        TMREvaluator.load(tmp_path)
    tiny.save(tmp_path / "ev")
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / "ev" / "evaluator.safetensors"))
    state.pop("motionencoder.mu_token")
    state["motionencoder.skel_embedding.bias"] = torch.zeros(3)
    state["motionencoder.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ev" / "evaluator.safetensors"))
    with pytest.raises(EvaluatorCheckpointError) as e:
        TMREvaluator.load(tmp_path / "ev")
    msg = str(e.value)
    assert "missing key(s): motionencoder.mu_token" in msg
    assert "unexpected key(s): motionencoder.extra" in msg
    assert "motionencoder.skel_embedding.bias: file [3] vs model [64]" in msg


# ----------------------------------------------------------------------------- the released Lightning file
def _lightning_checkpoint(path, state: dict) -> None:
    """A file shaped like epoch=99.ckpt: the whole TEMOS module's state (evaluator, the filter
    SentenceTransformer, loss buffers) plus Lightning's extras, with numpy scalars and objects of a
    module that is not importable at load time (the original's OmegaConf config and collate function)."""
    mod = types.ModuleType("fake_mld_data")

    class DictConfig:
        def __init__(self, d):
            self.content = d

    def mld_collate(batch):
        return batch

    DictConfig.__module__ = mld_collate.__module__ = "fake_mld_data"
    DictConfig.__qualname__, mld_collate.__qualname__ = "DictConfig", "mld_collate"
    mod.DictConfig, mod.mld_collate = DictConfig, mld_collate
    sys.modules["fake_mld_data"] = mod
    try:
        full = dict(state)
        full["filter_model.0.auto_model.embeddings.word_embeddings.weight"] = torch.zeros(4, 3)
        full["_losses.losses_train.recons_text2jfeats"] = torch.tensor(0.5)
        full["textencoder.text_model.embeddings.position_ids"] = torch.arange(512)[None]   # old transformers
        torch.save({"epoch": 99, "global_step": 12345, "pytorch-lightning_version": "1.7.7", "state_dict": full,
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
                    "hyper_parameters": {"n_params_trainable": np.int64(9), "n_params_nontrainable": np.int64(66)},
                    "datamodule_hyper_parameters": {"cfg": DictConfig({"a": 1}), "collate_fn": mld_collate,
                                                    "batch_size": 256}}, path)
    finally:
        del sys.modules["fake_mld_data"]


def test_official_lightning_checkpoint_loads_with_weights_only(tmp_path, official_dims):
    path = tmp_path / "epoch=99.ckpt"
    _lightning_checkpoint(path, official_dims.state_dict())
    with pytest.raises(Exception):          # plain weights_only refuses the file (numpy + foreign objects)
        torch.load(path, weights_only=True)
    state = read_lightning_state_dict(path)
    assert "filter_model.0.auto_model.embeddings.word_embeddings.weight" in state
    loaded = TMREvaluator.load(path, backbone="tiny-distilbert")
    x, n = _motion(2, 24), torch.tensor([24, 13])
    torch.testing.assert_close(loaded.encode_motion(x, n), official_dims.encode_motion(x, n))
    caps = ["a person walks in a circle", "jumping jacks"]
    torch.testing.assert_close(loaded.encode_text(caps), official_dims.encode_text(caps))


def test_official_checkpoint_without_decoder_and_with_bad_keys(tmp_path, official_dims):
    state = {k: v for k, v in official_dims.state_dict().items() if not k.startswith("motiondecoder.")}
    path = tmp_path / "nodec.ckpt"
    _lightning_checkpoint(path, state)
    ev = TMREvaluator.load(path, backbone="tiny-distilbert")      # the decoder is not needed for metrics
    assert ev.encode_motion(_motion(1, 8), [8]).shape == (1, 256)

    bad = dict(official_dims.state_dict())
    bad.pop("textencoder.projection.1.weight")
    bad["motionencoder.skel_embedding.weight"] = torch.zeros(256, 263)
    path = tmp_path / "bad.ckpt"
    _lightning_checkpoint(path, bad)
    with pytest.raises(EvaluatorCheckpointError) as e:
        TMREvaluator.load(path, backbone="tiny-distilbert")
    assert "missing key(s): textencoder.projection.1.weight" in str(e.value)
    assert "motionencoder.skel_embedding.weight: file [256, 263] vs model [256, 272]" in str(e.value)

    path = tmp_path / "other.ckpt"
    _lightning_checkpoint(path, {"model.weight": torch.zeros(2)})
    with pytest.raises(EvaluatorCheckpointError, match=r"no '(text|motion)encoder\.\*' weights"):
        TMREvaluator.load(path, backbone="tiny-distilbert")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvaluatorCheckpointError, match="cannot be read"):
        TMREvaluator.load(tmp_path / "junk.ckpt", backbone="tiny-distilbert")


def test_official_sized_checkpoint_loads_offline(tmp_path, monkeypatch):
    """The released layout at full size (DistilBERT base inside) loads with the default backbone spec
    without the network: the architecture is DistilBERT's default config, the weights come from the
    file, the uncased WordPiece vocabulary from the MiniLM package."""
    from transformers import DistilBertConfig, DistilBertModel
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with torch.device("meta"):
        layout = TMREvaluator(EvaluatorConfig.official(), DistilBertModel(DistilBertConfig()), tokenizer=object())
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in layout.state_dict().items()}
    path = tmp_path / "epoch=99.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"n_params_trainable": np.int64(1)}}, path)
    ev = TMREvaluator.load(path)
    assert ev.config == EvaluatorConfig.official()
    for k in ("textencoder.text_model.transformer.layer.5.ffn.lin2.weight", "textencoder.projection.1.weight",
              "motionencoder.skel_embedding.weight", "motiondecoder.final_layer.bias"):
        assert torch.equal(ev.state_dict()[k], state[k]), k
    assert ev.textencoder.tokenizer("a person walks")["input_ids"] == [101, 1037, 2711, 7365, 102]
    e = ev.encode_text(["a person walks", "jumping"])
    assert e.shape == (2, 256) and torch.isfinite(e).all()
