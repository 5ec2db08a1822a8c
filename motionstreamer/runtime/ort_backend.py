"""onnxruntime backend for the streaming engine: the same engine and session API, the models run in
ORT sessions of an `export-onnx` folder (motionstreamer/export/onnx_export.py writes it).

CPUExecutionProvider everywhere; CUDAExecutionProvider when `onnxruntime-gpu` is installed (install
either `onnxruntime` or `onnxruntime-gpu`, not both: they ship the same module). The prompt logic,
noise, end-of-action detection and joint recovery are the PyTorch engine's (runtime/engine.py);
only the model calls differ (the Backend protocol, runtime/backend.py). An int8 export
(`export-onnx --quantize int8`) loads the same way: its graphs keep fp32 inputs and outputs, and ORT
runs the quantized MatMuls.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionstreamer import FRAMES_PER_LATENT
from motionstreamer.checkpoints import BundleConfig
from motionstreamer.config import current_keys
from motionstreamer.export.onnx_export import read_manifest
from motionstreamer.models.goal import GOAL_DIM
from motionstreamer.models.sampling import SamplerSettings
from motionstreamer.runtime.backend import MAX_CONDITION_ROWS, cache_rows, check_head, every_slot, goals_by_cache_row
from motionstreamer.runtime.engine import resolve_config
from motionstreamer.runtime.session import StreamingSession


def make_session(path: Path, providers=None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    # A latent runs 3-5 sessions in turn, each with its own thread pool. Spinning workers (ORT's default)
    # keep busy-waiting after their session's call and take the cores from the next session: on 2 cores
    # the embedded student's latent took 12.9 ms with spinning and 4.5 ms without (benchmarks: ort rows).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    avail = ort.get_available_providers()
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OrtBackend:
    def __init__(self, directory: str | Path, capacity: int = 1, providers=None, threads: int | None = None,
                 condition_rows: int = MAX_CONDITION_ROWS, head: str = "teacher"):
        d = Path(directory)
        self.manifest = m = read_manifest(d)
        self.capacity, self.condition_rows, self.head = capacity, condition_rows, head
        self.block_size, self.latent_dim = m["block_size"], m["latent_dim"]
        self.goals = bool(m.get("goal", False))   # the transformer graphs take a "goal" input
        self.device = torch.device("cpu")
        # a student that owns its conditional path has its own transformer graphs
        files = (m.get("student_transformer") if head == "student" else None) or \
            {"prefill": "prefill.onnx", "decode_step": "decode_step.onnx"}
        self.prefill_s = make_session(d / files["prefill"], providers, threads)
        self.decode_s = make_session(d / files["decode_step"], providers, threads)
        self.tae_s = make_session(d / "tae_decode_step.onnx", providers, threads)
        self.heads = {head_key(h): (make_session(d / h["file"], providers, threads), h) for h in m["heads"]}
        shape = (m["n_layer"], condition_rows * capacity, m["n_head"], m["block_size"], m["head_dim"])
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.pos = np.zeros(condition_rows * capacity, np.int64)
        self.tae_states = [np.zeros((capacity, *s), np.float32) for s in m["tae_states"]]

    def reset(self, slot: int) -> None:
        for s in self.tae_states:
            s[slot] = 0

    def _goal_feed(self, goal: torch.Tensor | None, n: int) -> dict:
        """The graphs' "goal" input for n rows (all-zero rows: no goal), or nothing for a model without goals."""
        if not self.goals:
            if goal is not None:
                raise ValueError("this export has no goal input: its model was not trained with goals")
            return {}
        return {"goal": np.zeros((n, GOAL_DIM), np.float32) if goal is None else goal.numpy().astype(np.float32)}

    def prefill(self, text: torch.Tensor, history: torch.Tensor, slot: int,
                goal: torch.Tensor | None = None) -> torch.Tensor:
        n_rows, L = text.shape[0], history.shape[0]
        lat = np.zeros((n_rows, self.block_size - 1, self.latent_dim), np.float32)
        lat[:, :L] = history.numpy()
        cond, k, v = self.prefill_s.run(None, {"text": text.numpy().astype(np.float32), "latents": lat,
                                               "n_latents": np.full(n_rows, L, np.int64),
                                               **self._goal_feed(goal, n_rows)})
        rows = cache_rows([slot], n_rows, self.capacity)
        self.k[:, rows], self.v[:, rows] = k, v
        self.pos[rows] = L + 1
        return torch.from_numpy(cond)

    def decode(self, z: torch.Tensor, slots: list[int], n_rows: int, goal: torch.Tensor | None = None) -> torch.Tensor:
        rows = cache_rows(slots, n_rows, self.capacity)
        # every cache row in order (one stream, or a full server): the graph takes the cache arrays and its
        # outputs become them, without gathering and scattering the rows (the whole cache, each step)
        full = every_slot(slots, self.capacity) and n_rows == self.condition_rows
        k_in, v_in, pos = (self.k, self.v, self.pos) if full else (self.k[:, rows], self.v[:, rows], self.pos[rows])
        if int(pos.max()) >= self.block_size:
            raise ValueError("KV cache full: re-prefill a shorter window")
        goal = None if goal is None else goals_by_cache_row(goal)
        cond, k, v = self.decode_s.run(None, {"latent": np.tile(z.numpy().astype(np.float32), (n_rows, 1)),
                                              "k_cache": k_in, "v_cache": v_in, "pos": pos,
                                              **self._goal_feed(goal, len(rows))})
        if full:
            self.k, self.v = k, v
            self.pos += 1
        else:
            self.k[:, rows], self.v[:, rows] = k, v
            self.pos[rows] += 1
        return torch.from_numpy(cond).view(n_rows, len(slots), -1).transpose(0, 1)

    def _head(self, settings: SamplerSettings):
        check_head(self, settings)
        key = (settings.head, settings.sampler, settings.sampling_steps, settings.skip_terminal_step)
        if key not in self.heads or settings.eta != 0:
            what = "student" if settings.head == "student" else settings.sampler
            raise ValueError(f"no exported head for the {settings.head}, sampler {settings.sampler!r} with "
                             f"{settings.sampling_steps} steps (skip_terminal_step={settings.skip_terminal_step}, "
                             f"eta={settings.eta}); exported: {sorted(self.heads)} (re-export with --variant "
                             f"{what}:{settings.sampling_steps})")
        return self.heads[key]

    def noise_steps(self, settings: SamplerSettings) -> int:
        return self._head(settings)[1]["noise_steps"]

    def sample(self, conditions: torch.Tensor, noise: tuple, settings: SamplerSettings) -> torch.Tensor:
        sess = self._head(settings)[0]
        cond, *rest = conditions.unbind(1)
        # a teacher graph is always guided, so one condition row means cfg_scale 1 there:
        # eps_u + 1 (eps_c - eps_u) = eps_c; a student graph has no uncond/cfg_scale inputs (dropped below)
        uncond = rest[0] if rest else cond
        feeds = {"cond": cond.numpy().astype(np.float32), "uncond": uncond.numpy().astype(np.float32),
                 "x_T": noise[0].numpy().astype(np.float32), "step_noise": noise[1].numpy().astype(np.float32),
                 "cfg_scale": np.array([settings.cfg_scale], np.float32),
                 "temperature": np.array([settings.temperature], np.float32)}
        names = {i.name for i in sess.get_inputs()}   # deterministic DDIM graphs drop unused noise inputs too
        for old, new in LEGACY_HEAD_INPUTS.items():   # an export from before manifest version 3
            if old in names and new in feeds:
                feeds[old] = feeds[new]
        out = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        return torch.from_numpy(out[0])

    def tae_step(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        full = every_slot(slots, self.capacity)   # as in decode: the states are replaced, not scattered
        feeds = {"z": z.numpy().astype(np.float32)}
        for i, s in enumerate(self.tae_states):
            feeds[f"state_{i}"] = s if full else s[slots]
        out = self.tae_s.run(None, feeds)
        if full:
            self.tae_states = list(out[1:])
        else:
            for s, new in zip(self.tae_states, out[1:]):
                s[slots] = new
        return torch.from_numpy(out[0])


# what exports written before the one sampler vocabulary name: manifest head keys (version 1) and the
# head graphs' guidance input (versions 1 and 2); old name -> current name
LEGACY_HEAD_KEYS = {"method": "sampler", "steps": "sampling_steps", "skip_terminal": "skip_terminal_step"}
LEGACY_HEAD_INPUTS = {"cfg": "cfg_scale"}


def head_key(head: dict) -> tuple:
    """(head, sampler, sampling_steps, skip_terminal_step) of a manifest head entry (entries from before
    student heads, and version 1 names, too)."""
    head = current_keys(head, LEGACY_HEAD_KEYS, "manifest.json head")
    return head.get("head", "teacher"), head["sampler"], head["sampling_steps"], head.get("skip_terminal_step", False)


@dataclass
class OrtBundle:
    """What the engine reads from a bundle besides the models: statistics."""
    mean: torch.Tensor
    std: torch.Tensor
    end_latent: torch.Tensor
    config: BundleConfig    # the exported bundle's config (sampler defaults, end threshold)
    frames_per_latent: int = FRAMES_PER_LATENT

    @property
    def text_encoder_name(self) -> str:
        return self.config.text_encoder


def export_bundle_config(directory: str | Path) -> BundleConfig:
    """The config of the bundle an export was made from (its default head, a student's step counts, the
    end threshold), from the export's manifest."""
    manifest = read_manifest(directory)
    return BundleConfig.from_dict({"text_encoder": manifest["text_encoder"], **manifest.get("config", {})})


def load_ort(directory: str | Path, capacity: int = 1, providers=None, threads: int | None = None,
             config=None):
    """(statistics, backend) of an export; config (a GenerationConfig) sizes the KV cache for its
    condition rows (a student: one per stream) and picks its head's graphs, else the teacher's with
    [cond; uncond] rows."""
    bundle_config = export_bundle_config(directory)
    rows, head = MAX_CONDITION_ROWS, "teacher"
    if config is not None:
        settings = resolve_config(config, bundle_config).sampler_settings()
        rows, head = settings.condition_rows, settings.head
    backend = OrtBackend(directory, capacity, providers, threads, condition_rows=rows, head=head)
    m = backend.manifest
    stats = OrtBundle(torch.tensor(m["mean"]), torch.tensor(m["std"]), torch.tensor(m["end_latent"]), bundle_config,
                      int(m["graphs"]["tae_decode_step"]["outputs"]["frames"][1]))
    return stats, backend


def ort_session(directory: str | Path, text_encoder, config=None, seed: int | None = None, providers=None,
                threads: int | None = None):
    """A StreamingSession whose models run in onnxruntime."""

    stats, backend = load_ort(directory, 1, providers, threads, config)
    return StreamingSession(stats, text_encoder, config=config, seed=seed, backend=backend)
