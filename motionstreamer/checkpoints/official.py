"""The released checkpoints (MotionStreamer's .pth files and .npy statistics): find them in a download
folder (the hub layout) and convert them into a model bundle, every tensor checked against the
official configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from motionstreamer.checkpoints.bundle import save_bundle
from motionstreamer.checkpoints.state import CheckpointError, load_checkpoint_file, load_state_dict_strict
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.utils import load_npy

# released file locations under a download folder (first match wins)
OFFICIAL_FILES = {
    "tae": ["Causal_TAE/net_last.pth", "net_last.pth"],
    "t2m": ["Experiments/t2m_model/latest.pth", "t2m_model/latest.pth", "latest.pth"],
    "mean": ["humanml3d_272/mean_std/Mean.npy", "mean_std/Mean.npy", "Mean.npy"],
    "std": ["humanml3d_272/mean_std/Std.npy", "mean_std/Std.npy", "Std.npy"],
    "end_latent": ["reference_end_latent_t2m_272.npy"],
}


def find_official_files(src, required=("tae", "t2m", "mean", "std", "end_latent")) -> dict[str, Path]:
    """Locate the released files: `src` is a download folder (the hub layout, see OFFICIAL_FILES)
    or a mapping {'tae': path, 't2m': path, 'mean': ..., 'std': ..., 'end_latent': ...}; a mapping
    may also name a 'dir' to search for the entries it leaves out."""
    given = dict(src) if isinstance(src, dict) else {"dir": src}
    root = given.pop("dir", None)
    root = Path(root) if root is not None else None
    unknown = sorted(set(given) - set(OFFICIAL_FILES))
    if unknown:
        raise CheckpointError(f"unknown official file name(s) {unknown}; known: {sorted(OFFICIAL_FILES)}")
    if root is not None and not root.is_dir():
        raise CheckpointError(f"official files folder not found: {root}")
    found, missing = {}, []
    for k in OFFICIAL_FILES:
        if given.get(k) is not None:
            p = Path(given[k])
            if not p.is_file():
                raise CheckpointError(f"{k} file not found: {p}")
            found[k] = p
            continue
        rels = OFFICIAL_FILES[k]
        hit = next((root / r for r in rels if (root / r).is_file()), None) if root is not None else None
        if hit is not None:
            found[k] = hit
        elif k in required:
            missing.append(f"{k} (looked for {', '.join(rels)})")
    if missing:
        raise CheckpointError(f"{root or 'the given files'}: official files not found: " + "; ".join(missing))
    return found


def _load_npy(path: Path, name: str, n: int) -> np.ndarray:
    try:
        arr = load_npy(path)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{path}: {name} must hold {n} finite values, got shape {arr.shape}"
                              + ("" if arr.size != n else " with NaN/inf"))
    return arr.reshape(-1).astype(np.float32)


@torch.no_grad()
def tae_end_latent(tae) -> torch.Tensor:
    """The TAE's mean encoding of an all-zero 4-frame normalised pose (the original's end latent is a
    sample of the same encoding, `reference_end_latent_*.npy`)."""
    f = tae.config.frames_per_latent
    w = next(tae.parameters())
    _, mu, _ = tae.encode(torch.zeros(1, f, tae.config.in_dim, device=w.device, dtype=w.dtype), sample=False)
    return mu.reshape(-1).float().cpu()


def load_official_tae(path: str | os.PathLike, config: TAEConfig | None = None) -> CausalHumanTAE:
    """The released Causal_TAE/net_last.pth ('net' entry) in `config` (default: the official one), keys
    strict."""
    tae = CausalHumanTAE(config or TAEConfig.official())
    load_state_dict_strict(tae, load_checkpoint_file(path, key="net"), f"{path} ['net']")
    return tae


def convert_official(src, dst: str | os.PathLike, text_encoder: str = "sentence-t5-xxl", tae_config=None,
                     t2m_config=None, compute_end_latent: bool = False) -> Path:
    """Released files -> a model bundle at `dst`; returns its path.

    src: the download folder (hub layout: Causal_TAE/net_last.pth ('net'), Experiments/t2m_model/
    latest.pth ('trans'), humanml3d_272/mean_std/{Mean,Std}.npy, reference_end_latent_t2m_272.npy
    from the GitHub repository root) or a mapping of those files (find_official_files). Configs default
    to the official ones and every tensor is checked against them (keys and shapes). Without the end
    latent file, compute_end_latent=True uses the TAE's mean encoding of a zero pose instead."""
    required = ("tae", "t2m", "mean", "std") + (() if compute_end_latent else ("end_latent",))
    try:
        files = find_official_files(src, required)
    except CheckpointError as e:
        if compute_end_latent or "end_latent" not in str(e):
            raise
        raise CheckpointError(f"{e}. The end latent file is in the root of the MotionStreamer GitHub repository "
                              "(not on the hub); or pass compute_end_latent=True (--compute-end-latent)") from e
    tae = load_official_tae(files["tae"], tae_config)
    t2m_state = load_checkpoint_file(files["t2m"], key="trans")
    if t2m_config is None:   # the official layout; the text width follows the file (768 for sentence-t5-xxl)
        cond = t2m_state.get("transformer.cond_embed.weight")
        t2m_config = T2MConfig.official(cond_dim=int(cond.shape[1]) if cond is not None and cond.ndim == 2 else 768)
    t2m = TextToMotionModel(t2m_config)
    load_state_dict_strict(t2m, t2m_state, f"{files['t2m']} ['trans']")
    del t2m_state
    mean = _load_npy(files["mean"], "Mean", tae.config.in_dim)
    std = _load_npy(files["std"], "Std", tae.config.in_dim)
    if not np.all(std > 0):
        raise CheckpointError(f"{files['std']}: Std has non-positive entries")
    if "end_latent" in files:
        end, end_source = _load_npy(files["end_latent"], "end latent", tae.config.latent_dim), str(files["end_latent"])
    else:
        end, end_source = tae_end_latent(tae.eval()), "computed: TAE mean encoding of an all-zero 4-frame pose"
    return save_bundle(dst, tae, t2m, mean, std, end, text_encoder=text_encoder,
                       description="official MotionStreamer release (converted)",
                       extra_config={"source": {k: str(Path(v).resolve()) for k, v in files.items()},
                                     "end_latent_source": end_source})
