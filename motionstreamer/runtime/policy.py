"""The stream policy the engine, the session and the reference sampler share: prompt and seed checks,
the context-window slide, the end-of-action test, the finite-motion check and goals (checked values, the
model's view of a goal from the current root, the reached test). Plain functions on plain
values, so the original algorithm (runtime/reference.py) and the engine cannot drift apart in them;
tests/test_runtime_engine.py checks the engine's slide against a full forward, independently of this file."""
from __future__ import annotations

import math
import numbers
import unicodedata
from dataclasses import dataclass

import torch

from motionstreamer import FPS
from motionstreamer.models.goal import pack_goals, root_frame_offset, wrap_angle

MAX_PROMPT_CHARS = 1000
WHITESPACE_CONTROLS = "\t\n\v\f\r"    # the control characters a prompt may hold: they collapse to spaces
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)    # what torch.Generator.manual_seed takes
# the service's seeds: what every client can hold as a signed 64-bit integer (and echo back unchanged)
SERVICE_SEED_RANGE = (0, 2 ** 63 - 1)


def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The prompt with its whitespace collapsed; TypeError / ValueError naming what is wrong. max_chars:
    a caller's tighter bound (the service's limit), at most MAX_PROMPT_CHARS.

    Control characters (C0, DEL, C1: NUL, ESC of a terminal escape sequence, BEL, ...) are refused, not
    stripped: a prompt is plain text, and what follows an ESC would be left as garbage. Tab, newline,
    carriage return, vertical tab and form feed are ordinary whitespace and collapse to one space."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:   # lone surrogates: undecodable bytes of a command line or file
        bad = prompt[e.start]
        what = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character {bad!r}"
        raise ValueError(f"prompt {prompt!r} is not valid UTF-8 text ({what} at position {e.start})") from None
    for i, ch in enumerate(prompt):
        if unicodedata.category(ch) == "Cc" and ch not in WHITESPACE_CONTROLS:
            raise ValueError(f"prompt contains a control character (U+{ord(ch):04X} at position {i}); send plain "
                             "text")
    prompt = " ".join(prompt.split())
    if not prompt:
        raise ValueError("prompt is empty: give a description of the motion, e.g. 'a person walks forward'")
    limit = min(max_chars, MAX_PROMPT_CHARS)
    if len(prompt) > limit:
        raise ValueError(f"prompt is too long ({len(prompt)} characters, at most {limit})")
    return prompt


class NonFiniteMotionError(FloatingPointError):
    """The model produced NaN/inf motion (a broken checkpoint, or settings that overflow it)."""


def check_finite_chunk(chunk) -> None:
    """NonFiniteMotionError naming the latent unless the chunk's features and joints are finite."""
    if not (torch.isfinite(chunk.features).all() and torch.isfinite(chunk.joints).all()):
        raise NonFiniteMotionError(f"the model produced non-finite motion (NaN/inf) at latent {chunk.latent_index}")


def _power_of_two_text(n: int) -> str:
    for e in (63, 64):
        for value, text in ((2 ** e, f"2**{e}"), (2 ** e - 1, f"2**{e} - 1"), (-(2 ** e), f"-2**{e}")):
            if n == value:
                return text
    return str(n)


def check_seed(seed: int, bounds: tuple[int, int] = SEED_RANGE) -> int:
    """A stream's seed; ValueError unless an integer within `bounds` (inclusive; default: what
    torch.Generator takes, the service passes SERVICE_SEED_RANGE)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not bounds[0] <= seed <= bounds[1]:
        raise ValueError(f"seed must be in [{_power_of_two_text(bounds[0])}, {_power_of_two_text(bounds[1])}], "
                         f"got {seed}")
    return int(seed)


def window_full(history_len: int, block_size: int) -> bool:
    """The text token and `history_len` latents fill the block: the next latent needs a slide first."""
    return history_len >= block_size - 1


def slide(history: list, block_size: int, keep: int) -> list:
    """The context before the next latent: the latest `keep` latents once the window is full (the
    stream is then re-prefilled with [text, kept history]), else the history as it is."""
    return history[-keep:] if window_full(len(history), block_size) else history


# an action restarted ("continue", or a goal not reached yet) sees only this many latents of its past: the
# pose it starts from, not the finished action (measured: with the whole history most restarts stand still)
RESTART_CONTEXT_LATENTS = 4


def is_action_end(z: torch.Tensor, end_latent: torch.Tensor, threshold: float, action_latents: int,
                  min_action_latents: int) -> bool:
    """A latent within `threshold` (L2) of the reference end latent ends the action, once it has run
    `min_action_latents` latents (the original's t2m demo)."""
    if action_latents < min_action_latents:
        return False
    return torch.linalg.vector_norm(z.float() - end_latent.to(z.device, torch.float32)).item() < threshold


# ----------------------------------------------------------------------------- goals (models/goal.py)
MAX_GOAL_COORDINATE = 1000.0     # metres from the world origin
MAX_GOAL_SECONDS = 600.0


@dataclass(frozen=True)
class Goal:
    """A stream's goal in world coordinates (metres, Y up; the stream starts at the origin facing +Z):
    the floor point (x, z), the facing yaw there (radians about +Y, 0 = +Z, pi/2 = +X; None: any), and
    the frame by which to be there (None: no deadline)."""
    x: float
    z: float
    heading: float | None = None
    deadline_frame: int | None = None


def _finite_number(name: str, value, limit: float, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"goal {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"goal {name} must be finite, got {value!r}")
    if positive and not 0 < value <= limit:
        raise ValueError(f"goal {name} must be in (0, {limit:g}], got {value!r}")
    if not positive and abs(value) > limit:
        raise ValueError(f"goal {name} must be within +-{limit:g}, got {value!r}")
    return value


def make_goal(x, z, heading=None, seconds=None, frame: int = 0) -> Goal:
    """A Goal from user values, set at stream frame `frame`; ValueError naming the bad field (a
    non-number, NaN/inf, out of range, seconds <= 0)."""
    x = _finite_number("x", x, MAX_GOAL_COORDINATE)
    z = _finite_number("z", z, MAX_GOAL_COORDINATE)
    if heading is not None:
        heading = _finite_number("heading", heading, 1e6)
    deadline = None
    if seconds is not None:
        deadline = frame + max(1, round(_finite_number("seconds", seconds, MAX_GOAL_SECONDS, positive=True) * FPS))
    return Goal(x, z, heading, deadline)


def goal_vector(goal: Goal, root_xz: torch.Tensor, root_yaw: torch.Tensor, frame: int) -> torch.Tensor:
    """The raw goal (GOAL_DIM,) the model sees at stream frame `frame` from the root at root_xz (2,),
    facing root_yaw (): re-expressed in the current root frame every latent. Past its deadline a goal
    has no time left to give (it is then a goal without a deadline)."""
    xz = torch.tensor([[goal.x, goal.z]], dtype=torch.float32)
    offset = root_frame_offset(xz, root_xz.float().cpu()[None], root_yaw.float().cpu()[None])
    rel = None if goal.heading is None else torch.tensor([wrap_angle(goal.heading - float(root_yaw))],
                                                         dtype=torch.float64)
    left = None
    if goal.deadline_frame is not None and goal.deadline_frame > frame:
        left = torch.tensor([(goal.deadline_frame - frame) / FPS], dtype=torch.float64)
    return pack_goals(offset, rel, left)[0]


def goal_error(goal: Goal, root_xz: torch.Tensor, root_yaw: torch.Tensor) -> tuple[float, float | None]:
    """(floor distance in metres, absolute facing error in radians or None) from the root to the goal."""
    d = math.hypot(goal.x - float(root_xz[0]), goal.z - float(root_xz[1]))
    return d, None if goal.heading is None else abs(wrap_angle(goal.heading - float(root_yaw)))


def goal_reached(goal: Goal, root_xz: torch.Tensor, root_yaw: torch.Tensor, tolerance: float,
                 heading_tolerance: float) -> bool:
    """Within `tolerance` metres of the goal (and within heading_tolerance radians of its facing, when it
    has one); tolerance <= 0: never (the goal stays until cleared)."""
    if tolerance <= 0:
        return False
    d, h = goal_error(goal, root_xz, root_yaw)
    return d <= tolerance and (h is None or h <= heading_tolerance)
