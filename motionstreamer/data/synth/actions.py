"""The actions: each writes the controls of one motion kind (locomotion, side steps, turns, jumps,
squats, waves, raised arms, kicks, standing, sitting down) from sampled per-clip parameters."""
from __future__ import annotations

import numpy as np

from motionstreamer import FPS

from .body import (
    ANKLES,
    HIPS,
    KNEES,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    NECK,
    PELVIS,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    SPINE1,
    SPINE3,
    UPPER_BODY,
    Controls,
    X,
    Y,
    Z,
    envelope,
    idle_motion,
    keyframes,
    rest_pose,
)
from .gait import Gait, gait, gait_phase, place_feet, standing_feet, standing_height


def standing_start(T: int, p: dict, idle: float = 1.0) -> tuple[np.ndarray, Controls]:
    """Frame times (s) and standing controls in the clip's rest pose with idle motion scaled by `idle`:
    where every action that is not a gait starts."""
    t = np.arange(T) / FPS
    c = Controls.standing(T)
    rest_pose(c, p)
    idle_motion(c, t, p, idle)
    return t, c


def bend(c: Controls, amount: np.ndarray, *terms) -> None:
    """c.angles[:, joints, axis] += w * amount (T,) for each (joints, axis, w); a tuple of joints moves
    together."""
    for joints, axis, w in terms:
        c.angles[:, joints, axis] += w * (amount[:, None] if isinstance(joints, tuple) else amount)


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
        c.phase = gait_phase(t, g.cadence, phase0, rng)
        if kind == "walk_circle":
            c.yaw_rate[:] = p["turn_sign"] * 2 * np.pi / p["circle_period"] * env
        else:
            c.yaw_rate[:] = p["curve"] * env + turn_rate(t, p.get("turns", ())) + p.get("yaw_rate", 0.0)
        gait(c, c.phase, env, g, p["scale"])
        return c
    return f


def turn_rate(t: np.ndarray, turns) -> np.ndarray:
    """Yaw rate (rad/s) at frame times t of turns [(start_s, seconds, radians), ...]: each a smooth bump
    (a sine squared) that turns the heading by its angle over its seconds. None (the default clips): 0."""
    rate = np.zeros(len(t))
    for start, dur, angle in turns:
        u = (t - start) / dur
        inside = (u >= 0) & (u < 1)
        rate[inside] += angle / dur * 2 * np.sin(np.pi * u[inside]) ** 2
    return rate


def pursuit_yaw_rate(kind: str, p: dict, T: int, target: np.ndarray, gain: float = 2.5,
                     max_rate: float = 1.6) -> tuple[np.ndarray, int]:
    """A walker's yaw rate (T,) that heads for `target` (x, z in the clip's own start frame) the way a
    person does: turning towards it at gain * heading error, at most max_rate rad/s, backwards gaits with
    their back first; and the frame it arrives (within 0.15 m; T if it does not). The path is integrated
    as gait._planned_path does (heading[t] = yaw before t, step = Ry(heading) v / FPS)."""
    g = _gait_of(kind, p["speed"])
    env = envelope(T, p["ramp_in"], 0)
    rate, pos, heading = np.zeros(T), np.zeros(2), 0.0
    for k in range(T):
        d = target - pos
        if np.hypot(*d) < 0.15:
            return rate, k
        bearing = np.arctan2(d[0], d[1]) + (np.pi if g.speed < 0 else 0.0)
        err = (bearing - heading + np.pi) % (2 * np.pi) - np.pi
        rate[k] = np.clip(gain * err, -max_rate, max_rate) * env[k]
        v = env[k] * g.speed
        pos = pos + np.array([np.sin(heading), np.cos(heading)]) * v / FPS
        heading += rate[k] / FPS
    return rate, T


def act_sidestep(direction: float):
    """Lead foot lifts and steps out, the weight shifts across (both feet planted, the pelvis moves),
    the trailing foot lifts and closes in."""
    def f(T, rng, p, phase0=None):
        t = np.arange(T) / FPS
        c = Controls.standing(T)
        rest_pose(c, p)
        cadence = 0.75 + 0.35 * p["speed"]
        c.phase = gait_phase(t, cadence, phase0, rng)
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
        c.angles[:, (L_SHOULDER, R_SHOULDER), Z] += ((env * 0.12 * np.sin(2 * np.pi * c.phase))[:, None]
                                                     * np.array([1.0, -1.0]))
        c.angles[:, NECK, Y] += direction * 0.1 * env
        place_feet(c, feet, standing_height(p["scale"]) * (1 - 0.03 * env), p["scale"])
        return c
    return f


def act_turn(direction: float):
    """Small steps in place while the heading turns by p['turn_deg']."""
    def f(T, rng, p, phase0=None):
        t, c = standing_start(T, p, 0.3)
        env = envelope(T, max(6, T // 6), max(6, T // 6))
        g = Gait(speed=0.0, cadence=0.95, duty=0.6, clearance=0.06, crouch=0.01, arm=0.05, elbow=0.3, lean=0.0)
        c.phase = gait_phase(t, g.cadence, phase0, rng)
        total = np.deg2rad(p["turn_deg"])
        c.yaw_rate[:] = direction * total * env / (env.sum() / FPS)
        gait(c, c.phase, env, g, p["scale"])
        c.angles[:, NECK, Y] += direction * 0.25 * env           # look into the turn
        return c
    return f


def act_jump(T, rng, p, phase0=None):
    """Crouch, push off, ballistic flight (height from the flight time), land and absorb; repeated."""
    t, c = standing_start(T, p, 0.3)
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
    bend(c, crouch, (HIPS, X, -1.0), (KNEES, X, 1.5), (PELVIS, X, 0.35), (SPINE1, X, 0.25))
    c.angles[:, (L_SHOULDER, R_SHOULDER), X] += arms[:, None]
    c.angles[:, ANKLES, X] += 0.5 * air[:, None]           # toes point down in the air
    c.contact[air] = 0.0
    c.velocity[air, 1] = p["jump_forward"] / flight
    return c


def act_squat(T, rng, p, phase0=None):
    t, c = standing_start(T, p, 0.3)
    n = p["reps"]
    period = T / FPS / n
    d = np.zeros(T)
    for k in range(n):
        t0 = k * period + 0.1 * period
        down, hold = 0.38 * period, 0.08 * period
        d += keyframes(t, [t0 - 1e-3, t0, t0 + down, t0 + down + hold, t0 + 2 * down + hold], [0, 0, 1, 1, 0])
    d *= 0.75 + 0.25 * p["amp"]
    bend(c, d, (HIPS, X, -1.7), (KNEES, X, 2.1), (PELVIS, X, 0.35), (SPINE1, X, 0.2), (NECK, X, -0.3),
         ((L_SHOULDER, R_SHOULDER), X, -1.3), (L_SHOULDER, Z, 0.4), (R_SHOULDER, Z, -0.4))  # arms forward: balance
    return c


def act_wave(side: str):
    def f(T, rng, p, phase0=None):
        t, c = standing_start(T, p)
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
    t, c = standing_start(T, p)
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
    t, c = standing_start(T, p, 0.3)
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
    t, c = standing_start(T, p, 1.5)
    return c


def act_sit_down(T, rng, p, phase0=None):
    """Stand, lower onto a (not modelled) seat with the trunk leaning forward, stay seated."""
    t, c = standing_start(T, p, 0.5)
    t0 = p["stand_time"] * (T / FPS)
    tk = [t0, t0 + 0.5 * p["descent"], t0 + p["descent"], t0 + p["descent"] + 0.6]
    s = keyframes(t, tk, [0, 0.55, 1, 1])
    lean = keyframes(t, tk, [0, 1, 0.6, 0.2])
    bend(c, s, (HIPS, X, -1.55), (KNEES, X, 1.6), ((L_SHOULDER, R_SHOULDER), X, -0.6),   # hands to the thighs
         (L_ELBOW, Y, -0.5), (R_ELBOW, Y, 0.5))
    bend(c, lean, (PELVIS, X, 0.45), (SPINE1, X, 0.25), (NECK, X, -0.3))
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
