"""Procedural motions on the SMPL 22-joint skeleton, written in the HumanML3D-272 / BABEL-stream layouts.

Every action is a function that returns per-frame *controls*: parent-local joint rotations (axis-angle),
body-frame root velocity, yaw rate and flight height. One integrator turns controls into a motion:
heading = integral of the yaw rate, root XZ = integral of the velocity rotated into the world, pelvis
rotation = Ry(heading) @ local pelvis tilt, joints by forward kinematics on the (scaled) SMPL rest
skeleton, and the root height set so the lowest foot touches the floor (plus flight for jumps).
Rotations and positions are therefore consistent, and a transition between two actions is a blend
of their controls. Deterministic for a seed (numpy Generator only).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motionstreamer.representation.features import canonicalize_facing, joints_to_272
from motionstreamer.representation.rotation import axis_angle_to_matrix, rot_y
from motionstreamer.representation.skeleton import SMPL_OFFSETS, forward_kinematics

FPS = 30
FEET = (7, 8, 10, 11)
# joint indices
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 12, 13, 14, 15, 16, 17, 18, 19


@dataclass
class Controls:
    aa: np.ndarray          # (T, 22, 3) local axis-angles (joint 0: pelvis tilt, heading excluded)
    velocity: np.ndarray    # (T, 2) body-frame (lateral +x = left, forward +z) m/s
    yaw_rate: np.ndarray    # (T,) rad/s, positive turns left
    flight: np.ndarray      # (T,) extra root height (jumps), m

    @classmethod
    def zeros(cls, T: int) -> "Controls":
        return cls(np.zeros((T, 22, 3)), np.zeros((T, 2)), np.zeros(T), np.zeros(T))


def _rest_arms(c: Controls, down: float = 1.2) -> None:
    """Arms from the T-pose down beside the body (about the Z axis of the shoulder)."""
    c.aa[:, L_SHOULDER, 2] += -down
    c.aa[:, R_SHOULDER, 2] += down


def _gait(c: Controls, t: np.ndarray, freq: float, hip: float, knee: float, arm: float, bob: float,
          sign: float = 1.0, phase: float = 0.0) -> None:
    """Leg swing and counter-swinging arms at `freq` gait cycles per second (sign -1: backwards)."""
    w = 2 * np.pi * freq * t + phase
    s = np.sin(w)
    c.aa[:, L_HIP, 0] += -sign * hip * s
    c.aa[:, R_HIP, 0] += sign * hip * s
    c.aa[:, L_KNEE, 0] += knee * np.clip(np.sin(w + np.pi / 2), 0, None) + 0.08
    c.aa[:, R_KNEE, 0] += knee * np.clip(np.sin(w + 3 * np.pi / 2), 0, None) + 0.08
    c.aa[:, L_ANKLE, 0] += 0.15 * np.sin(w + np.pi / 3)
    c.aa[:, R_ANKLE, 0] += -0.15 * np.sin(w + np.pi / 3)
    c.aa[:, L_SHOULDER, 0] += sign * arm * s
    c.aa[:, R_SHOULDER, 0] += -sign * arm * s
    c.aa[:, L_ELBOW, 1] += -0.3 - 0.5 * arm
    c.aa[:, R_ELBOW, 1] += 0.3 + 0.5 * arm
    c.aa[:, PELVIS, 1] += 0.08 * s * hip            # pelvis yaw sway with the stride
    c.aa[:, SPINE2, 1] += -0.1 * s * hip
    c.flight += bob * (1 - np.cos(2 * w)) * 0.5


def _idle_sway(c: Controls, t: np.ndarray, rng) -> None:
    c.aa[:, SPINE1, 2] += 0.02 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6))
    c.aa[:, NECK, 0] += 0.03 * np.sin(2 * np.pi * 0.2 * t + rng.uniform(0, 6))
    c.aa[:, SPINE3, 0] += 0.015 * np.sin(2 * np.pi * 0.3 * t)


def _envelope(T: int, ramp: int) -> np.ndarray:
    """0 -> 1 -> 0 with smooth ramps, so actions start and end near rest."""
    e = np.ones(T)
    r = min(ramp, T // 3)
    if r > 0:
        x = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r))
        e[:r], e[T - r:] = x, x[::-1]
    return e


# ----------------------------------------------------------------------------- actions
def act_locomotion(kind: str):
    table = {  # speed m/s, cycle Hz, hip, knee, arm, bob m, lean
        "walk": (1.2, 0.9, 0.40, 0.70, 0.35, 0.02, 0.05),
        "jog": (2.3, 1.3, 0.60, 1.20, 0.60, 0.05, 0.15),
        "run": (3.6, 1.5, 0.80, 1.60, 0.80, 0.08, 0.25),
        "walk_backwards": (-0.9, 0.8, 0.35, 0.60, 0.25, 0.02, -0.05),
    }
    speed0, freq0, hip, knee, arm, bob, lean = table[kind]

    def f(T, rng, p):
        t = np.arange(T) / FPS
        c = Controls.zeros(T)
        _rest_arms(c)
        env = _envelope(T, 12)
        k = p["speed"]
        _gait(c, t, freq0 * (0.85 + 0.3 * k), hip * (0.7 + 0.6 * k), knee * (0.7 + 0.6 * k), arm, bob,
              sign=-1.0 if speed0 < 0 else 1.0, phase=rng.uniform(0, 2 * np.pi))
        c.aa *= env[:, None, None]
        c.flight *= env
        c.aa[:, SPINE1, 0] += lean * env
        c.velocity[:, 1] = speed0 * (0.75 + 0.5 * k) * env
        c.yaw_rate[:] = p["curve"] * env
        return c
    return f


def act_sidestep(direction: float):
    def f(T, rng, p):
        t = np.arange(T) / FPS
        c = Controls.zeros(T)
        _rest_arms(c)
        env = _envelope(T, 12)
        w = 2 * np.pi * (0.9 + 0.3 * p["speed"]) * t
        c.aa[:, L_HIP, 2] += direction * 0.25 * np.clip(np.sin(w), 0, None) * env
        c.aa[:, R_HIP, 2] += -direction * 0.25 * np.clip(np.sin(w + np.pi), 0, None) * env
        c.aa[:, L_KNEE, 0] += 0.15 * env
        c.aa[:, R_KNEE, 0] += 0.15 * env
        c.velocity[:, 0] = direction * (0.6 + 0.4 * p["speed"]) * env
        return c
    return f


def act_turn(direction: float):
    def f(T, rng, p):
        t = np.arange(T) / FPS
        c = Controls.zeros(T)
        _rest_arms(c)
        env = _envelope(T, 10)
        _gait(c, t, 0.9, 0.15, 0.35, 0.1, 0.01)
        c.aa *= env[:, None, None]
        total = np.deg2rad(p["turn_deg"])
        c.yaw_rate[:] = direction * total * env / max(env.sum() / FPS, 1e-6)
        return c
    return f


def act_jump(T, rng, p):
    c = Controls.zeros(T)
    _rest_arms(c)
    n_jumps = max(1, int(round(T / FPS / 1.1)))
    period = T / n_jumps
    h = 0.25 + 0.25 * p["amp"]
    for j in range(n_jumps):
        i0 = j * period
        idx = np.arange(T)
        u = (idx - i0) / period                                   # 0..1 within this jump
        m = (u >= 0) & (u < 1)
        crouch = np.where(m, np.exp(-((u - 0.25) / 0.1) ** 2) + np.exp(-((u - 0.8) / 0.08) ** 2), 0)
        air = np.where(m & (u > 0.35) & (u < 0.7), np.sin(np.pi * (u - 0.35) / 0.35), 0)
        c.aa[:, L_HIP, 0] += -0.9 * crouch
        c.aa[:, R_HIP, 0] += -0.9 * crouch
        c.aa[:, L_KNEE, 0] += 1.5 * crouch
        c.aa[:, R_KNEE, 0] += 1.5 * crouch
        c.aa[:, L_ANKLE, 0] += -0.5 * crouch
        c.aa[:, R_ANKLE, 0] += -0.5 * crouch
        c.aa[:, SPINE1, 0] += 0.4 * crouch
        c.aa[:, L_SHOULDER, 2] += 1.8 * air
        c.aa[:, R_SHOULDER, 2] += -1.8 * air
        c.flight += h * air
    c.velocity[:, 1] = p["forward_jump"] * (c.flight > 0.01)
    return c


def act_squat(T, rng, p):
    t = np.arange(T) / FPS
    c = Controls.zeros(T)
    _rest_arms(c)
    reps = max(1, int(round(T / FPS / 2.0)))
    d = (0.5 - 0.5 * np.cos(2 * np.pi * reps * t / (T / FPS))) * (0.7 + 0.3 * p["amp"])
    c.aa[:, L_HIP, 0] += -1.5 * d
    c.aa[:, R_HIP, 0] += -1.5 * d
    c.aa[:, L_KNEE, 0] += 2.0 * d
    c.aa[:, R_KNEE, 0] += 2.0 * d
    c.aa[:, L_ANKLE, 0] += -0.5 * d
    c.aa[:, R_ANKLE, 0] += -0.5 * d
    c.aa[:, SPINE1, 0] += 0.6 * d
    c.aa[:, L_SHOULDER, 0] += -1.2 * d      # arms forward for balance
    c.aa[:, R_SHOULDER, 0] += -1.2 * d
    return c


def act_wave(side: str):
    def f(T, rng, p):
        t = np.arange(T) / FPS
        c = Controls.zeros(T)
        _rest_arms(c)
        _idle_sway(c, t, rng)
        env = _envelope(T, 15)
        sh, el, s = (L_SHOULDER, L_ELBOW, 1.0) if side == "left" else (R_SHOULDER, R_ELBOW, -1.0)
        c.aa[:, sh, 2] += s * (1.2 + 1.1 + 0.3 * p["amp"]) * env           # raise the arm to the side/up
        c.aa[:, el, 2] += s * (0.9 + 0.4 * np.sin(2 * np.pi * (1.5 + p["speed"]) * t)) * env   # forearm waves
        return c
    return f


def act_raise_arms(T, rng, p):
    t = np.arange(T) / FPS
    c = Controls.zeros(T)
    _rest_arms(c)
    _idle_sway(c, t, rng)
    env = _envelope(T, 20)
    up = (2.6 + 0.3 * p["amp"]) * env
    c.aa[:, L_SHOULDER, 2] += up
    c.aa[:, R_SHOULDER, 2] += -up
    return c


def act_kick(side: str):
    def f(T, rng, p):
        c = Controls.zeros(T)
        _rest_arms(c)
        n = max(1, int(round(T / FPS / 1.5)))
        u = (np.arange(T) / T * n) % 1.0
        k = np.exp(-((u - 0.5) / 0.12) ** 2) * (0.8 + 0.4 * p["amp"])
        hip, knee, arm = (L_HIP, L_KNEE, R_SHOULDER) if side == "left" else (R_HIP, R_KNEE, L_SHOULDER)
        c.aa[:, hip, 0] += -1.4 * k
        c.aa[:, knee, 0] += 0.9 * np.exp(-((u - 0.38) / 0.1) ** 2)
        c.aa[:, arm, 0] += -0.6 * k
        c.aa[:, SPINE1, 0] += -0.15 * k
        return c
    return f


def act_idle(T, rng, p):
    t = np.arange(T) / FPS
    c = Controls.zeros(T)
    _rest_arms(c)
    _idle_sway(c, t, rng)
    return c


def act_circle(T, rng, p):
    c = act_locomotion("walk")(T, rng, {**p, "curve": 0.0})
    c.yaw_rate[:] = (1 if p["turn_sign"] > 0 else -1) * 2 * np.pi / max(T / FPS, 4.0) * 0.9 * (c.velocity[:, 1] > 0.1)
    return c


ACTIONS = {
    "walk": act_locomotion("walk"), "jog": act_locomotion("jog"), "run": act_locomotion("run"),
    "walk_backwards": act_locomotion("walk_backwards"), "sidestep_left": act_sidestep(1.0),
    "sidestep_right": act_sidestep(-1.0), "turn_left": act_turn(1.0), "turn_right": act_turn(-1.0),
    "jump": act_jump, "squat": act_squat, "wave_left": act_wave("left"), "wave_right": act_wave("right"),
    "raise_arms": act_raise_arms, "kick": act_kick("right"), "idle": act_idle, "walk_circle": act_circle,
}

_SUBJ = ["a person", "someone", "a man", "a woman", "the person", "a figure"]
_CAPTIONS = {
    "walk": ["{s} walks forward{speed}{curve}", "{s} strolls ahead{speed}{curve}", "{s} takes steps forward{speed}{curve}"],
    "jog": ["{s} jogs forward{speed}{curve}", "{s} is jogging ahead{speed}{curve}", "{s} runs at a light jog{curve}"],
    "run": ["{s} runs forward{speed}{curve}", "{s} sprints ahead{speed}", "{s} is running fast{curve}"],
    "walk_backwards": ["{s} walks backwards{speed}", "{s} steps backward{speed}", "{s} moves back while facing forward"],
    "sidestep_left": ["{s} side steps to the left", "{s} shuffles sideways to the left", "{s} moves to the left side"],
    "sidestep_right": ["{s} side steps to the right", "{s} shuffles sideways to the right", "{s} moves to the right side"],
    "turn_left": ["{s} turns to the left", "{s} turns around to the left", "{s} rotates left in place"],
    "turn_right": ["{s} turns to the right", "{s} turns around to the right", "{s} rotates right in place"],
    "jump": ["{s} jumps up", "{s} jumps in place", "{s} hops up and down", "{s} leaps into the air"],
    "squat": ["{s} squats down and stands up", "{s} does squats", "{s} bends the knees and crouches"],
    "wave_left": ["{s} waves with the left hand", "{s} raises the left arm and waves", "{s} waves hello with the left hand"],
    "wave_right": ["{s} waves with the right hand", "{s} raises the right arm and waves", "{s} waves hello with the right hand"],
    "raise_arms": ["{s} raises both arms", "{s} lifts both arms over the head", "{s} puts the hands up"],
    "kick": ["{s} kicks with the right leg", "{s} kicks forward", "{s} does a front kick"],
    "idle": ["{s} stands still", "{s} stands idle", "{s} waits in place"],
    "walk_circle": ["{s} walks in a circle", "{s} walks around in a circle", "{s} circles around"],
}
_POS = {"a": "DET", "the": "DET", "person": "NOUN", "someone": "PRON", "man": "NOUN", "woman": "NOUN",
        "figure": "NOUN", "to": "ADP", "with": "ADP", "in": "ADP", "and": "CCONJ", "left": "NOUN", "right": "NOUN"}


def caption_for(action: str, rng, params: dict) -> str:
    tmpl = _CAPTIONS[action][rng.integers(len(_CAPTIONS[action]))]
    speed = ""
    if action in ("walk", "jog", "run", "walk_backwards"):
        speed = " slowly" if params["speed"] < 0.3 else (" quickly" if params["speed"] > 0.7 else "")
    curve = ""
    if abs(params["curve"]) > 0.15:
        curve = " while curving left" if params["curve"] > 0 else " while curving right"
    return tmpl.format(s=_SUBJ[rng.integers(len(_SUBJ))], speed=speed, curve=curve)


def tokens_for(caption: str) -> str:
    out = []
    for w in caption.split():
        pos = _POS.get(w, "VERB" if w.endswith("s") and len(w) > 3 else "ADV" if w.endswith("ly") else "NOUN")
        out.append(f"{w}/{pos}")
    return " ".join(out)


def sample_params(action: str, rng) -> dict:
    return {"speed": float(rng.uniform()), "amp": float(rng.uniform()),
            "curve": float(rng.choice([0.0, 0.0, rng.uniform(-0.6, 0.6)])) if action in ("walk", "jog", "run") else 0.0,
            "turn_deg": float(rng.uniform(80, 200)), "forward_jump": float(rng.choice([0.0, rng.uniform(0.3, 1.0)])),
            "turn_sign": float(rng.choice([-1, 1]))}


def integrate(c: Controls, scale: float = 1.0, heading0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Controls -> (joints (T,22,3), rotations (T,22,3,3) [0] pelvis global, [1:] local)."""
    T = c.aa.shape[0]
    heading = heading0 + np.cumsum(c.yaw_rate) / FPS
    local = axis_angle_to_matrix(c.aa)                                   # (T, 22, 3, 3)
    rots = local.copy()
    rots[:, 0] = rot_y(heading) @ local[:, 0]
    fwd = np.stack([np.sin(heading), np.zeros(T), np.cos(heading)], -1)
    left = np.stack([np.cos(heading), np.zeros(T), -np.sin(heading)], -1)
    vel = left * c.velocity[:, :1] + fwd * c.velocity[:, 1:2]
    root = np.cumsum(vel, axis=0) / FPS
    joints = forward_kinematics(rots, root, SMPL_OFFSETS * scale)
    foot_min = joints[:, FEET, 1].min(axis=1)
    # contact: the lowest foot on the floor; smoothed so the pelvis does not jitter between feet
    lift = -foot_min
    kernel = np.ones(5) / 5
    lift = np.convolve(np.pad(lift, 2, mode="edge"), kernel, mode="valid")
    joints[..., 1] += (lift + c.flight)[:, None]
    return joints, rots


def blend(a: Controls, b: Controls, n_blend: int) -> Controls:
    """A then B with a smooth cross-fade of the controls over n_blend frames (total len(A)+len(B)-n_blend)."""
    n = min(n_blend, len(a.yaw_rate), len(b.yaw_rate))
    w = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))

    def cat(x, y):
        mid = x[len(x) - n:] * (1 - w.reshape(-1, *[1] * (x.ndim - 1))) + y[:n] * w.reshape(-1, *[1] * (x.ndim - 1))
        return np.concatenate([x[:len(x) - n], mid, y[n:]])
    return Controls(cat(a.aa, b.aa), cat(a.velocity, b.velocity), cat(a.yaw_rate, b.yaw_rate), cat(a.flight, b.flight))


@dataclass
class Clip:
    name: str
    action: str
    joints: np.ndarray
    rotations: np.ndarray
    captions: list

    def features(self) -> np.ndarray:
        j, r = canonicalize_facing(self.joints, self.rotations)
        return joints_to_272(j, r).astype(np.float32)


def generate_clip(action: str, rng, min_seconds: float = 2.0, max_seconds: float = 10.0, name: str = "") -> Clip:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    T = int(rng.uniform(min_seconds, max_seconds) * FPS) // 4 * 4
    params = sample_params(action, rng)
    c = ACTIONS[action](T, rng, params)
    joints, rots = integrate(c, scale=float(rng.uniform(0.85, 1.15)), heading0=float(rng.uniform(-np.pi, np.pi)))
    caps = list(dict.fromkeys(caption_for(action, rng, params) for _ in range(6)))[:4]
    return Clip(name, action, joints, rots, caps)


def generate_controls(action: str, rng, seconds: float) -> tuple[Controls, dict]:
    T = max(8, int(seconds * FPS))
    params = sample_params(action, rng)
    return ACTIONS[action](T, rng, params), params


# ----------------------------------------------------------------------------- dataset writers
def _write_text(path: Path, lines: list[str]) -> None:
    from motionstreamer.utils import atomic_write_text
    atomic_write_text(path, "\n".join(lines) + "\n")


def make_dataset(out: str | Path, clips: int, seed: int = 0, stream_pairs: int = 0,
                 min_seconds: float = 2.0, max_seconds: float = 10.0, progress: bool = True) -> dict:
    """Write a synthetic dataset in the HumanML3D-272 layout (and BABEL-stream pairs when asked).

    out/motion_data/<id>.npy (T,272 float32), out/texts/<id>.txt (caption#tokens#0.0#0.0 lines),
    out/split/{train,val,test}.txt (80/10/10), out/mean_std/{Mean,Std}.npy over the train clips,
    out/synth_meta.json (action per id). With stream_pairs: out/babel_stream/{train,val}_stream/seq_<id>.npy
    (A+B motion) and {train,val}_stream_text/seq_<id>.txt (`A#A_tokens*B#B_tokens#A_frames`).
    """
    from tqdm import tqdm

    from motionstreamer.representation.normalize import compute_mean_std
    from motionstreamer.utils import atomic_save_npy, atomic_write_json

    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = list(ACTIONS)
    meta = {"seed": seed, "version": 1, "fps": FPS, "actions": {}, "captions": {}}
    feats = {}
    for i in tqdm(range(clips), desc="synth clips", disable=not progress):
        action = names[i % len(names)] if i < len(names) else names[int(rng.integers(len(names)))]
        name = f"{i:06d}"
        clip = generate_clip(action, rng, min_seconds, max_seconds, name)
        x = clip.features()
        atomic_save_npy(out / "motion_data" / f"{name}.npy", x)
        _write_text(out / "texts" / f"{name}.txt", [f"{c}#{tokens_for(c)}#0.0#0.0" for c in clip.captions])
        meta["actions"][name] = action
        meta["captions"][name] = clip.captions
        feats[name] = x
    ids = list(feats)
    order = rng.permutation(len(ids))
    n_val = max(1, len(ids) // 10) if len(ids) >= 3 else 0
    n_test = n_val
    split = {"test": [ids[k] for k in order[:n_test]], "val": [ids[k] for k in order[n_test:n_test + n_val]],
             "train": [ids[k] for k in order[n_test + n_val:]]}
    for k, v in split.items():
        _write_text(out / "split" / f"{k}.txt", sorted(v))
    mean, std = compute_mean_std([feats[k] for k in split["train"]], split["train"])
    atomic_save_npy(out / "mean_std" / "Mean.npy", mean.astype(np.float32))
    atomic_save_npy(out / "mean_std" / "Std.npy", std.astype(np.float32))
    if stream_pairs:
        meta["stream"] = write_stream_pairs(out / "babel_stream", stream_pairs, rng, progress=progress)
    atomic_write_json(out / "synth_meta.json", meta)
    return meta


def write_stream_pairs(out: Path, pairs: int, rng, progress: bool = True, blend_seconds: float = 0.4) -> dict:
    from tqdm import tqdm

    from motionstreamer.utils import atomic_save_npy

    names = list(ACTIONS)
    info = {}
    for i in tqdm(range(pairs), desc="synth stream pairs", disable=not progress):
        split = "val" if i % 10 == 9 else "train"
        a_act, b_act = rng.choice(names, size=2, replace=False)
        ca, pa = generate_controls(a_act, rng, rng.uniform(2.0, 5.0))
        cb, pb = generate_controls(b_act, rng, rng.uniform(2.0, 5.0))
        nb = int(blend_seconds * FPS)
        c = blend(ca, cb, nb)
        a_frames = (len(ca.yaw_rate) - nb // 2) // 4 * 4          # A ends in the middle of the transition
        T = len(c.yaw_rate) // 4 * 4
        c = Controls(c.aa[:T], c.velocity[:T], c.yaw_rate[:T], c.flight[:T])
        joints, rots = integrate(c, scale=float(rng.uniform(0.85, 1.15)), heading0=float(rng.uniform(-np.pi, np.pi)))
        j, r = canonicalize_facing(joints, rots)
        x = joints_to_272(j, r).astype(np.float32)
        name = f"seq_{i:06d}"
        atomic_save_npy(out / f"{split}_stream" / f"{name}.npy", x)
        lines = []
        for _ in range(2):
            ta, tb = caption_for(a_act, rng, pa), caption_for(b_act, rng, pb)
            lines.append(f"{ta}#{tokens_for(ta)}*{tb}#{tokens_for(tb)}#{a_frames}")
        _write_text(out / f"{split}_stream_text" / f"{name}.txt", lines)
        info[name] = [str(a_act), str(b_act), a_frames]
    return info
