"""One training loop for every trainer (TAE, text-to-motion, streaming, evaluator).

A trainer supplies: the model, a `loss_fn(model, batch, step) -> (loss, logs)`, and a
`sample_batch(generator, batch_size) -> batch` that draws its data randomness from the given
torch.Generator (model-side randomness, e.g. diffusion noise, comes from the global torch RNG, seeded
per rank). The loop owns everything else: optimiser and warm-up/cosine or multi-step schedule,
bf16 autocast on GPU, gradient clipping, optional EMA, DDP under torchrun, TensorBoard, a progress
bar, and atomic checkpoints every N steps holding model, optimiser, scheduler, step, EMA, every
rank's RNG states and the config, so `--resume` continues bit for bit where the hardware is
deterministic (tests/test_train_resume.py). config.json (the full run config) sits beside the
checkpoint.

Multi-GPU: plain DDP (`torchrun --nproc_per_node N -m motionstreamer train ...`), not FSDP. The
largest model, the official text-to-motion transformer + diffusion head, has 242M parameters: fp32
weights + grads + AdamW moments are ~3.9 GB, far below one GPU's memory, so sharding would only add
communication. The global batch is split evenly across ranks and DDP averages the gradients
(tests/test_train_ddp.py checks them against one process with the whole batch).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from motionstreamer.checkpoints import load_training_checkpoint
from motionstreamer.config import ConfigDict, current_keys
from motionstreamer.utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    remove_stale_temporaries,
)

CHECKPOINT_NAME = "checkpoint_last.pt"


@dataclass
class TrainConfig(ConfigDict):
    out_dir: str = "runs/exp"
    steps: int = 1000                  # total optimiser steps
    batch_size: int = 32               # GLOBAL batch (split across ranks)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    schedule: str = "cosine"           # "cosine" (linear warm-up then cosine) | "multistep" | "constant"
    warmup_steps: int = 0
    milestones: tuple = ()             # for "multistep"
    gamma: float = 0.05                # for "multistep"
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    save_every: int = 500
    log_every: int = 50
    seed: int = 123
    device: str = "auto"
    bf16: bool = True                  # autocast to bf16 on CUDA (ignored on CPU)
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for f in fields(self):  # type-check; JSON/YAML lists -> tuples, whole floats (1e3) -> ints
            setattr(self, f.name, _coerce(type(self).__name__, f.name, getattr(self, f.name), f.type))
        self.check()

    def check(self) -> None:
        """Value checks (subclasses extend); errors name the field."""
        name = type(self).__name__
        positive = ["steps", "batch_size", "save_every", "log_every"]
        for k in positive:
            if getattr(self, k) < 1:
                raise ValueError(f"{name}.{k} must be >= 1, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ValueError(f"{name}.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not self.gamma > 0:
            raise ValueError(f"{name}.weight_decay must be >= 0 and gamma > 0, got {self.weight_decay}, {self.gamma}")
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise ValueError(f"{name}.schedule must be cosine|multistep|constant, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"{name}.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not all(isinstance(m, int) and not isinstance(m, bool) for m in self.milestones):
            raise ValueError(f"{name}.milestones must be a list of step numbers, got {list(self.milestones)}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"{name}.betas must be two numbers in [0, 1), got {self.betas}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"{name}.ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"{name}.grad_clip must be > 0 or null, got {self.grad_clip}")

    def updated(self, overrides: dict):
        """A copy with `overrides` (what a user gave: a config file, --set, flags; an old key name is
        read with a deprecation note)."""
        d = self.to_dict()
        d.update(current_keys(overrides, self.LEGACY_KEYS, type(self).__name__, note=True))
        return type(self).from_dict(d)


_TYPES = {"int": (int, float), "float": (int, float), "bool": (bool,), "str": (str,), "tuple": (tuple, list)}


def _coerce(cls_name: str, key: str, value, annotation):
    """Check a field value against its (string) annotation, e.g. 'int', 'float | None', 'tuple', and
    return it in the field's type."""
    ann = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    allowed = [a.strip() for a in ann.split("|")]
    if value is None:
        if "None" in allowed:
            return None
        raise ValueError(f"{cls_name}.{key} must be {ann}, got null")
    if isinstance(value, float) and not math.isfinite(value):   # JSON/YAML NaN, Infinity, 1e999
        raise ValueError(f"{cls_name}.{key} must be a finite number, got {value}")
    for a in allowed:
        if a == "None":
            continue
        types = _TYPES.get(a)
        if types is None:
            return value  # an annotation this check does not know: accept
        if isinstance(value, bool) and a != "bool":
            continue  # True is an int in Python, never a step count or a rate
        if a == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, types) and not (a == "int" and isinstance(value, float)):
            return tuple(value) if a == "tuple" else value
    raise ValueError(f"{cls_name}.{key} must be {ann}, got {value!r} ({type(value).__name__})")


def load_config_file(path: str | os.PathLike) -> dict:
    """A YAML (.yaml/.yml) or JSON file holding a mapping of config field -> value."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of field -> value")
    if "train" in data and isinstance(data["train"], dict) and "trainer" in data:
        data = data["train"]  # a run's config.json: reuse its training fields
    return data


def parse_overrides(items: list[str], config_cls) -> dict:
    """`key=value` pairs from the CLI, values parsed as JSON where possible (numbers, lists, null)."""
    out = {}
    known = {f.name for f in fields(config_cls)} | set(config_cls.LEGACY_KEYS)
    for item in items:
        if "=" not in item:
            raise ValueError(f"bad override {item!r}: use key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in known:
            raise ValueError(f"unknown config field {k!r} for {config_cls.__name__}; known: {', '.join(sorted(known))}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    """torch.save, atomically (a crash leaves the old file or none)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: use gloo on CPU, nccl on CUDA. Plain runs: 1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)


def cleanup_distributed(barrier: bool = True) -> None:
    """End the process group a torchrun training opened (call once the run is over). barrier=False
    after an error: the other ranks may be inside a collective that will never complete."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- schedules / EMA
def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "cosine":
            span = max(1, config.steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
        if config.schedule == "multistep":
            return config.gamma ** sum(step >= m for m in config.milestones)
        if config.schedule == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {config.schedule!r}")
    return f


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                shadow = self.shadow[k]
                if shadow.device != v.device:   # made or resumed before the model moved to its device
                    shadow = self.shadow[k] = shadow.to(v.device)
                shadow.mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}


# ----------------------------------------------------------------------------- RNG state
def rng_state(data_gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state(),
             "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    step: int
    losses: list                 # (step, loss) at every step of this run
    samples_per_s: float
    checkpoint: Path | None
    step_times: list = field(default_factory=list)   # wall seconds of each step (steady state: one full step)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# What a training run leaves in its folder (train-evaluator also writes evaluator/): a folder holding
# any of them is a run, continued with --resume or replaced with --overwrite, never silently mixed.
RUN_FILES = (CHECKPOINT_NAME, "config.json", "log.jsonl", "tb", "evaluator")


def check_run_dir(out_dir: str | os.PathLike, resume: str | os.PathLike | None = None,
                  overwrite: bool = False) -> bool:
    """Whether a training may write into out_dir; ValueError naming the folder otherwise. A folder
    holding a run (RUN_FILES) is refused unless the run is continued (`resume` is its own
    checkpoint_last.pt) or overwrite=True. Returns True when out_dir holds a run that the training
    will replace (overwrite, and not continuing it)."""

    out_dir = Path(out_dir)
    check_writable(out_dir, "folder")
    found = [n for n in RUN_FILES if (out_dir / n).exists()]
    if not found:
        return False
    continuing = resume is not None and Path(resume).resolve() == (out_dir / CHECKPOINT_NAME).resolve()
    if continuing:
        return False
    if overwrite:
        return True
    how = f"continue it with --resume {out_dir / CHECKPOINT_NAME}, " if (out_dir / CHECKPOINT_NAME).exists() else ""
    raise ValueError(f"{out_dir} already holds a training run ({', '.join(found)}); {how}replace it with "
                     f"--overwrite, or choose another --out")


def clear_run_dir(out_dir: str | os.PathLike) -> None:
    """Remove a previous run's files (RUN_FILES) and checkpoint temporaries from out_dir."""

    out_dir = Path(out_dir)
    for n in RUN_FILES:
        p = out_dir / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        remove_stale_temporaries(p)


def truncate_log(log_file: Path, step: int) -> int:
    """Drop the records after `step` from a log.jsonl (steps logged by a run that was stopped before its
    next checkpoint, which a resumed run logs again; a line cut short by a kill too). Returns how
    many were dropped."""
    if not log_file.exists():
        return 0
    kept, dropped = [], 0
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ok = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(log_file, "".join(k + "\n" for k in kept))
    return dropped


class _RunLog:
    """What the main rank shows and keeps while training: the progress bar, log.jsonl every log_every
    steps, TensorBoard scalars."""

    def __init__(self, config: TrainConfig, name: str, out_dir: Path, step: int, is_main: bool, resumed: bool = False):
        self.config, self.name, self.file, self.on = config, name, out_dir / "log.jsonl", is_main
        self.writer = self.bar = None
        if is_main and resumed:
            truncate_log(self.file, step)      # the steps after the checkpoint are made (and logged) again
        if is_main and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # purge_step: a resumed run's events replace those logged after its checkpoint
                self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=step if resumed else None)
            except Exception:  # tensorboard missing: logs still go to the progress bar and log.jsonl
                self.writer = None
        if is_main and config.progress:
            self.bar = tqdm(total=config.steps, initial=step, desc=f"train {name}", dynamic_ncols=True)

    def step(self, step: int, loss: float, lr: float, rate: float, logs: dict) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
        if step % self.config.log_every == 0 or step == self.config.steps:
            rec = {"step": step, "loss": loss, "lr": lr, "samples_per_s": rate,
                   **{k: float(v) for k, v in logs.items()}}
            with open(self.file, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.writer is not None:
                for k, v in rec.items():
                    if k != "step":
                        self.writer.add_scalar(f"{self.name}/{k}", v, step)

    def close(self) -> None:
        for thing in (self.bar, self.writer):
            if thing is not None:
                thing.close()


def _restore(resume, name: str, model, opt, sched, ema, rank: int, data_gen: torch.Generator) -> int:
    """Load a checkpoint_last.pt into the run; returns its step."""
    ck = load_training_checkpoint(resume)
    if ck.get("trainer") != name:
        raise ValueError(f"{resume} is a {ck.get('trainer')!r} checkpoint, not {name!r}")
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ValueError(f"{resume}: its weights do not fit this model (different config?): {e}") from None
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if ema is not None and "ema" in ck:
        ema.load_state_dict(ck["ema"])
    set_rng_state(ck["rng"][min(rank, len(ck["rng"]) - 1)], data_gen)
    return int(ck["step"])


def _save(out_dir: Path, env: Dist, data_gen: torch.Generator, checkpoint: dict) -> Path:
    """checkpoint_last.pt (with every rank's RNG state, gathered so a resumed multi-process run
    continues each rank's stream) and config.json, atomically, from the main rank."""
    states = [rng_state(data_gen)]
    if env.world_size > 1:
        gathered = [None] * env.world_size
        dist.all_gather_object(gathered, states[0])
        states = gathered
    path = out_dir / CHECKPOINT_NAME
    if env.is_main:
        atomic_torch_save(path, {**checkpoint, "rng": states})
        atomic_write_json(out_dir / "config.json", checkpoint["config"])
    return path


def train_loop(model: torch.nn.Module, config: TrainConfig, sample_batch: Callable[[torch.Generator, int], Any],
               loss_fn: Callable[[torch.nn.Module, Any, int], tuple], *, name: str,
               extra_config: dict | None = None, resume: str | os.PathLike | None = None,
               trainable: list | None = None, dist_env: Dist | None = None,
               stop_after: int | None = None, checkpoints: bool = True, overwrite: bool = False) -> TrainResult:
    """Run `config.steps` optimiser steps (or until `stop_after` steps in this call, for tests).
    checkpoints=False writes no checkpoint (benchmarks). A config.out_dir that holds another run is
    refused unless overwrite=True, which replaces it (check_run_dir); resuming drops the log records
    of the steps after the checkpoint, which this run makes again.

    The global batch is split across ranks: each rank draws batch_size // world_size samples from its
    own data generator (seeded seed + 1000 * rank), and DDP averages the gradients.
    """
    replace = check_run_dir(config.out_dir, resume, overwrite)
    env = dist_env or setup_distributed(config.device)
    device = env.device
    # model-side randomness (diffusion t/noise, TAE reparameterisation) differs per rank, as the data does
    torch.manual_seed(config.seed + env.rank)
    random.seed(config.seed + env.rank)
    np.random.seed(config.seed + env.rank)
    data_gen = torch.Generator().manual_seed(config.seed + 1000 * env.rank)
    if config.batch_size % env.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {env.world_size} processes")
    local_batch = config.batch_size // env.world_size

    model.to(device)
    params = trainable if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    step = _restore(resume, name, model, opt, sched, ema, env.rank, data_gen) if resume else 0
    out_dir = Path(config.out_dir)
    full_config = {"trainer": name, "train": config.to_dict(), "world_size": env.world_size, **(extra_config or {})}

    def save() -> Path:
        ck = {"trainer": name, "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "step": step, "config": full_config}
        if ema is not None:
            ck["ema"] = ema.state_dict()
        return _save(out_dir, env, data_gen, ck)

    ddp_model = model
    if env.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = config.bf16 and device.type == "cuda"

    if env.is_main:
        if replace:
            clear_run_dir(out_dir)
        # temporaries of checkpoints whose writer was killed (gigabytes at the official size)
        remove_stale_temporaries(out_dir / CHECKPOINT_NAME)
    log = _RunLog(config, name, out_dir, step, env.is_main, resumed=bool(resume))
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", full_config)
    losses, step_times = [], []
    t_start = t_last = time.perf_counter()
    n_samples, done_here, ckpt, saved_at = 0, 0, None, step
    while step < config.steps and (stop_after is None or done_here < stop_after):
        ddp_model.train()
        batch = sample_batch(data_gen, local_batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss, logs = loss_fn(ddp_model, batch, step)
        if not torch.isfinite(loss):
            kept = (f"{out_dir / CHECKPOINT_NAME} holds step {saved_at}" if checkpoints and saved_at
                    else "no checkpoint was saved")
            raise FloatingPointError(
                f"{name}: training diverged, the loss became {loss.item()} at step {step + 1} ({kept}). Lower "
                f"the learning rate (--set lr=...) or clip gradients (--set grad_clip=1.0), then --resume or "
                f"--overwrite")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(_unwrap(model))
        step += 1
        done_here += 1
        n_samples += config.batch_size
        losses.append((step, float(loss.detach())))
        t_now = time.perf_counter()
        step_times.append(t_now - t_last)
        t_last = t_now
        log.step(step, losses[-1][1], sched.get_last_lr()[0], n_samples / max(t_now - t_start, 1e-9), logs)
        if checkpoints and (step % config.save_every == 0 or step == config.steps):
            ckpt, saved_at = save(), step
    if checkpoints and step != saved_at:  # stopped early (stop_after): leave a checkpoint to resume from
        ckpt = save()
    log.close()
    rate = n_samples / max(time.perf_counter() - t_start, 1e-9)
    return TrainResult(step, losses, rate, ckpt, step_times)


