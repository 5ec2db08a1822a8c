"""Goal steering: a bounded warp of the root motion the model proposes, toward the stream's goal.

A text-to-motion model walks wherever its sampling takes it; a goal-trained one turns toward its goal
only roughly (docs/goals.md). The rest is closed here, as game engines do it with motion warping of
root motion: each latent's frames keep their body pose, and only the root's
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
    turn_rate: float = 3.0                 # extra yaw, rad/s (half a turn in about a second)
    speed_range: tuple[float, float] = (0.5, 2.5)   # scale of the model's floor speed
    response_s: float = 0.25               # the heading error is closed over about this long
    min_speed: float = 0.15                # m/s: below it the motion is taken as standing, not warped
    walk_speed: float = 0.6                # m/s: from here on the full turn; between the two, a share of it
    settle_m: float = 0.3                  # nearer than this to the goal, the turn fades out (no spinning on
                                           # the spot when the goal is underfoot)
    max_curvature: float = 2.0             # rad per metre of recent travel (no path tighter than 0.5 m
                                           # radius, or its own): a motion that barely travels is barely turned
    full_turn_urgency: float = 1.0         # the turn is full once the goal needs this share of the walk's
                                           # reach before the deadline; with slack, proportionally less

    def validate(self) -> None:
        lo, hi = self.speed_range
        for name, v in (("turn_rate", self.turn_rate), ("speed_range[0]", lo), ("speed_range[1]", hi),
                        ("response_s", self.response_s), ("min_speed", self.min_speed),
                        ("walk_speed", self.walk_speed), ("settle_m", self.settle_m),
                        ("max_curvature", self.max_curvature), ("full_turn_urgency", self.full_turn_urgency)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"steering {name} must be a finite number >= 0, got {v!r}")
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"steering speed_range must have 0 < low <= 1 <= high, got {self.speed_range!r}")
        if self.walk_speed <= self.min_speed:
            raise ValueError(f"steering walk_speed must be above min_speed, got {self.walk_speed!r} <= "
                             f"{self.min_speed!r}")
        for name, v in (("response_s", self.response_s), ("full_turn_urgency", self.full_turn_urgency)):
            if v <= 0:
                raise ValueError(f"steering {name} must be > 0, got {v!r}")

    @property
    def enabled(self) -> bool:
        return self.turn_rate > 0 or tuple(self.speed_range) != (1.0, 1.0)


def world_floor_steps(features: torch.Tensor, yaw0: float, step_yaw: torch.Tensor) -> torch.Tensor:
    """Each frame's world floor step (T, 2) as (x, z), for frames (T, 272) starting from facing yaw0
    (0 = +Z, pi/2 = +X) and turning by step_yaw (T,) (theirs): the 272 root integration
    (spec §2: a frame's velocity is in the heading before its delta applies)."""
    before = yaw0 + torch.cat([step_yaw.new_zeros(1), torch.cumsum(step_yaw, 0)[:-1]])
    vx, vz = features[:, 0].double(), features[:, 1].double()
    c, s = torch.cos(before), torch.sin(before)
    return torch.stack([c * vx + s * vz, -s * vx + c * vz], dim=-1)


def steer_frames(features: torch.Tensor, root_xz: tuple[float, float], root_yaw: float,
                 goal_xz: tuple[float, float], frames_left: int | None, limits: SteeringLimits,
                 travel: tuple[float, float] | None = None) -> torch.Tensor:
    """One latent's frames (T, 272), de-normalised, warped toward the goal. Turn: an extra constant yaw
    rate that brings these frames' direction of travel onto the goal (bounded by limits.turn_rate and
    limits.max_curvature per metre travelled, which bounds the path's turn, its own and the warp's
    together: a circling walk may be straightened and turned on, not tightened; with a deadline, in
    proportion to its urgency),
    only as far as they go the way of `travel` (the recent floor step per frame in the character's own
    frame, travel_after; measured better than turning by `travel`'s own direction). Speed: the
    floor steps scaled so the progress toward the goal keeps its deadline (frames_left frames from the
    first of these; None or <= 0: no deadline, then no further than the goal), within
    limits.speed_range, reckoned on the way the recent travel made when that is less than these
    frames' (a back-and-forth motion); steps that lead away from the goal are shortened to its low end,
    and a walk more than 45 degrees off the goal slows with the cosine of that angle (it turns tighter,
    as a person does, rather than circling a goal it passes).
    Returns new frames; the input is not changed."""
    T = features.shape[0]
    delta = rot6d_to_matrix(features[:, HEADING_DELTA].double())     # each frame's turn, read once
    step_yaw = yaw_of_heading(delta)
    move = world_floor_steps(features, root_yaw, step_yaw).sum(0)
    speed = float(torch.linalg.vector_norm(move)) / T * FPS
    if speed < limits.min_speed:
        return features
    dx, dz = goal_xz[0] - root_xz[0], goal_xz[1] - root_xz[1]
    distance = math.hypot(dx, dz)
    if distance < 1e-6:
        return features
    # turn: the error between where these frames travel and where the goal is, closed over response_s;
    # the full rate from walk_speed on, fading out near the goal, and only as far as these frames go the
    # way of the recent travel (held in the character's frame, seen in the world): a step back in a
    # back-and-forth motion (side steps) is shortened below, not turned to
    mx, mz = float(move[0]), float(move[1])
    tx, tz = mx, mz
    if travel is not None and math.hypot(*travel) > 0:
        c, si = math.cos(root_yaw), math.sin(root_yaw)
        tx, tz = c * travel[0] + si * travel[1], -si * travel[0] + c * travel[1]
    error = wrap_angle(math.atan2(dx, dz) - math.atan2(mx, mz))
    share = min(1.0, (speed - limits.min_speed) / (limits.walk_speed - limits.min_speed))
    share *= min(1.0, distance / limits.settle_m) if limits.settle_m > 0 else 1.0
    if (tx, tz) != (mx, mz):
        share *= max(0.0, (mx * tx + mz * tz) / (math.hypot(mx, mz) * math.hypot(tx, tz)))
    bound = limits.turn_rate * T / FPS * share
    # the path no tighter than max_curvature along the way these frames, and the recent travel, go (or
    # than its own turn, which the warp may always undo): a motion in place (stepping, swaying) is not
    # spun round its goal, and a walk circling away from it is turned round, not only straightened.
    # With a deadline, the turn grows with the urgency (the distance against what the walk covers by
    # then at the slowest pace the speed scale allows): a walk with time to spare keeps its own path (a
    # circle still closes on its goal), a goal that needs the whole walk gets the whole turn. Both
    # measured to keep text alignment (FID), which unbounded turns cost (docs/goals.md).
    length = math.hypot(mx, mz)
    if travel is not None:
        length = min(length, T * math.hypot(*travel))
    if frames_left is not None and frames_left > 0 and length > 0:   # length 0: only the motion's own turn
        reach = max(frames_left, T) / T * length * limits.speed_range[0]   # metres by then, at the slowest
        bound *= min(1.0, distance / reach / limits.full_turn_urgency)
    own = float(step_yaw.sum())
    tightest = max(abs(own), limits.max_curvature * length)     # the path's own turn may always be undone
    turn = min(bound, tightest - own, max(-bound, -tightest - own, error * min(1.0, T / (limits.response_s * FPS))))
    # speed: the progress these frames make toward the goal, scaled to what the deadline needs
    lo, hi = limits.speed_range
    progress = (mx * dx + mz * dz) / distance
    if (tx, tz) != (mx, mz):    # a motion that went back and forth makes less way than its steps forward
        progress_made = T * (tx * dx + tz * dz) / distance
        progress_ref = min(progress, max(progress_made, progress / 4))
    else:
        progress_ref = progress
    if progress <= 1e-9:
        scale = lo
    elif frames_left is not None and frames_left > 0:
        scale = distance * T / max(frames_left, T) / progress_ref
    else:
        scale = min(1.0, distance / progress)
    scale = max(lo, min(hi, min(scale, math.cos(error)) if abs(error) > math.pi / 4 else scale))
    out = features.clone()
    out[:, VELOCITY] = features[:, VELOCITY] * scale
    # the extra yaw per frame, applied to each heading delta: both are rotations about +Y, so they
    # commute; a heading H turned by +a in facing yaw is R_y(-a) H (models/goal.yaw_of_heading)
    a = turn / T
    extra = torch.tensor([[math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0], [math.sin(a), 0.0, math.cos(a)]],
                         dtype=torch.float64)
    out[:, HEADING_DELTA] = matrix_to_rot6d(extra @ delta).to(features.dtype)
    return out


TRAVEL_MEMORY = 0.8     # per latent: the recent direction of travel spans about a second (5 latents)


def travel_after(features: torch.Tensor, travel: tuple[float, float] | None) -> tuple[float, float]:
    """The recent floor step per frame (x, z) in the character's own frame after these frames (T, 272),
    the model's own before any warp (where it means to go; held in its frame so a warped turn does not
    leave it behind): an exponential average over latents (TRAVEL_MEMORY), these frames' own mean step
    when travel is None."""
    mx, mz = (float(v) for v in features[:, VELOCITY].double().mean(0))
    if travel is None:
        return mx, mz
    return (TRAVEL_MEMORY * travel[0] + (1 - TRAVEL_MEMORY) * mx, TRAVEL_MEMORY * travel[1] + (1 - TRAVEL_MEMORY) * mz)


def steer_latent(features: torch.Tensor, heading: torch.Tensor, translation: torch.Tensor, goal_xz, frames_left,
                 limits: SteeringLimits, travel: tuple[float, float] | None = None):
    """steer_frames from the engine's root state (heading (3, 3), translation (3,)): (the frames, the
    recent travel after them)."""
    yaw = float(yaw_of_heading(heading.double()))
    out = steer_frames(features, (float(translation[0]), float(translation[2])), yaw, goal_xz, frames_left, limits,
                       travel)
    return out, travel_after(features, travel)
