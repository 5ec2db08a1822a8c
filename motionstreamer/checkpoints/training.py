"""Training checkpoints (a run's checkpoint_last.pt, written by train/common.py), and load_tae: a TAE
from whichever file holds one."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from motionstreamer.checkpoints.bundle import load_bundle
from motionstreamer.checkpoints.official import load_official_tae
from motionstreamer.checkpoints.state import load_state_dict_strict
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig


def load_training_checkpoint(path: str | os.PathLike, trainers: tuple | None = None) -> dict:
    """A training checkpoint (torch.load weights_only); with `trainers`, ValueError unless it was written
    by one of them."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training checkpoint {path}: {e}") from e
    if trainers is not None and (not isinstance(checkpoint, dict) or checkpoint.get("trainer") not in trainers):
        got = checkpoint.get("trainer") if isinstance(checkpoint, dict) else None
        raise ValueError(f"{path} is not a {' or '.join(trainers)} training checkpoint (trainer={got!r})")
    return checkpoint


def ema_or_model_state(checkpoint: dict) -> dict:
    """Weights to export from a training checkpoint: the EMA shadow when present."""
    if "ema" in checkpoint:
        state = dict(checkpoint["model"])
        state.update({k: v.to(state[k].dtype) for k, v in checkpoint["ema"].items()})
        return state
    return checkpoint["model"]


def load_tae(path: str | os.PathLike, device="cpu") -> CausalHumanTAE:
    """A TAE in eval mode on `device` from any file that holds one: a model bundle directory, a TAE
    training checkpoint (checkpoint_last.pt; its EMA weights when present), or the released
    Causal_TAE/net_last.pth. FileNotFoundError / ValueError (CheckpointError) naming the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: not found")
    if p.is_dir():
        return load_bundle(p, device=device).tae.eval()
    if p.suffix == ".pth":
        return load_official_tae(p).to(device).eval()
    checkpoint = load_training_checkpoint(p, ("tae",))
    tae = CausalHumanTAE(TAEConfig.from_dict(checkpoint["config"]["tae"]))
    state = ema_or_model_state(checkpoint)
    load_state_dict_strict(tae, {k[len("tae."):]: v for k, v in state.items() if k.startswith("tae.")}, str(p))
    return tae.to(device).eval()


