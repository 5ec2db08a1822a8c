"""Legs and gaits: two-link leg IK placing the feet on their targets, and footstep-planned gaits
(the pelvis follows the planned path, stance feet stay pinned, swing feet travel to the next step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motionstreamer import FPS
from motionstreamer.representation.skeleton import SMPL_OFFSETS

from .body import (
    ANKLES,
    HIPS,
    KNEES,
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_TOE,
    NECK,
    PELVIS,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_TOE,
    SPINE1,
    SPINE3,
    TOES,
    Controls,
    X,
    Y,
    Z,
    euler_xyz,
    mask_runs,
    smoothstep,
)


@dataclass
class Leg:
    """One leg of the scaled SMPL skeleton, for analytic inverse kinematics."""
    hip: np.ndarray        # (3,) hip joint relative to the pelvis (pelvis frame)
    thigh: np.ndarray      # (3,) hip -> knee at rest
    shank: np.ndarray      # (3,) knee -> ankle at rest
    ankle_height: float    # ankle height above the floor with the foot flat (toe joint on the floor)
    reach: float           # hip -> ankle distance at the straightest allowed knee

    @classmethod
    def of(cls, side: int, scale: float) -> "Leg":
        hip, knee, ankle, toe = (L_HIP, L_KNEE, L_ANKLE, L_TOE) if side == 0 else (R_HIP, R_KNEE, R_ANKLE, R_TOE)
        o = SMPL_OFFSETS * scale
        thigh, shank = o[knee], o[ankle]
        leg = cls(o[hip], thigh, shank, float(-o[toe][1]), 0.0)
        leg.reach = float(np.linalg.norm(thigh + euler_xyz(np.array([MIN_KNEE, 0.0, 0.0])) @ shank))
        return leg

    @property
    def width(self) -> float:
        """Lateral ankle position at rest (relative to the pelvis)."""
        return float(self.hip[0] + self.thigh[0] + self.shank[0])


MIN_KNEE = 0.03     # no hyper-extension


def leg_ik(leg: Leg, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hip flexion (X), hip abduction (Z) and knee flexion (X) that put the ankle at `target`
    ((T, 3), relative to the hip joint, pelvis frame), with R_hip = Rx @ Rz as in euler_xyz.
    Out-of-reach targets are pulled in along their direction."""
    t, s = leg.thigh, leg.shank
    d = np.linalg.norm(target, axis=-1)
    lo = np.linalg.norm(t + euler_xyz(np.array([2.6, 0.0, 0.0])) @ s)
    d = np.clip(d, lo, leg.reach * 0.9999)
    ty, tz, sy, sz = t[1], t[2], s[1], s[2]
    cos_k = (d**2 - t @ t - s @ s - 2 * t[0] * s[0]) / (2 * np.hypot(ty, tz) * np.hypot(sy, sz))
    knee = np.arctan2(tz, ty) - np.arctan2(sz, sy) + np.arccos(np.clip(cos_k, -1.0, 1.0))
    knee = (knee + np.pi) % (2 * np.pi) - np.pi
    knee = np.maximum(knee, MIN_KNEE)
    ck, sk = np.cos(knee), np.sin(knee)
    w = np.stack([np.full_like(knee, t[0] + s[0]), ty + sy * ck - sz * sk, tz + sy * sk + sz * ck], -1)
    target = target / np.linalg.norm(target, axis=-1, keepdims=True) * np.linalg.norm(w, axis=-1, keepdims=True)
    r, delta = np.hypot(w[:, 0], w[:, 1]), np.arctan2(w[:, 1], w[:, 0])
    abd = -np.arccos(np.clip(target[:, 0] / r, -1.0, 1.0)) - delta
    abd = (abd + np.pi) % (2 * np.pi) - np.pi
    ca, sa = np.cos(abd), np.sin(abd)
    wy = w[:, 0] * sa + w[:, 1] * ca                       # (Rz(abd) w).y ; .z is unchanged
    flex = np.arctan2(target[:, 2], target[:, 1]) - np.arctan2(w[:, 2], wy)
    flex = (flex + np.pi) % (2 * np.pi) - np.pi
    return flex, abd, knee


def place_feet(c: Controls, feet: np.ndarray, height: np.ndarray, scale: float) -> None:
    """Set hips and knees so the ankles reach `feet` ((T, 2, 3): x lateral, y height of the ankle
    above the floor, z forward, relative to the pelvis's floor projection, heading-free frame).

    The pelvis sits at `height` above the floor, lowered where needed so every weight-bearing foot is
    within reach (the compass-gait bob). The pelvis tilt is taken from c.angles as it stands."""
    R = euler_xyz(c.angles[:, PELVIS])                                 # (T, 3, 3) pelvis tilt
    legs = [Leg.of(0, scale), Leg.of(1, scale)]
    H = height.copy()
    for side, leg in enumerate(legs):
        o = R @ leg.hip                                                # hip joint, heading-free frame
        dx, dz = feet[:, side, 0] - o[:, 0], feet[:, side, 2] - o[:, 2]
        top = feet[:, side, 1] - o[:, 1] + np.sqrt(np.maximum((0.999 * leg.reach) ** 2 - dx**2 - dz**2, 0.0))
        bearing = c.contact[:, side] > 0.5
        H = np.where(bearing, np.minimum(H, top), H)
    H = smooth_below(H, 2)
    for side, leg in enumerate(legs):
        rel = feet[:, side] - np.stack([np.zeros_like(H), H, np.zeros_like(H)], -1)   # ankle - pelvis
        local = np.einsum("tba,tb->ta", R, rel) - leg.hip               # pelvis frame, from the hip joint
        flex, abd, knee = leg_ik(leg, local)
        hip, kn = HIPS[side], KNEES[side]
        c.angles[:, hip, X], c.angles[:, hip, Z], c.angles[:, kn, X] = flex, abd, knee
        c.angles[:, hip, Y] = 0.0


def smooth_below(x: np.ndarray, w: int) -> np.ndarray:
    """A smooth curve that never exceeds x: running minimum over +-w frames, then a +-w box blur."""
    if len(x) < 2 * w + 1:
        return np.full_like(x, x.min())
    pad = np.pad(x, w, mode="edge")
    low = np.lib.stride_tricks.sliding_window_view(pad, 2 * w + 1).min(axis=1)
    pad = np.pad(low, w, mode="edge")
    return np.convolve(pad, np.ones(2 * w + 1) / (2 * w + 1), mode="valid")


def standing_height(scale: float) -> float:
    """Pelvis height above the floor when standing with nearly straight knees."""
    legs = [Leg.of(s, scale) for s in (0, 1)]
    return min(l.ankle_height - l.hip[1] + 0.985 * l.reach for l in legs)


def standing_feet(T: int, scale: float) -> np.ndarray:
    """Ankle targets (T, 2, 3) of a relaxed stance: under the hips, feet flat."""
    legs = [Leg.of(s, scale) for s in (0, 1)]
    f = np.zeros((T, 2, 3))
    for side, leg in enumerate(legs):
        f[:, side, 0] = leg.width
        f[:, side, 1] = leg.ankle_height
    return f


@dataclass
class Gait:
    speed: float         # m/s along the body's forward axis (< 0: backwards)
    cadence: float       # gait cycles per second (two steps per cycle)
    duty: float          # stance fraction of a cycle (> 0.5 walking, < 0.5 running: flight phases)
    clearance: float     # swing-foot lift (m)
    crouch: float        # pelvis lowered by this fraction of the standing height
    arm: float           # shoulder swing amplitude (rad)
    elbow: float         # elbow bend
    lean: float          # forward trunk lean
    land: float = 0.5    # part of the stance excursion in front of the hip (the foot lands closer than it leaves)
    heel: float = 0.0    # heel rise at push-off (rad of plantarflexion, the toe stays planted)
    pelvis_turn: float = 0.07   # pelvic rotation amplitude (rad) with each step


def _planned_path(c: Controls, amount: np.ndarray, g: Gait, pad: int):
    """Pelvis XZ path and heading in the clip's own frame, integrated exactly as `integrate` does
    (heading[t] = sum of yaw_rate before t; step t -> t+1 = Ry(heading[t]) v[t] / FPS), on frames
    extended by `pad` at both ends (edge values) so stance phases cut by the clip still have footsteps."""
    yaw = np.pad(c.yaw_rate, pad, mode="edge")
    v = np.pad(amount, pad, mode="edge") * g.speed
    heading = np.concatenate([[0.0], np.cumsum(yaw[:-1])]) / FPS
    heading -= heading[pad]
    step = np.stack([np.sin(heading) * v, np.cos(heading) * v], -1)[:-1] / FPS
    path = np.concatenate([np.zeros((1, 2)), np.cumsum(step, axis=0)])
    return path - path[pad], heading


def gait(c: Controls, phase: np.ndarray, amount: np.ndarray, g: Gait, scale: float) -> None:
    """Trunk, arms and legs of a walk/jog/run at `amount` (0 = standing, 1 = full gait), with c.yaw_rate
    already set. Footstep planning: the pelvis follows the integrated path; each stance foot is pinned
    to a footstep on the floor (under the hip when u = land * duty); a swing foot travels from one
    footstep to the next, leaving and landing at zero ground speed. The integrator takes the planned
    root velocity (drive = 1), so feet never slide, in ramps, curves and turns alike."""
    a = c.angles
    T = len(phase)
    pad = int(np.ceil(FPS / g.cadence)) + 2
    path, heading = _planned_path(c, amount, g, pad)
    frames = np.arange(-pad, T + pad, dtype=float)
    ph = phase[0] + g.cadence * frames / FPS                # phase is linear: phase0 + cadence * t
    amt = np.pad(amount, pad, mode="edge")
    sin_h, cos_h = np.sin(heading), np.cos(heading)
    feet = np.zeros((T, 2, 3))
    foot_yaw = np.zeros((T, 2))                          # foot heading relative to the body heading
    norm = {}
    for side, off in ((0, 0.0), (1, 0.5)):
        leg = Leg.of(side, scale)
        u = (ph + off) % 1.0
        in_stance = u < g.duty
        # footsteps: where the hip is (plus the lateral stance width) when u = land * duty
        starts = [s for s, _ in mask_runs(in_stance)]
        t_star = np.array([s - u[s] / g.cadence * FPS + g.land * g.duty / g.cadence * FPS for s in starts])
        if len(t_star) == 0:
            t_star = np.array([frames[0] + pad])
        hx, hz = (np.interp(t_star, np.arange(len(frames)), path[:, 0]),
                  np.interp(t_star, np.arange(len(frames)), path[:, 1]))
        hh = np.interp(t_star, np.arange(len(frames)), heading)
        steps = np.stack([hx + np.cos(hh) * leg.width, hz - np.sin(hh) * leg.width], -1)   # (K, 2) world XZ
        # which footstep each frame is on / travelling to
        k_next = np.searchsorted(np.array(starts), np.arange(len(frames)), side="right")   # runs started so far
        on = np.clip(k_next - 1, 0, len(steps) - 1)
        nxt = np.clip(k_next, 0, len(steps) - 1)
        s_swing = np.clip((u - g.duty) / (1 - g.duty), 0, 1)
        mix = np.where(in_stance, 0.0, smoothstep(s_swing))[:, None]
        world = (1 - mix) * steps[on] + mix * steps[nxt]
        foot_yaw[:, side] = ((1 - mix[:, 0]) * hh[on] + mix[:, 0] * hh[nxt] - heading)[pad:pad + T]
        rel = world - path                                                     # world XZ relative to pelvis
        fx = cos_h * rel[:, 0] - sin_h * rel[:, 1]                              # into the heading frame
        fz = sin_h * rel[:, 0] + cos_h * rel[:, 1]
        lift = np.where(in_stance, 0.0, g.clearance * np.sin(np.pi * s_swing ** 0.7) ** 2) * amt
        heel = amt * g.heel * np.where(in_stance, smoothstep((u / g.duty - 0.55) / 0.45),
                                       1 - smoothstep(s_swing / 0.35))
        toe = SMPL_OFFSETS[TOES[side]] * scale            # the toe pivots on the floor: (I - Rx(heel)) toe
        rise_y = toe[1] - (toe[1] * np.cos(heel) - toe[2] * np.sin(heel))
        rise_z = toe[2] - (toe[1] * np.sin(heel) + toe[2] * np.cos(heel))
        sl = slice(pad, pad + T)
        feet[:, side] = np.stack([fx, leg.ankle_height + lift + rise_y, fz + rise_z], -1)[sl]
        a[:, ANKLES[side], X] += heel[sl]
        c.contact[:, side] = (amount * in_stance[sl] + (1 - amount))
        reach = max(abs(g.speed) * g.duty / g.cadence, 1e-6) * 0.5
        norm[side] = (np.clip((fz[sl] - (g.land - 0.5) * 2 * reach * np.sign(g.speed)) / reach, -1, 1)
                      * (1 if g.speed >= 0 else -1))
    n_l, n_r = norm[0] * amount, norm[1] * amount        # +1 when that foot is furthest forward
    a[:, L_SHOULDER, X] += -g.arm * n_r                  # arms swing against the opposite leg
    a[:, R_SHOULDER, X] += -g.arm * n_l
    a[:, L_ELBOW, Y] += -amount * g.elbow - 0.15 * max(g.elbow, 0.3) * n_r
    a[:, R_ELBOW, Y] += amount * g.elbow + 0.15 * max(g.elbow, 0.3) * n_l
    a[:, PELVIS, Y] += -g.pelvis_turn * (n_l - n_r) / 2  # pelvis turns with the forward leg, chest against it
    a[:, SPINE3, Y] += 1.4 * g.pelvis_turn * (n_l - n_r) / 2
    a[:, ANKLES, Y] += foot_yaw                          # a planted foot keeps its heading on the floor
    a[:, PELVIS, X] += amount * g.lean * 0.4
    a[:, SPINE1, X] += amount * g.lean * 0.6
    a[:, NECK, X] += -amount * g.lean * 0.5               # keep looking ahead
    c.velocity[:, 1] = amount * g.speed
    c.drive[:] = 1.0
    height = standing_height(scale) * (1 - amount * g.crouch)
    place_feet(c, feet, height, scale)


def gait_phase(t: np.ndarray, cadence: float, phase0: float | None, rng) -> np.ndarray:
    p0 = rng.uniform(0, 1) if phase0 is None else phase0
    return p0 + cadence * t
