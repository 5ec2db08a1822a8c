"""onnxruntime backend for the streaming engine: the same session API, the models run in ORT.

CPUExecutionProvider everywhere; CUDAExecutionProvider when `onnxruntime-gpu` is installed (install
either `onnxruntime` or `onnxruntime-gpu`, not both: they ship the same module). The prompt logic,
noise, end-of-action detection and joint recovery are the PyTorch engine's (runtime/engine.py);
only the four model calls differ (runtime/backend.py). An int8 export (`export-onnx --quantize int8`)
loads the same way: its graphs keep fp32 inputs and outputs, and ORT runs the quantized MatMuls.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motionstreamer.export.onnx_export import read_manifest


def make_session(path: Path, providers=None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    avail = ort.get_available_providers()
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OrtBackend:
    def __init__(self, directory: str | Path, capacity: int = 1, providers=None, threads: int | None = None):
        d = Path(directory)
        self.manifest = m = read_manifest(d)
        self.capacity = capacity
        self.block_size, self.latent_dim = m["block_size"], m["latent_dim"]
        self.device = torch.device("cpu")
        self.prefill_s = make_session(d / "prefill.onnx", providers, threads)
        self.decode_s = make_session(d / "decode_step.onnx", providers, threads)
        self.tae_s = make_session(d / "tae_decode_step.onnx", providers, threads)
        self.heads = {(h["method"], h["steps"], h.get("skip_terminal", False)): (make_session(d / h["file"], providers, threads), h)
                      for h in m["heads"]}
        shape = (m["n_layer"], 2 * capacity, m["n_head"], m["block_size"], m["head_dim"])
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.pos = np.zeros(2 * capacity, np.int64)
        self.tae_states = [np.zeros((capacity, *s), np.float32) for s in m["tae_states"]]

    def reset(self, slot: int) -> None:
        for s in self.tae_states:
            s[slot] = 0

    def prefill(self, text: torch.Tensor, history: torch.Tensor, slot: int) -> torch.Tensor:
        L = history.shape[0]
        lat = np.zeros((2, self.block_size - 1, self.latent_dim), np.float32)
        lat[:, :L] = history.numpy()
        cond, k, v = self.prefill_s.run(None, {"text": text.numpy().astype(np.float32), "latents": lat,
                                               "n_latents": np.full(2, L, np.int64)})
        rows = [slot, self.capacity + slot]
        self.k[:, rows], self.v[:, rows] = k, v
        self.pos[rows] = L + 1
        return torch.from_numpy(cond)

    def decode(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        rows = list(slots) + [s + self.capacity for s in slots]
        zz = np.concatenate([z.numpy(), z.numpy()]).astype(np.float32)
        if int(self.pos[rows].max()) >= self.block_size:
            raise ValueError("KV cache full: re-prefill a shorter window")
        cond, k, v = self.decode_s.run(None, {"latent": zz, "k_cache": self.k[:, rows], "v_cache": self.v[:, rows],
                                              "pos": self.pos[rows]})
        self.k[:, rows], self.v[:, rows] = k, v
        self.pos[rows] += 1
        return torch.from_numpy(cond)

    def num_sampling_steps(self, steps: int, method: str, skip_terminal: bool) -> int:
        return self._head(steps, method, skip_terminal)[1]["noise_steps"]

    def _head(self, steps, method, skip_terminal):
        key = (method, steps, skip_terminal)
        if key not in self.heads:
            raise ValueError(f"no exported head for sampler {method!r} with {steps} steps (skip_terminal={skip_terminal}); "
                             f"exported: {sorted(self.heads)} (re-export with --head {method}:{steps})")
        return self.heads[key]

    def sample(self, cond, uncond, noise, cfg_scale: float, temperature: float, steps: int, method: str,
               skip_terminal: bool = False):
        sess = self._head(steps, method, skip_terminal)[0]
        if uncond is None:  # guidance off: cfg 1 makes eps_u + 1*(eps_c - eps_u) = eps_c
            uncond, cfg_scale = cond, 1.0
        feeds = {"cond": cond.numpy().astype(np.float32), "uncond": uncond.numpy().astype(np.float32),
                 "x_T": noise[0].numpy().astype(np.float32), "step_noise": noise[1].numpy().astype(np.float32),
                 "cfg": np.array([cfg_scale], np.float32), "temperature": np.array([temperature], np.float32)}
        names = {i.name for i in sess.get_inputs()}   # deterministic DDIM graphs drop the unused noise inputs
        out = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        return torch.from_numpy(out[0])

    def tae_step(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        feeds = {"z": z.numpy().astype(np.float32)}
        for i, s in enumerate(self.tae_states):
            feeds[f"state_{i}"] = s[slots]
        out = self.tae_s.run(None, feeds)
        for s, new in zip(self.tae_states, out[1:]):
            s[slots] = new
        return torch.from_numpy(out[0])


@dataclass
class OrtBundle:
    """What the engine reads from a bundle besides the models: statistics."""
    mean: torch.Tensor
    std: torch.Tensor
    end_latent: torch.Tensor
    text_encoder_name: str
    config: dict            # the exported bundle's config (sampler defaults, end threshold)
    frames_per_latent: int = 4


def load_ort(directory: str | Path, capacity: int = 1, providers=None, threads: int | None = None):
    backend = OrtBackend(directory, capacity, providers, threads)
    m = backend.manifest
    stats = OrtBundle(torch.tensor(m["mean"]), torch.tensor(m["std"]), torch.tensor(m["end_latent"]), m["text_encoder"],
                      m.get("config", {}), int(m["graphs"]["tae_decode_step"]["outputs"]["frames"][1]))
    return stats, backend


def ort_session(directory: str | Path, text_encoder, config=None, seed: int | None = None, providers=None,
                threads: int | None = None):
    """A StreamingSession whose models run in onnxruntime."""
    from motionstreamer.runtime.session import StreamingSession

    stats, backend = load_ort(directory, 1, providers, threads)
    return StreamingSession(stats, text_encoder, config=config, seed=seed, backend=backend)
