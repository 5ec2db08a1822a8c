"""Checkpoint I/O: official .pth files, safetensors model bundles, conversion, hub download.

A model bundle is the project's model directory, used by the runtime, training, export and the
embedded default model:

    config.json        {"format": "motionstreamer-bundle", "version": 1, "tae": {...}, "t2m": {...},
                        "text_encoder": "minilm", "text_dim": 384, "fps": 30, "description": "..."}
    tae.safetensors    CausalHumanTAE state dict (official key names)
    t2m.safetensors    TextToMotionModel state dict (official key names)
    stats.safetensors  mean (272,), std (272,), end_latent (16,)
    evaluator.safetensors (optional, with "evaluator" in config.json; read by models.evaluator)
    student_head.safetensors (optional, with "student_head" in config.json: a few-step head distilled
                       from t2m's guided head, models/few_step.py; t2m.safetensors keeps the teacher)

Each file is written atomically and config.json last, so a directory with a config.json is complete.
Official files load with torch.load(weights_only=True) (never a plain unpickle); strict key checks
list every missing, unexpected and mis-shaped key.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from motionstreamer.utils import atomic_path, atomic_write_json, load_npy

BUNDLE_FORMAT = "motionstreamer-bundle"
STUDENT_FILE = "student_head.safetensors"
BUNDLE_VERSION = 1
HUB_REPO = "lxxiao/MotionStreamer"
# component -> (hub repo, repo type, allow_patterns, sub-folder of dest); layout as the original's
# humanml3d_272/prepare/download_*.py scripts and README (Mean/Std come with the dataset repo)
HUB_COMPONENTS = {
    "tae": (HUB_REPO, "model", ["Causal_TAE/*"], ""),
    "tae_babel": (HUB_REPO, "model", ["Causal_TAE_t2m_babel/*"], ""),
    "t2m": (HUB_REPO, "model", ["Experiments/t2m_model/*"], ""),
    "evaluator": (HUB_REPO, "model", ["Evaluator_272/*"], ""),
    "stats": ("lxxiao/272-dim-HumanML3D", "dataset", ["mean_std/*"], "humanml3d_272"),
}
DEFAULT_COMPONENTS = ("tae", "t2m", "evaluator", "stats")
# released file locations under a download folder (first match wins)
OFFICIAL_FILES = {
    "tae": ["Causal_TAE/net_last.pth", "net_last.pth"],
    "t2m": ["Experiments/t2m_model/latest.pth", "t2m_model/latest.pth", "latest.pth"],
    "mean": ["humanml3d_272/mean_std/Mean.npy", "mean_std/Mean.npy", "Mean.npy"],
    "std": ["humanml3d_272/mean_std/Std.npy", "mean_std/Std.npy", "Std.npy"],
    "end_latent": ["reference_end_latent_t2m_272.npy"],
}
KNOWN_TEXT_DIMS = {"minilm": 384, "all-minilm-l6-v2": 384, "sentence-t5-xxl": 768}
_PREFIXES = ("module.", "_orig_mod.")   # DDP / accelerate, torch.compile


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


def _torch_load(path: Path):
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
        from safetensors.torch import load_file
        try:
            return strip_prefix(load_file(str(path)))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    obj = _torch_load(path)
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
        raise CheckpointError(f"{path}{f' [{key!r}]' if key else ''}: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
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
    from safetensors import safe_open

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


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


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


def _save_safetensors(path: Path, state: dict) -> None:
    from safetensors.torch import save_file
    # a copy with its own storage per tensor: safetensors refuses tensors that share memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _vector(name: str, value, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value),
                        dtype=torch.float32).reshape(-1)
    if t.numel() != n:
        raise CheckpointError(f"{name} must hold {n} values, got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{name} contains NaN/inf")
    return t


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
    student: torch.nn.Module | None = None   # models.few_step.StudentHead when the bundle carries one

    def check_text_encoder(self, encoder) -> None:
        """Raise CheckpointError unless `encoder.dim` is the text width the t2m model takes."""
        want = self.t2m.config.cond_dim
        if int(encoder.dim) != want:
            raise CheckpointError(f"model bundle {self.path or ''} takes {want}-dim text embeddings (trained with "
                                  f"{self.text_encoder_name!r}) but the text encoder gives {encoder.dim}")

    @property
    def evaluator_path(self) -> Path | None:
        """The bundle folder when it carries an evaluator (load it with models.evaluator)."""
        return self.path if self.path is not None and "evaluator" in self.config else None


def save_bundle(directory: str | os.PathLike, tae, t2m, mean, std, end_latent, text_encoder: str = "minilm",
                description: str = "", extra_config: dict | None = None, evaluator=None, student=None) -> Path:
    """Write a model bundle (layout in the module docstring); returns its directory.

    Any previous config.json is removed first and the new one written last, so an interrupted save
    never leaves a directory that looks complete."""
    d = Path(directory)
    tc = tae.config
    mean_t, std_t = _vector("mean", mean, tc.in_dim), _vector("std", std, tc.in_dim)
    end_t = _vector("end_latent", end_latent, tc.latent_dim)
    if not bool((std_t > 0).all()):
        raise CheckpointError("std has non-positive entries")
    if t2m.config.latent_dim != tc.latent_dim:
        raise CheckpointError(f"t2m latent_dim {t2m.config.latent_dim} != TAE latent_dim {tc.latent_dim}")
    known = KNOWN_TEXT_DIMS.get(str(text_encoder).lower())
    if known is not None and known != t2m.config.cond_dim:   # loadable, but generation would need another encoder
        warnings.warn(f"bundle {d}: text encoder {text_encoder!r} gives {known}-dim embeddings but the t2m model "
                      f"takes cond_dim {t2m.config.cond_dim}", stacklevel=2)
    reserved = {"format", "version", "student_head"} & set(extra_config or {})
    if reserved:
        raise CheckpointError(f"extra_config may not set {sorted(reserved)}")
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").unlink(missing_ok=True)
    _save_safetensors(d / "tae.safetensors", tae.state_dict())
    _save_safetensors(d / "t2m.safetensors", t2m.state_dict())
    _save_safetensors(d / "stats.safetensors", {"mean": mean_t, "std": std_t, "end_latent": end_t})
    config = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "tae": tc.to_dict(), "t2m": t2m.config.to_dict(),
              "text_encoder": text_encoder, "text_dim": t2m.config.cond_dim, "fps": 30, "description": description}
    if evaluator is not None:   # the layout models.evaluator.TMREvaluator.load reads
        export = getattr(evaluator, "export_state_dict", None)
        _save_safetensors(d / "evaluator.safetensors", export() if export else evaluator.state_dict())
        config["evaluator"] = evaluator.config.to_dict()
    if student is not None:
        _check_student(student, t2m.config.head)
        _save_safetensors(d / STUDENT_FILE, student.state_dict())
        config["student_head"] = student.student_config.to_dict()
    else:
        (d / STUDENT_FILE).unlink(missing_ok=True)
    config.update(extra_config or {})
    atomic_write_json(d / "config.json", config)   # last: a bundle without config.json is incomplete
    return d


def read_bundle_config(directory: str | os.PathLike) -> dict:
    d = Path(directory)
    cfg_path = d / "config.json"
    if not d.is_dir():
        raise CheckpointError(f"model bundle directory not found: {d}")
    if not cfg_path.is_file():
        raise CheckpointError(f"{d}: not a model bundle (no config.json; an interrupted save leaves none)")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    except RecursionError:
        raise CheckpointError(f"{cfg_path}: invalid JSON (nested too deeply)") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{cfg_path}: format is {got!r}, expected {BUNDLE_FORMAT!r}")
    if not isinstance(config.get("version"), int) or config["version"] > BUNDLE_VERSION:
        raise CheckpointError(f"{cfg_path}: bundle version {config.get('version')!r} is not supported "
                              f"(this motionstreamer reads version <= {BUNDLE_VERSION}; upgrade it)")
    for k in ("tae", "t2m"):
        if not isinstance(config.get(k), dict):
            raise CheckpointError(f"{cfg_path}: missing the {k!r} config")
    return config


def load_bundle(directory: str | os.PathLike, device="cpu", dtype=torch.float32) -> Bundle:
    """Read a bundle written by save_bundle into eval-mode models on `device` in `dtype` (stats stay fp32)."""
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    d = Path(directory)
    config = read_bundle_config(d)
    cfg_path = d / "config.json"
    needed = ["tae.safetensors", "t2m.safetensors", "stats.safetensors"]
    needed += ["evaluator.safetensors"] if "evaluator" in config else []
    needed += [STUDENT_FILE] if "student_head" in config else []
    missing = [n for n in needed if not (d / n).is_file()]
    if missing:
        why = {"evaluator.safetensors": " (config.json names an evaluator)",
               STUDENT_FILE: " (config.json names a student head)"}
        raise CheckpointError(f"model bundle {d} is missing {', '.join(missing)}"
                              + "".join(why.get(n, "") for n in missing))
    configs = {}
    for name, cls in (("tae", TAEConfig), ("t2m", T2MConfig)):
        try:
            configs[name] = cls.from_dict(config[name])
        except (TypeError, ValueError, ArithmeticError) as e:
            raise CheckpointError(f"{cfg_path}: bad {name!r} config ({e})") from e
    tae_config, t2m_config = configs["tae"], configs["t2m"]
    tae = build_for_weights(CausalHumanTAE, tae_config, d / "tae.safetensors", f"{cfg_path}, 'tae'")
    t2m = build_for_weights(TextToMotionModel, t2m_config, d / "t2m.safetensors", f"{cfg_path}, 't2m'")
    if "text_dim" in config and config["text_dim"] != t2m.config.cond_dim:
        raise CheckpointError(f"{cfg_path}: text_dim {config['text_dim']} != t2m cond_dim {t2m.config.cond_dim}")
    for name, module in (("tae", tae), ("t2m", t2m)):
        f = d / f"{name}.safetensors"
        load_state_dict_strict(module, load_checkpoint_file(f), str(f))
    f = d / "stats.safetensors"
    stats = load_checkpoint_file(f)
    try:
        mean = _vector("mean", stats["mean"], tae.config.in_dim)
        std = _vector("std", stats["std"], tae.config.in_dim)
        end = _vector("end_latent", stats["end_latent"], tae.config.latent_dim)
    except KeyError as e:
        raise CheckpointError(f"{f}: no {e.args[0]!r} tensor (found {sorted(stats)})") from e
    except CheckpointError as e:
        raise CheckpointError(f"{f}: {e}") from e
    if not bool((std > 0).all()):
        raise CheckpointError(f"{f}: std has non-positive entries")
    student = None
    if "student_head" in config:
        student = load_student_head(d, config, t2m)
    tae = tae.to(device, dtype).eval()
    t2m = t2m.to(device, dtype).eval()
    if student is not None:
        student = student.to(device, dtype).eval()
    return Bundle(tae, t2m, mean.to(device), std.to(device), end.to(device), config,
                  config.get("text_encoder", "minilm"), d, student)


def _check_student(student, head) -> None:
    """A student must have its teacher's architecture (head: the t2m model's DiffusionHeadConfig)."""
    if student.config != head:
        raise CheckpointError(f"the student head's config {student.config.to_dict()} differs from the t2m "
                              f"model's head {head.to_dict()}")


def load_student_head(directory: str | os.PathLike, config: dict, t2m):
    """The few-step student head of a bundle (config.json "student_head" + student_head.safetensors),
    checked against the t2m model's head config, keys strict."""
    from motionstreamer.models.few_step import StudentHead, StudentHeadConfig

    d = Path(directory)
    try:
        student = StudentHead(t2m.config.head, StudentHeadConfig.from_dict(config["student_head"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / 'config.json'}: bad 'student_head' config ({e})") from e
    f = d / STUDENT_FILE
    load_state_dict_strict(student, load_checkpoint_file(f), str(f))
    return student


def add_student_head(src: str | os.PathLike, student, dst: str | os.PathLike | None = None,
                     description: str | None = None) -> Path:
    """Write `src`'s bundle with `student` (a models.few_step.StudentHead) as its few-step head to `dst`
    (default: in place). Every other file is copied byte for byte, so the teacher (t2m.safetensors)
    and the rest stay exactly as they were; config.json gains "student_head" and is written last."""
    import shutil

    from motionstreamer.models.transformer import T2MConfig

    src = Path(src)
    dst = Path(dst) if dst is not None else src
    config = read_bundle_config(src)
    try:
        head = T2MConfig.from_dict(config["t2m"]).head
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{src / 'config.json'}: bad 't2m' config ({e})") from e
    _check_student(student, head)
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != src.resolve():
        (dst / "config.json").unlink(missing_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in ("config.json", STUDENT_FILE):
                with atomic_path(dst / f.name) as tmp:
                    shutil.copyfile(f, tmp)
    _save_safetensors(dst / STUDENT_FILE, student.state_dict())
    config["student_head"] = student.student_config.to_dict()
    if description is not None:
        config["description"] = description
    atomic_write_json(dst / "config.json", config)
    return dst


# ----------------------------------------------------------------------------- official files
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


def convert_official(src, dst: str | os.PathLike, text_encoder: str = "sentence-t5-xxl", tae_config=None,
                     t2m_config=None, compute_end_latent: bool = False) -> Path:
    """Released files -> a model bundle at `dst`; returns its path.

    src: the download folder (hub layout: Causal_TAE/net_last.pth ('net'), Experiments/t2m_model/
    latest.pth ('trans'), humanml3d_272/mean_std/{Mean,Std}.npy, reference_end_latent_t2m_272.npy
    from the GitHub repository root) or a mapping of those files (find_official_files). Configs default
    to the official ones and every tensor is checked against them (keys and shapes). Without the end
    latent file, compute_end_latent=True uses the TAE's mean encoding of a zero pose instead."""
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    required = ("tae", "t2m", "mean", "std") + (() if compute_end_latent else ("end_latent",))
    try:
        files = find_official_files(src, required)
    except CheckpointError as e:
        if compute_end_latent or "end_latent" not in str(e):
            raise
        raise CheckpointError(f"{e}. The end latent file is in the root of the MotionStreamer GitHub repository "
                              "(not on the hub); or pass compute_end_latent=True (--compute-end-latent)") from e
    tae = CausalHumanTAE(tae_config or TAEConfig.official())
    load_state_dict_strict(tae, load_checkpoint_file(files["tae"], key="net"), f"{files['tae']} ['net']")
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


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def download_official(dest: str | os.PathLike, components=DEFAULT_COMPONENTS, timeout: float = 10.0) -> Path:
    """Fetch released files into `dest` in the hub layout (what convert_official reads), with
    huggingface_hub.snapshot_download and per-component allow_patterns (HUB_COMPONENTS).

    Fails fast with ConnectionError when offline (HF_HUB_OFFLINE) or when the hub does not answer
    within `timeout` seconds. The end latent (reference_end_latent_t2m_272.npy) is not on the hub:
    it is in the root of the MotionStreamer GitHub repository."""
    components = list(components)
    unknown = [c for c in components if c not in HUB_COMPONENTS]
    if unknown or not components:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(HUB_COMPONENTS)}")
    if _hub_offline():
        raise ConnectionError("cannot download: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE); "
                              "unset it, or copy the files into the folder by hand")
    from huggingface_hub import HfApi, snapshot_download

    dest = Path(dest)
    by_repo: dict[tuple, list[str]] = {}
    for c in components:
        repo, rtype, patterns, sub = HUB_COMPONENTS[c]
        by_repo.setdefault((repo, rtype, sub), []).extend(patterns)
    for (repo, rtype, sub), patterns in by_repo.items():
        try:   # one short request first: offline machines fail here in `timeout` s, not after retries
            sha = HfApi().repo_info(repo, repo_type=rtype, timeout=timeout).sha
            snapshot_download(repo_id=repo, repo_type=rtype, revision=sha, local_dir=str(dest / sub) if sub else str(dest),
                              allow_patterns=patterns, etag_timeout=timeout)
        except Exception as e:
            raise ConnectionError(f"cannot download {patterns} from the hub {rtype} repository {repo} "
                                  f"(offline or unreachable?): {type(e).__name__}: {e}") from e
    return dest
