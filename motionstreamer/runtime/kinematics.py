"""Incremental "pos"-mode recovery: 272-dim frames -> global joints, chunk by chunk.

`representation.features.recover_joints` integrates heading and root translation over a whole
sequence. A stream cannot re-integrate from frame 0 for every chunk, so this keeps the running
heading matrix and root translation per stream and continues the same recurrence (spec §2.1-2.2):
H[t] = mat(x[t,2:8]) @ H[t-1];  v[t] = H[t-1]^T (x0, 0, x1);  tau[t] = tau[t-1] + v[t];
P[t,j] = H[t]^T x[t, 8+3j : 11+3j] + (tau.x, 0, tau.z).
With H[-1] = I and tau[-1] = 0 this reproduces recover_joints exactly for any chunking.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from motionstreamer import FEATURE_DIM, NUM_JOINTS
from motionstreamer.representation.rotation import rot6d_to_matrix


@dataclass
class RootState:
    heading: torch.Tensor      # (B, 3, 3) heading of the last emitted frame
    translation: torch.Tensor  # (B, 3) accumulated root translation (y unused)

    @classmethod
    def initial(cls, batch: int, device=None, dtype=torch.float32) -> "RootState":
        eye = torch.eye(3, device=device, dtype=dtype).expand(batch, 3, 3).clone()
        return cls(eye, torch.zeros(batch, 3, device=device, dtype=dtype))

    def reset_rows(self, rows: torch.Tensor) -> None:
        self.heading[rows] = torch.eye(3, device=self.heading.device, dtype=self.heading.dtype)
        self.translation[rows] = 0


def recover_joints_step(features: torch.Tensor, state: RootState, rows: torch.Tensor | None = None) -> torch.Tensor:
    """features (n, T, 272) de-normalised; updates `state` rows (all rows when rows is None) in place.

    Returns global joints (n, T, 22, 3).
    """
    if features.ndim != 3 or features.shape[-1] != FEATURE_DIM:
        raise ValueError(f"features must be (batch, frames, {FEATURE_DIM}), got {tuple(features.shape)}")
    heading = state.heading if rows is None else state.heading[rows]
    tau = state.translation if rows is None else state.translation[rows]
    n, T, _ = features.shape
    if T == 0:
        return features.new_zeros(n, 0, NUM_JOINTS, 3)
    delta = rot6d_to_matrix(features[..., 2:8])                    # (n, T, 3, 3)
    # the heading recurrence is sequential (T small matmuls); the rest runs on all T frames at once
    headings = [heading]
    for t in range(T):
        headings.append(delta[:, t] @ headings[-1])
    H = torch.stack(headings, dim=1)                                # (n, T + 1, 3, 3): H[t-1] at t, then H[t]
    zero = torch.zeros_like(features[..., 0])
    vel = torch.stack([features[..., 0], zero, features[..., 1]], dim=-1)   # (n, T, 3)
    v = (H[:, :T].transpose(-1, -2) @ vel[..., None])[..., 0]    # H[t-1]^T (x0, 0, x1), (n, T, 3)
    taus = tau[:, None, :] + torch.cumsum(v, dim=1)                # tau[t], (n, T, 3)
    local = features[..., 8:8 + 3 * NUM_JOINTS].reshape(n, T, NUM_JOINTS, 3)
    root = torch.stack([taus[..., 0], zero, taus[..., 2]], dim=-1)  # y unused
    joints = local @ H[:, 1:] + root[:, :, None, :]                 # row vectors: (H^T p^T)^T = p H
    if rows is None:   # in place: the state tensors are the engine's, made outside inference mode
        state.heading.copy_(H[:, T])
        state.translation.copy_(taus[:, T - 1])
    else:
        state.heading[rows], state.translation[rows] = H[:, T], taus[:, T - 1]
    return joints
