"""Checkpoint I/O: official .pth files, safetensors model bundles, conversion, hub download.

A model bundle is the project's model directory, used by the runtime, training, export and the
embedded default model:

    config.json        {"format": "motionstreamer-bundle", "version": 1, "tae": {...}, "t2m": {...},
                        "text_encoder": "minilm", "text_dim": 384, "fps": 30, "description": "..."}
    tae.safetensors    CausalHumanTAE state dict (official key names)
    t2m.safetensors    TextToMotionModel state dict (official key names)
    stats.safetensors  mean (272,), std (272,), end_latent (16,)
    evaluator.safetensors (optional, with "evaluator" in config.json)

Official files load with torch.load(weights_only=True); strict key checks list every missing,
unexpected and mis-shaped key.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from motionstreamer.utils import atomic_path, atomic_write_json

BUNDLE_FORMAT = "motionstreamer-bundle"
HUB_REPO = "lxxiao/MotionStreamer"
HUB_PATTERNS = {
    "tae": ["Causal_TAE/*"],
    "tae_babel": ["Causal_TAE_t2m_babel/*"],
    "t2m": ["Experiments/t2m_model/*"],
    "evaluator": ["Evaluator_272/*"],
}


class CheckpointError(ValueError):
    pass


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_checkpoint_file(path: str | os.PathLike, key: str | None = None) -> dict:
    """Tensors of a .pth/.pt/.ckpt (weights_only) or .safetensors file; `key` selects a sub-dict
    ('net', 'trans', 'state_dict'); a 'module.' prefix is stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{path}: refused to load with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]}). "
                "The file holds more than tensors; only load checkpoints you trust, and convert them "
                "with `motionstreamer convert-checkpoint`.") from e
        state = obj
        if key is not None:
            if not isinstance(obj, dict) or key not in obj:
                keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
                raise CheckpointError(f"{path}: no {key!r} entry (found {keys})")
            state = obj[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors")
    return strip_prefix(state)


def load_state_dict_strict(module: torch.nn.Module, state: dict, what: str = "checkpoint") -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        def show(xs):
            return ", ".join(xs[:12]) + (f" ... (+{len(xs) - 12} more)" if len(xs) > 12 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} mis-shaped key(s): {show(shapes)}")
        raise CheckpointError(f"{what} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _save_safetensors(path: Path, state: dict) -> None:
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))


@dataclass
class Bundle:
    tae: torch.nn.Module
    t2m: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    end_latent: torch.Tensor
    config: dict = field(default_factory=dict)
    text_encoder_name: str = "minilm"
    path: Path | None = None


def save_bundle(directory: str | os.PathLike, tae, t2m, mean, std, end_latent, text_encoder: str = "minilm",
                description: str = "", extra_config: dict | None = None, evaluator=None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _save_safetensors(d / "tae.safetensors", tae.state_dict())
    _save_safetensors(d / "t2m.safetensors", t2m.state_dict())
    _save_safetensors(d / "stats.safetensors", {
        "mean": torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(-1),
        "std": torch.as_tensor(np.asarray(std), dtype=torch.float32).reshape(-1),
        "end_latent": torch.as_tensor(np.asarray(end_latent), dtype=torch.float32).reshape(-1)})
    config = {"format": BUNDLE_FORMAT, "version": 1, "tae": tae.config.to_dict(), "t2m": t2m.config.to_dict(),
              "text_encoder": text_encoder, "text_dim": t2m.config.cond_dim, "fps": 30, "description": description}
    if evaluator is not None:
        _save_safetensors(d / "evaluator.safetensors", evaluator.state_dict())
        config["evaluator"] = evaluator.config.to_dict()
    config.update(extra_config or {})
    atomic_write_json(d / "config.json", config)   # last: a bundle without config.json is incomplete
    return d


def read_bundle_config(directory: str | os.PathLike) -> dict:
    d = Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{d}: not a model bundle (no config.json)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    if config.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{cfg_path}: format is {config.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    for k in ("tae", "t2m"):
        if k not in config:
            raise CheckpointError(f"{cfg_path}: missing the {k!r} config")
    return config


def load_bundle(directory: str | os.PathLike, device="cpu", dtype=torch.float32) -> Bundle:
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    d = Path(directory)
    config = read_bundle_config(d)
    try:
        tae = CausalHumanTAE(TAEConfig.from_dict(config["tae"]))
        t2m = TextToMotionModel(T2MConfig.from_dict(config["t2m"]))
    except TypeError as e:
        raise CheckpointError(f"{d / 'config.json'}: bad model config ({e})") from e
    load_state_dict_strict(tae, load_checkpoint_file(d / "tae.safetensors"), f"{d / 'tae.safetensors'}")
    load_state_dict_strict(t2m, load_checkpoint_file(d / "t2m.safetensors"), f"{d / 't2m.safetensors'}")
    stats = load_checkpoint_file(d / "stats.safetensors")
    for k, n in (("mean", tae.config.in_dim), ("std", tae.config.in_dim), ("end_latent", tae.config.latent_dim)):
        if k not in stats or stats[k].numel() != n:
            raise CheckpointError(f"{d / 'stats.safetensors'}: {k!r} missing or not {n} values")
    if not torch.all(stats["std"] > 0):
        raise CheckpointError(f"{d / 'stats.safetensors'}: std has non-positive entries")
    tae = tae.to(device, dtype).eval()
    t2m = t2m.to(device, dtype).eval()
    return Bundle(tae, t2m, stats["mean"].to(device), stats["std"].to(device), stats["end_latent"].to(device),
                  config, config.get("text_encoder", "minilm"), d)


# ----------------------------------------------------------------------------- official files
def find_official_files(src: str | os.PathLike) -> dict[str, Path]:
    """Locate the released files under a download folder (the hub layout) or take them directly."""
    src = Path(src)
    cands = {
        "tae": ["Causal_TAE/net_last.pth", "net_last.pth"],
        "t2m": ["Experiments/t2m_model/latest.pth", "latest.pth"],
        "mean": ["humanml3d_272/mean_std/Mean.npy", "mean_std/Mean.npy", "Mean.npy"],
        "std": ["humanml3d_272/mean_std/Std.npy", "mean_std/Std.npy", "Std.npy"],
        "end_latent": ["reference_end_latent_t2m_272.npy"],
    }
    found, missing = {}, []
    for k, rels in cands.items():
        hit = next((src / r for r in rels if (src / r).is_file()), None)
        if hit is None:
            missing.append(f"{k} (looked for {', '.join(rels)})")
        else:
            found[k] = hit
    if missing:
        raise CheckpointError(f"{src}: official files not found: " + "; ".join(missing))
    return found


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, text_encoder: str = "sentence-t5-xxl",
                     tae_config=None, t2m_config=None) -> Path:
    """Released .pth + stats -> a bundle. Configs default to the official ones."""
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    files = find_official_files(src)
    tae = CausalHumanTAE(tae_config or TAEConfig.official())
    t2m = TextToMotionModel(t2m_config or T2MConfig.official(cond_dim=768))
    load_state_dict_strict(tae, load_checkpoint_file(files["tae"], key="net"), str(files["tae"]))
    load_state_dict_strict(t2m, load_checkpoint_file(files["t2m"], key="trans"), str(files["t2m"]))
    mean, std = np.load(files["mean"], allow_pickle=False), np.load(files["std"], allow_pickle=False)
    end = np.load(files["end_latent"], allow_pickle=False)
    for name, arr, n in (("Mean", mean, 272), ("Std", std, 272), ("end latent", end, 16)):
        if arr.size != n or not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{name} file must hold {n} finite values, got shape {arr.shape}")
    return save_bundle(dst, tae, t2m, mean, std, end, text_encoder=text_encoder,
                       description=f"converted from official MotionStreamer files in {Path(src).resolve()}")


def download_official(dest: str | os.PathLike, components=("tae", "t2m", "evaluator"), timeout: float = 20.0) -> Path:
    """Fetch the released files from the hub (huggingface_hub.snapshot_download, per-component
    allow_patterns). Fails fast with a clear message when offline."""
    unknown = [c for c in components if c not in HUB_PATTERNS]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(HUB_PATTERNS)}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ConnectionError("cannot download: HF_HUB_OFFLINE is set (offline mode)")
    from huggingface_hub import snapshot_download
    patterns = [p for c in components for p in HUB_PATTERNS[c]]
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    try:
        path = snapshot_download(repo_id=HUB_REPO, repo_type="model", local_dir=str(dest), allow_patterns=patterns)
    except Exception as e:
        raise ConnectionError(f"cannot download {components} from the hub repository {HUB_REPO} "
                              f"(offline or unreachable?): {type(e).__name__}: {e}") from e
    return Path(path)
