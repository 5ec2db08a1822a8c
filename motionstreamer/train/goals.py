"""Goals for training, taken from each clip's own future root path (models/goal.py defines the goal).

A clip's root path at latent boundaries: entry k is the root (x, z, facing yaw) before latent k, i.e.
after frame 4k - 1 (entry 0: frame 0, the start), recovered from the clip's ground-truth 272 features
as `recover_joints` does. A sampled goal starts at some position p0 of the target part of a sequence
and aims at the root state of a later boundary g, 0.5-6 s ahead (T2MTrainConfig.goal_horizon_s): the
tokens p0 .. g-1 carry it, each expressed in its own current root frame, with the time left counting
down (4 frames per latent); after g the goal is over (the runtime ends the action when it is reached).
The facing and the time are each given half of the time; half of the goals are followed by another one
from where they end (waypoints); half of the goal sequences are windows of their clip without history
(goal_window). The end latent never carries a goal. With goal dropout
(T2MTrainConfig.goal_prob < 1) the other sequences carry none, which keeps the text-only model.
"""
from __future__ import annotations

import numpy as np
import torch

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.models.goal import pack_goals, root_frame_offset, wrap_angle, yaw_of_heading
from motionstreamer.representation.features import headings_from_features, root_translation

HEADING_PROB = 0.5      # a goal gives its facing
SECONDS_PROB = 0.5      # a goal gives its time
CHAIN_PROB = 0.5        # another goal follows from where one ends
START_PROB = 0.5        # a goal starts with the target part (else at a random position in it)
WINDOW_PROB = 0.5       # a goal sequence is a window of its clip, starting anywhere, without history
MIN_WINDOW = 8          # latents


def goal_window(n: int, gen: torch.Generator) -> tuple[int, int] | None:
    """For a goal sequence whose target part has n latents: (lo, hi), a window of at least MIN_WINDOW
    latents starting anywhere, to be trained without its history (WINDOW_PROB of the time), else None.

    Why: within a clip the history already tells the speed and curvature the goal would (synthetic
    clips keep them), so the goal is informative mostly where a sequence starts; a fine-tune measured
    the goal barely used (teacher-forced loss with and without goals equal to 2e-4) without these."""
    u = torch.rand(1, generator=gen).item()
    if u >= WINDOW_PROB or n <= MIN_WINDOW:
        return None
    lo = int(torch.randint(n - MIN_WINDOW + 1, (1,), generator=gen))
    hi = lo + MIN_WINDOW + int(torch.randint(n - lo - MIN_WINDOW + 1, (1,), generator=gen))
    return lo, hi


def frame_root_path(features) -> np.ndarray:
    """De-normalised features (T, 272) -> (T, 3): the root's floor position (x, z) and facing yaw per
    frame, in the clip's own world (spec §2.1-2.2: the recovered headings and translation)."""
    f = torch.as_tensor(np.asarray(features, np.float64))
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be (frames, 272), got {tuple(f.shape)}")
    heads = headings_from_features(f)
    tau = root_translation(f, heads)
    return torch.stack([tau[:, 0], tau[:, 2], yaw_of_heading(heads)], dim=-1).numpy()


def latent_root_path(features, n_latents: int, frames_per_latent: int = FRAMES_PER_LATENT) -> np.ndarray:
    """(n_latents + 1, 3) root states before each latent of a latent file of n_latents rows (its T // 4
    motion latents, then possibly the end latent, whose entries repeat the last state)."""
    frames = frame_root_path(features)
    n_motion = min(len(frames) // frames_per_latent, n_latents)
    k = np.arange(n_latents + 1)
    idx = np.clip(np.minimum(k, n_motion) * frames_per_latent - 1, 0, len(frames) - 1)
    return frames[idx].astype(np.float32)


def goal_vectors(path: torch.Tensor, target: int, positions: torch.Tensor, heading: bool, timed: bool) -> torch.Tensor:
    """Raw goals (len(positions), GOAL_DIM) for the root state path[target], seen from path[positions]."""
    cur, tgt = path[positions], path[target]
    offset = root_frame_offset(tgt[None, :2].expand(len(positions), 2), cur[:, :2], cur[:, 2])
    rel = wrap_angle(tgt[2] - cur[:, 2]) if heading else None
    left = (target - positions).float() * FRAMES_PER_LATENT / FPS if timed else None
    return pack_goals(offset, rel, left)


def sample_goals(path: np.ndarray, start: int, n_motion: int, horizon_s: tuple, gen: torch.Generator,
                 out: torch.Tensor) -> None:
    """Write a goal (or a chain of them) into out (tokens, GOAL_DIM) for a sequence whose root path is
    `path` (>= n_motion + 1 entries), its target part starting at token `start` and its motion latents
    ending before token n_motion (the end latent, if any, is token n_motion)."""
    if n_motion - start < 1:
        return
    p = torch.as_tensor(path, dtype=torch.float32)
    r = torch.rand(1, generator=gen).item()
    pos = start if r < START_PROB else start + int(torch.randint(n_motion - start, (1,), generator=gen))
    lo, hi = horizon_s
    while pos < n_motion:
        u = torch.rand(4, generator=gen).tolist()
        seconds = lo + (hi - lo) * u[0]
        target = min(pos + max(1, round(seconds * FPS / FRAMES_PER_LATENT)), n_motion)
        out[pos:target] = goal_vectors(p, target, torch.arange(pos, target), u[1] < HEADING_PROB, u[2] < SECONDS_PROB)
        if u[3] >= CHAIN_PROB:
            break
        pos = target


ROOT_STEP_SCALE = 5.0   # metres and radians per latent times this: a walk's step (~0.16 m) reads ~0.8


def root_steps(path) -> torch.Tensor:
    """(n + 1, 3) root states at latent boundaries -> (n, 3): each latent's root step seen from the root
    before it (x, z in its root frame, the heading change wrapped), times ROOT_STEP_SCALE: the target of
    the auxiliary root loss (T2MTrainConfig.root_aux)."""
    p = torch.as_tensor(np.asarray(path), dtype=torch.float32)
    xz = root_frame_offset(p[1:, :2], p[:-1, :2], p[:-1, 2])
    turn = wrap_angle(p[1:, 2] - p[:-1, 2])
    return torch.cat([xz, turn[:, None]], dim=-1) * ROOT_STEP_SCALE
