"""Goal steering: a bounded warp of the root motion the model proposes, toward the stream's goal.

The goal-trained model turns toward a goal and, roughly, keeps to its deadline; what it leaves (a few
tens of degrees of heading, a walk a little too fast or slow for the deadline) is closed here, as game
engines close it with motion warping: each latent's frames keep their body pose, and only the root's
per-frame yaw increment and floor velocity (272 format: features[0:2] local velocity, [2:8] heading
delta) change, within bounds a person can do (an extra turn of at most `turn_rate` rad/s, the speed
scaled within `speed_range`). A standing motion is not dragged: below `min_speed` nothing changes.

Plain functions of one stream's frames and root, so the engine, the evaluation and the tests share them;
the body pose (features[8:]) is untouched, so the text's style is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from motionstreamer import FPS
from motionstreamer.models.goal import wrap_angle, yaw_of_heading
from motionstreamer.representation.rotation import matrix_to_rot6d, rot6d_to_matrix

VELOCITY = slice(0, 2)        # root floor velocity per frame in the heading frame (x, z), metres
HEADING_DELTA = slice(2, 8)   # the heading's per-frame change, 6D (a rotation about +Y)


@dataclass(frozen=True)
class SteeringLimits:
    """How far the warp may bend the model's root motion. turn_rate 0 and speed_range (1, 1): no warp."""
    turn_rate: float = 1.5                 # extra yaw, rad/s (a walking person turns up to about 2)
    speed_range: tuple[float, float] = (0.6, 1.6)   # scale of the model's floor speed
    response_s: float = 0.4                # the heading error is closed over about this long
    min_speed: float = 0.15                # m/s: below it the motion is taken as standing, not warped
    walk_speed: float = 0.6                # m/s: from here on the full turn; between the two, a share of it
    settle_m: float = 0.5                  # nearer than this to the goal, the turn fades out (no spinning on
                                           # the spot when the goal is underfoot)

    def validate(self) -> None:
        lo, hi = self.speed_range
        for name, v in (("turn_rate", self.turn_rate), ("speed_range[0]", lo), ("speed_range[1]", hi),
                        ("response_s", self.response_s), ("min_speed", self.min_speed),
                        ("walk_speed", self.walk_speed), ("settle_m", self.settle_m)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"steering {name} must be a finite number >= 0, got {v!r}")
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"steering speed_range must have 0 < low <= 1 <= high, got {self.speed_range!r}")
        if self.walk_speed <= self.min_speed:
            raise ValueError(f"steering walk_speed must be above min_speed, got {self.walk_speed!r} <= "
                             f"{self.min_speed!r}")
        if self.response_s <= 0:
            raise ValueError(f"steering response_s must be > 0, got {self.response_s!r}")

    @property
    def enabled(self) -> bool:
        return self.turn_rate > 0 or tuple(self.speed_range) != (1.0, 1.0)


def root_yaws_and_steps(features: torch.Tensor, yaw0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The facing yaw before each frame (T,) and each frame's world floor step (T, 2) as (x, z), for
    frames (T, 272) starting from facing yaw0 (0 = +Z, pi/2 = +X): the 272 root integration
    (spec §2: a frame's velocity is in the heading before its delta applies)."""
    step_yaw = yaw_of_heading(rot6d_to_matrix(features[:, HEADING_DELTA].double()))
    before = yaw0 + torch.cat([step_yaw.new_zeros(1), torch.cumsum(step_yaw, 0)[:-1]])
    vx, vz = features[:, 0].double(), features[:, 1].double()
    c, s = torch.cos(before), torch.sin(before)
    return before, torch.stack([c * vx + s * vz, -s * vx + c * vz], dim=-1)


def steer_frames(features: torch.Tensor, root_xz: tuple[float, float], root_yaw: float,
                 goal_xz: tuple[float, float], frames_left: int | None,
                 limits: SteeringLimits) -> torch.Tensor:
    """One latent's frames (T, 272), de-normalised, warped toward the goal: an extra constant yaw rate
    that turns the direction of travel onto the goal (bounded by limits.turn_rate), and the floor speed
    scaled so the goal is reached at its deadline (frames_left frames from the first of these; None or
    <= 0: no deadline, then only slowed so as not to walk past it), within limits.speed_range.
    Returns new frames; the input is not changed."""
    T = features.shape[0]
    _, steps = root_yaws_and_steps(features, root_yaw)
    move = steps.sum(0)
    moved = float(torch.linalg.vector_norm(move))
    if moved < limits.min_speed * T / FPS:
        return features
    dx, dz = goal_xz[0] - root_xz[0], goal_xz[1] - root_xz[1]
    distance = math.hypot(dx, dz)
    # turn: the error between where the frames travel and where the goal is, closed over response_s
    error = wrap_angle(math.atan2(dx, dz) - math.atan2(float(move[0]), float(move[1])))
    speed = moved / T * FPS
    share = min(1.0, (speed - limits.min_speed) / (limits.walk_speed - limits.min_speed))
    share *= min(1.0, distance / limits.settle_m) if limits.settle_m > 0 else 1.0
    bound = limits.turn_rate * T / FPS * share
    turn = max(-bound, min(bound, error * min(1.0, T / (limits.response_s * FPS))))
    # speed: the distance over the frames left, or (no deadline) no further than the goal
    lo, hi = limits.speed_range
    if frames_left is not None and frames_left > 0:
        scale = (distance / max(frames_left, T)) / (moved / T)
    else:
        scale = min(1.0, distance / moved)
    scale = max(lo, min(hi, scale))
    out = features.clone()
    out[:, VELOCITY] = features[:, VELOCITY] * scale
    # the extra yaw per frame, applied to each heading delta: both are rotations about +Y, so they
    # commute; a heading H turned by +a in facing yaw is R_y(-a) H (models/goal.yaw_of_heading)
    a = turn / T
    extra = torch.tensor([[math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0], [math.sin(a), 0.0, math.cos(a)]],
                         dtype=torch.float64)
    delta = rot6d_to_matrix(features[:, HEADING_DELTA].double())
    out[:, HEADING_DELTA] = matrix_to_rot6d(extra @ delta).to(features.dtype)
    return out


def steer_latent(features: torch.Tensor, heading: torch.Tensor, translation: torch.Tensor, goal_xz, frames_left,
                 limits: SteeringLimits) -> torch.Tensor:
    """steer_frames from the engine's root state: heading (3, 3), translation (3,)."""
    yaw = float(yaw_of_heading(heading.double()))
    return steer_frames(features, (float(translation[0]), float(translation[2])), yaw, goal_xz, frames_left, limits)
