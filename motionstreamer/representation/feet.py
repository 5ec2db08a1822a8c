"""Feet: contact detection, grounding, and foot-skating clean-up (offline and causal). numpy, Y up, metres.

Contacts follow the 272 format's conventions (its `foot_detect`, not stored in the features): the
"foot" joints 10 and 11 (SMPL's toe-base joints), per-frame speed below a threshold (0.0015 m per
frame there) and a majority vote over 6 frames (median filter). For generated motion, whose planted
feet slide, a height test is added (a foot is planted only when it is near the floor) and the speed
threshold is looser: `PLANTED` is what the clean-up and the grounding use.

Grounding (`ground`): the floor is taken from the feet while they are planted (a low percentile of
their heights), not from the lowest joint of one frame (one sunken frame would lift the whole clip);
the motion is shifted onto it, then any frame whose foot joints (ankles, feet) are still below the
floor is lifted by a smooth vertical offset, so no foot joint is ever below y = 0.

Clean-up (`clean_feet` offline, `FootCleaner` causal): a planted foot is pinned where it lands (x, z)
on the floor (y = 0); the ankle and foot joints move by the same offset (the foot stays rigid) and
the knee follows by analytic two-bone IK in the leg's own bending plane, so thigh and shin keep
their lengths; the offset fades in and out over a few frames at the ends of each contact. Offline,
the pin is the mean landing spot of the whole contact and the offset also fades in before it;
causally (a stream, chunk by chunk) the pin is where the foot was at the first planted frame and the
offset only fades out after it, so nothing waits for future frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from motionstreamer import FPS, NUM_JOINTS
from motionstreamer.representation.skeleton import ANKLES, FEET, GROUND_JOINTS, HIPS, KNEES

FORMAT_SPEED = 0.0015             # m/frame: the 272 format's contact threshold (foot_detect)
VOTE_FRAMES = 6                   # the 272 format's median-filter size


@dataclass(frozen=True)
class ContactThresholds:
    """A foot is planted when its joint is lower than `height` above the floor and moves slower than
    `speed` (m/s, 3D), as a majority over `vote` frames."""
    height: float = 0.05
    speed: float = 0.9
    vote: int = VOTE_FRAMES


PLANTED = ContactThresholds()
BLEND_FRAMES = 5                  # frames over which a pin's offset fades in/out


def _joints(x, name: str = "joints") -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    j = np.asarray(x, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3) or j.shape[0] == 0:
        raise ValueError(f"{name} must have shape (frames, 22, 3) with frames >= 1, got {j.shape}")
    if not np.all(np.isfinite(j)):
        raise ValueError(f"{name} contains NaN/inf")
    return j


def foot_speed(joints, fps: float = FPS) -> np.ndarray:
    """(T, 2) 3D speed (m/s) of the two foot joints; frame t uses t -> t+1 (the last repeats)."""
    j = _joints(joints)
    feet = j[:, FEET]
    if len(j) == 1:
        return np.zeros((1, 2))
    v = np.linalg.norm(np.diff(feet, axis=0), axis=-1) * fps
    return np.concatenate([v, v[-1:]], axis=0)


# The three filters below are numpy transcriptions of scipy.ndimage's (median_filter on booleans,
# maximum_filter1d, gaussian_filter1d; mode "nearest"), equal to them (tests/test_representation_ik_feet.py):
# numpy alone keeps this module usable where scipy is not installed (Blender's Python, integrations/blender).
def _edge_pad(x: np.ndarray, before: int, after: int) -> np.ndarray:
    return np.concatenate([np.repeat(x[:1], before, 0), x, np.repeat(x[-1:], after, 0)])


def _vote(mask: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.median_filter(mask[:, k], size, mode="nearest") per column of a (T, K) bool mask:
    frame t is True when at least size - size // 2 of frames t - size // 2 .. t + (size - 1) // 2 are."""
    if size <= 1:
        return mask
    h = size // 2
    counts = np.cumsum(np.concatenate([np.zeros((1,) + mask.shape[1:], int),
                                       _edge_pad(mask.astype(int), h, size - 1 - h)]), axis=0)
    return counts[size:] - counts[:-size] >= size - h


def _max_filter(x: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.maximum_filter1d(x, size, mode="nearest") of a 1-D array, odd size."""
    h = size // 2
    return np.lib.stride_tricks.sliding_window_view(_edge_pad(x, h, h), size).max(axis=-1)


def _gaussian_filter(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(x, sigma, mode="nearest") of a 1-D array."""
    r = int(truncate * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(_edge_pad(x, r, r), w / w.sum(), mode="valid")


def format_contacts(joints) -> np.ndarray:
    """(T, 2) bool: the 272 format's own foot contacts (speed < 0.0015 m/frame, 6-frame vote)."""
    return _vote(foot_speed(joints, fps=1.0) < FORMAT_SPEED, VOTE_FRAMES)


def foot_contacts(joints, floor: float = 0.0, thresholds: ContactThresholds = PLANTED, fps: float = FPS) -> np.ndarray:
    """(T, 2) bool [left, right]: planted feet (height above `floor` and speed tests, majority vote)."""
    j = _joints(joints)
    low = j[:, FEET, 1] - floor < thresholds.height
    slow = foot_speed(j, fps) < thresholds.speed
    return _vote(low & slow, thresholds.vote)


# ----------------------------------------------------------------------------------------- grounding
FLOOR_PERCENTILE = 10     # of the planted feet's heights: they rest on the floor, rarely dip below it


def floor_height(joints, fps: float = FPS) -> float:
    """Floor height under a motion: a low percentile (10th) of the foot joints' heights while planted.

    Planted feet of generated motion jitter by a centimetre or so; the floor goes under most of those
    heights (a median would leave half the planted frames to be lifted out of the floor). Planted is
    judged against a provisional floor, the 5th percentile of the lower foot's height, so a few sunken
    frames do not decide it; with no planted frame the provisional floor is used."""
    j = _joints(joints)
    feet_y = j[:, FEET, 1]
    provisional = float(np.percentile(feet_y.min(axis=1), 5))
    planted = foot_contacts(j, floor=provisional, fps=fps)
    return float(np.percentile(feet_y[planted], FLOOR_PERCENTILE)) if planted.any() else provisional


def lift_offsets(joints, smooth_frames: int = 4) -> np.ndarray:
    """(T,) smooth vertical offsets >= the amount each frame's lowest foot joint is below y = 0."""
    j = _joints(joints)
    need = np.maximum(0.0, -j[:, GROUND_JOINTS, 1].min(axis=1))
    if not need.any():
        return need
    wide = _max_filter(need, 2 * smooth_frames + 1)
    return np.maximum(need, _gaussian_filter(wide, smooth_frames / 2))


GROUNDED_ABOVE = 0.02     # m: planted feet at most this far above y = 0, nothing below: already grounded
# m: how far below y = 0 a grounded motion's feet may read once stored (a float32 file rounds a 1 m
# coordinate by up to 6e-8 m) and refitted (ik.solve_rotations moves joints by ~1e-7 m, more or less
# by the BLAS build): still on the floor. Far below any real penetration (generated feet sink by mm).
FLOOR_TOLERANCE = 1e-5


def ground(joints, fps: float = FPS) -> tuple[np.ndarray, np.ndarray]:
    """Put a motion on the floor: (grounded joints, per-frame vertical offsets that were added).
    A motion already on the floor (no foot joint below y = 0, the floor estimate within
    GROUNDED_ABOVE above it: what `ground` returns) is left as it is, so grounding is idempotent."""
    j = _joints(joints).copy()
    floor = floor_height(j, fps)
    on_floor = j[:, GROUND_JOINTS, 1].min() >= -FLOOR_TOLERANCE and -FLOOR_TOLERANCE <= floor <= GROUNDED_ABOVE
    shift = 0.0 if on_floor else -floor
    j[..., 1] += shift
    lift = lift_offsets(j)
    j[..., 1] += lift[:, None]
    return j, shift + lift


def ground_by_contacts(joints, contacts, fps: float = FPS, smooth_frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Put a body on the floor at the times its feet are planted: (grounded joints, offsets (T,)).

    For a body whose feet do not match the contacts' own motion frame by frame (another skeleton or
    other rotations posed along the same motion, a retargeted character), one constant shift leaves
    it floating or sinking wherever its legs differ. Here every frame with a planted foot (`contacts`
    (T, 2) bool, e.g. of the motion the body follows) gets the vertical offset that puts its lowest
    planted foot joint on y = 0; frames between contacts interpolate those offsets linearly, the
    offsets are smoothed over `smooth_frames` (sigma), and frames whose foot joints are still below the
    floor are lifted (lift_offsets). Without any contact this is `ground`."""
    j = _joints(joints).copy()
    c = np.asarray(contacts, dtype=bool)
    if c.shape != (len(j), 2):
        raise ValueError(f"contacts must have shape ({len(j)}, 2), got {c.shape}")
    if not c.any():
        return ground(j, fps)
    heights = np.where(c, j[:, FEET, 1], np.inf).min(axis=1)
    t = np.arange(len(j))
    planted = np.isfinite(heights)
    offsets = -np.interp(t, t[planted], heights[planted])
    if smooth_frames > 0:
        offsets = _gaussian_filter(offsets, smooth_frames)
    j[..., 1] += offsets[:, None]
    lift = lift_offsets(j)
    j[..., 1] += lift[:, None]
    return j, offsets + lift


# ----------------------------------------------------------------------------------------- leg IK
def two_bone_ik(hip, knee, ankle, target) -> tuple[np.ndarray, np.ndarray]:
    """Move a hip-knee-ankle chain so the ankle reaches `target` (clamped to the leg's reach), keeping
    both bone lengths and the knee in its current bending plane. All (..., 3); returns (knee, ankle)."""
    a = np.linalg.norm(knee - hip, axis=-1, keepdims=True)
    b = np.linalg.norm(ankle - knee, axis=-1, keepdims=True)
    to = target - hip
    d = np.linalg.norm(to, axis=-1, keepdims=True)
    u = to / np.maximum(d, 1e-9)
    d = np.clip(d, np.abs(a - b) + 1e-6, a + b - 1e-6)
    # bend direction: the current knee's offset from the hip-target line (fallback: current leg's)
    pole = (knee - hip) - np.sum((knee - hip) * u, axis=-1, keepdims=True) * u
    fallback = (knee - ankle) - np.sum((knee - ankle) * u, axis=-1, keepdims=True) * u
    pole = np.where(np.linalg.norm(pole, axis=-1, keepdims=True) > 1e-6, pole, fallback)
    pole = pole / np.maximum(np.linalg.norm(pole, axis=-1, keepdims=True), 1e-9)
    cos_h = (a * a + d * d - b * b) / (2 * a * d)
    along = a * cos_h
    across = a * np.sqrt(np.clip(1 - cos_h * cos_h, 0.0, 1.0))
    new_knee = hip + along * u + across * pole
    return new_knee, hip + d * u


def move_feet(joints, offsets) -> np.ndarray:
    """Translate each foot (ankle + foot joint) by offsets (T, 2, 3) and re-solve its knee by two-bone
    IK from the fixed hip. Where the leg cannot reach, the ankle stops short and the foot keeps its
    shape relative to it."""
    j = _joints(joints).copy()
    off = np.asarray(offsets, dtype=np.float64)
    for k in range(2):
        moving = np.abs(off[:, k]).sum(-1) > 0
        if not moving.any():
            continue
        hip, knee, ankle, foot = (j[moving, idx[k]] for idx in (HIPS, KNEES, ANKLES, FEET))
        new_knee, new_ankle = two_bone_ik(hip, knee, ankle, ankle + off[moving, k])
        j[moving, KNEES[k]] = new_knee
        j[moving, ANKLES[k]] = new_ankle
        j[moving, FEET[k]] = foot + (new_ankle - ankle)
    return j


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _segments(mask: np.ndarray, min_frames: int = 3) -> list[tuple[int, int]]:
    """[start, end) runs of True at least min_frames long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(s, e) for s, e in zip(edges[::2], edges[1::2]) if e - s >= min_frames]


def _ramp_inside(t: np.ndarray, s: int, e: int, blend: int) -> np.ndarray:
    """Weight 1 inside [s, e) that ramps from 0 at both ends over up to `blend` frames; 0 outside."""
    n = max(1, min(blend, (e - s) // 3))
    return np.where((t >= s) & (t < e), _smoothstep(np.minimum(t - s + 1, e - t) / (n + 1)), 0.0)


def clean_feet(joints, fps: float = FPS, thresholds: ContactThresholds = PLANTED,
               blend: int = BLEND_FRAMES, contacts=None) -> tuple[np.ndarray, np.ndarray]:
    """Offline foot-skating clean-up of grounded joints (floor at y = 0).

    Each planted segment of each foot is pinned at its mean (x, z); that horizontal offset fades in
    over `blend` frames before the contact and out over `blend` frames after it (where contacts of
    one foot are close, the fades are weighted together). Vertically the foot is brought onto the
    floor inside the contact only, ramping at its ends, so swinging feet are never pulled down.
    `contacts` (T, 2) bool: given (e.g. those of the motion a retargeted body follows) instead of
    detected on these joints. Returns (joints, contacts (T, 2) bool)."""
    j = _joints(joints)
    T = len(j)
    if contacts is None:
        contacts = foot_contacts(j, thresholds=thresholds, fps=fps)
    elif np.shape(contacts) != (T, 2):
        raise ValueError(f"contacts must have shape ({T}, 2), got {np.shape(contacts)}")
    contacts = np.asarray(contacts, dtype=bool)
    offsets = np.zeros((T, 2, 3))
    t = np.arange(T)
    for k in range(2):
        foot = j[:, FEET[k]]
        total, weight, down = np.zeros((T, 2)), np.zeros(T), np.zeros(T)
        for s, e in _segments(contacts[:, k]):
            pin = foot[s:e][:, [0, 2]].mean(axis=0)
            inside = np.clip(t, s, e - 1)                       # outside: the offset at the nearest end
            w = np.where(t < s, _smoothstep(1 - (s - t) / (blend + 1)),
                         np.where(t >= e, _smoothstep(1 - (t - e + 1) / (blend + 1)), 1.0))
            total += w[:, None] * (pin - foot[inside][:, [0, 2]])
            weight += w
            down = np.maximum(down, _ramp_inside(t, s, e, blend))
        offsets[:, k, [0, 2]] = total / np.maximum(weight, 1.0)[:, None]
        offsets[:, k, 1] = -down * foot[:, 1]
    return move_feet(j, offsets), contacts


class FootCleaner:
    """Causal foot clean-up for a stream: feed joints chunk by chunk, get cleaned joints back at once.

    A foot is planted from the first frame it is low and slow (`thresholds`, no vote: that would need
    future frames); it is pinned where it was then (x, z) and brought down onto the floor (y = 0) over
    `blend` frames; it lets go when it rises above 1.5x the height threshold or moves faster than the
    speed threshold, and the offset then fades out over `blend` frames. A foot that slides more
    than `leash` metres from its pin drags the pin along (the leg could not reach it, and a late
    release would snap the foot over the whole distance). Frames whose foot joints are
    still below the floor lift the whole body (the lift relaxes back over a few frames). The floor is
    the feature's own (y = 0): a stream cannot wait for the median of its contacts."""

    def __init__(self, fps: float = FPS, thresholds: ContactThresholds = PLANTED, blend: int = BLEND_FRAMES,
                 leash: float = 0.2):
        self.fps, self.thresholds, self.blend, self.leash = float(fps), thresholds, int(blend), float(leash)
        self.reset()

    def reset(self) -> None:
        self._prev = None                         # previous raw foot positions (2, 3)
        self._pin = [None, None]                  # pinned (x, z) per foot while planted
        self._planted_for = [0, 0]                # frames since the pin was set
        self._fade = [np.zeros(2), np.zeros(2)]   # horizontal offset at release, fading out
        self._down = [0.0, 0.0]                   # weight of the vertical correction at release
        self._fade_left = [0, 0]
        self._lift = 0.0
        self.contacts: list[np.ndarray] = []      # (2,) bool per processed frame

    def _offset(self, k: int, foot: np.ndarray, speed: float) -> np.ndarray:
        """This frame's offset of foot k: horizontal towards its pin, vertical -w * height (w ramps
        in over `blend` frames after the pin is set and out over `blend` frames after release)."""
        th, n = self.thresholds, self.blend + 1
        pin = self._pin[k]
        if pin is not None:
            if foot[1] > 1.5 * th.height or speed > th.speed:
                self._fade[k] = pin - foot[[0, 2]]
                self._down[k] = min(1.0, self._planted_for[k] / n)
                self._fade_left[k] = self.blend
                self._pin[k] = pin = None
            else:   # a leash: the pin follows a foot that slid too far, so the leg can still reach it
                gap = foot[[0, 2]] - pin
                dist = np.linalg.norm(gap)
                if dist > self.leash:
                    self._pin[k] = pin = pin + gap * (1 - self.leash / dist)
        elif foot[1] < th.height and speed < th.speed:
            # planted again while a release still fades: continue from where the foot is shown
            w = float(_smoothstep(np.array(self._fade_left[k] / n))) if self._fade_left[k] else 0.0
            self._pin[k] = pin = foot[[0, 2]] + w * self._fade[k]
            self._planted_for[k] = int(round(w * self._down[k] * n))
            self._fade_left[k] = 0
        out = np.zeros(3)
        if pin is not None:
            self._planted_for[k] += 1
            out[[0, 2]] = pin - foot[[0, 2]]
            out[1] = -min(1.0, self._planted_for[k] / n) * foot[1]
        elif self._fade_left[k]:
            self._fade_left[k] -= 1
            w = _smoothstep(np.array(self._fade_left[k] / n))
            out[[0, 2]] = self._fade[k] * w
            out[1] = -self._down[k] * w * foot[1]
        return out

    def __call__(self, joints) -> np.ndarray:
        """joints (T, 22, 3) raw frames in stream order -> cleaned (T, 22, 3) (same dtype as given)."""
        dtype = joints.dtype if isinstance(joints, np.ndarray) and joints.dtype.kind == "f" else np.float64
        j = _joints(joints)
        offsets = np.zeros((len(j), 2, 3))
        for t in range(len(j)):
            feet = j[t, FEET]
            speed = np.zeros(2) if self._prev is None else np.linalg.norm(feet - self._prev, axis=-1) * self.fps
            self._prev = feet
            for k in range(2):
                offsets[t, k] = self._offset(k, feet[k], float(speed[k]))
            self.contacts.append(np.array([p is not None for p in self._pin]))
        out = move_feet(j, offsets)
        for t in range(len(out)):     # lift the body where a foot joint is still below the floor
            need = max(0.0, -out[t, GROUND_JOINTS, 1].min())
            self._lift = max(need, self._lift * 0.7)
            out[t, :, 1] += self._lift
        return out.astype(dtype)

    def clean_chunk(self, chunk):
        """A FrameChunk (runtime.engine) with its joints cleaned (same dtype and device); the rest as is."""
        cleaned = self(chunk.joints.detach().cpu().double().numpy())
        # torch only here: the rest of this module is numpy alone, as Blender's Python runs it (the add-on)
        import torch  # noqa: PLC0415

        return dataclasses.replace(chunk, joints=torch.from_numpy(cleaned).to(chunk.joints))
