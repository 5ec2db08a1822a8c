"""Left/right mirroring (HumanML3D convention, reflection x -> -x; spec §1.1 step 5 and §7.9)."""
from __future__ import annotations

import numpy as np

from motionstreamer.representation.skeleton import NUM_JOINTS, mirror_permutation

_SIXD_SIGN = np.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])


def mirror_272(features):
    """Closed-form mirror of (..., T, 272) features: exact for dims 0:8 and 140:272 (positions of a
    real, asymmetric skeleton differ by up to a few cm from re-deriving them through the body model)."""
    x = features.copy() if isinstance(features, np.ndarray) else features.clone()
    if x.shape[-1] != 272:
        raise ValueError(f"mirror_272 needs (..., 272) features, got {tuple(x.shape)}")
    perm = mirror_permutation()
    lead = x.shape[:-1]
    sign6 = _SIXD_SIGN if isinstance(x, np.ndarray) else __import__("torch").as_tensor(_SIXD_SIGN, dtype=x.dtype, device=x.device)
    x[..., 0] = -features[..., 0]
    x[..., 2:8] = features[..., 2:8] * sign6
    for a, b, width in ((8, 74, 3), (74, 140, 3), (140, 272, 6)):
        block = features[..., a:b].reshape(*lead, NUM_JOINTS, width)[..., perm, :]
        block = block * sign6 if width == 6 else block
        if width == 3:
            block = block.copy() if isinstance(block, np.ndarray) else block.clone()
            block[..., 0] = -block[..., 0]
        x[..., a:b] = block.reshape(*lead, NUM_JOINTS * width)
    return x


def mirror_smpl85(params):
    """Mirror smpl_85 parameters (..., 85): swap L/R axis-angles, negate y and z of every joint's
    axis-angle (root included), negate translation x."""
    p = params.copy() if isinstance(params, np.ndarray) else params.clone()
    if p.shape[-1] != 85:
        raise ValueError(f"mirror_smpl85 needs (..., 85) parameters, got {tuple(p.shape)}")
    lead = p.shape[:-1]
    aa = params[..., :66].reshape(*lead, NUM_JOINTS, 3)[..., mirror_permutation(), :]
    aa = aa.copy() if isinstance(aa, np.ndarray) else aa.clone()
    aa[..., 1:] = -aa[..., 1:]
    p[..., :66] = aa.reshape(*lead, 66)
    p[..., 72] = -params[..., 72]
    return p
