"""Left/right mirroring, HumanML3D convention: reflection x -> -x in the Y-up frame (spec §1.1, §7.9).

A reflected rotation is S R S with S = diag(-1, 1, 1): its rows 0, 1 change sign as
[+1, -1, -1, -1, +1, +1] in 6D, and its axis-angle (ax, ay, az) becomes (ax, -ay, -az).
"""
from __future__ import annotations

import torch

from motionstreamer import FEATURE_DIM
from motionstreamer.representation.features import HEADING_DELTA, POSITIONS, ROOT_VELOCITY, ROTATIONS, VELOCITIES
from motionstreamer.representation.rotation import array_api, check_trailing
from motionstreamer.representation.skeleton import NUM_JOINTS, mirror_permutation

SIXD_SIGN = (1.0, -1.0, -1.0, -1.0, 1.0, 1.0)
AXIS_ANGLE_SIGN = (1.0, -1.0, -1.0)
VECTOR_SIGN = (-1.0, 1.0, 1.0)


def _mirror_joint_block(block: torch.Tensor, width: int, sign) -> torch.Tensor:
    """(..., 22*width) joint-major block -> L/R swapped, each joint's values times `sign`."""
    lead = block.shape[:-1]
    perm = torch.as_tensor(mirror_permutation(), device=block.device)
    s = torch.tensor(sign, dtype=block.dtype, device=block.device)
    return (block.reshape(*lead, NUM_JOINTS, width)[..., perm, :] * s).reshape(*lead, NUM_JOINTS * width)


@array_api
def mirror_272(features):
    """Closed-form mirror of (..., 272) features: negate dim 0, sign-flip every 6D block (heading and
    22 joints), swap L/R joints, negate x of the position and velocity blocks.

    Exact for dims 0:8 and 140:272 against mirroring the SMPL parameters and re-deriving; the
    positions (8:140) differ by the skeleton's asymmetry and the changed floor (up to a few cm).
    Mirroring twice is the identity.
    """
    check_trailing(features, (FEATURE_DIM,), "features", "mirror_272")
    s6 = torch.tensor(SIXD_SIGN, dtype=features.dtype, device=features.device)
    velocity = features[..., ROOT_VELOCITY]
    return torch.cat([
        -velocity[..., 0:1], velocity[..., 1:2], features[..., HEADING_DELTA] * s6,
        _mirror_joint_block(features[..., POSITIONS], 3, VECTOR_SIGN),
        _mirror_joint_block(features[..., VELOCITIES], 3, VECTOR_SIGN),
        _mirror_joint_block(features[..., ROTATIONS], 6, SIXD_SIGN),
    ], dim=-1)


@array_api
def mirror_smpl85(params):
    """Mirror smpl_85 parameters (..., 85) (spec §1.1 step 5): swap the L/R joint axis-angles, negate
    y and z of every joint's axis-angle (root included), negate translation x. Hands (66:72) and
    betas (75:85) are unchanged."""
    check_trailing(params, (85,), "params", "mirror_smpl85")
    t = params[..., 72:75] * torch.tensor(VECTOR_SIGN, dtype=params.dtype, device=params.device)
    return torch.cat([_mirror_joint_block(params[..., :66], 3, AXIS_ANGLE_SIGN), params[..., 66:72], t,
                      params[..., 75:85]], dim=-1)
