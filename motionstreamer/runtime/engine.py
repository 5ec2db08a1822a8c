"""The streaming engine: many independent text-to-motion streams stepped together, one latent each.

Hot path of one step (the picture: docs/design.md):
  pending conditions (from the last prefill or decode step) for each stream's condition rows
  -> diffusion head with classifier-free guidance (AdaLN modulations for all steps precomputed)
  -> new latent -> end-of-action check
  -> (a) one batched transformer decode step appends it to the KV cache and yields the next conditions
  -> (b) the causal TAE decoder turns it into 4 frames from its per-layer state
  -> de-normalise -> incremental joint recovery -> FrameChunk per stream.

A stream has SamplerSettings.condition_rows condition rows: its prompt and, under guidance, the
empty prompt, sharing one motion history (KV layout: runtime/backend.py). A new prompt, or a full
context window, re-prefills them with [text token, kept history] (runtime/policy.py); everything
else is a single decode step per latent.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import torch

from motionstreamer import FRAMES_PER_LATENT
from motionstreamer.checkpoints import BundleConfig, bundle_config_of
from motionstreamer.models.few_step import StudentHeadConfig
from motionstreamer.models.goal import no_goal, yaw_of_heading
from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise
from motionstreamer.runtime import policy
from motionstreamer.runtime.backend import TorchBackend, check_head, every_slot
from motionstreamer.runtime.cuda_graph import GraphedBackend
from motionstreamer.runtime.kinematics import RootState, recover_joints_step
from motionstreamer.runtime.steering import SteeringLimits, steer_latent

ON_ACTION_END = ("stop", "continue")


@dataclass
class GenerationConfig:
    cfg_scale: float = SamplerSettings.cfg_scale   # the original's (its demo's) value
    temperature: float = SamplerSettings.temperature
    sampling_steps: int | None = None  # None: 50 (the original) for the teacher, the student's default count
    # "teacher" (the guided head, the original algorithm) or "student" (the bundle's few-step head, one
    # condition row per stream); None = the bundle's default (its config.json "sampler": {"head": ...})
    head: str | None = None
    sampler: str = SamplerSettings.sampler   # "ddpm" (ancestral, as the original) or "ddim"
    # None = the bundle's calibrated value (config.json), else the original's (False / 0.1)
    skip_terminal_step: bool | None = None  # start one step after the degenerate terminal step (DiffLoss)
    end_threshold: float | None = None      # L2 distance to the reference end latent that ends an action
    min_action_latents: int = 2       # an action cannot end before this many latents
    on_action_end: str = "stop"       # "stop": the stream ends (not while a goal is unreached); "continue":
                                      # the last prompt restarts from the current pose
    max_latents: int = 1500           # hard cap per stream (1500 latents = 200 s at 30 fps)
    history_keep: int | None = None   # latents kept when the window slides (default: block_size // 2)
    # goals (set_goal; a model trained with goals): reached within goal_tolerance metres (<= 0: never, the
    # goal stays until cleared) and, when the goal gives a facing, goal_heading_tolerance radians
    goal_tolerance: float = 0.3
    goal_heading_tolerance: float = math.pi / 6
    on_goal_reached: str = "stop"     # "stop": the action ends there (a queued prompt starts, else the stream
                                      # stops); "continue": the goal is dropped and the prompt goes on
    # classifier-free guidance on the goal too: the unconditional row has neither the prompt nor the goal
    # (False: both rows carry the goal, guidance amplifies the prompt alone)
    guide_goal: bool = True
    # goal steering (runtime/steering.py): the root motion the model proposes is warped toward the goal
    # within steering_limits (extra turn rate, speed scale); False: the model's own motion, unwarped
    goal_steering: bool = True
    steering_limits: SteeringLimits = SteeringLimits()

    def validate(self) -> None:
        """ValueError naming the first field out of range (the sampler's numbers: SamplerSettings)."""
        self.sampler_settings()
        for name in ("on_action_end", "on_goal_reached"):
            if getattr(self, name) not in ON_ACTION_END:
                raise ValueError(f"{name} must be 'stop' or 'continue', got {getattr(self, name)!r}")
        for name in ("goal_tolerance", "goal_heading_tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        for name in (("max_latents", "min_action_latents")
                     + (("history_keep",) if self.history_keep is not None else ())):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        thr = self.end_threshold      # <= 0: actions never end by themselves (only by their budget)
        if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr)):
            raise ValueError(f"end_threshold must be a finite number, got {thr!r}")
        if not isinstance(self.guide_goal, bool):
            raise ValueError(f"guide_goal must be true or false, got {self.guide_goal!r}")
        if not isinstance(self.goal_steering, bool):
            raise ValueError(f"goal_steering must be true or false, got {self.goal_steering!r}")
        if not isinstance(self.steering_limits, SteeringLimits):
            raise ValueError(f"steering_limits must be a SteeringLimits, got {self.steering_limits!r}")
        self.steering_limits.validate()
        if self.skip_terminal_step is not None and not isinstance(self.skip_terminal_step, bool):
            raise ValueError(f"skip_terminal_step must be true, false or None, got {self.skip_terminal_step!r}")

    def sampler_settings(self) -> SamplerSettings:
        """How the head samples each latent (checked there); skip_terminal_step None counts as False:
        resolve_config fills it from the bundle first."""
        return SamplerSettings(sampling_steps=50 if self.sampling_steps is None else self.sampling_steps,
                               sampler=self.sampler, cfg_scale=self.cfg_scale, temperature=self.temperature,
                               skip_terminal_step=bool(self.skip_terminal_step), head=self.head or "teacher")


ORIGINAL_END_THRESHOLD = 0.1   # the original t2m demo's distance to the end latent that ends an action


def resolve_config(config: GenerationConfig, bundle_config: BundleConfig | None = None) -> GenerationConfig:
    """Fill the fields left as None from the bundle's calibrated defaults (its config.json, typed),
    else the original's."""
    b = bundle_config or BundleConfig()
    skip = config.skip_terminal_step
    if skip is None:
        skip = bool(b.sampler.skip_terminal_step)
    thr = config.end_threshold
    if thr is None:
        thr = ORIGINAL_END_THRESHOLD if b.end_threshold is None else b.end_threshold
    head = config.head or b.sampler.head or "teacher"
    if (config.head is None and head == "student" and config.sampling_steps is not None and b.student_head is not None
            and config.sampling_steps not in b.student_head.steps):
        head = "teacher"   # a step count only the teacher samples in (e.g. the original 50) asks for the teacher
    head, steps = student_choice(head, config.sampling_steps, b.student_head)
    # a student samples with the guidance scale it was distilled for (1: its one row carries guidance)
    cfg_scale = b.student_head.cfg_scale if head == "student" else config.cfg_scale
    return dataclasses.replace(config, skip_terminal_step=skip, end_threshold=float(thr), head=head,
                               sampling_steps=steps, cfg_scale=cfg_scale)


def student_choice(head: str, steps: int | None, student: StudentHeadConfig | None) -> tuple[str, int]:
    """(head, sampling steps): steps None = 50 for the teacher, the student's default count; a student's
    steps must be among the counts it supports (ValueError naming them). student: the bundle's
    config.json "student_head", None when it has none."""
    if head != "student":
        return head, 50 if steps is None else steps
    if student is None:
        raise ValueError("this bundle has no few-step student head (make one with `motionstreamer distill-head`)")
    return head, student.default_steps if steps is None else student.check_steps(steps)


@dataclass
class FrameChunk:
    """Frames produced by one latent of one stream."""
    stream_id: int
    latent_index: int            # index of this latent in the stream (0-based)
    start_frame: int             # index of the first frame of this chunk in the stream
    features: torch.Tensor       # (4, 272) de-normalised
    joints: torch.Tensor         # (4, 22, 3) global joint positions (Y up, metres)
    latent: torch.Tensor         # (16,)
    prompt: str

    @property
    def frame_indices(self) -> range:
        return range(self.start_frame, self.start_frame + self.features.shape[0])


@dataclass
class StreamEvent:
    stream_id: int
    kind: str                    # "action_end" | "prompt_change" | "goal_reached" | "finished"
    latent_index: int
    prompt: str


@dataclass
class _Stream:
    stream_id: int
    slot: int
    generator: torch.Generator
    prompt: str | None = None
    text_emb: torch.Tensor | None = None
    queue: deque = field(default_factory=deque)        # (prompt, embedding, max_latents, after_current)
    history: list = field(default_factory=list)        # latents (16,) of the current window
    needs_prefill: bool = True
    condition: torch.Tensor | None = None              # (rows, n_embd) pending [cond; uncond][:rows]
    latents_emitted: int = 0
    action_latents: int = 0
    action_budget: int | None = None                   # latents allowed for the current prompt
    finished: bool = False
    goal: policy.Goal | None = None                    # world coordinates; re-expressed every latent
    travel: tuple | None = None                        # recent floor step per frame while steered (runtime/steering.py)


class StreamingEngine:
    """Steps up to `capacity` streams together. Thread-unsafe; one engine per device.

    bundle: a loaded model bundle (motionstreamer.checkpoints.Bundle) with .tae, .t2m, .mean, .std,
    .end_latent; text_encoder: anything with encode(list[str]) -> (N, text_dim) (cached).
    """

    def __init__(self, bundle, text_encoder, capacity: int = 1, config: GenerationConfig | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None, backend=None,
                 cuda_graphs: bool = True):
        self.config = resolve_config(config or GenerationConfig(), bundle_config_of(bundle))
        self.config.validate()
        self.settings = self.config.sampler_settings()
        self.rows = self.settings.condition_rows
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if backend is None:
            p = next(bundle.t2m.parameters())
            device = torch.device(device) if device is not None else p.device
            cls = GraphedBackend if (cuda_graphs and device.type == "cuda") else TorchBackend
            # a one-row student needs no unconditional rows: its cache holds one row per stream
            rows = {"condition_rows": self.rows} if self.settings.head == "student" else {}
            backend = cls(bundle, capacity, device, dtype or p.dtype, head=self.settings.head, **rows)
        check_head(backend, self.settings)
        if backend.condition_rows < self.rows:
            raise ValueError(f"the backend holds {backend.condition_rows} condition row(s) per stream, these sampler "
                             f"settings need {self.rows}")
        self.backend = backend
        self.noise_steps = backend.noise_steps(self.settings)
        self.device = torch.device(device) if device is not None else getattr(backend, "device", torch.device("cpu"))
        self.mean = bundle.mean.to(self.device, torch.float32)
        self.std = bundle.std.to(self.device, torch.float32)
        # sampled latents come back to the CPU once per step (the per-stream control runs there)
        self.end_latent = bundle.end_latent.reshape(-1).to("cpu", torch.float32)
        self.text_encoder = text_encoder
        self.capacity = capacity
        self.block_size = backend.block_size
        self.history_keep = self.config.history_keep or self.block_size // 2
        if not 0 < self.history_keep < self.block_size - 1:
            raise ValueError(f"history_keep must be in [1, {self.block_size - 2}], got {self.history_keep}")
        self.latent_dim = backend.latent_dim
        self.root = RootState.initial(capacity, device=self.device)
        self.streams: dict[int, _Stream] = {}
        self._free_slots = list(range(capacity))
        self._ids = itertools.count()
        self._uncond = None
        self.events: list[StreamEvent] = []

    # ---------------------------------------------------------------- stream management
    def add_stream(self, prompt: str | None = None, seed: int | None = None,
                   max_latents: int | None = None) -> int:
        if not self._free_slots:
            raise RuntimeError(f"engine is full ({self.capacity} streams); close one or raise capacity")
        gen = torch.Generator(device="cpu")
        if seed is None:
            gen.seed()      # a fresh seed from the OS; the caller's global torch RNG is left alone
        else:
            gen.manual_seed(policy.check_seed(seed))
        slot = self._free_slots.pop(0)
        sid = next(self._ids)
        self.streams[sid] = _Stream(sid, slot, gen)
        self.backend.reset(slot)
        self.root.reset_rows(torch.tensor([slot], device=self.device))
        if prompt is not None:
            try:
                self.push_text(sid, prompt, max_latents=max_latents)
            except Exception:      # a refused prompt or budget must not leave a slot taken
                self.close(sid)
                raise
        return sid

    def push_text(self, stream_id: int, prompt: str, max_latents: int | None = None,
                  after_current: bool = False) -> str:
        """Queue a prompt for a stream; returns it as queued (runtime.policy.check_prompt's form).

        By default it takes effect at the stream's next latent. With after_current=True it waits
        until the current action ends (end latent reached, or its max_latents budget used up).
        max_latents bounds how long this prompt runs (None: until its end latent).
        """
        s = self._get(stream_id)
        prompt = policy.check_prompt(prompt)
        if max_latents is not None and (isinstance(max_latents, bool) or not isinstance(max_latents, numbers.Integral)
                                        or max_latents < 1):
            raise ValueError(f"max_latents must be an integer >= 1, got {max_latents!r}")
        s.queue.append((prompt, self._embed(prompt), max_latents, after_current))
        s.finished = False
        return prompt

    @property
    def goal_model(self) -> bool:
        """Whether the model itself takes goals (a bundle trained with them: its config.json t2m "goal":
        true); without it a goal steers through the root-motion warp alone (runtime/steering.py)."""
        return bool(getattr(self.backend, "goals", False))

    @property
    def goals_supported(self) -> bool:
        """Whether set_goal steers: a goal-trained model, or goal steering on (any model)."""
        return self.goal_model or (self.config.goal_steering and self.config.steering_limits.enabled)

    def set_goal(self, stream_id: int, x: float, z: float, heading: float | None = None,
                 seconds: float | None = None) -> None:
        """Steer a stream to the floor point (x, z) (metres, world coordinates: the stream starts at the
        origin facing +Z), optionally facing `heading` there (radians about +Y, 0 = +Z, pi/2 = +X) and
        within `seconds`, while its prompt sets the style. Takes effect at the next latent, like a
        prompt; replaces an earlier goal. When reached (GenerationConfig.goal_tolerance) the stream
        reports "goal_reached" and, by default, its action ends there. A finished stream resumes its
        last prompt. Any model takes goals through goal steering (GenerationConfig.goal_steering); a model
        trained with goals also sees them. ValueError for a bad value, or for a model not trained with
        goals when goal steering is off (nothing would steer)."""
        s = self._get(stream_id)
        if not self.goals_supported:
            raise ValueError("this model was not trained with goals (its config.json has no t2m \"goal\": true) and "
                             "goal steering is off: nothing would steer (docs/goals.md)")
        s.goal = policy.make_goal(x, z, heading, seconds, frame=s.latents_emitted * FRAMES_PER_LATENT)
        s.travel = None
        s.needs_prefill = s.needs_prefill or self.goal_model    # a model that sees goals rebuilds its context
        if s.finished and s.prompt is not None and not s.queue:
            s.queue.append((s.prompt, s.text_emb, None, False))
            s.finished = False

    def clear_goal(self, stream_id: int) -> None:
        """Drop a stream's goal from its next latent on (its context is rebuilt without it)."""
        s = self._get(stream_id)
        if s.goal is not None:
            s.goal = None
            s.needs_prefill = s.needs_prefill or self.goal_model

    def goal_of(self, stream_id: int) -> policy.Goal | None:
        return self._get(stream_id).goal

    def queue(self, stream_id: int) -> list[str]:
        """The prompts a stream has queued, in the order they will run."""
        return [prompt for prompt, *_ in self._get(stream_id).queue]

    def close(self, stream_id: int) -> None:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            self._free_slots.append(s.slot)
            self._free_slots.sort()

    @property
    def active_ids(self) -> list[int]:
        return [sid for sid, s in self.streams.items() if not s.finished and (s.prompt or s.queue)]

    def _get(self, stream_id: int) -> _Stream:
        if stream_id not in self.streams:
            raise KeyError(f"unknown or closed stream id {stream_id}")
        return self.streams[stream_id]

    def _embed(self, prompt: str) -> torch.Tensor:
        return self.text_encoder.encode([prompt])[0].float().cpu()

    def _uncond_emb(self) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = self.text_encoder.encode([""])[0].float().cpu()
        return self._uncond

    # ---------------------------------------------------------------- the step
    @torch.inference_mode()
    def step(self, stream_ids: Iterable[int] | None = None) -> list[FrameChunk]:
        """Generate one latent (4 frames) for every active stream, or only for the active ones among
        `stream_ids` (a real-time server steps just the streams that are due, in one batch).
        Returns the chunks produced."""
        self.events = []
        ids = self.active_ids
        if stream_ids is not None:
            wanted = set(stream_ids)
            ids = [sid for sid in ids if sid in wanted]
        streams = [self.streams[sid] for sid in ids]
        for s in streams:
            self._maybe_switch_prompt(s)
        streams = [s for s in streams if not s.finished]
        if not streams:
            return []
        for s in streams:
            if s.needs_prefill or policy.window_full(len(s.history), self.block_size):
                self._prefill(s)
        latents = self._sample(streams)
        accepted, restart = [], []
        for s, z in zip(streams, latents):
            if policy.is_action_end(z, self.end_latent, self.config.end_threshold, s.action_latents,
                                    self.config.min_action_latents):
                self.events.append(StreamEvent(s.stream_id, "action_end", s.latents_emitted, s.prompt))
                if s.queue:
                    self._maybe_switch_prompt(s, force=True)
                    restart.append(s)
                elif self.config.on_action_end == "continue" or s.goal is not None:
                    # the prompt again from the current pose: a context of the last few latents only (with
                    # the whole action in it the model sees it done, and stands). An unreached goal keeps
                    # its action going so, within what is left of the prompt's duration
                    if s.goal is not None and self.config.on_action_end != "continue" and s.action_budget is not None:
                        s.action_budget -= s.action_latents
                    s.history = s.history[-policy.RESTART_CONTEXT_LATENTS:]
                    s.needs_prefill, s.action_latents = True, 0
                    restart.append(s)
                else:
                    self._finish(s)
            else:
                accepted.append((s, z))
        if restart:  # one more draw for streams whose action just ended, so they emit frames this step
            for s in restart:
                self._prefill(s)
            for s, z in zip(restart, self._sample(restart)):
                accepted.append((s, z))
        if not accepted:
            return []
        accepted.sort(key=lambda sz: sz[0].slot)   # slot order: a full batch then hits the CUDA graphs
        return self._emit(accepted)

    def run(self, max_steps: int | None = None) -> Iterable[list[FrameChunk]]:
        n = 0
        while self.active_ids and (max_steps is None or n < max_steps):
            yield self.step()
            n += 1

    # ---------------------------------------------------------------- pieces
    def _maybe_switch_prompt(self, s: _Stream, force: bool = False) -> None:
        """At the start of a latent: take the next queued prompt when it is due."""
        budget_used = s.action_budget is not None and s.action_latents >= s.action_budget
        if s.queue and (force or s.prompt is None or budget_used or not s.queue[0][3]):
            prompt, emb, budget, _ = s.queue.popleft()
            # the first prompt too: the stream's prompt changes from none to it
            self.events.append(StreamEvent(s.stream_id, "prompt_change", s.latents_emitted, prompt))
            s.prompt, s.text_emb, s.action_budget = prompt, emb, budget
            s.needs_prefill, s.action_latents = True, 0
        elif budget_used:
            self._finish(s)

    def _finish(self, s: _Stream) -> None:
        s.finished = True
        self.events.append(StreamEvent(s.stream_id, "finished", s.latents_emitted, s.prompt or ""))

    def _prefill(self, s: _Stream) -> None:
        s.history = policy.slide(s.history, self.block_size, self.history_keep)
        hist = torch.stack(s.history) if s.history else torch.zeros(0, self.latent_dim)
        # condition rows: the prompt, then (under guidance) the empty prompt
        text = torch.stack([s.text_emb] + [self._uncond_emb() for _ in range(self.rows - 1)])
        goal = self._goal_vectors([s])
        s.condition = self.backend.prefill(text, hist, s.slot, *(() if goal is None else (goal[0],)))  # (rows, n_embd)
        s.needs_prefill = False

    def _goal_vectors(self, streams: list[_Stream]) -> torch.Tensor | None:
        """The raw goals (n, rows, GOAL_DIM) the model sees for these streams' condition rows now (from
        each stream's current root; the unconditional row has none under guide_goal), or None when no
        stream has a goal or the model takes none (the original model's call, no goal input)."""
        if not self.goal_model or all(s.goal is None for s in streams):
            return None
        rows = torch.tensor([s.slot for s in streams], device=self.device)
        xz = self.root.translation[rows][:, [0, 2]].cpu()
        yaw = yaw_of_heading(self.root.heading[rows]).cpu()
        goal = torch.stack([no_goal() if s.goal is None else
                            policy.goal_vector(s.goal, xz[i], yaw[i], s.latents_emitted * FRAMES_PER_LATENT)
                            for i, s in enumerate(streams)])
        per_row = goal[:, None, :].repeat(1, self.rows, 1)
        if self.config.guide_goal:
            per_row[:, 1:] = 0.0
        return per_row

    def _sample(self, streams: list[_Stream]) -> torch.Tensor:
        conditions = torch.stack([s.condition for s in streams])           # (n, rows, n_embd), backend's device
        # per-stream generators: a stream's samples do not depend on its neighbours
        noise = [draw_sampling_noise(s.generator, 1, self.noise_steps, self.latent_dim) for s in streams]
        noise = (torch.cat([x for x, _ in noise]), torch.cat([n for _, n in noise], dim=1))
        return self.backend.sample(conditions, noise, self.settings).float().cpu()

    def _emit(self, accepted: list[tuple[_Stream, torch.Tensor]]) -> list[FrameChunk]:
        streams = [s for s, _ in accepted]
        z = torch.stack([z for _, z in accepted])                           # (n, 16)
        slots = [s.slot for s in streams]
        # (a) TAE: 4 frames per latent from the decoder state of these slots; joints move each root on
        frames = self.backend.tae_step(z, slots)                            # (n, 4, 272)
        feats = self._steer(streams, frames.float().to(self.device) * self.std + self.mean)
        # every slot in order: the root state is stepped without a gather
        rows = None if every_slot(slots, self.capacity) else torch.tensor(slots, device=self.device)
        joints = recover_joints_step(feats, self.root, rows=rows)
        per_latent = frames.shape[1]
        for s in streams:
            s.latents_emitted += 1
        # (b) append to the KV cache: one decode step over the condition rows of these slots, each goal
        # seen from the root these frames reached
        goal = self._goal_vectors(streams)
        nxt = self.backend.decode(z, slots, self.rows, *(() if goal is None else (goal,)))   # (n, rows, n_embd)
        chunks = []
        for i, s in enumerate(streams):
            s.condition = nxt[i]
            s.history.append(z[i].float().cpu())
            chunks.append(FrameChunk(s.stream_id, s.latents_emitted - 1, per_latent * (s.latents_emitted - 1),
                                     feats[i], joints[i], z[i].float(), s.prompt))
            s.action_latents += 1
            if s.goal is not None:
                self._check_goal(s)
            if s.latents_emitted >= self.config.max_latents and not s.finished:
                self._finish(s)
        return chunks

    def _steer(self, streams: list[_Stream], feats: torch.Tensor) -> torch.Tensor:
        """These latents' frames (n, 4, 272) with each goal stream's root motion warped toward its goal
        (GenerationConfig.goal_steering), from the root before these frames."""
        limits = self.config.steering_limits
        if not self.config.goal_steering or not limits.enabled or all(s.goal is None for s in streams):
            return feats
        feats = feats.clone()
        for i, s in enumerate(streams):
            if s.goal is None:
                continue
            frame = s.latents_emitted * FRAMES_PER_LATENT
            left = None if s.goal.deadline_frame is None else s.goal.deadline_frame - frame
            feats[i], s.travel = steer_latent(feats[i], self.root.heading[s.slot], self.root.translation[s.slot],
                                              (s.goal.x, s.goal.z), left, limits, s.travel)
        return feats

    def _check_goal(self, s: _Stream) -> None:
        """After a latent: a reached goal is reported and dropped; then the action ends there (its queued
        prompt starts, else the stream stops) or, with on_goal_reached="continue", the prompt goes on."""
        row = torch.tensor([s.slot], device=self.device)
        xz = self.root.translation[row][0, [0, 2]].cpu()
        yaw = yaw_of_heading(self.root.heading[row][0]).cpu()
        if not policy.goal_reached(s.goal, xz, yaw, self.config.goal_tolerance, self.config.goal_heading_tolerance):
            return
        self.events.append(StreamEvent(s.stream_id, "goal_reached", s.latents_emitted - 1, s.prompt))
        s.goal = None
        s.needs_prefill = s.needs_prefill or self.goal_model    # the context is rebuilt without the goal
        if self.config.on_goal_reached == "stop":
            if s.queue:
                self._maybe_switch_prompt(s, force=True)
            else:
                self._finish(s)
