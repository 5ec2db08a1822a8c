"""The model bundle: the project's model directory, used by the runtime, training, export and the
embedded default model.

    config.json        BundleConfig: {"format": "motionstreamer-bundle", "version": 1, "tae": {...},
                       "t2m": {...}, "text_encoder": "minilm", "text_dim": 384, "fps": 30, "description": ...,
                       optional "sampler", "end_threshold", "student_head", "evaluator", "example_prompts",
                       and provenance keys kept as written}
    tae.safetensors    CausalHumanTAE state dict (official key names)
    t2m.safetensors    TextToMotionModel state dict (official key names)
    stats.safetensors  mean (272,), std (272,), end_latent (16,)
    evaluator.safetensors (optional, with "evaluator" in config.json; read by models.evaluator)
    student_head.safetensors (optional, with "student_head" in config.json: a few-step head distilled
                       from t2m's guided head, models/few_step.py; t2m.safetensors keeps the teacher)

Each file is written atomically and config.json last, so a directory with a config.json is complete.
config.json is read once, into a BundleConfig, when the bundle is read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from motionstreamer import FPS
from motionstreamer.checkpoints.state import (
    CheckpointError,
    build_for_weights,
    checked_vector,
    load_checkpoint_file,
    load_state_dict_strict,
    save_safetensors,
)
from motionstreamer.models.few_step import StudentHead, StudentHeadConfig
from motionstreamer.models.sampling import HEADS
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.utils import atomic_path, atomic_write_json

BUNDLE_FORMAT = "motionstreamer-bundle"
BUNDLE_VERSION = 1
STUDENT_FILE = "student_head.safetensors"
KNOWN_TEXT_DIMS = {"minilm": 384, "all-minilm-l6-v2": 384, "sentence-t5-xxl": 768}


@dataclass
class SamplerDefaults:
    """config.json "sampler": the sampler settings a bundle was calibrated for (None: the original's)."""
    skip_terminal_step: bool | None = None   # start one step after the degenerate terminal step (DiffLoss)
    head: str | None = None                  # "teacher" | "student": which head runs when not told

    def __post_init__(self):
        if (self.skip_terminal_step is not None and not isinstance(self.skip_terminal_step, bool)) \
                or self.head not in (None, *HEADS):
            raise ValueError(f"'sampler' must be {{\"skip_terminal_step\": true|false, \"head\": \"teacher\"|"
                             f"\"student\"}}, got {dataclasses.asdict(self)!r}")

    @classmethod
    def from_dict(cls, d) -> "SamplerDefaults":
        if not isinstance(d, dict) or set(d) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"'sampler' must be {{\"skip_terminal_step\": true|false, \"head\": \"teacher\"|"
                             f"\"student\"}}, got {d!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class BundleConfig:
    """A bundle's config.json, typed. tae/t2m are None only for bundle-like objects that carry runtime
    settings alone (read_bundle_config requires them); `extra` keeps every key this version does not
    model (provenance: "source", "end_latent_source", "end_threshold_calibration", ...) as written."""
    tae: TAEConfig | None = None
    t2m: T2MConfig | None = None
    format: str = BUNDLE_FORMAT
    version: int = BUNDLE_VERSION
    text_encoder: str = "minilm"
    text_dim: int | None = None
    fps: int = FPS
    description: str = ""
    sampler: SamplerDefaults = field(default_factory=SamplerDefaults)
    end_threshold: float | None = None        # L2 distance to the end latent that ends an action (None: 0.1)
    student_head: StudentHeadConfig | None = None
    evaluator: dict | None = None             # models.evaluator.EvaluatorConfig fields (TMREvaluator.load reads them)
    example_prompts: list | None = None       # prompts the service offers for this model
    extra: dict = field(default_factory=dict)

    _SECTIONS = {"tae": TAEConfig, "t2m": T2MConfig, "student_head": StudentHeadConfig, "sampler": SamplerDefaults}

    @classmethod
    def from_dict(cls, d: dict) -> "BundleConfig":
        """ValueError naming the key that is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        for name, section in cls._SECTIONS.items():
            if kw.get(name) is not None:
                try:
                    kw[name] = section.from_dict(kw[name])
                except (TypeError, ValueError) as e:
                    if name == "sampler":
                        raise ValueError(f"the model's config.json: {e}") from None
                    raise ValueError(f"bad {name!r} config ({e})") from None
        thr = kw.get("end_threshold")
        if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr)):
            raise ValueError(f"the model's config.json: 'end_threshold' must be a finite number, got {thr!r}")
        if kw.get("evaluator") is not None and not isinstance(kw["evaluator"], dict):
            raise ValueError(f"'evaluator' must be a mapping of EvaluatorConfig fields, got {kw['evaluator']!r}")
        if kw.get("example_prompts") is not None and not isinstance(kw["example_prompts"], list):
            raise ValueError(f"'example_prompts' must be a list of prompts, got {kw['example_prompts']!r}")
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        """The config.json mapping (optional sections only when set)."""
        out = {"format": self.format, "version": self.version, "text_encoder": self.text_encoder, "fps": self.fps,
               "description": self.description, **self.extra}
        for name in ("tae", "t2m", "student_head"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        if self.sampler.to_dict():
            out["sampler"] = self.sampler.to_dict()
        for name in ("text_dim", "end_threshold", "evaluator", "example_prompts"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def bundle_config_of(bundle) -> BundleConfig:
    """The typed config of a loaded bundle, or of a bundle-like object (a test's fake, another engine's
    statistics) whose `config` is a config.json mapping or absent."""
    config = getattr(bundle, "config", None)
    return config if isinstance(config, BundleConfig) else BundleConfig.from_dict(config or {})


@dataclass
class Bundle:
    tae: torch.nn.Module
    t2m: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    end_latent: torch.Tensor
    config: BundleConfig = field(default_factory=BundleConfig)
    path: Path | None = None
    student: torch.nn.Module | None = None   # models.few_step.StudentHead when the bundle carries one

    @property
    def text_encoder_name(self) -> str:
        return self.config.text_encoder

    def check_text_encoder(self, encoder) -> None:
        """Raise CheckpointError unless `encoder.dim` is the text width the t2m model takes."""
        want = self.t2m.config.cond_dim
        if int(encoder.dim) != want:
            raise CheckpointError(f"model bundle {self.path or ''} takes {want}-dim text embeddings (trained with "
                                  f"{self.text_encoder_name!r}) but the text encoder gives {encoder.dim}")

    @property
    def evaluator_path(self) -> Path | None:
        """The bundle folder when it carries an evaluator (load it with models.evaluator)."""
        return self.path if self.path is not None and self.config.evaluator is not None else None


def save_bundle(directory: str | os.PathLike, tae, t2m, mean, std, end_latent, text_encoder: str = "minilm",
                description: str = "", extra_config: dict | None = None, evaluator=None, student=None) -> Path:
    """Write a model bundle (layout in the module docstring); returns its directory. extra_config: further
    config.json keys (checked as BundleConfig reads them, before anything is written).

    Any previous config.json is removed first and the new one written last, so an interrupted save
    never leaves a directory that looks complete."""
    d = Path(directory)
    tc = tae.config
    mean_t, std_t = checked_vector("mean", mean, tc.in_dim), checked_vector("std", std, tc.in_dim)
    end_t = checked_vector("end_latent", end_latent, tc.latent_dim)
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
    config = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "tae": tc.to_dict(), "t2m": t2m.config.to_dict(),
              "text_encoder": text_encoder, "text_dim": t2m.config.cond_dim, "fps": FPS, "description": description}
    if evaluator is not None:   # the layout models.evaluator.TMREvaluator.load reads
        config["evaluator"] = evaluator.config.to_dict()
    if student is not None:
        _check_student(student, t2m.config.head)
        config["student_head"] = student.student_config.to_dict()
    config.update(extra_config or {})
    try:
        BundleConfig.from_dict(config)
    except ValueError as e:
        raise CheckpointError(f"bundle {d}: {e}") from None
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").unlink(missing_ok=True)
    save_safetensors(d / "tae.safetensors", tae.state_dict())
    save_safetensors(d / "t2m.safetensors", t2m.state_dict())
    save_safetensors(d / "stats.safetensors", {"mean": mean_t, "std": std_t, "end_latent": end_t})
    if evaluator is not None:
        export = getattr(evaluator, "export_state_dict", None)
        save_safetensors(d / "evaluator.safetensors", export() if export else evaluator.state_dict())
    if student is not None:
        save_safetensors(d / STUDENT_FILE, student.state_dict())
    else:
        (d / STUDENT_FILE).unlink(missing_ok=True)
    atomic_write_json(d / "config.json", config)   # last: a bundle without config.json is incomplete
    return d


def read_bundle_config(directory: str | os.PathLike) -> BundleConfig:
    """A bundle directory's config.json, checked and typed; CheckpointError naming the file."""
    d = Path(directory)
    cfg_path = d / "config.json"
    if not d.is_dir():
        raise CheckpointError(f"model bundle directory not found: {d}")
    if not cfg_path.is_file():
        raise CheckpointError(f"{d}: not a model bundle (no config.json; an interrupted save leaves none)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    except RecursionError:
        raise CheckpointError(f"{cfg_path}: invalid JSON (nested too deeply)") from None
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{cfg_path}: format is {got!r}, expected {BUNDLE_FORMAT!r}")
    if not isinstance(raw.get("version"), int) or raw["version"] > BUNDLE_VERSION:
        raise CheckpointError(f"{cfg_path}: bundle version {raw.get('version')!r} is not supported "
                              f"(this motionstreamer reads version <= {BUNDLE_VERSION}; upgrade it)")
    for k in ("tae", "t2m"):
        if not isinstance(raw.get(k), dict):
            raise CheckpointError(f"{cfg_path}: missing the {k!r} config")
    try:
        config = BundleConfig.from_dict(raw)
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    if config.text_dim is not None and config.text_dim != config.t2m.cond_dim:
        raise CheckpointError(f"{cfg_path}: text_dim {config.text_dim} != t2m cond_dim {config.t2m.cond_dim}")
    return config


def load_bundle(directory: str | os.PathLike, device="cpu", dtype=torch.float32) -> Bundle:
    """Read a bundle written by save_bundle into eval-mode models on `device` in `dtype` (stats stay fp32)."""
    d = Path(directory)
    config = read_bundle_config(d)
    cfg_path = d / "config.json"
    needed = ["tae.safetensors", "t2m.safetensors", "stats.safetensors"]
    needed += ["evaluator.safetensors"] if config.evaluator is not None else []
    needed += [STUDENT_FILE] if config.student_head is not None else []
    missing = [n for n in needed if not (d / n).is_file()]
    if missing:
        why = {"evaluator.safetensors": " (config.json names an evaluator)",
               STUDENT_FILE: " (config.json names a student head)"}
        raise CheckpointError(f"model bundle {d} is missing {', '.join(missing)}"
                              + "".join(why.get(n, "") for n in missing))
    tae = build_for_weights(CausalHumanTAE, config.tae, d / "tae.safetensors", f"{cfg_path}, 'tae'")
    t2m = build_for_weights(TextToMotionModel, config.t2m, d / "t2m.safetensors", f"{cfg_path}, 't2m'")
    for name, module in (("tae", tae), ("t2m", t2m)):
        f = d / f"{name}.safetensors"
        load_state_dict_strict(module, load_checkpoint_file(f), str(f))
    f = d / "stats.safetensors"
    stats = load_checkpoint_file(f)
    try:
        mean = checked_vector("mean", stats["mean"], tae.config.in_dim)
        std = checked_vector("std", stats["std"], tae.config.in_dim)
        end = checked_vector("end_latent", stats["end_latent"], tae.config.latent_dim)
    except KeyError as e:
        raise CheckpointError(f"{f}: no {e.args[0]!r} tensor (found {sorted(stats)})") from e
    except CheckpointError as e:
        raise CheckpointError(f"{f}: {e}") from e
    if not bool((std > 0).all()):
        raise CheckpointError(f"{f}: std has non-positive entries")
    student = load_student_head(d, config.student_head, t2m) if config.student_head is not None else None
    tae = tae.to(device, dtype).eval()
    t2m = t2m.to(device, dtype).eval()
    if student is not None:
        student = student.to(device, dtype).eval()
    return Bundle(tae, t2m, mean.to(device), std.to(device), end.to(device), config, d, student)


def _check_student(student, head) -> None:
    """A student must have its teacher's architecture (head: the t2m model's DiffusionHeadConfig)."""
    if student.config != head:
        raise CheckpointError(f"the student head's config {student.config.to_dict()} differs from the t2m "
                              f"model's head {head.to_dict()}")


def load_student_head(directory: str | os.PathLike, config: StudentHeadConfig, t2m) -> StudentHead:
    """The few-step student head of a bundle (its config.json "student_head" + student_head.safetensors),
    checked against the t2m model's head config, keys strict."""
    d = Path(directory)
    try:
        student = StudentHead(t2m.config.head, config)
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
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    config = read_bundle_config(src)
    _check_student(student, config.t2m.head)
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != src.resolve():
        (dst / "config.json").unlink(missing_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in ("config.json", STUDENT_FILE):
                with atomic_path(dst / f.name) as tmp:
                    shutil.copyfile(f, tmp)
    save_safetensors(dst / STUDENT_FILE, student.state_dict())
    config = dataclasses.replace(config, student_head=student.student_config,
                                 description=config.description if description is None else description)
    atomic_write_json(dst / "config.json", config.to_dict())
    return dst
