"""From controls to motion: integration of the root and forward kinematics into joints and
rotations, cross-faded chains of actions, and the clips and sequences the writers store."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from motionstreamer import FPS
from motionstreamer.representation.features import canonicalize_facing, joints_to_272
from motionstreamer.representation.skeleton import SMPL_OFFSETS, forward_kinematics

from .actions import ACTIONS, GAIT_ACTIONS, PERSON_KEYS, pursuit_yaw_rate, sample_params
from .body import (
    FEET,
    L_ANKLE,
    L_HIP,
    L_KNEE,
    PELVIS,
    R_ANKLE,
    R_HIP,
    R_KNEE,
    TOES,
    Controls,
    euler_xyz,
    mask_runs,
    rot_y,
    style_noise,
)
from .captions import SUBJECTS, captions_for, verb_phrases

GRAVITY = 9.81


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
    cmd = np.einsum("tab,tb->ta", Ry[:-1],
                    np.stack([c.velocity[:-1, 0], np.zeros(T - 1), c.velocity[:-1, 1]], -1)) / FPS
    step += (1 - support)[:, None] * cmd                                   # airborne: plus the launch velocity
    drive = c.drive[:-1, None]
    step = drive * cmd + (1 - drive) * step                                # planned gaits: the planned path
    root = np.concatenate([np.zeros((1, 3)), np.cumsum(step, axis=0)])

    # vertical: lowest foot on the floor; airborne stretches are ballistic between take-off and landing
    ground = -body[:, FEET, 1].min(axis=1)
    frame_support = np.clip(c.contact.sum(axis=1) / 0.3, 0.0, 1.0)
    height = ground.copy()
    for s, e in mask_runs(frame_support < 1.0):
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
    out = Controls(np.zeros((total, 22, 3)), np.zeros(total), np.zeros((total, 2)), np.zeros((total, 2)),
                   np.zeros(total))
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


def frame_seconds(frame: int) -> float:
    """Seconds for a frame boundary such that the readers' int(seconds * 30) gives the frame back
    (frame / 30 itself can land a hair below and lose a frame)."""
    return round((frame + 0.25) / FPS, 4)


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
        return canonicalize_facing(self.joints, self.rotations)

    def features(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """(T, 272) float32 features of frames [start, end), canonicalised on their own."""
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


STEERED_ACTIONS = {"walk": 0.55, "jog": 0.2, "run": 0.1, "walk_backwards": 0.15}   # share of each


def generate_steered_clip(rng, min_seconds: float = 2.0, max_seconds: float = 10.0, name: str = "",
                          pursuit: bool = False) -> Clip:
    """A locomotion clip that changes direction where its caption does not say so: 1-3 smooth turns of
    15-120 degrees each at random times (actions.turn_rate), or with pursuit=True a walk that heads for
    a random target point as a person would (actions.pursuit_yaw_rate; params["target"]), and ends
    there; captions of the plain straight gait.
    Training data for goals (train/goals.py): in the default clips the path follows from the caption
    and the history, so a goal taken from it adds almost nothing the model cannot already predict,
    and a model trained on them alone never learns to turn towards a goal it is drifting away from."""
    kinds = list(STEERED_ACTIONS)
    action = kinds[int(rng.choice(len(kinds), p=list(STEERED_ACTIONS.values())))]
    T = _frames(rng, min_seconds, max_seconds)
    seconds = T / FPS
    p = sample_params(action, rng, seconds)
    p["curve"] = 0.0
    if pursuit:
        # a target 1.5-8 m away in any direction; the clip ends a little after it arrives
        p["ramp_out"] = 0
        angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(1.5, 8.0)
        p["target"] = (float(dist * np.sin(angle)), float(dist * np.cos(angle)))
        rate, arrive = pursuit_yaw_rate(action, p, T, np.array(p["target"]))
        T = max(int(np.ceil(min_seconds * FPS)), min(T, arrive + int(rng.integers(0, 8))))
        p["yaw_rate"] = rate[:T]
    else:
        turns = []
        for _ in range(int(rng.integers(1, 4))):
            dur = float(rng.uniform(0.6, 1.6))
            turns.append((float(rng.uniform(0.0, max(seconds - dur, 0.1))), dur,
                          float(rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(15.0, 120.0)))))
        p["turns"] = turns
    c = ACTIONS[action](T, rng, p, None)
    style_noise(c, np.arange(T) / FPS, p)
    joints, rotations = integrate(c, scale=p["scale"], heading0=float(rng.uniform(-np.pi, np.pi)))
    caps = captions_for(action, p, rng, int(rng.integers(3, 6)))
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
