"""Goal steering (runtime/steering.py): the bounded root-motion warp toward a goal.

The root path is integrated here by an independent float64 transcription of the 272 recurrence
(spec §2.1-2.2: H[t] = R_y-delta[t] @ H[t-1], the frame's floor step is H[t-1]^T (x0, 0, x1)), written
with yaw angles, not with the package's matrices; so a wrong sign or a wrong frame in the warp shows up
as a walk that misses its goal."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motionstreamer.runtime.steering import SteeringLimits, steer_frames, travel_after

FPS = 30
T = 4   # frames per latent


def frames(speed_m_s: float = 1.35, turn_rad_s: float = 0.0, sideways: bool = False, n: int = T) -> torch.Tensor:
    """n frames of a walk: floor speed forward (or to the left), turning at turn_rad_s; the heading delta
    stored as 6D rows of R_y(-a) (a = the facing's yaw increase per frame, spec: +X is the left)."""
    f = torch.zeros(n, 272)
    f[:, 0 if sideways else 1] = speed_m_s / FPS
    a = turn_rad_s / FPS
    f[:, 2], f[:, 4] = math.cos(a), -math.sin(a)
    f[:, 6] = 1.0
    f[:, 8:] = torch.linspace(-1, 1, 264)          # a body pose the warp must leave alone
    return f


def integrate(f: np.ndarray, x: float, z: float, yaw: float) -> tuple[float, float, float]:
    """Float64, yaw form of the 272 root recurrence (independent of the package)."""
    for row in np.asarray(f, np.float64):
        vx, vz = row[0], row[1]
        x += math.cos(yaw) * vx + math.sin(yaw) * vz
        z += -math.sin(yaw) * vx + math.cos(yaw) * vz
        yaw += math.atan2(-row[4], row[2])          # R_y(-a): row 0 = (cos a, 0, -sin a)
    return x, z, yaw


def walk_to(goal, seconds, limits=SteeringLimits(), latents=None, make=None, **walk):
    """A stream of latents (make(k): latent k's frames, else frames(**walk)), each warped from the root
    where the last one ended, with the recent travel carried as the engine does: the final (x, z, yaw)."""
    x = z = yaw = 0.0
    travel = None
    deadline = None if seconds is None else round(seconds * FPS)
    n = latents or -(-deadline // T)
    for k in range(n):
        left = None if deadline is None else deadline - k * T
        proposed = make(k) if make else frames(**walk)
        f = steer_frames(proposed, (x, z), yaw, goal, left, limits, travel)
        travel = travel_after(proposed, travel)
        x, z, yaw = integrate(f.numpy(), x, z, yaw)
    return x, z, yaw


@pytest.mark.parametrize("goal", [(3.0, 2.0), (-3.0, 2.0), (0.5, -3.0), (4.0, 0.0), (-1.5, 2.5)])
def test_a_walk_reaches_goals_on_every_side_at_their_deadline(goal):
    """A straight walk at 1.35 m/s reaches goals left, right, behind and ahead at a walking deadline."""
    seconds = math.hypot(*goal) / 1.2 + 1.0
    x, z, _ = walk_to(goal, seconds)
    assert math.hypot(x - goal[0], z - goal[1]) < 0.2
    # unwarped, the same walk misses each of them by metres
    x0, z0, _ = walk_to(goal, seconds, SteeringLimits(turn_rate=0.0, speed_range=(1.0, 1.0)))
    assert math.hypot(x0 - goal[0], z0 - goal[1]) > 1.0


def test_a_turning_walk_and_a_sidestep_are_brought_onto_the_goal():
    for walk in ({"turn_rad_s": 0.6}, {"turn_rad_s": -0.6}, {"sideways": True}):
        x, z, _ = walk_to((1.0, 4.0), 4.0, **walk)
        assert math.hypot(x - 1.0, z - 4.0) < 0.2, walk


def test_side_steps_that_go_back_and_forth_drift_to_the_goal():
    """Side steps: two latents to the left, one back to the right (net 0.3 m/s to the left). A goal 2.5
    m away on the right of that drift is reached by its deadline: the recent travel, not each latent's
    step, sets the turn, and the steps back are shortened; each latent alone would chase its own step."""
    def step(k):
        return frames(speed_m_s=0.9 if k % 3 < 2 else -0.9, sideways=True)
    goal = (1.5, 2.0)
    x, z, _ = walk_to(goal, 8.0, make=step)
    assert math.hypot(x - goal[0], z - goal[1]) < 0.3
    x0, z0, _ = walk_to(goal, 8.0, SteeringLimits(turn_rate=0.0, speed_range=(1.0, 1.0)), make=step)
    assert math.hypot(x0 - goal[0], z0 - goal[1]) > 1.5


def test_steps_away_from_the_goal_are_shortened_and_a_walk_off_its_goal_slows():
    base = frames()
    lim = SteeringLimits(speed_range=(0.4, 1.3))
    away = steer_frames(base, (0.0, 0.0), 0.0, (0.0, -3.0), 60, lim)
    assert float(away[0, 1] / base[0, 1]) == pytest.approx(0.4, rel=1e-6)
    # 60 degrees off (the goal to the left, +X): slowed to cos 60 = 0.5 although the deadline asks more
    off = steer_frames(base, (0.0, 0.0), 0.0, (3 * math.sin(math.pi / 3), 3 * math.cos(math.pi / 3)), 60, lim)
    assert float(off[0, 1] / base[0, 1]) == pytest.approx(0.5, rel=1e-4)
    # 30 degrees off: not slowed, the deadline's scale (capped at the high end)
    near = steer_frames(base, (0.0, 0.0), 0.0, (3 * math.sin(math.pi / 6), 3 * math.cos(math.pi / 6)), 40, lim)
    assert float(near[0, 1] / base[0, 1]) == pytest.approx(1.3, rel=1e-6)


def test_a_goal_without_deadline_is_reached_not_circled():
    """No deadline: the walk turns onto goals on every side, behind included, and stops circling: it
    comes within 0.3 m (the default tolerance) of each."""
    for goal in ((2.5, 0.0), (-2.5, 0.3), (0.4, -2.5), (1.8, 1.8)):
        x = z = yaw = 0.0
        travel, best = None, math.inf
        for _ in range(120):
            f = steer_frames(frames(), (x, z), yaw, goal, None, SteeringLimits(), travel)
            travel = travel_after(frames(), travel)
            x, z, yaw = integrate(f.numpy(), x, z, yaw)
            best = min(best, math.hypot(x - goal[0], z - goal[1]))
        assert best < 0.3, (goal, best)


def extra_yaw(before: torch.Tensor, after: torch.Tensor) -> float:
    """The turn a warp added over a latent, from the 6D rows (R_y(-a): row 0 = (cos a, 0, -sin a))."""
    return sum(math.atan2(-r[4], r[2]) for r in after.double().numpy()) - \
        sum(math.atan2(-r[4], r[2]) for r in before.double().numpy())


def test_the_turn_fades_near_the_goal_and_skips_steps_against_the_recent_travel():
    base = frames(speed_m_s=2.0)            # fast enough that turn_rate, not max_curvature, bounds the turn
    full = extra_yaw(base, steer_frames(base, (0.0, 0.0), 0.0, (3.0, 0.0), None, SteeringLimits()))
    near = extra_yaw(base, steer_frames(base, (0.0, 0.0), 0.0, (0.15, 0.0), None, SteeringLimits()))
    assert full == pytest.approx(3.0 * T / FPS, rel=1e-5)          # 90 degrees off: the whole bound
    assert near == pytest.approx(full * 0.15 / 0.3, rel=1e-5)      # within settle_m: its share
    # a step back (against the recent travel, forward in the character's frame) is not turned; with the
    # travel along it, it is
    back = frames(speed_m_s=-2.0)
    against = steer_frames(back, (0.0, 0.0), 0.0, (3.0, 0.0), None, SteeringLimits(), travel=(0.0, 2.0 / FPS))
    along = steer_frames(back, (0.0, 0.0), 0.0, (3.0, 0.0), None, SteeringLimits(), travel=(0.0, -2.0 / FPS))
    assert extra_yaw(back, against) == pytest.approx(0.0, abs=1e-9)
    assert abs(extra_yaw(back, along)) == pytest.approx(3.0 * T / FPS, rel=1e-5)


def test_the_turn_is_no_tighter_than_max_curvature_along_the_recent_travel():
    """Turn per latent <= max_curvature * the metres travelled (these frames' and the recent travel's, the
    smaller): probed on both sides of the switch between the two bounds, and for a motion in place."""
    goal = (3.0, 0.0)                                   # 90 degrees to the left, no deadline
    for speed, bound in ((1.35, 2.0 * 1.35 * T / FPS),  # walking: 0.36 rad, under turn_rate's 0.4
                         (1.6, 3.0 * T / FPS),          # 2 rad/m * 0.213 m = 0.427 > 0.4: turn_rate bounds
                         (0.3, 2.0 * 0.3 * T / FPS)):   # slow: 0.08 rad, under turn_rate's share (0.133)
        f = frames(speed_m_s=speed)
        assert extra_yaw(f, steer_frames(f, (0.0, 0.0), 0.0, goal, None, SteeringLimits())) == \
            pytest.approx(bound, rel=1e-5), speed
    loose = SteeringLimits(max_curvature=100.0)
    f = frames()
    assert extra_yaw(f, steer_frames(f, (0.0, 0.0), 0.0, goal, None, loose)) == pytest.approx(3.0 * T / FPS, rel=1e-5)
    # stepping in place: these frames move at 1.35 m/s, the recent travel at 0.1 m/s -> 2 * 0.1 * 4/30
    stepping = steer_frames(f, (0.0, 0.0), 0.0, goal, None, SteeringLimits(), travel=(0.0, 0.1 / FPS))
    assert extra_yaw(f, stepping) == pytest.approx(2.0 * 0.1 * T / FPS, rel=1e-5)


def test_a_walk_that_circles_may_be_straightened_and_turned_but_not_tightened():
    """max_curvature bounds the path's own turn plus the warp's, not the warp's alone: a walk circling
    left at 2 rad/m (1 m/s, 2 rad/s: the bound) gets no more turn to the left, but to the right the
    warp may undo its circle and turn on by turn_rate. Bounding the added turn alone only cancelled
    the circle, and the walk went straight wherever it pointed (seen on the test split: 4.8 m off)."""
    circling = frames(speed_m_s=1.0, turn_rad_s=2.0)            # 0.267 rad per latent to the left
    own = 2.0 * T / FPS
    left, right = (3.0, 0.5), (-3.0, 0.5)                       # +X is the character's left
    assert extra_yaw(circling, steer_frames(circling, (0.0, 0.0), 0.0, left, None, SteeringLimits())) == \
        pytest.approx(0.0, abs=1e-9)
    assert extra_yaw(circling, steer_frames(circling, (0.0, 0.0), 0.0, right, None, SteeringLimits())) == \
        pytest.approx(-3.0 * T / FPS, rel=1e-5)                 # all of turn_rate (0.4 rad > own)
    # a turn_rate beyond twice the circle: no tighter to the right than 2 rad/m either
    fast = SteeringLimits(turn_rate=10.0)
    assert extra_yaw(circling, steer_frames(circling, (0.0, 0.0), 0.0, right, None, fast)) == \
        pytest.approx(-2 * own, rel=1e-5)
    # a stream of such latents reaches a goal on its right and one behind
    for goal in ((-2.5, 2.0), (0.5, -3.0)):
        x, z, _ = walk_to(goal, 7.0, speed_m_s=1.0, turn_rad_s=2.0)
        assert math.hypot(x - goal[0], z - goal[1]) < 0.3, goal


def test_a_deadline_with_time_to_spare_turns_less():
    """The turn scales with urgency = distance / (seconds left * the walk's speed * the speed scale's low
    end): the slack the speed scale cannot take up. Full from full_turn_urgency. A walk at 1.6 m/s
    (turn_rate bounds: 0.4 rad) to a goal 3 m to its left; at the slowest (0.5x) it covers 0.8 m/s."""
    f = frames(speed_m_s=1.6)
    def turn(seconds, **lim):
        return extra_yaw(f, steer_frames(f, (0.0, 0.0), 0.0, (3.0, 0.0), round(seconds * FPS), SteeringLimits(**lim)))
    full = 3.0 * T / FPS
    assert turn(3.0) == pytest.approx(full, rel=1e-5)                  # urgency 3 / 2.4 = 1.25: full
    assert turn(3.75) == pytest.approx(full, rel=1e-4)                 # urgency 1: still full
    assert turn(12.0) == pytest.approx(full * 3.0 / 9.6, rel=1e-4)     # urgency 0.3125
    assert turn(12.0, full_turn_urgency=0.25) == pytest.approx(full, rel=1e-5)
    assert turn(12.0, full_turn_urgency=0.5) == pytest.approx(full * 0.3125 / 0.5, rel=1e-4)
    assert turn(12.0, speed_range=(1.0, 2.0)) == pytest.approx(full * 3.0 / 19.2, rel=1e-4)


def test_the_turn_and_the_speed_stay_within_their_limits():
    """Each latent: the extra yaw at most turn_rate * T / FPS (and a large error uses all of it), the
    speed scaled within speed_range, probed on both sides (a goal wanting 3x, one wanting 0.2x)."""
    lim = SteeringLimits(turn_rate=1.5, speed_range=(0.6, 1.6))
    base = frames()
    behind = steer_frames(base, (0.0, 0.0), 0.0, (0.0, -5.0), 30, lim)
    extra = sum(math.atan2(-r[4], r[2]) for r in behind.double().numpy())
    assert extra == pytest.approx(1.5 * T / FPS, rel=1e-5) or extra == pytest.approx(-1.5 * T / FPS, rel=1e-5)
    far = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 12.0), 3 * FPS, lim)        # needs 4 m/s: 3x
    near = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 1.0), 4 * FPS, lim)        # needs 0.25 m/s
    exact = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 3.0), 2 * FPS, lim)       # needs 1.5 m/s: 1.11x
    assert float(far[0, 1] / base[0, 1]) == pytest.approx(1.6, rel=1e-6)
    assert float(near[0, 1] / base[0, 1]) == pytest.approx(0.6, rel=1e-6)
    assert float(exact[0, 1] / base[0, 1]) == pytest.approx(1.5 / 1.35, rel=1e-4)


def test_body_pose_is_untouched_and_standing_is_not_dragged():
    base = frames()
    out = steer_frames(base, (0.0, 0.0), 0.0, (2.0, 1.0), 60, SteeringLimits())
    assert torch.equal(out[:, 8:], base[:, 8:]) and not torch.equal(out[:, :8], base[:, :8])
    standing = frames(speed_m_s=0.1)            # below min_speed 0.15 m/s
    assert torch.equal(steer_frames(standing, (0.0, 0.0), 0.0, (2.0, 1.0), 60, SteeringLimits()), standing)
    slow = frames(speed_m_s=0.2)                # above it: warped
    assert not torch.equal(steer_frames(slow, (0.0, 0.0), 0.0, (2.0, 1.0), 60, SteeringLimits()), slow)


def test_no_deadline_slows_only_so_as_not_to_pass_the_goal():
    base = frames()
    far = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 5.0), None, SteeringLimits())
    assert torch.equal(far[:, :2], base[:, :2])                 # 5 m ahead: the walk's own speed
    close = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 0.15), None, SteeringLimits())
    assert float(close[0, 1] / base[0, 1]) == pytest.approx(0.15 / (4 * 1.35 / FPS), rel=1e-4)
    past = steer_frames(base, (0.0, 0.0), 0.0, (0.0, 5.0), -8, SteeringLimits())   # deadline gone
    assert torch.equal(past[:, :2], base[:, :2])


@pytest.mark.parametrize("bad, field", [({"turn_rate": float("nan")}, "turn_rate"),
                                        ({"turn_rate": -1.0}, "turn_rate"),
                                        ({"speed_range": (0.0, 1.5)}, "speed_range"),
                                        ({"speed_range": (1.1, 1.5)}, "speed_range"),
                                        ({"speed_range": (0.5, 0.9)}, "speed_range"),
                                        ({"response_s": 0.0}, "response_s"),
                                        ({"min_speed": 0.7}, "walk_speed"),
                                        ({"settle_m": float("inf")}, "settle_m"),
                                        ({"max_curvature": -0.5}, "max_curvature"),
                                        ({"max_curvature": float("nan")}, "max_curvature"),
                                        ({"full_turn_urgency": 0.0}, "full_turn_urgency"),
                                        ({"full_turn_urgency": float("inf")}, "full_turn_urgency")])
def test_bad_limits_are_named(bad, field):
    with pytest.raises(ValueError, match=field):
        SteeringLimits(**bad).validate()
    SteeringLimits().validate()
