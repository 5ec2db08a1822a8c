"""The synthetic body: joint indices and sign conventions, per-frame controls (`Controls`), small
helpers and the posture layers every action starts from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motionstreamer.representation import skeleton

# joint indices (SMPL order)
(PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3, L_TOE, R_TOE, NECK,
 L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST) = range(22)
HIPS, KNEES, ANKLES, TOES = skeleton.HIPS, skeleton.KNEES, skeleton.ANKLES, skeleton.FEET   # (left, right)
FEET = skeleton.GROUND_JOINTS      # ankles and toes
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


def mask_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


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
