"""Resolve which model a command runs: an explicit bundle directory, or the embedded default."""
from __future__ import annotations

from pathlib import Path

import torch

from motionstreamer.checkpoints import load_bundle
from motionstreamer.models.text import TextEncoder
from motionstreamer.runtime.ort_backend import load_ort

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of fp32, bf16, fp16")
    return table[dtype]


def load_models(checkpoint: str | Path | None = None, device: str | None = None, dtype: str | None = None):
    """Return (bundle, text_encoder, description). checkpoint=None uses the embedded default model."""

    path = Path(checkpoint) if checkpoint is not None else default_model_dir()
    if not path.exists():
        if checkpoint is None:
            raise FileNotFoundError(f"the embedded default model is missing from the install ({path})")
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a motionstreamer model directory (no config.json); convert official "
            f"checkpoints with `motionstreamer convert-checkpoint`")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    bundle = load_bundle(path, device=dev, dtype=dt)
    text_encoder = TextEncoder.load(bundle.text_encoder_name, device=str(dev))
    desc = bundle.config.description or path.name
    label = "embedded default model" if checkpoint is None else "checkpoint"
    return bundle, text_encoder, (f"{label} {path} ({desc}; text encoder {bundle.text_encoder_name}; "
                                  f"{dev}, {str(dt).replace('torch.', '')})")


def load_onnx_models(directory: str | Path, config=None, capacity: int = 1, threads: int | None = None):
    """(statistics, text encoder, description, backend) of an `export-onnx` folder: what a verb's `--onnx DIR`
    runs (the engine with its model calls in onnxruntime, runtime/ort_backend.py). config (a GenerationConfig)
    picks the head's graphs and sizes the KV cache. Every failure (onnxruntime missing, not an export, a head
    the export lacks) is a ValueError naming the folder."""
    try:
        stats, backend = load_ort(directory, capacity, threads=threads, config=config)
    except ImportError as e:
        raise ValueError(f"--onnx needs onnxruntime (pip install onnxruntime): {e}") from None
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise ValueError(f"--onnx {directory}: {e}") from None
    text_encoder = TextEncoder.load(stats.text_encoder_name, device="cpu")
    q = backend.manifest.get("quantization")
    desc = f"onnx export {directory} (onnxruntime, {q['weights'] + ' weights' if q else 'fp32'})"
    return stats, text_encoder, desc, backend
