"""Procedural motions on the SMPL 22-joint skeleton with paraphrased captions.

Every action writes per-frame *controls*: parent-local joint angles (Euler, R = Rx @ Ry @ Rz; the
ankles' angles are the foot's orientation on the floor, 0 = flat), the yaw rate, how much each foot
bears weight, a root velocity and whether that velocity drives the root. Two ways to move:

- gaits (walk, jog, run, backwards, circles, turns in place) plan footsteps: the pelvis follows the
  integrated path, each stance foot is pinned to its footstep on the floor, a swing foot travels to
  the next one, and analytic two-link leg IK places the ankles (lowering the pelvis where a planted
  foot would be out of reach: the gait's natural bob). The root follows the planned path;
- everything else (jumps, squats, kicks, waves, sitting, side steps) moves joint angles, and the root
  moves so that the weight-bearing toes stay where they are, keeping its velocity while airborne.

The root height puts the lowest foot on the floor; airborne stretches follow a ballistic arc. Global
joints come from forward kinematics with the pelvis rotation Ry(heading) @ tilt, so joints and
rotations are consistent by construction. Transitions cross-fade the controls (gait phases aligned,
longer fades for bigger pose changes), so streams are continuous. Deterministic for a seed (numpy
Generator only).

Writers: `make_dataset` writes the HumanML3D-272 layout, and with stream pairs also the BABEL-stream
layout (`babel_stream/`) and a BABEL-272 layout of the stream segments (`babel_272/`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from motionstreamer.representation.skeleton import SMPL_OFFSETS, forward_kinematics

FPS = 30
GRAVITY = 9.81
VERSION = 2

# joint indices (SMPL order)
(PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3, L_TOE, R_TOE, NECK,
 L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST) = range(22)
HIPS, KNEES, ANKLES, TOES = (L_HIP, R_HIP), (L_KNEE, R_KNEE), (L_ANKLE, R_ANKLE), (L_TOE, R_TOE)
FEET = (L_ANKLE, R_ANKLE, L_TOE, R_TOE)
X, Y, Z = 0, 1, 2
# Sign conventions (parent frame, Y up, +Z forward, +X the body's left):
#   hip/shoulder X < 0 swings the limb forward; knee X > 0 flexes; ankle X > 0 points the toes down;
#   spine/pelvis X > 0 leans forward; left hip Z > 0 / right hip Z < 0 abducts;
#   left shoulder Z < 0 / right Z > 0 lowers the arm from the T-pose; elbow flexion is Y (left -, right +).


@dataclass
class Controls:
    angles: np.ndarray      # (T, 22, 3) Euler X, Y, Z (R = Rx Ry Rz); joint 0 = pelvis tilt, heading excluded
    yaw_rate: np.ndarray    # (T,) rad/s, > 0 turns left
    contact: np.ndarray     # (T, 2) how much the left / right foot bears weight (0..1)
    velocity: np.ndarray    # (T, 2) body-frame root velocity (lateral +x left, forward +z), m/s: the planned
                            # path when drive = 1, else added while airborne (a jump's launch)
    drive: np.ndarray       # (T,) 1: the root moves at `velocity` (planned gaits); 0: the planted feet move it
    phase: np.ndarray | None = None  # (T,) gait phase in cycles, for aligning gaits in transitions

    @classmethod
    def standing(cls, T: int) -> "Controls":
        return cls(np.zeros((T, 22, 3)), np.zeros(T), np.ones((T, 2)), np.zeros((T, 2)), np.zeros(T))

    def __len__(self) -> int:
        return self.angles.shape[0]


# ----------------------------------------------------------------------------- small helpers
def smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def keyframes(t: np.ndarray, times, values) -> np.ndarray:
    """Piecewise smoothstep interpolation through (times[k], values[k]); constant outside."""
    times = np.asarray(times, dtype=float)
    values = np.asarray(values, dtype=float)
    k = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    t0, t1 = times[k], times[k + 1]
    u = smoothstep((t - t0) / np.maximum(t1 - t0, 1e-9))
    return values[k] + (values[k + 1] - values[k]) * u


def envelope(T: int, ramp_in: int, ramp_out: int) -> np.ndarray:
    """1 in the middle with smooth ramps from/to 0 at the ends (0 frames = no ramp)."""
    i = np.arange(T, dtype=float)
    e = np.ones(T)
    if ramp_in > 0:
        e *= smoothstep(i / ramp_in)
    if ramp_out > 0:
        e *= smoothstep((T - 1 - i) / ramp_out)
    return e


def euler_xyz(a: np.ndarray) -> np.ndarray:
    """(..., 3) angles -> (..., 3, 3) = Rx(a0) @ Ry(a1) @ Rz(a2)."""
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    m = np.empty(a.shape[:-1] + (3, 3))
    m[..., 0, 0] = cy * cz
    m[..., 0, 1] = -cy * sz
    m[..., 0, 2] = sy
    m[..., 1, 0] = sx * sy * cz + cx * sz
    m[..., 1, 1] = -sx * sy * sz + cx * cz
    m[..., 1, 2] = -sx * cy
    m[..., 2, 0] = -cx * sy * cz + sx * sz
    m[..., 2, 1] = cx * sy * sz + sx * cz
    m[..., 2, 2] = cx * cy
    return m


def rot_y(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(np.shape(angle) + (3, 3))
    m[..., 0, 0], m[..., 0, 2], m[..., 1, 1], m[..., 2, 0], m[..., 2, 2] = c, s, 1.0, -s, c
    return m


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


# ----------------------------------------------------------------------------- posture layers
def rest_pose(c: Controls, p: dict) -> None:
    """Arms down beside the body and the clip's own posture (a per-clip 'style')."""
    a = c.angles
    a[:, L_SHOULDER, Z] += -p["arm_down"]
    a[:, R_SHOULDER, Z] += p["arm_down"]
    a[:, L_ELBOW, Y] += -0.15
    a[:, R_ELBOW, Y] += 0.15
    a += p["posture"][None]


def idle_motion(c: Controls, t: np.ndarray, p: dict, amount: np.ndarray | float = 1.0) -> None:
    """Breathing, slow look-around and weight shifts; both feet planted."""
    a, ph = c.angles, p["idle_phase"]
    a[:, SPINE3, X] += amount * 0.02 * np.sin(2 * np.pi * 0.25 * t + ph[0])
    a[:, NECK, Y] += amount * 0.2 * p["look"] * np.sin(2 * np.pi * 0.11 * t + ph[1])
    a[:, HEAD, X] += amount * 0.06 * np.sin(2 * np.pi * 0.17 * t + ph[2])
    shift = amount * 0.05 * p["sway"] * np.sin(2 * np.pi * 0.2 * t + ph[3])
    a[:, L_HIP, Z] += shift                # parallel legs: the pelvis shifts sideways over the feet
    a[:, R_HIP, Z] += shift
    a[:, SPINE1, Z] -= shift
    twist = amount * 0.03 * p["sway"] * np.sin(2 * np.pi * 0.13 * t + ph[1])   # small twists of the hips,
    a[:, PELVIS, Y] += twist                                                    # the legs keep facing ahead
    a[:, L_HIP, Y] -= twist
    a[:, R_HIP, Y] -= twist
    a[:, (L_SHOULDER, R_SHOULDER), X] += amount * 0.04 * np.sin(2 * np.pi * 0.3 * t + ph[4])[:, None]


LEG_JOINTS = (PELVIS, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE, L_TOE, R_TOE)
UPPER_BODY = np.ones(22)
UPPER_BODY[list(LEG_JOINTS)] = 0.0


def style_noise(c: Controls, t: np.ndarray, p: dict) -> None:
    """Slow, small wobble of the upper body so no two clips are exactly alike (legs are left alone:
    they carry the weight and are placed exactly)."""
    amp, freq, ph = p["noise"]
    amp = amp * UPPER_BODY[:, None]
    c.angles += amp[None] * np.sin(2 * np.pi * freq[None] * t[:, None, None] + ph[None])


# ----------------------------------------------------------------------------- legs: foot targets + IK
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


# ----------------------------------------------------------------------------- gait
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
        starts = [s for s, _ in _runs(in_stance)]
        t_star = np.array([s - u[s] / g.cadence * FPS + g.land * g.duty / g.cadence * FPS for s in starts])
        if len(t_star) == 0:
            t_star = np.array([frames[0] + pad])
        hx, hz = np.interp(t_star, np.arange(len(frames)), path[:, 0]), np.interp(t_star, np.arange(len(frames)), path[:, 1])
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
        heel = amt * g.heel * np.where(in_stance, smoothstep((u / g.duty - 0.55) / 0.45), 1 - smoothstep(s_swing / 0.35))
        toe = SMPL_OFFSETS[TOES[side]] * scale            # the toe pivots on the floor: (I - Rx(heel)) toe
        rise_y = toe[1] - (toe[1] * np.cos(heel) - toe[2] * np.sin(heel))
        rise_z = toe[2] - (toe[1] * np.sin(heel) + toe[2] * np.cos(heel))
        sl = slice(pad, pad + T)
        feet[:, side] = np.stack([fx, leg.ankle_height + lift + rise_y, fz + rise_z], -1)[sl]
        a[:, ANKLES[side], X] += heel[sl]
        c.contact[:, side] = (amount * in_stance[sl] + (1 - amount))
        reach = max(abs(g.speed) * g.duty / g.cadence, 1e-6) * 0.5
        norm[side] = np.clip((fz[sl] - (g.land - 0.5) * 2 * reach * np.sign(g.speed)) / reach, -1, 1) * (1 if g.speed >= 0 else -1)
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


def _phase(t: np.ndarray, cadence: float, phase0: float | None, rng) -> np.ndarray:
    p0 = rng.uniform(0, 1) if phase0 is None else phase0
    return p0 + cadence * t


# ----------------------------------------------------------------------------- actions
# Each action: f(T, rng, p, phase0) -> Controls. p holds the clip's parameters (sample_params).
LOCOMOTION = {  # speed slow..fast (m/s), cadence slow..fast, duty, clearance, crouch, arm, elbow, lean, land, heel
    "walk": ((0.85, 1.3), (0.85, 1.0), 0.60, 0.07, 0.0, 0.30, 0.25, 0.04, 0.42, 0.45),
    "jog": ((2.0, 2.7), (1.25, 1.40), 0.42, 0.22, 0.05, 0.45, 1.25, 0.14, 0.35, 0.5),
    "run": ((3.3, 4.4), (1.42, 1.60), 0.34, 0.34, 0.07, 0.75, 1.45, 0.28, 0.30, 0.6),
    "walk_backwards": ((-0.6, -0.95), (0.75, 0.90), 0.62, 0.06, 0.01, 0.18, 0.20, -0.04, 0.5, 0.0),
    "walk_circle": ((0.85, 1.15), (0.85, 0.98), 0.60, 0.07, 0.0, 0.28, 0.25, 0.04, 0.42, 0.45),
}


def _gait_of(kind: str, speed: float) -> Gait:
    v, cad, duty, clear, crouch, arm, elbow, lean, land, heel = LOCOMOTION[kind]
    lerp = lambda r: r[0] + (r[1] - r[0]) * speed  # noqa: E731
    return Gait(lerp(v), lerp(cad), duty, clear * (0.9 + 0.2 * speed), crouch, arm * (0.8 + 0.4 * speed),
                elbow, lean * (0.7 + 0.6 * speed), land, heel, pelvis_turn=0.06 + 0.08 * arm)


def act_locomotion(kind: str):
    def f(T, rng, p, phase0=None):
        t = np.arange(T) / FPS
        c = Controls.standing(T)
        rest_pose(c, p)
        g = _gait_of(kind, p["speed"])
        env = envelope(T, p["ramp_in"], p["ramp_out"])
        c.phase = _phase(t, g.cadence, phase0, rng)
        if kind == "walk_circle":
            c.yaw_rate[:] = p["turn_sign"] * 2 * np.pi / p["circle_period"] * env
        else:
            c.yaw_rate[:] = p["curve"] * env
        gait(c, c.phase, env, g, p["scale"])
        return c
    return f


def act_sidestep(direction: float):
    """Lead foot lifts and steps out, the weight shifts across (both feet planted, the pelvis moves),
    the trailing foot lifts and closes in."""
    def f(T, rng, p, phase0=None):
        t = np.arange(T) / FPS
        c = Controls.standing(T)
        rest_pose(c, p)
        cadence = 0.75 + 0.35 * p["speed"]
        c.phase = _phase(t, cadence, phase0, rng)
        u = c.phase % 1.0
        # the step size changes only between cycles, when both feet are planted in their rest places,
        # so the two planted feet always agree
        cycle_start = (np.floor(c.phase) - c.phase[0]) / cadence
        env = np.interp(cycle_start, t, envelope(T, p["ramp_in"], p["ramp_out"]), left=0.0)
        D = (0.22 + 0.12 * p["amp"]) * p["scale"]
        lead, trail = (0, 1) if direction > 0 else (1, 0)
        feet = standing_feet(T, p["scale"])
        out_lead = keyframes(u, [0, 0.25, 0.6, 1], [0, D, 0, 0])          # relative to its rest width
        out_trail = keyframes(u, [0, 0.25, 0.6, 0.85, 1], [0, 0, -D, 0, 0])
        lift_lead = np.where(u < 0.25, np.sin(np.pi * u / 0.25) ** 2, 0.0)
        lift_trail = np.where((u >= 0.6) & (u < 0.85), np.sin(np.pi * (u - 0.6) / 0.25) ** 2, 0.0)
        for leg, out, lift in ((lead, out_lead, lift_lead), (trail, out_trail, lift_trail)):
            feet[:, leg, 0] += direction * env * out
            feet[:, leg, 1] += 0.06 * env * lift
            c.contact[:, leg] = 1 - env * (lift > 0.01)
        c.angles[:, (L_SHOULDER, R_SHOULDER), Z] += (env * 0.12 * np.sin(2 * np.pi * c.phase))[:, None] * np.array([1.0, -1.0])
        c.angles[:, NECK, Y] += direction * 0.1 * env
        place_feet(c, feet, standing_height(p["scale"]) * (1 - 0.03 * env), p["scale"])
        return c
    return f


def act_turn(direction: float):
    """Small steps in place while the heading turns by p['turn_deg']."""
    def f(T, rng, p, phase0=None):
        t = np.arange(T) / FPS
        c = Controls.standing(T)
        rest_pose(c, p)
        idle_motion(c, t, p, 0.3)
        env = envelope(T, max(6, T // 6), max(6, T // 6))
        g = Gait(speed=0.0, cadence=0.95, duty=0.6, clearance=0.06, crouch=0.01, arm=0.05, elbow=0.3, lean=0.0)
        c.phase = _phase(t, g.cadence, phase0, rng)
        total = np.deg2rad(p["turn_deg"])
        c.yaw_rate[:] = direction * total * env / (env.sum() / FPS)
        gait(c, c.phase, env, g, p["scale"])
        c.angles[:, NECK, Y] += direction * 0.25 * env           # look into the turn
        return c
    return f


def act_jump(T, rng, p, phase0=None):
    """Crouch, push off, ballistic flight (height from the flight time), land and absorb; repeated."""
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p, 0.3)
    n = p["jumps"]
    P = T / FPS / n
    flight = min(p["flight_time"], 0.3 * P)
    crouch = np.zeros(T)
    arms = np.zeros(T)         # arm swing: + back, - forward/up
    air = np.zeros(T, bool)
    for k in range(n):         # per jump: settle, crouch, push, flight, absorb, recover (fits in P)
        t0 = (k + 0.05) * P
        tk = np.cumsum([t0, 0.22 * P, 0.08 * P, flight, 0.12 * P, 0.2 * P])
        crouch += keyframes(t, [tk[0] - 1e-3, *tk], [0, 0, 1, 0, 0.25, 0.7, 0])
        arms += keyframes(t, [tk[0] - 1e-3, *tk], [0, 0, 0.7, -2.2 * p["amp"] - 0.6, -1.0, 0.2, 0])
        air |= (t >= tk[2]) & (t < tk[3])
    a = c.angles
    a[:, HIPS, X] += -1.0 * crouch[:, None]
    a[:, KNEES, X] += 1.5 * crouch[:, None]
    a[:, PELVIS, X] += 0.35 * crouch
    a[:, SPINE1, X] += 0.25 * crouch
    a[:, (L_SHOULDER, R_SHOULDER), X] += arms[:, None]
    a[:, ANKLES, X] += 0.5 * air[:, None]                  # toes point down in the air
    c.contact[air] = 0.0
    c.velocity[air, 1] = p["jump_forward"] / flight
    return c


def act_squat(T, rng, p, phase0=None):
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p, 0.3)
    n = p["reps"]
    period = T / FPS / n
    d = np.zeros(T)
    for k in range(n):
        t0 = k * period + 0.1 * period
        down, hold = 0.38 * period, 0.08 * period
        d += keyframes(t, [t0 - 1e-3, t0, t0 + down, t0 + down + hold, t0 + 2 * down + hold], [0, 0, 1, 1, 0])
    d *= 0.75 + 0.25 * p["amp"]
    a = c.angles
    a[:, HIPS, X] += -1.7 * d[:, None]
    a[:, KNEES, X] += 2.1 * d[:, None]
    a[:, PELVIS, X] += 0.35 * d
    a[:, SPINE1, X] += 0.2 * d
    a[:, NECK, X] += -0.3 * d
    a[:, (L_SHOULDER, R_SHOULDER), X] += -1.3 * d[:, None]       # arms forward for balance
    a[:, L_SHOULDER, Z] += 0.4 * d
    a[:, R_SHOULDER, Z] += -0.4 * d
    return c


def act_wave(side: str):
    def f(T, rng, p, phase0=None):
        t = np.arange(T) / FPS
        c = Controls.standing(T)
        rest_pose(c, p)
        idle_motion(c, t, p)
        up = envelope(T, 24, 24 if p["lower_at_end"] else 0)
        sh, el, s = (L_SHOULDER, L_ELBOW, 1.0) if side == "left" else (R_SHOULDER, R_ELBOW, -1.0)
        raise_to = 0.2 + 0.5 * p["amp"]          # upper arm a bit above horizontal, to the side
        c.angles[:, sh, Z] += s * (p["arm_down"] + raise_to) * up
        c.angles[:, sh, X] += -0.35 * up
        osc = np.sin(2 * np.pi * p["wave_hz"] * t + rng.uniform(0, 2 * np.pi))
        c.angles[:, el, Z] += s * (1.3 + 0.45 * osc) * up       # forearm up, waving side to side
        c.angles[:, el, Y] += s * 0.15 * up                       # undo the resting elbow bend
        c.angles[:, NECK, Y] += s * 0.15 * up                   # glance towards the waving side
        return c
    return f


def act_raise_arms(T, rng, p, phase0=None):
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p)
    n = p["reps"]
    period = T / FPS / n
    up = np.zeros(T)
    for k in range(n):
        t0 = k * period + 0.1 * period
        r = 0.25 * period
        up += keyframes(t, [t0, t0 + r, t0 + period - 1.2 * r, t0 + period - 0.2 * r], [0, 1, 1, 0])
    if p["front"]:      # forwards and up
        c.angles[:, (L_SHOULDER, R_SHOULDER), X] += -(2.6 + 0.3 * p["amp"]) * up[:, None]
    else:               # sideways and up
        lift = (p["arm_down"] + 1.35 + 0.25 * p["amp"]) * up
        c.angles[:, L_SHOULDER, Z] += lift
        c.angles[:, R_SHOULDER, Z] -= lift
    c.angles[:, NECK, X] += -0.2 * up
    c.angles[:, SPINE3, X] += -0.08 * up
    return c


def act_kick(T, rng, p, phase0=None):
    """Stand on one leg: chamber the knee, snap the leg forward, retract, put it down."""
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p, 0.3)
    kick_leg = 0 if p["side"] == "left" else 1
    hip, knee = (L_HIP, L_KNEE) if kick_leg == 0 else (R_HIP, R_KNEE)
    arm = R_SHOULDER if kick_leg == 0 else L_SHOULDER
    n = p["kicks"]
    period = T / FPS / n
    hip_f, knee_f, lift = np.zeros(T), np.zeros(T), np.zeros(T)
    height = 1.2 + 0.5 * p["amp"]
    for k in range(n):
        t0 = k * period + 0.2 * period
        tk = [t0, t0 + 0.25, t0 + 0.4, t0 + 0.58, t0 + 0.85]
        hip_f += keyframes(t, tk, [0, 0.8 * height, height, 0.8 * height, 0])
        knee_f += keyframes(t, tk, [0, 1.7, 0.1, 1.6, 0])
        lift += ((t > tk[0]) & (t < tk[-1])).astype(float)     # the foot is off its place in between
    c.angles[:, hip, X] += -hip_f
    c.angles[:, knee, X] += knee_f
    c.angles[:, SPINE1, X] += -0.15 * hip_f / height
    c.angles[:, arm, X] += -0.6 * hip_f / height
    c.contact[:, kick_leg] = 1.0 - np.minimum(lift, 1)
    return c


def act_idle(T, rng, p, phase0=None):
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p, 1.5)
    return c


def act_sit_down(T, rng, p, phase0=None):
    """Stand, lower onto a (not modelled) seat with the trunk leaning forward, stay seated."""
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    t0 = p["stand_time"] * (T / FPS)
    tk = [t0, t0 + 0.5 * p["descent"], t0 + p["descent"], t0 + p["descent"] + 0.6]
    s = keyframes(t, tk, [0, 0.55, 1, 1])
    lean = keyframes(t, tk, [0, 1, 0.6, 0.2])
    idle_motion(c, t, p, 0.5)
    a = c.angles
    a[:, HIPS, X] += -1.55 * s[:, None]
    a[:, KNEES, X] += 1.6 * s[:, None]
    a[:, PELVIS, X] += 0.45 * lean
    a[:, SPINE1, X] += 0.25 * lean
    a[:, NECK, X] += -0.3 * lean
    a[:, (L_SHOULDER, R_SHOULDER), X] += -0.6 * s[:, None]         # hands towards the thighs
    a[:, L_ELBOW, Y] += -0.5 * s
    a[:, R_ELBOW, Y] += 0.5 * s
    return c


ACTIONS = {
    "walk": act_locomotion("walk"), "jog": act_locomotion("jog"), "run": act_locomotion("run"),
    "walk_backwards": act_locomotion("walk_backwards"),
    "sidestep_left": act_sidestep(1.0), "sidestep_right": act_sidestep(-1.0),
    "turn_left": act_turn(1.0), "turn_right": act_turn(-1.0),
    "jump": act_jump, "squat": act_squat,
    "wave_left": act_wave("left"), "wave_right": act_wave("right"),
    "raise_arms": act_raise_arms, "kick": act_kick, "idle": act_idle,
    "walk_circle": act_locomotion("walk_circle"), "sit_down": act_sit_down,
}
GAIT_ACTIONS = frozenset(("walk", "jog", "run", "walk_backwards", "walk_circle", "sidestep_left",
                          "sidestep_right", "turn_left", "turn_right"))
FINAL_ONLY = frozenset(("sit_down",))   # ends seated: only the last action of a sequence


PERSON_KEYS = ("arm_down", "posture", "noise", "idle_phase", "look", "sway", "scale")   # constant within a sequence


def sample_params(action: str, rng: np.random.Generator, seconds: float) -> dict:
    """The clip's random parameters (all drawn, whatever the action, so streams stay aligned)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    ramp = int(rng.integers(9, 18))
    p = {
        "speed": float(rng.uniform()), "amp": float(rng.uniform()), "scale": float(rng.uniform(0.85, 1.15)),
        "arm_down": float(rng.uniform(1.25, 1.45)),
        "posture": rng.normal(0.0, 0.035, (22, 3)) * UPPER_BODY[:, None],
        "noise": (rng.uniform(0.0, 0.02, (22, 3)), rng.uniform(0.1, 0.5, (22, 3)), rng.uniform(0, 2 * np.pi, (22, 3))),
        "idle_phase": rng.uniform(0, 2 * np.pi, 5), "look": float(rng.uniform(0.2, 1.0)),
        "sway": float(rng.uniform(0.3, 1.0)),
        "ramp_in": ramp if rng.uniform() < 0.7 else 0, "ramp_out": ramp if rng.uniform() < 0.4 else 0,
        "curve": 0.0, "turn_sign": float(rng.choice([-1.0, 1.0])),
        "circle_period": float(rng.uniform(0.8, 1.1) * np.clip(seconds, 4.0, 9.0)),   # about one lap per clip
        "turn_deg": float(rng.uniform(80, 200)),
        "jumps": 1, "flight_time": float(rng.uniform(0.36, 0.48)), "jump_forward": 0.0,
        "reps": 1, "kicks": 1, "side": str(rng.choice(["left", "right"])),
        "wave_hz": float(rng.uniform(1.3, 2.2)), "lower_at_end": bool(rng.uniform() < 0.5),
        "front": bool(rng.uniform() < 0.4),
        "stand_time": float(rng.uniform(0.1, 0.3)), "descent": float(rng.uniform(1.0, 1.6)),
    }
    if action in ("walk", "jog", "run") and rng.uniform() < 0.35:       # a bend of 30-85 degrees over the clip
        p["curve"] = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) / max(seconds, 1.0))
    p["jumps"] = int(np.clip(int(seconds / rng.uniform(1.3, 2.0)), 1, 4))
    if rng.uniform() < 0.4:
        p["jump_forward"] = float(rng.uniform(0.4, 0.9))
    p["reps"] = int(np.clip(int(seconds / rng.uniform(2.2, 3.2)), 1, 4))
    p["kicks"] = int(np.clip(int(seconds / rng.uniform(1.6, 2.4)), 1, 3))
    if action == "raise_arms":
        p["reps"] = int(np.clip(int(seconds / rng.uniform(2.5, 4.0)), 1, 3))
    return p


# ----------------------------------------------------------------------------- captions
SUBJECTS = ("a person", "someone", "a man", "a woman", "the person", "a human", "the man", "the woman")
_COUNT = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
_NUM = {2: "two", 3: "three", 4: "four"}


def _speed_words(action: str, speed: float, rng) -> str:
    slow = (" slowly", " at a slow pace", " leisurely") if action == "walk" else (" slowly", " at a slow pace")
    fast = {"walk": (" quickly", " briskly", " at a brisk pace"), "jog": (" quickly", " at a quick pace"),
            "run": (" very fast", " at full speed", " quickly")}.get(action, (" quickly",))
    if speed < 0.25:
        return str(rng.choice(slow))
    if speed > 0.75:
        return str(rng.choice(fast))
    return ""


def verb_phrases(action: str, p: dict, rng) -> list[str]:
    """Paraphrases of the action as verb phrases ('walks forward slowly'), parameters in words."""
    sp = lambda: _speed_words(action, p["speed"], rng)  # noqa: E731
    lr = "left" if p.get("curve", 0) > 0 else "right"
    curve = ""
    if action in ("walk", "jog", "run") and abs(p.get("curve", 0.0)) > 0:
        curve = str(rng.choice([f" while curving to the {lr}", f" and veers to the {lr}", f" along a curve to the {lr}"]))
    if action == "walk":
        v = [f"walks forward{sp()}", f"walks straight ahead{sp()}", f"strolls forward{sp()}",
             f"takes a walk forward{sp()}", f"is walking ahead{sp()}"]
        return [x + curve for x in v]
    if action == "jog":
        v = [f"jogs forward{sp()}", f"jogs ahead{sp()}", f"is jogging forward{sp()}", "does a light jog forward",
             f"jogs along{sp()}"]
        return [x + curve for x in v]
    if action == "run":
        v = [f"runs forward{sp()}", f"sprints ahead{sp()}", f"is running forward{sp()}", f"dashes forward{sp()}",
             f"runs straight ahead{sp()}"]
        return [x + curve for x in v]
    if action == "walk_backwards":
        return [f"walks backwards{sp()}", f"walks backward{sp()}", f"steps backwards{sp()}",
                "moves backwards step by step", "backs up while facing forward"]
    if action in ("sidestep_left", "sidestep_right"):
        d = action.split("_")[1]
        return [f"side steps to the {d}", f"shuffles sideways to the {d}", f"steps sideways to the {d}",
                f"moves sideways towards the {d}", f"takes side steps to the {d}"]
    if action in ("turn_left", "turn_right"):
        d = action.split("_")[1]
        big = p["turn_deg"] >= 150
        v = [f"turns to the {d}", f"turns {d} in place", f"rotates to the {d}", f"pivots to the {d}"]
        v.append(f"turns around to the {d}" if big else f"makes a quarter turn to the {d}")
        return v
    if action == "jump":
        n = p["jumps"]
        times = "" if n == 1 or rng.uniform() < 0.4 else " " + _COUNT[n]
        if p["jump_forward"] > 0:
            return [f"jumps forward{times}", f"leaps forward{times}", f"does a forward jump{times}",
                    f"hops forward with both feet{times}", f"jumps ahead{times}"]
        return [f"jumps up{times}", f"jumps in place{times}", f"hops up and down{times}",
                f"leaps into the air{times}", f"jumps straight up{times}"]
    if action == "squat":
        n = p["reps"]
        many = n > 1 and rng.uniform() < 0.6
        return [f"does {_NUM[n]} squats" if many else "does a squat",
                "squats down and stands back up", "bends the knees into a deep squat and rises",
                "crouches down and stands up again", "squats down low and gets back up"]
    if action in ("wave_left", "wave_right"):
        d = action.split("_")[1]
        return [f"waves with the {d} hand", f"waves the {d} hand", f"raises the {d} hand and waves",
                f"waves hello with the {d} arm", f"lifts the {d} arm and waves it"]
    if action == "raise_arms":
        how = " in front" if p["front"] else " out to the sides"
        return ["raises both arms", "lifts both arms above the head", "puts both hands up in the air",
                f"raises the arms overhead{how}", "reaches both arms up high"]
    if action == "kick":
        d = p["side"]
        return [f"kicks with the {d} leg", f"kicks forward with the {d} foot", f"does a front kick with the {d} leg",
                f"kicks the {d} leg forward", "does a front kick"]
    if action == "idle":
        return ["stands still", "stands idle", "stands in place", "waits while standing",
                "stands and shifts the weight slightly"]
    if action == "walk_circle":
        d = "left" if p["turn_sign"] > 0 else "right"
        return ["walks in a circle", "walks around in a circle", f"walks in a circle to the {d}",
                f"walks in a circle turning {d}", "circles around on foot"]
    if action == "sit_down":
        return ["sits down", "sits down on a chair", "takes a seat", "lowers into a seated position",
                "sits down slowly"]
    raise ValueError(f"unknown action {action!r}")


def captions_for(action: str, p: dict, rng, n: int) -> list[str]:
    """n distinct captions: shuffled paraphrases, each with its own subject."""
    vps = verb_phrases(action, p, rng)
    order = rng.permutation(len(vps))[:n]
    return [f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} {vps[k]}" for k in order]


# word -> (lemma, POS), HumanML3D token style `lemma/POS`
_LEXICON = {
    "a": ("a", "DET"), "the": ("the", "DET"), "someone": ("someone", "PRON"), "person": ("person", "NOUN"),
    "man": ("man", "NOUN"), "woman": ("woman", "NOUN"), "human": ("human", "NOUN"),
    "walks": ("walk", "VERB"), "walking": ("walk", "VERB"), "strolls": ("stroll", "VERB"), "takes": ("take", "VERB"),
    "walk": ("walk", "NOUN"), "jogs": ("jog", "VERB"), "jogging": ("jog", "VERB"), "jog": ("jog", "NOUN"),
    "does": ("do", "VERB"), "runs": ("run", "VERB"), "running": ("run", "VERB"), "sprints": ("sprint", "VERB"),
    "dashes": ("dash", "VERB"), "is": ("be", "AUX"), "steps": ("step", "VERB"), "moves": ("move", "VERB"),
    "backs": ("back", "VERB"), "shuffles": ("shuffle", "VERB"), "side": ("side", "NOUN"),
    "turns": ("turn", "VERB"), "rotates": ("rotate", "VERB"), "pivots": ("pivot", "VERB"), "makes": ("make", "VERB"),
    "quarter": ("quarter", "ADJ"), "turn": ("turn", "NOUN"), "turning": ("turn", "VERB"),
    "jumps": ("jump", "VERB"), "leaps": ("leap", "VERB"), "hops": ("hop", "VERB"), "jump": ("jump", "NOUN"),
    "squats": ("squat", "VERB"), "squat": ("squat", "NOUN"), "bends": ("bend", "VERB"), "crouches": ("crouch", "VERB"),
    "stands": ("stand", "VERB"), "standing": ("stand", "VERB"), "gets": ("get", "VERB"), "rises": ("rise", "VERB"),
    "waves": ("wave", "VERB"), "raises": ("raise", "VERB"), "lifts": ("lift", "VERB"), "puts": ("put", "VERB"),
    "reaches": ("reach", "VERB"), "kicks": ("kick", "VERB"), "kick": ("kick", "NOUN"), "waits": ("wait", "VERB"),
    "shifts": ("shift", "VERB"), "circles": ("circle", "VERB"), "circle": ("circle", "NOUN"), "sits": ("sit", "VERB"),
    "lowers": ("lower", "VERB"), "seat": ("seat", "NOUN"), "seated": ("seat", "VERB"), "veers": ("veer", "VERB"),
    "curving": ("curve", "VERB"), "curve": ("curve", "NOUN"), "facing": ("face", "VERB"), "and": ("and", "CCONJ"),
    "then": ("then", "ADV"), "afterwards": ("afterwards", "ADV"), "while": ("while", "SCONJ"),
    "forward": ("forward", "ADV"), "forwards": ("forward", "ADV"), "ahead": ("ahead", "ADV"),
    "straight": ("straight", "ADV"), "backwards": ("backwards", "ADV"), "backward": ("backward", "ADV"),
    "sideways": ("sideways", "ADV"), "along": ("along", "ADV"), "around": ("around", "ADV"), "up": ("up", "ADV"),
    "down": ("down", "ADV"), "back": ("back", "ADV"), "again": ("again", "ADV"), "still": ("still", "ADV"),
    "idle": ("idle", "ADJ"), "low": ("low", "ADV"), "high": ("high", "ADV"), "overhead": ("overhead", "ADV"),
    "slightly": ("slightly", "ADV"), "slowly": ("slowly", "ADV"), "quickly": ("quickly", "ADV"),
    "briskly": ("briskly", "ADV"), "leisurely": ("leisurely", "ADV"), "very": ("very", "ADV"), "fast": ("fast", "ADV"),
    "once": ("once", "ADV"), "twice": ("twice", "ADV"), "times": ("time", "NOUN"), "two": ("two", "NUM"),
    "three": ("three", "NUM"), "four": ("four", "NUM"), "step": ("step", "NOUN"), "by": ("by", "ADP"),
    "at": ("at", "ADP"), "to": ("to", "ADP"), "towards": ("towards", "ADP"), "with": ("with", "ADP"),
    "in": ("in", "ADP"), "into": ("into", "ADP"), "on": ("on", "ADP"), "out": ("out", "ADP"), "of": ("of", "ADP"),
    "above": ("above", "ADP"), "front": ("front", "NOUN"), "slow": ("slow", "ADJ"), "brisk": ("brisk", "ADJ"),
    "quick": ("quick", "ADJ"), "full": ("full", "ADJ"), "light": ("light", "ADJ"), "deep": ("deep", "ADJ"),
    "vertical": ("vertical", "ADJ"), "pace": ("pace", "NOUN"), "speed": ("speed", "NOUN"), "place": ("place", "NOUN"),
    "left": ("left", "NOUN"), "right": ("right", "NOUN"), "hand": ("hand", "NOUN"), "hands": ("hand", "NOUN"),
    "arm": ("arm", "NOUN"), "arms": ("arm", "NOUN"), "leg": ("leg", "NOUN"), "foot": ("foot", "NOUN"),
    "feet": ("foot", "NOUN"), "knees": ("knee", "NOUN"), "head": ("head", "NOUN"), "air": ("air", "NOUN"),
    "both": ("both", "DET"), "few": ("few", "ADJ"), "it": ("it", "PRON"), "hello": ("hello", "INTJ"),
    "weight": ("weight", "NOUN"), "position": ("position", "NOUN"), "chair": ("chair", "NOUN"),
    "sides": ("side", "NOUN"), "hop": ("hop", "NOUN"),
}


def tokens_for(caption: str) -> str:
    """HumanML3D-style `lemma/POS` tokens; every word must be in the lexicon (tests check all templates)."""
    out = []
    for w in caption.lower().split():
        if w not in _LEXICON:
            raise KeyError(f"tokens_for: word {w!r} of {caption!r} is not in the synthetic lexicon")
        lemma, pos = _LEXICON[w]
        out.append(f"{lemma}/{pos}")
    return " ".join(out)


# ----------------------------------------------------------------------------- integration
def local_rotations(angles: np.ndarray) -> np.ndarray:
    """Controls -> parent-local rotations (T, 22, 3, 3). Every joint's angles are its local Euler
    angles, except the ankles': those give the foot's orientation in the heading frame (0 = flat on
    the floor, facing ahead), so planted feet stay flat whatever the leg above does."""
    R = euler_xyz(angles)
    for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        shank = R[:, PELVIS] @ R[:, hip] @ R[:, knee]
        R[:, ankle] = np.swapaxes(shank, -1, -2) @ R[:, ankle]
    return R


def integrate(c: Controls, scale: float = 1.0, heading0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Controls -> (joints (T, 22, 3), rotations (T, 22, 3, 3)); rotations[:, 0] is the pelvis global
    rotation, [:, 1:] parent-local, joints = forward_kinematics(rotations, root, scaled SMPL offsets)."""
    T = len(c)
    offsets = SMPL_OFFSETS * scale
    local = local_rotations(c.angles)                            # (T, 22, 3, 3)
    body = forward_kinematics(local, np.zeros((T, 3)), offsets)            # heading-free, pelvis at 0
    heading = heading0 + np.concatenate([[0.0], np.cumsum(c.yaw_rate[:-1])]) / FPS
    Ry = rot_y(heading)

    # horizontal: weight-bearing toes stay put (in the world frame, so turning pivots about them)
    toes = np.einsum("tab,tfb->tfa", Ry, body[:, TOES])                   # (T, 2, 3)
    w = np.minimum(c.contact[1:], c.contact[:-1])                          # planted at both ends of step t -> t+1
    total = w.sum(axis=1)
    support = np.clip(total / 0.3, 0.0, 1.0)
    locked = -(w[..., None] * (toes[1:] - toes[:-1])).sum(axis=1) / np.maximum(total, 1e-9)[:, None]
    grounded = support >= 1.0
    step = np.zeros((T - 1, 3))
    steps = np.arange(T - 1)
    for k in (0, 2):
        carry = np.interp(steps, steps[grounded], locked[grounded, k]) if grounded.any() else np.zeros(T - 1)
        step[:, k] = support * locked[:, k] + (1 - support) * carry       # airborne: keep going
    cmd = np.einsum("tab,tb->ta", Ry[:-1], np.stack([c.velocity[:-1, 0], np.zeros(T - 1), c.velocity[:-1, 1]], -1)) / FPS
    step += (1 - support)[:, None] * cmd                                   # airborne: plus the launch velocity
    drive = c.drive[:-1, None]
    step = drive * cmd + (1 - drive) * step                                # planned gaits: the planned path
    root = np.concatenate([np.zeros((1, 3)), np.cumsum(step, axis=0)])

    # vertical: lowest foot on the floor; airborne stretches are ballistic between take-off and landing
    ground = -body[:, FEET, 1].min(axis=1)
    frame_support = np.clip(c.contact.sum(axis=1) / 0.3, 0.0, 1.0)
    height = ground.copy()
    for s, e in _runs(frame_support < 1.0):
        a0, a1 = max(s - 1, 0), min(e, T - 1)
        n = a1 - a0
        if n < 2:
            continue
        tt = np.arange(n + 1) / FPS
        line = np.linspace(ground[a0], ground[a1], n + 1)
        arc = 0.5 * GRAVITY * tt * (tt[-1] - tt)
        blend = 1 - frame_support[a0:a1 + 1]
        height[a0:a1 + 1] = (1 - blend) * ground[a0:a1 + 1] + blend * (line + arc)
    root[:, 1] = np.maximum(height, ground)                               # no foot below the floor

    rotations = local.copy()
    rotations[:, 0] = Ry @ local[:, 0]
    joints = forward_kinematics(rotations, root, offsets)
    return joints, rotations


def chain(parts: list[Controls], lengths: list[int], blends: list[int], pad: int) -> Controls:
    """Cross-fade consecutive controls. Part i covers [S_i, E_i) (lengths[i] frames) plus `pad` frames
    on each inner side; at boundary k the cross-fade spans blends[k] (<= 2 * pad) frames centred on it,
    with cosine ramps that sum to 1."""
    total = int(sum(lengths))
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    out = Controls(np.zeros((total, 22, 3)), np.zeros(total), np.zeros((total, 2)), np.zeros((total, 2)), np.zeros(total))
    t = np.arange(total)

    def ramp(k):                      # 0 -> 1 across boundary k (between part k and part k + 1)
        half = blends[k] / 2
        return 0.5 - 0.5 * np.cos(np.pi * np.clip((t - (bounds[k + 1] - half)) / max(2 * half, 1), 0, 1))

    for i, part in enumerate(parts):
        lo = bounds[i] - (pad if i > 0 else 0)
        hi = bounds[i + 1] + (pad if i < len(parts) - 1 else 0)
        if len(part) != hi - lo:
            raise ValueError(f"chain: part {i} has {len(part)} frames, expected {hi - lo}")
        w = np.ones(total)
        if i > 0:
            w *= ramp(i - 1)
        if i < len(parts) - 1:
            w *= 1 - ramp(i)
        w = w[lo:hi]
        out.angles[lo:hi] += w[:, None, None] * part.angles
        out.yaw_rate[lo:hi] += w * part.yaw_rate
        out.contact[lo:hi] += w[:, None] * part.contact
        out.velocity[lo:hi] += w[:, None] * part.velocity
        out.drive[lo:hi] += w * part.drive
    return out


# ----------------------------------------------------------------------------- clips and sequences
@dataclass
class Clip:
    name: str
    action: str                 # action label; 'a+b' for a composite clip
    joints: np.ndarray          # (T, 22, 3) world, Y up
    rotations: np.ndarray       # (T, 22, 3, 3)
    captions: list              # whole-clip captions
    sub_captions: list = field(default_factory=list)   # (caption, start_s, end_s)
    segments: list = field(default_factory=list)       # (action, start_frame, end_frame)
    params: dict = field(default_factory=dict)

    def canonical(self) -> tuple[np.ndarray, np.ndarray]:
        """Joints/rotations turned so frame 0 faces +Z (what joints_to_272 expects)."""
        from motionstreamer.representation.features import canonicalize_facing
        return canonicalize_facing(self.joints, self.rotations)

    def features(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """(T, 272) float32 features of frames [start, end), canonicalised on their own."""
        from motionstreamer.representation.features import canonicalize_facing, joints_to_272
        j, r = canonicalize_facing(self.joints[start:end], self.rotations[start:end])
        return joints_to_272(j, r).astype(np.float32)


def _frames(rng, min_seconds: float, max_seconds: float) -> int:
    """A length in [min_seconds, max_seconds) at 30 fps (the reference loaders drop T >= 300)."""
    lo, hi = int(np.ceil(min_seconds * FPS)), int(np.ceil(max_seconds * FPS))
    return int(rng.integers(lo, max(hi, lo + 1)))


MAX_BLEND = 30        # frames: the longest cross-fade (1 s)


def generate_sequence(actions: list[str], lengths: list[int], rng, blend: int | None = None,
                      scale: float | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Actions back to back with cross-faded transitions. Returns joints, rotations and per segment
    {'action', 'start', 'end' (frames; the boundary is the middle of the transition), 'params',
    'blend' (frames of the cross-fade into the next segment)}.

    The cross-fade is 0.3-0.5 s, longer (up to 1 s) the more the two poses differ at the boundary,
    so no limb has to fly across (e.g. a raised waving arm coming down to walk). `blend` fixes it."""
    if len(actions) != len(lengths) or not actions:
        raise ValueError("generate_sequence: need one length per action")
    pad = MAX_BLEND // 2
    parts, segs, start = [], [], 0
    last = len(actions) - 1
    for i, (action, n) in enumerate(zip(actions, lengths)):
        lo = pad if i > 0 else 0
        hi = pad if i < last else 0
        p = sample_params(action, rng, n / FPS)
        if i == 0 and scale is not None:
            p["scale"] = float(scale)
        if i > 0:
            p.update({k: segs[0]["params"][k] for k in PERSON_KEYS})     # same person all along
            p["ramp_in"] = 0
        if i < last:
            p["ramp_out"] = 0
        phase0 = None
        prev = parts[-1] if parts else None
        if prev is not None and prev.phase is not None and action in GAIT_ACTIONS:
            phase0 = float(prev.phase[len(prev) - 2 * pad])        # in step where this part begins
        part = ACTIONS[action](n + lo + hi, rng, p, phase0)
        parts.append(part)
        segs.append({"action": action, "start": start, "end": start + n, "params": p})
        start += n
    blends = []
    for i in range(last):
        a = parts[i].angles[len(parts[i]) - pad]                      # both poses at the boundary
        b = parts[i + 1].angles[pad]
        base = int(rng.integers(9, 16)) if blend is None else blend
        blends.append(int(np.clip(base + 8 * np.abs(a - b).max(), base, MAX_BLEND)) if blend is None else base)
        segs[i]["blend"] = blends[-1]
    c = chain(parts, lengths, blends, pad)
    t = np.arange(len(c)) / FPS
    style_noise(c, t, segs[0]["params"])
    joints, rotations = integrate(c, scale=segs[0]["params"]["scale"], heading0=float(rng.uniform(-np.pi, np.pi)))
    return joints, rotations, segs


def generate_clip(action: str, rng, min_seconds: float = 2.0, max_seconds: float = 10.0, name: str = "",
                  n_captions: int | None = None) -> Clip:
    """One action, 3-5 captions."""
    T = _frames(rng, min_seconds, max_seconds)
    joints, rotations, segs = generate_sequence([action], [T], rng)
    p = segs[0]["params"]
    caps = captions_for(action, p, rng, int(rng.integers(3, 6)) if n_captions is None else n_captions)
    return Clip(name, action, joints, rotations, caps, segments=[(action, 0, T)], params=p)


_THEN = (" and then ", " and afterwards ", " then ")


def generate_composite(actions: list[str], rng, min_seconds: float = 2.0, max_seconds: float = 10.0,
                       name: str = "") -> Clip:
    """Two or more actions in one clip: whole-clip captions 'A and then B' plus a sub-caption (with
    start/end seconds) per action, the HumanML3D way of annotating parts of a clip."""
    T = _frames(rng, min_seconds, max_seconds)
    cuts = np.sort(rng.uniform(0.35, 0.65, len(actions) - 1)) if len(actions) == 2 else \
        np.sort(rng.uniform(0.2, 0.8, len(actions) - 1))
    edges = np.concatenate([[0], (cuts * T).astype(int), [T]])
    lengths = np.diff(edges).tolist()
    joints, rotations, segs = generate_sequence(actions, lengths, rng)
    phrases = [verb_phrases(s["action"], s["params"], rng) for s in segs]
    caps = []
    for _ in range(3):
        subj = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
        link = _THEN[int(rng.integers(len(_THEN)))]
        caps.append(subj + " " + link.join(str(rng.choice(v)) for v in phrases))
    subs = [(f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} {rng.choice(v)}", frame_seconds(s["start"]),
             frame_seconds(s["end"])) for v, s in zip(phrases, segs)]
    return Clip(name, "+".join(actions), joints, rotations, list(dict.fromkeys(caps)), subs,
                [(s["action"], s["start"], s["end"]) for s in segs], segs[0]["params"])


# ----------------------------------------------------------------------------- dataset writers
def frame_seconds(frame: int) -> float:
    """Seconds for a frame boundary such that the readers' int(seconds * 30) gives the frame back
    (frame / 30 itself can land a hair below and lose a frame)."""
    return round((frame + 0.25) / FPS, 4)


def _text_line(caption: str, start: float = 0.0, end: float = 0.0) -> str:
    return f"{caption}#{tokens_for(caption)}#{start:.4f}#{end:.4f}" if (start or end) else \
        f"{caption}#{tokens_for(caption)}#0.0#0.0"


def _write_lines(path: Path, lines: list[str]) -> None:
    from motionstreamer.utils import atomic_write_text
    atomic_write_text(path, "\n".join(lines) + "\n")


def _split(ids: list[str], rng, fractions=(0.8, 0.1, 0.1), names=("train", "val", "test")) -> dict:
    """Random split with every part non-empty when there are enough ids."""
    order = [ids[k] for k in rng.permutation(len(ids))]
    n = len(order)
    sizes = [int(round(f * n)) for f in fractions[1:]]
    if n >= len(fractions):
        sizes = [max(1, s) for s in sizes]
    out, pos = {}, 0
    for name, size in zip(names[1:], sizes):
        out[name] = sorted(order[pos:pos + size])
        pos += size
    out[names[0]] = sorted(order[pos:])
    return out


def make_dataset(out: str | Path, clips: int, seed: int = 0, stream_pairs: int = 0,
                 min_seconds: float = 2.0, max_seconds: float = 10.0, progress: bool = True,
                 composite_fraction: float = 0.1) -> dict:
    """Write a synthetic dataset in the HumanML3D-272 layout.

    out/motion_data/<id>.npy (T, 272) float32 · out/texts/<id>.txt lines `caption#tokens#start#end`
    (0.0#0.0 = whole clip; composite clips add sub-captions with their seconds) · out/split/{train,val,
    test}.txt (80/10/10) · out/mean_std/{Mean,Std}.npy (group-averaged Std over the train clips) ·
    out/synth_meta.json (action label per id, seed, version, captions, segments).

    With stream_pairs > 0, also sequences of 2-4 actions: out/babel_stream/{train,val}_stream/seq_<n>.npy
    (motion A+B) with {train,val}_stream_text/seq_<n>.txt lines `A#A_tokens*B#B_tokens#A_frames`, and
    the segments themselves in the BABEL-272 layout: out/babel_272/{motion_data,texts,split/{train,val}.txt,
    t2m_babel_mean_std} (Mean/Std over HumanML3D train + BABEL train, as the t2m_babel statistics).
    """
    from tqdm import tqdm

    from motionstreamer.representation.normalize import compute_mean_std
    from motionstreamer.utils import atomic_save_npy, atomic_write_json

    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if stream_pairs < 0:
        raise ValueError(f"stream_pairs must be >= 0, got {stream_pairs}")
    if not 0.5 <= min_seconds <= max_seconds <= 60.0:
        raise ValueError(f"need 0.5 <= min_seconds <= max_seconds <= 60, got {min_seconds}, {max_seconds}")
    if not 0.0 <= composite_fraction <= 1.0:
        raise ValueError(f"composite_fraction must be in [0, 1], got {composite_fraction}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = list(ACTIONS)
    meta = {"seed": seed, "version": VERSION, "fps": FPS, "actions": {}, "captions": {}, "segments": {},
            "action_kinds": names}
    feats = {}
    # balanced classes: the actions in a fresh random order every round
    order = np.concatenate([rng.permutation(len(names)) for _ in range(clips // len(names) + 1)])[:clips]
    for i in tqdm(range(clips), desc="synth clips", disable=not progress):
        name = f"{i:06d}"
        action = names[int(order[i])]
        if i >= len(names) and rng.uniform() < composite_fraction and max_seconds >= 4.0:
            second = [a for a in names if a != action and a not in FINAL_ONLY]
            first = action if action not in FINAL_ONLY else str(rng.choice(second))
            pair = [first, str(rng.choice([a for a in names if a != first]))]
            clip = generate_composite(pair, rng, max(min_seconds, 4.0), max_seconds, name)
        else:
            clip = generate_clip(action, rng, min_seconds, max_seconds, name)
        x = clip.features()
        atomic_save_npy(out / "motion_data" / f"{name}.npy", x)
        lines = [_text_line(c) for c in clip.captions] + [_text_line(c, s, e) for c, s, e in clip.sub_captions]
        _write_lines(out / "texts" / f"{name}.txt", lines)
        meta["actions"][name] = clip.action
        meta["captions"][name] = clip.captions
        meta["segments"][name] = [[a, s, e] for a, s, e in clip.segments]
        feats[name] = x
    split = _split(list(feats), rng)
    for k, v in split.items():
        _write_lines(out / "split" / f"{k}.txt", v)
    mean, std = compute_mean_std([feats[k] for k in split["train"]], split["train"])
    atomic_save_npy(out / "mean_std" / "Mean.npy", mean.astype(np.float32))
    atomic_save_npy(out / "mean_std" / "Std.npy", std.astype(np.float32))
    meta["split_sizes"] = {k: len(v) for k, v in split.items()}
    if stream_pairs:
        meta.update(write_stream(out, stream_pairs, rng, [feats[k] for k in split["train"]], progress=progress))
    atomic_write_json(out / "synth_meta.json", meta)
    return meta


def write_stream(out: Path, pairs: int, rng, hml_train: list, progress: bool = True) -> dict:
    """Sequences of 2-4 actions -> BABEL-stream pairs (A_i, A_i+1) and BABEL-272 segments.

    Every segment is a multiple of 4 frames long (so A_frames // 4 latents cover A exactly), 2-4.5 s
    (the readers drop segments under 60 frames; a pair stays under the 78-latent window). All pairs and
    segments of one sequence land in the same split.
    """
    from tqdm import tqdm

    from motionstreamer.representation.normalize import compute_mean_std
    from motionstreamer.utils import atomic_save_npy

    out = Path(out)
    names = list(ACTIONS)
    stream_info, babel_actions, babel_split = {}, {}, {"train": [], "val": []}
    babel_train = []
    written, seq = 0, 0
    bar = tqdm(total=pairs, desc="synth stream pairs", disable=not progress)
    while written < pairs:
        k = int(min(rng.integers(2, 5), pairs - written + 1))        # k actions give k - 1 pairs
        acts = []
        for i in range(k):
            pool = [a for a in names if (not acts or a != acts[-1]) and (i == k - 1 or a not in FINAL_ONLY)]
            acts.append(str(rng.choice(pool)))
        lengths = [int(rng.integers(15, 34)) * 4 for _ in acts]          # 60..132 frames
        joints, rotations, segs = generate_sequence(acts, lengths, rng)
        clip = Clip("", "+".join(acts), joints, rotations, [])
        split = "val" if seq % 10 == 1 else "train"        # the 2nd, 12th, ... sequence: val
        caps = [[f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} {v}" for v in verb_phrases(s["action"], s["params"], rng)]
                for s in segs]
        seg_ids = []
        for i, s in enumerate(segs):                                    # BABEL-272: one clip per segment
            sid = f"{seq:05d}{i}"
            x = clip.features(s["start"], s["end"])
            atomic_save_npy(out / "babel_272" / "motion_data" / f"{sid}.npy", x)
            chosen = [caps[i][j] for j in rng.permutation(len(caps[i]))[:3]]
            _write_lines(out / "babel_272" / "texts" / f"{sid}.txt", [_text_line(c) for c in chosen])
            babel_actions[sid] = s["action"]
            babel_split[split].append(sid)
            seg_ids.append(sid)
            if split == "train":
                babel_train.append(x)
        for i in range(len(segs) - 1):                                  # BABEL-stream: consecutive pairs
            a, b = segs[i], segs[i + 1]
            pid = f"seq_{written}"
            x = clip.features(a["start"], b["end"])
            a_frames = a["end"] - a["start"]
            atomic_save_npy(out / "babel_stream" / f"{split}_stream" / f"{pid}.npy", x)
            lines = []
            for ja, jb in zip(rng.permutation(len(caps[i]))[:2], rng.permutation(len(caps[i + 1]))[:2]):
                ta, tb = caps[i][ja], caps[i + 1][jb]
                lines.append(f"{ta}#{tokens_for(ta)}*{tb}#{tokens_for(tb)}#{a_frames}")
            _write_lines(out / "babel_stream" / f"{split}_stream_text" / f"{pid}.txt", lines)
            stream_info[pid] = {"split": split, "actions": [a["action"], b["action"]], "a_frames": a_frames,
                                "frames": int(x.shape[0]), "segments": [seg_ids[i], seg_ids[i + 1]]}
            written += 1
            bar.update(1)
        seq += 1
    bar.close()
    for k, v in babel_split.items():
        _write_lines(out / "babel_272" / "split" / f"{k}.txt", sorted(v))
    mean, std = compute_mean_std(list(hml_train) + babel_train)     # t2m_babel: both datasets
    atomic_save_npy(out / "babel_272" / "t2m_babel_mean_std" / "Mean.npy", mean.astype(np.float32))
    atomic_save_npy(out / "babel_272" / "t2m_babel_mean_std" / "Std.npy", std.astype(np.float32))
    return {"stream": stream_info, "babel_actions": babel_actions}
