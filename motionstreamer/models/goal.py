"""The goal condition: a place on the floor, optionally a facing and a time to get there, given beside the
text (docs/goals.md; why it is built this way: docs/design.md, "Goals beside text").

A goal reaches the model as one raw vector of GOAL_DIM numbers per token, expressed in the stream's
current root frame (the pelvis on the floor, its heading turned onto +Z; +X is the character's left):

    x, z          where the goal is, metres, in that frame
    sin, cos      the facing to have there, relative to the current heading (0, 1 when not given)
    seconds       time left to get there (0 when not given)
    present       1 = there is a goal, 0 = none (the rest is then ignored)
    has_heading   1 = the facing counts
    has_seconds   1 = the time counts

GoalEmbed turns it into a token-width vector that the model ADDS to the newest input token (the text token
at a prefill without history, else the newest latent's token): `present` multiplies the output, so no goal
adds exactly zero and the model runs as if it had no goal module. The runtime re-expresses a goal held in
world coordinates every latent (`goal_vector`), training takes goals from each clip's own future root path
(train/goals.py); both use `root_frame_offset`, the one definition of "in the current root frame".
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

GOAL_DIM = 8
X, Z, SIN, COS, SECONDS, PRESENT, HAS_HEADING, HAS_SECONDS = range(GOAL_DIM)
GOAL_FEATURES = 12

# feature scales: distances in units of 4 m (a goal 16 m away reads 4), times of 4 s; beyond these the
# features saturate (a far goal is "far that way")
_DIST, _MAX_DIST, _TIME, _MAX_TIME, _MAX_SPEED = 4.0, 16.0, 4.0, 8.0, 6.0


def goal_features(goal: torch.Tensor) -> torch.Tensor:
    """Raw goals (..., GOAL_DIM) -> what the embedding sees (..., GOAL_FEATURES): the position (scaled,
    saturating), its direction and distance, the facing, the time left, the mean velocity that would
    reach the goal in that time (metres/second, saturating), and the two flags. The direction and the
    required velocity are functions of the rest, but a small model learns faster with them spelt out."""
    x, z = goal[..., X], goal[..., Z]
    has_h, has_t = goal[..., HAS_HEADING], goal[..., HAS_SECONDS]
    dist = torch.sqrt(x * x + z * z + 1e-8)
    t = goal[..., SECONDS].clamp(0.0, _MAX_TIME) * has_t
    rate = has_t / (t + 0.25)                                  # 1 / time left, bounded at 4 per second
    speed = lambda v: (v * rate).clamp(-_MAX_SPEED, _MAX_SPEED) / 2.0   # noqa: E731
    feats = [
        (x / _DIST).clamp(-4.0, 4.0), (z / _DIST).clamp(-4.0, 4.0),
        x / (dist + 0.1), z / (dist + 0.1), dist.clamp(max=_MAX_DIST) / _DIST,
        goal[..., SIN] * has_h, goal[..., COS] * has_h,
        t / _TIME, speed(x), speed(z),
        has_h, has_t,
    ]
    return torch.stack(feats, dim=-1)


class GoalEmbed(nn.Module):
    """Raw goal (..., GOAL_DIM) -> (..., n_embd) added to a token; exactly 0 where `present` is 0.

    The last layer starts small (N(0, 0.02), the transformer's own init), not at zero: a zero layer
    passes no gradient to the first one, and a fine-tune measured the goal path barely trained then."""

    def __init__(self, n_embd: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or n_embd
        self.fc1 = nn.Linear(GOAL_FEATURES, hidden)
        self.fc2 = nn.Linear(hidden, n_embd)
        nn.init.normal_(self.fc2.weight, std=0.02)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, goal: torch.Tensor) -> torch.Tensor:
        goal = goal.to(self.fc1.weight.dtype)
        h = self.fc2(torch.nn.functional.silu(self.fc1(goal_features(goal))))
        return h * goal[..., PRESENT:PRESENT + 1]


def pack_goals(offset_xz: torch.Tensor, rel_heading: torch.Tensor | None = None,
               seconds: torch.Tensor | None = None) -> torch.Tensor:
    """Raw goals (n, GOAL_DIM) from goal positions in the current root frame (n, 2), optionally the
    facing to have there relative to the current heading (n,) and the time left (n,): the one writer of
    the layout above, for the runtime (runtime/policy.goal_vector) and training (train/goals.py)."""
    out = torch.zeros(offset_xz.shape[0], GOAL_DIM)
    out[:, [X, Z]] = offset_xz.to(out.dtype)
    out[:, PRESENT] = 1.0
    out[:, COS] = 1.0
    if rel_heading is not None:
        out[:, SIN], out[:, COS], out[:, HAS_HEADING] = torch.sin(rel_heading), torch.cos(rel_heading), 1.0
    if seconds is not None:
        out[:, SECONDS], out[:, HAS_SECONDS] = seconds, 1.0
    return out


def no_goal(*shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Raw goal vectors that say "no goal" (all zero), shape (*shape, GOAL_DIM)."""
    return torch.zeros(*shape, GOAL_DIM, device=device, dtype=dtype)


def yaw_of_heading(heading: torch.Tensor) -> torch.Tensor:
    """The facing yaw (radians about +Y; 0 = +Z, pi/2 = +X) of heading matrices H (..., 3, 3), the
    272 format's heading (H turns the facing onto +Z, spec §1.4): the facing is H^T (0, 0, 1)."""
    return torch.atan2(heading[..., 2, 0], heading[..., 2, 2])


def root_frame_offset(target_xz: torch.Tensor, root_xz: torch.Tensor, root_yaw: torch.Tensor) -> torch.Tensor:
    """World floor points (..., 2) as (x, z) in the root frame at root_xz (..., 2) facing root_yaw (...):
    the offset rotated by -yaw about +Y, so the facing direction is +Z and the character's left +X."""
    d = target_xz - root_xz
    c, s = torch.cos(root_yaw), torch.sin(root_yaw)
    return torch.stack([c * d[..., 0] - s * d[..., 1], s * d[..., 0] + c * d[..., 1]], dim=-1)


def wrap_angle(a):
    """Angles to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi
