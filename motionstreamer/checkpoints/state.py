"""State dicts on disk: .pth/.pt/.ckpt (torch.load with weights_only, never a plain unpickle) and
.safetensors, wrapper prefixes stripped, and strict checks that list every missing, unexpected,
mis-shaped or non-finite key (also against a safetensors header alone, before anything is allocated)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from motionstreamer.utils import atomic_path

_PREFIXES = ("module.", "_orig_mod.")   # DDP / accelerate, torch.compile
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class CheckpointError(ValueError):
    """A checkpoint or bundle file is missing, unreadable or does not match the model."""


def strip_prefix(state: dict, prefixes=_PREFIXES) -> dict:
    """Remove wrapper prefixes ('module.' of DDP/accelerate, '_orig_mod.' of torch.compile) from keys."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k in out:
            raise CheckpointError(f"key {k!r} appears twice once wrapper prefixes are removed")
        out[k] = v
    return out


def torch_load(path: Path):
    """torch.load(weights_only=True) onto the CPU, memory-mapped where the file allows; CheckpointError
    saying why a file that holds Python objects is refused."""
    try:
        try:   # mmap: only the requested tensors are read (latest.pth also holds optimizer state)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: refused or failed to load with torch.load(weights_only=True) ({type(e).__name__}: {first}). "
            "Either the file is damaged or it holds Python objects besides tensors, which are not unpickled "
            "because that can run arbitrary code. If you trust the file, re-save its state dict with "
            "torch.save({'net': state_dict}) or as safetensors.") from e


def load_checkpoint_file(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping of a .pth/.pt/.ckpt (weights_only) or .safetensors file.

    key: for .pth containers, the entry holding the state dict ('net' for the TAE, 'trans' for the
    text-to-motion model, 'state_dict' for Lightning); safetensors files are flat and ignore it.
    Wrapper prefixes ('module.', '_orig_mod.') are stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return strip_prefix(load_file(str(path)))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    obj = torch_load(path)
    state = obj
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path}: no {key!r} entry (found {found})")
        state = obj[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(state[k], dict)]
        hint = f"; it holds sub-dicts {nested[:6]}: pick one with key=" if nested and key is None else ""
        raise CheckpointError(f"{path}{f' [{key!r}]' if key else ''}: "
                              f"{len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
                              f"not tensors ({', '.join(map(str, bad[:6]))}){hint}")
    return strip_prefix(state)


def state_mismatches(expected: dict, state: dict, optional: set | frozenset = frozenset(),
                     check_finite: bool = False) -> list[str]:
    """Readable list of what keeps `state` from loading into a module whose state_dict is `expected`:
    missing keys (except `optional`), unexpected keys, mis-shaped keys (both shapes), and (with
    check_finite) tensors holding NaN/inf. Empty when it loads."""
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    common = set(state) & set(expected)
    shapes = sorted(f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
                    for k in common if tuple(state[k].shape) != tuple(expected[k].shape))
    nonfinite = sorted(k for k in common
                       if check_finite and state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()))

    def show(xs):
        return ", ".join(xs[:12]) + (f" ... (+{len(xs) - 12} more)" if len(xs) > 12 else "")
    parts = []
    for items, what in ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"),
                        (shapes, "mis-shaped key(s)"), (nonfinite, "tensor(s) with NaN/inf")):
        if items:
            parts.append(f"{len(items)} {what}: {show(items)}")
    return parts


def load_state_dict_strict(module: torch.nn.Module, state: dict, what: str = "checkpoint",
                           check_finite: bool = True) -> None:
    """module.load_state_dict(state, strict=True), but first a CheckpointError naming `what` (the
    file) and listing every missing, unexpected and mis-shaped key (with both shapes), and any
    tensor holding NaN/inf."""
    parts = state_mismatches(module.state_dict(), state, check_finite=check_finite)
    if parts:
        raise CheckpointError(f"{what} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def safetensors_shapes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors a .safetensors file holds, as meta tensors of their shapes and dtypes: read from its
    header only, nothing loaded. CheckpointError naming the file when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                out[k] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
            return out
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def build_for_weights(make, config, weights: Path, what: str):
    """make(config) once its shapes are known to fit the weights file: the module is first built on the
    meta device (nothing allocated) and compared with the file's header, so a config.json naming
    absurd sizes (a TAE width of 30000 would allocate 14 GB) is a CheckpointError, not an allocation."""
    try:
        with torch.device("meta"):
            probe = make(config)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:   # RuntimeError: sizes overflow
        raise CheckpointError(f"{what}: bad config ({e})") from e
    parts = state_mismatches(probe.state_dict(), safetensors_shapes(weights))
    if parts:
        raise CheckpointError(f"{weights} does not match {type(probe).__name__}: " + "; ".join(parts)
                              + f" (its sizes come from {what})")
    return make(config)


def save_safetensors(path: Path, state: dict) -> None:
    """A state dict to a .safetensors file, atomically."""
    # a copy with its own storage per tensor: safetensors refuses tensors that share memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def checked_vector(name: str, value, n: int) -> torch.Tensor:
    """`value` as a float32 vector of n finite values; CheckpointError naming `name` otherwise."""
    t = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value),
                        dtype=torch.float32).reshape(-1)
    if t.numel() != n:
        raise CheckpointError(f"{name} must hold {n} values, got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{name} contains NaN/inf")
    return t
