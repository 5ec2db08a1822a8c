"""Real-time pacing of many streams on ONE StreamingEngine, stepped by one background thread.

Each live stream has a playback clock: frame f plays at anchor + f / fps. The thread generates a
stream's next latent when it is due, i.e. when the stream holds fewer than `lookahead` latents ahead
of its clock, so a new prompt reaches the client within about one look-ahead. Clocks are anchored on
a global grid of latent periods (4 / fps), so streams fall due together and every due stream goes
into ONE batched engine step (`engine.step(due_ids)`). A latent produced after its playback time is
an underrun: counted, reported in every frames message, and the clock re-anchors (the client's
buffer ran dry and it waits), never a silent skip. A stream without a prompt (or finished) has no
clock; it restarts with the next prompt. One-shot jobs (POST /v1/generate) are stepped whenever the
thread steps, unpaced.

The engine is thread-unsafe, so only this thread touches it: the event loop posts commands (small
dataclasses: OpenStream, PushPrompt, CloseStream, StartJob, each with its handler here) to a queue and
gets messages back through `deliver`, one call per step with every stream's messages. The engine is
the one record of a stream's prompts: it reports the prompt as queued, the queue, and every
prompt_change; this thread only paces. Nothing a stream sends can stop the thread: a failing command
is answered on that stream, a failing step closes the streams of that step with 1011 (`_drop`, the
one way a stream leaves).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.representation.features import HEADING_DELTA, ROTATIONS, accumulate_headings
from motionstreamer.representation.rotation import matrix_to_quaternion, matrix_to_rot6d, rot6d_to_matrix
from motionstreamer.runtime import policy
from motionstreamer.runtime.session import seconds_to_latents
from motionstreamer.serve.protocol import (
    CLOSE_INTERNAL,
    Ack,
    Close,
    Event,
    Events,
    Frames,
    GoalAck,
    GoalState,
    StreamOptions,
    encode_array,
    error,
)

log = logging.getLogger("motionstreamer.serve")


class ServerFull(RuntimeError):
    pass


class RotationTracker:
    """Per-joint rotations of a stream, chunk by chunk: the pelvis global rotation needs the heading
    accumulated from frame 0 (representation.features.recover_rotations does it for a whole clip)."""

    def __init__(self):
        self.heading = torch.eye(3)

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        f = features.float().cpu()
        H = accumulate_headings(rot6d_to_matrix(f[:, HEADING_DELTA])) @ self.heading      # (4, 3, 3)
        self.heading = rot6d_to_matrix(matrix_to_rot6d(H[-1]))     # re-orthonormalised: no drift over hours
        M = rot6d_to_matrix(f[:, ROTATIONS].reshape(len(f), -1, 6))                       # (4, 22, 3, 3)
        pelvis = H.transpose(-1, -2) @ M[:, 0]
        q = matrix_to_quaternion(torch.cat([pelvis[:, None], M[:, 1:]], dim=1))
        return (q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)).numpy()             # (4, 22, 4) unit


@dataclass
class _Live:
    key: int
    sink: Any
    options: StreamOptions
    sid: int | None = None
    frames: int = 0                       # frames generated = index of the next frame
    anchor: float | None = None           # playback time of frame 0 (None: no clock running)
    underruns: int = 0
    queue_sent: list | None = None        # the engine's queue as the client last got it (ack or frames)
    rotations: RotationTracker | None = None


@dataclass
class _Job:
    key: int
    text: str
    latents: int
    seed: int | None
    future: concurrent.futures.Future
    sid: int | None = None
    features: list = field(default_factory=list)
    joints: list = field(default_factory=list)


# ----------------------------------------------------------------------------- commands (event loop -> engine thread)
@dataclass
class OpenStream:
    live: _Live


@dataclass
class PushPrompt:
    key: int
    text: str
    max_latents: int | None
    after_current: bool


@dataclass
class SetGoal:
    key: int
    goal: GoalState | None                # None: clear the goal


@dataclass
class CloseStream:
    key: int


@dataclass
class StartJob:
    job: _Job


class StreamScheduler:
    """engine: a StreamingEngine with capacity >= max_streams + max_jobs. deliver(batch) is called from
    the engine thread with a list of (sink, message) where message is a JSON str or a Close."""

    def __init__(self, engine, deliver: Callable[[list], None], max_streams: int, max_jobs: int = 2,
                 lookahead: int = 2, max_queued: int = 8, fps: float = FPS,
                 clock: Callable[[], float] = time.monotonic):
        if engine.capacity < max_streams + max_jobs:
            raise ValueError(f"engine capacity {engine.capacity} < max_streams + max_jobs ({max_streams + max_jobs})")
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1 latent, got {lookahead}")
        self.engine, self.deliver = engine, deliver
        self.max_streams, self.max_jobs, self.lookahead, self.fps = max_streams, max_jobs, lookahead, fps
        self.max_queued = max_queued
        self.period = FRAMES_PER_LATENT / fps
        self.clock = clock
        self.t0 = clock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()          # guards the counts below (read by the event loop)
        self._n_live = 0
        self._n_jobs = 0
        self._keys = itertools.count()
        self._live: dict[int, _Live] = {}      # engine thread only
        self._jobs: dict[int, _Job] = {}       # engine thread only
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"steps": 0, "latents": 0, "underruns": 0, "step_ms_ema": 0.0, "batch_ema": 0.0,
                      "step_errors": 0}

    # ------------------------------------------------------------------ event-loop side (thread-safe)
    @property
    def n_streams(self) -> int:
        return self._n_live

    @property
    def n_jobs(self) -> int:
        return self._n_jobs

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="motionstreamer-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def open(self, sink, options: StreamOptions) -> int:
        with self._lock:
            if self._n_live >= self.max_streams:
                raise ServerFull(f"server full: {self._n_live} of {self.max_streams} streams in use; try again later")
            self._n_live += 1
            key = next(self._keys)
        self._post(OpenStream(_Live(key, sink, options)))
        return key

    def push(self, key: int, text: str, seconds: float | None = None, after_current: bool = False) -> None:
        self._post(PushPrompt(key, text, None if seconds is None else seconds_to_latents(seconds), after_current))

    def set_goal(self, key: int, goal: GoalState | None) -> None:
        """Steer the stream to `goal` (None: clear it); answered with goal_ack, or error "bad_goal"."""
        self._post(SetGoal(key, goal))

    def close(self, key: int) -> None:
        with self._lock:
            self._n_live -= 1
        self._post(CloseStream(key))

    def generate(self, text: str, seconds: float, seed: int | None = None) -> concurrent.futures.Future:
        """One unpaced stream of `seconds`; the future gets (features (T, 272), joints (T, 22, 3)) arrays."""
        with self._lock:
            if self._n_jobs >= self.max_jobs:
                raise ServerFull(f"server busy: {self._n_jobs} of {self.max_jobs} generate jobs running; "
                                 "try again later")
            self._n_jobs += 1
            key = next(self._keys)
        fut = concurrent.futures.Future()
        self._post(StartJob(_Job(key, text, seconds_to_latents(seconds), seed, fut)))
        return fut

    def _post(self, cmd) -> None:
        self._commands.put(cmd)
        self._wake.set()

    # ------------------------------------------------------------------ engine thread
    def poll(self) -> float | None:
        """One turn of the loop: apply commands, step the due streams (one batch). Returns 0 after a
        step, else the time until the next stream falls due (None: nothing scheduled)."""
        self._apply_commands()
        now = self.clock()
        due, next_due = self._due(now)
        if due or self._jobs:
            self._step(due)
            return 0.0
        return None if next_due is None else max(0.0, next_due - now)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop:
            try:
                wait = self.poll()
                if wait == 0.0:
                    continue
                self._wake.wait(0.5 if wait is None else min(0.5, wait))
                self._wake.clear()
            except Exception:   # never let the thread die; the failing piece has been answered
                log.exception("engine loop error")
                self.stats["step_errors"] += 1
                time.sleep(0.01)
        for job in self._jobs.values():
            job.future.set_exception(RuntimeError("server shutting down"))

    def _apply_commands(self) -> None:
        out = []
        handlers = {OpenStream: self._open, PushPrompt: self._push, SetGoal: self._set_goal, CloseStream: self._close,
                    StartJob: self._start_job}
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                handlers[type(cmd)](cmd, out)
            except Exception as e:   # answered on its stream, never the thread's end
                log.exception("command %s failed", type(cmd).__name__)
                live = cmd.live if isinstance(cmd, OpenStream) else self._live.get(getattr(cmd, "key", None))
                if live is not None:
                    self._drop(live, out, Close(CLOSE_INTERNAL, f"internal error: {type(e).__name__}"))
        if out:
            self.deliver(out)

    def _open(self, cmd: OpenStream, out: list) -> None:
        live = cmd.live
        self._live[live.key] = live
        live.sid = self.engine.add_stream(seed=live.options.seed)
        if live.options.rotations:
            live.rotations = RotationTracker()

    def _push(self, cmd: PushPrompt, out: list) -> None:
        live = self._live.get(cmd.key)
        if live is None:
            return
        queued = self.engine.queue(live.sid)
        if len(queued) >= self.max_queued:
            out.append((live.sink, error("queue_full", f"{len(queued)} prompts already queued (at most "
                                                       f"{self.max_queued}); prompt ignored")))
            return
        try:
            text = self.engine.push_text(live.sid, cmd.text, max_latents=cmd.max_latents,
                                         after_current=cmd.after_current)
        except (ValueError, TypeError) as e:
            out.append((live.sink, error("bad_prompt", str(e))))
            return
        live.queue_sent = self.engine.queue(live.sid)
        out.append((live.sink, Ack(text=text, queue=live.queue_sent).to_json()))

    def _set_goal(self, cmd: SetGoal, out: list) -> None:
        live = self._live.get(cmd.key)
        if live is None:
            return
        try:
            if cmd.goal is None:
                self.engine.clear_goal(live.sid)
            else:
                g = cmd.goal
                self.engine.set_goal(live.sid, g.x, g.z, g.heading, g.seconds)
        except (ValueError, TypeError) as e:     # no goal module and goal steering off
            out.append((live.sink, error("bad_goal", str(e))))
            return
        out.append((live.sink, GoalAck(goal=cmd.goal).to_json()))

    def _close(self, cmd: CloseStream, out: list) -> None:
        live = self._live.get(cmd.key)
        if live is not None:
            self._drop(live, out)

    def _start_job(self, cmd: StartJob, out: list) -> None:
        job = cmd.job
        try:
            job.sid = self.engine.add_stream(job.text, seed=job.seed, max_latents=job.latents)
        except Exception as e:
            self._finish_job(job, exc=e)
            return
        self._jobs[job.key] = job

    def _drop(self, live: _Live, out: list, close: Close | None = None) -> None:
        """The one way a stream leaves the engine: its slot freed, `close` (if any) sent to its client."""
        self._live.pop(live.key, None)
        if live.sid is not None and live.sid in self.engine.streams:
            self.engine.close(live.sid)
        if close is not None:
            out.append((live.sink, close))

    def _grid_ceil(self, t: float) -> float:
        return self.t0 + math.ceil((t - self.t0) / self.period - 1e-9) * self.period

    def _due(self, now: float) -> tuple[list[_Live], float | None]:
        active = set(self.engine.active_ids)
        due, next_due = [], None
        for live in self._live.values():
            if live.sid not in active:
                live.anchor = None          # nothing to play: the clock stops until the next prompt
                continue
            if live.anchor is None:
                due.append(live)
                continue
            t_due = live.anchor + (live.frames - self.lookahead * FRAMES_PER_LATENT) / self.fps
            if t_due <= now + 1e-3:
                due.append(live)
            elif next_due is None or t_due < next_due:
                next_due = t_due
        return due, next_due

    def _step(self, due: list[_Live]) -> None:
        ids = [live.sid for live in due] + [job.sid for job in self._jobs.values()]
        t_start = self.clock()
        out = []
        try:
            chunks = self.engine.step(ids)
        except Exception as e:
            log.exception("engine step failed for streams %s", ids)
            self.stats["step_errors"] += 1
            for live in due:
                self._drop(live, out, Close(CLOSE_INTERNAL, f"engine step failed: {type(e).__name__}"))
            for job in list(self._jobs.values()):
                self._finish_job(job, exc=e)
            self.deliver(out)
            return
        t_emit = self.clock()
        wall = round(time.time(), 4)
        self._count_step(len(chunks), len(ids), (t_emit - t_start) * 1000)

        by_sid = {live.sid: live for live in due}
        jobs_by_sid = {job.sid: job for job in self._jobs.values()}
        events: dict[int, list[Event]] = {}
        for ev in self.engine.events:
            events.setdefault(ev.stream_id, []).append(Event(kind=ev.kind, latent=ev.latent_index, prompt=ev.prompt))
        if chunks:
            joints = torch.stack([c.joints for c in chunks]).float().cpu().numpy()
        for i, c in enumerate(chunks):
            job, live = jobs_by_sid.get(c.stream_id), by_sid.get(c.stream_id)
            try:
                policy.check_finite_chunk(c)
            except policy.NonFiniteMotionError as e:
                # a broken checkpoint, never sent on: the stream ends with a reason, the others go on
                self.stats["step_errors"] += 1
                events.pop(c.stream_id, None)
                if job is not None:
                    self._finish_job(job, exc=RuntimeError(str(e)))
                else:
                    self._drop(live, out, Close(CLOSE_INTERNAL, str(e)))
                continue
            if job is not None:
                job.features.append(c.features.float().cpu().numpy())
                job.joints.append(joints[i])
                continue
            self._advance_clock(live, c.start_frame, t_emit)
            queued = self.engine.queue(live.sid)
            changed = queued != live.queue_sent
            live.queue_sent = queued
            out.append((live.sink, Frames(
                latent=c.latent_index, frame=c.start_frame, prompt=c.prompt, joints=encode_array(joints[i]),
                events=events.pop(c.stream_id, []), underruns=live.underruns, t=wall,
                queue=queued if changed else None,
                features=encode_array(c.features.float().cpu().numpy()) if live.options.features else None,
                rotations=encode_array(live.rotations(c.features)) if live.rotations is not None else None,
            ).to_json()))
        for sid, evs in events.items():     # events of streams that produced no frames this step
            live = by_sid.get(sid)
            if live is not None:
                out.append((live.sink, Events(events=evs, underruns=live.underruns, t=wall).to_json()))
        active = set(self.engine.active_ids)
        for job in list(self._jobs.values()):
            # exact length: with on_action_end="continue" an early end restarts the prompt and its budget
            if job.sid not in active or len(job.features) >= job.latents:
                self._finish_job(job)
        if out:
            self.deliver(out)

    def _count_step(self, latents: int, batch: int, ms: float) -> None:
        st = self.stats
        st["steps"] += 1
        st["latents"] += latents
        st["step_ms_ema"] = ms if st["steps"] == 1 else 0.9 * st["step_ms_ema"] + 0.1 * ms
        st["batch_ema"] = batch if st["steps"] == 1 else 0.9 * st["batch_ema"] + 0.1 * batch

    def _advance_clock(self, live: _Live, start_frame: int, t_emit: float) -> None:
        if live.anchor is None:
            live.anchor = self._grid_ceil(t_emit) - start_frame / self.fps
        elif t_emit > live.anchor + start_frame / self.fps:   # produced after its playback time
            live.underruns += 1
            self.stats["underruns"] += 1
            live.anchor = self._grid_ceil(t_emit) - start_frame / self.fps
        live.frames = start_frame + FRAMES_PER_LATENT

    def _finish_job(self, job: _Job, exc: Exception | None = None) -> None:
        self._jobs.pop(job.key, None)
        if job.sid is not None:
            self.engine.close(job.sid)
        with self._lock:
            self._n_jobs -= 1
        if exc is not None:
            job.future.set_exception(exc)
        elif not job.features:
            job.future.set_exception(RuntimeError("no frames were generated (the action ended at once); "
                                                  "try another seed"))
        else:
            job.future.set_result((np.concatenate(job.features), np.concatenate(job.joints)))
