"""What the streaming engine needs from the models, behind one small interface.

The engine (runtime/engine.py) owns prompts, queues, end-of-action logic, window slides
(runtime/policy.py), noise and joint recovery; a backend owns the model calls on its slot-indexed
state. How a latent is sampled is one frozen SamplerSettings (models/diffusion.py); how many
condition rows a stream uses ([prompt; empty prompt] under guidance, else [prompt]) is its
`condition_rows`, decided there and nowhere else.

KV-cache layout: condition row r of stream slot i lives in cache row i + r * capacity, so the rows
of all streams for one condition are contiguous (a full batch decodes without a gather).

A backend runs one head's model: the teacher (the bundle's t2m, guided head) or a distilled student,
whose conditional path may be its own (models/few_step.py: StudentHead.model), so its cache rows hold
what the student's blocks computed and cannot be sampled by the teacher (nor the other way round).

Backends: TorchBackend (below: the PyTorch modules with a static KV cache, the fast head and the
streaming TAE), GraphedBackend (runtime/cuda_graph.py: the same replayed as CUDA graphs) and
OrtBackend (runtime/ort_backend.py: onnxruntime sessions of an exported model).
"""
from __future__ import annotations

from typing import Protocol

import torch

from motionstreamer.models.sampling import SamplerSettings

MAX_CONDITION_ROWS = 2   # [cond; uncond]: what a backend's cache holds per stream unless told otherwise


class Backend(Protocol):
    head: str                       # which model fills the cache and samples: "teacher" or "student"
    capacity: int                   # stream slots
    condition_rows: int             # KV-cache rows held per slot (>= the settings' condition_rows)
    block_size: int                 # tokens in the context window (text token + latents)
    latent_dim: int
    device: torch.device
    goals: bool                     # the model takes goals (models/goal.py): prefill and decode accept `goal`

    def reset(self, slot: int) -> None:
        """A new stream starts in `slot` (its TAE decoder state goes back to zeros)."""

    def prefill(self, text: torch.Tensor, history: torch.Tensor, slot: int,
                goal: torch.Tensor | None = None) -> torch.Tensor:
        """text (rows, text_dim): `[prompt; empty prompt][:rows]`; history (L, latent) -> the conditions
        for the next latent (rows, n_embd); the slot's cache rows then hold [text, history]. goal
        (rows, GOAL_DIM), optional: each condition row's raw goal, added to its newest token (an all-zero
        row: no goal; the engine decides which rows carry it)."""

    def decode(self, z: torch.Tensor, slots: list[int], rows: int, goal: torch.Tensor | None = None) -> torch.Tensor:
        """New latents z (n, latent) appended to the first `rows` condition rows of `slots` -> the next
        conditions (n, rows, n_embd). goal (n, rows, GOAL_DIM), optional: each condition row's raw goal,
        added to its new token."""

    def noise_steps(self, settings: SamplerSettings) -> int:
        """How many step-noise draws one sample takes under these settings."""

    def sample(self, conditions: torch.Tensor, noise: tuple, settings: SamplerSettings) -> torch.Tensor:
        """conditions (n, rows, n_embd), noise (x_T (n, latent), step_noise (S, n, latent)) -> latents (n, latent)."""

    def tae_step(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """New latents (n, latent) of `slots` -> their normalised frames (n, frames_per_latent, 272)."""


def check_head(backend, settings: SamplerSettings) -> None:
    """ValueError unless the backend runs the head the settings sample with."""
    if settings.head != backend.head:
        raise ValueError(f"this backend runs the {backend.head}'s model; settings for the {settings.head} need a "
                         f"backend made for it")


def every_slot(slots, capacity: int) -> bool:
    """Whether a step covers every slot in order (one stream, or a full server): then per-slot state (KV
    cache, TAE states, roots) is stepped whole, without gathering and scattering its rows."""
    return list(slots) == list(range(capacity))


def cache_rows(slots: list[int], rows: int, capacity: int) -> list[int]:
    """The KV-cache rows of `slots`, condition row by condition row: [row 0 of each slot, row 1 ...]."""
    return [slot + r * capacity for r in range(rows) for slot in slots]


def head_model(bundle, head: str):
    """The text-to-motion model that runs `head`: the bundle's t2m (the teacher), or the student's
    (StudentHead.model: its own conditional path and head over the teacher's shared modules)."""
    if head == "teacher":
        return bundle.t2m
    student = getattr(bundle, "student", None)
    if head != "student" or student is None:
        raise ValueError("this bundle has no few-step student head" if head == "student" else
                         f"head must be 'teacher' or 'student', got {head!r}")
    return student.model(bundle.t2m)


def goals_by_cache_row(goal: torch.Tensor) -> torch.Tensor:
    """Goals (n, rows, GOAL_DIM) of n streams in the order of their cache rows (cache_rows): (rows * n, GOAL_DIM)."""
    return goal.transpose(0, 1).reshape(-1, goal.shape[-1])


class TorchBackend:
    def __init__(self, bundle, capacity: int, device: torch.device, dtype: torch.dtype,
                 condition_rows: int = MAX_CONDITION_ROWS, head: str = "teacher"):
        self.tae, self.t2m, self.head_name = bundle.tae, head_model(bundle, head), head
        self.capacity, self.condition_rows, self.device, self.dtype = capacity, condition_rows, device, dtype
        self.block_size = self.t2m.config.block_size
        self.latent_dim = self.t2m.config.latent_dim
        self.goals = self.t2m.goal_embed is not None
        self.cache = self.t2m.new_kv_cache(condition_rows * capacity, self.block_size, device=device, dtype=dtype)
        self.tae_state = self.tae.init_decode_state(capacity, device=device, dtype=dtype)
        self._row_index = {}

    def _rows(self, slots: list[int], rows: int) -> torch.Tensor | None:
        """The cache rows of `slots` as an index tensor (made once per slot set), or None when they are
        every row of the cache in order (the decode step then needs no gather)."""
        key = (tuple(slots), rows)
        if key not in self._row_index:
            if len(self._row_index) >= 256:   # a server steps changing subsets of its streams: bounded
                self._row_index.clear()
            r = cache_rows(slots, rows, self.capacity)
            self._row_index[key] = None if r == list(range(self.cache.batch)) else torch.tensor(r, device=self.device)
        return self._row_index[key]

    def reset(self, slot: int) -> None:
        self.tae.reset_decode_state(self.tae_state, torch.tensor([slot], device=self.device))

    def prefill(self, text: torch.Tensor, history: torch.Tensor, slot: int,
                goal: torch.Tensor | None = None) -> torch.Tensor:
        rows = text.shape[0]
        lat = history.to(self.device, self.dtype).unsqueeze(0).expand(rows, -1, -1)
        index = self._rows([slot], rows)
        index = torch.arange(rows, device=self.device) if index is None else index
        if goal is not None:
            goal = goal.to(self.device, torch.float32)
        return self.t2m.prefill(text.to(self.device, self.dtype), lat, self.cache, rows=index, goal=goal)

    def decode(self, z: torch.Tensor, slots: list[int], rows: int, goal: torch.Tensor | None = None) -> torch.Tensor:
        z = z.to(self.device, self.dtype)
        if goal is not None:
            goal = goals_by_cache_row(goal.to(self.device, torch.float32))
        out = self.t2m.decode_step(z.repeat(rows, 1), self.cache, rows=self._rows(slots, rows), goal=goal)
        return out.view(rows, len(slots), -1).transpose(0, 1)

    @property
    def head(self) -> str:
        return self.head_name

    def head_module(self, settings: SamplerSettings):
        """The module that samples under `settings`: this backend's model's head (the guided teacher's or
        the student's); settings for the other head are an error."""
        check_head(self, settings)
        return self.t2m.diff_loss

    def noise_steps(self, settings: SamplerSettings) -> int:
        proc = self.head_module(settings).sampling_process(settings.sampling_steps, settings.skip_terminal_step)
        return proc.num_timesteps

    def sample(self, conditions: torch.Tensor, noise: tuple, settings: SamplerSettings) -> torch.Tensor:
        noise = (noise[0].to(self.device, self.dtype), noise[1].to(self.device, self.dtype))
        return self.head_module(settings).sample(*conditions.unbind(1), settings=settings, noise=noise)

    def tae_step(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        # every slot in order (one stream at batch 1, a full server): the state is stepped in place,
        # without gathering and scattering its 17 buffers
        rows = None if every_slot(slots, self.capacity) else torch.tensor(slots, device=self.device)
        return self.tae.decode_step(z.to(self.device, self.dtype)[:, None, :], self.tae_state, rows=rows)
