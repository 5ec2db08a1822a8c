"""A single stream: push prompts at any time, pull 4-frame chunks. Built on StreamingEngine."""
from __future__ import annotations

import math
import numbers
from typing import Iterator

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.representation.feet import FootCleaner
from motionstreamer.runtime import policy
from motionstreamer.runtime.engine import FrameChunk, GenerationConfig, StreamingEngine


def seconds_to_latents(seconds: float) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 < seconds < math.inf:
        raise ValueError(f"duration must be a finite number of seconds > 0, got {seconds!r}")
    return max(1, round(seconds * FPS / FRAMES_PER_LATENT))


class StreamingSession:
    """One continuous motion stream.

    >>> session = StreamingSession(bundle, text_encoder, seed=0)
    >>> session.push_text("a person walks forward")
    >>> for chunk in session:            # FrameChunk: 4 frames, features + joints
    ...     if chunk.latent_index == 20:
    ...         session.push_text("a person turns left")   # takes effect at the next latent

    clean_feet=True passes every chunk's joints through a causal foot-skating clean-up
    (representation.feet.FootCleaner: planted feet pinned to the floor, leg IK); the features stay as
    generated.
    """

    def __init__(self, bundle, text_encoder, config: GenerationConfig | None = None, seed: int | None = None,
                 device=None, dtype=None, backend=None, clean_feet: bool = False):
        self.engine = StreamingEngine(bundle, text_encoder, capacity=1, config=config, device=device, dtype=dtype,
                                      backend=backend)
        self.stream_id = self.engine.add_stream(seed=seed)
        self.events = []
        self.foot_cleaner = None
        if clean_feet:
            self.foot_cleaner = FootCleaner()

    def push_text(self, prompt: str, duration: float | None = None, after_current: bool = False,
                  max_latents: int | None = None) -> None:
        """Queue a prompt. duration (seconds) or max_latents bounds how long it runs; after_current
        waits for the running action to end instead of switching at the next latent."""
        if duration is not None and max_latents is not None:
            raise ValueError("give duration or max_latents, not both")
        budget = seconds_to_latents(duration) if duration is not None else max_latents
        self.engine.push_text(self.stream_id, prompt, max_latents=budget, after_current=after_current)

    def set_goal(self, x: float, z: float, heading: float | None = None, seconds: float | None = None) -> None:
        """Steer the stream to the floor point (x, z) (metres; the stream starts at the origin facing +Z),
        optionally facing `heading` (radians, 0 = +Z) within `seconds` (StreamingEngine.set_goal)."""
        self.engine.set_goal(self.stream_id, x, z, heading, seconds)

    def clear_goal(self) -> None:
        self.engine.clear_goal(self.stream_id)

    @property
    def finished(self) -> bool:
        return self.stream_id not in self.engine.active_ids

    def step(self) -> FrameChunk | None:
        """Generate the next latent; None when the stream has nothing to do (finished or no prompt)."""
        if self.finished:
            return None
        chunks = self.engine.step()
        self.events.extend(self.engine.events)
        chunk = chunks[0] if chunks else None
        if chunk is not None:
            policy.check_finite_chunk(chunk)     # fail loudly: never a silent NaN to the caller
            if self.foot_cleaner is not None:
                chunk = self.foot_cleaner.clean_chunk(chunk)
        return chunk

    def __iter__(self) -> Iterator[FrameChunk]:
        while not self.finished:
            chunk = self.step()
            if chunk is not None:
                yield chunk

    def close(self) -> None:
        self.engine.close(self.stream_id)

    def __enter__(self) -> "StreamingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
