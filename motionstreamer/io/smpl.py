"""SMPL body-model parameters in the AMASS `.npz` layout (the SMPL+H "poses" file AMASS ships), for the
smplx / human_body_prior libraries, the SMPL-X Blender add-on and every AMASS-reading tool.

Keys (AMASS SMPL+H G):
  poses (T, 156)       axis-angle, AMASS's SMPL+H order: root (3) | 21 body joints (63) | 30 hand
                       joints (90, zeros: the 272 format has no hands). poses[:, :66] is the SMPL body
                       pose (what the 272 pipeline reads back, spec §1.1), so SMPL (66) readers take it too.
  trans (T, 3)         root translation: SMPL puts the pelvis at trans + J0(betas), so this is the pelvis
                       position minus SMPL-neutral's J0 (the spec §2.3 quirk of the 272 repo, fixed);
  betas (16,)          zeros (the 272 format has no body shape)
  gender               'neutral'
  mocap_framerate      the motion's fps (30)
  dmpls (T, 8)         zeros (soft-tissue coefficients; some AMASS readers expect the key)
World frame: AMASS's Z up (the 272 pipeline's Y-up conversion of spec §1.1 step 4, inverted:
(x, y, z)_Y-up -> (x, -z, y)); the character starts facing -Y.

The rotations are the model's rotation channels (rotations 'model', default) on the SMPL-neutral
skeleton, or rotations solved from the motion's joints on that skeleton ('solved'); `trans` is grounded
by that body's own foot contacts, so its feet stay on the floor (z = 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from motionstreamer.representation.ik import fk
from motionstreamer.representation.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from motionstreamer.representation.skeleton import NUM_JOINTS, SMPL_OFFSETS_24
from motionstreamer.utils import atomic_path

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])   # (x, y, z) -> (x, -z, y)
HAND_POSE_DIMS = 90
NUM_BETAS = 16
NUM_DMPLS = 8


def amass_params(rig) -> dict:
    """AMASS SMPL+H arrays from a rig on the SMPL-neutral skeleton (io.rig.make_rig(..., 'smpl-neutral'))."""

    if not np.allclose(rig.offsets[1:NUM_JOINTS], SMPL_OFFSETS_24[1:NUM_JOINTS]):
        raise ValueError("SMPL parameters need a rig on the SMPL-neutral skeleton")
    T = len(rig.root)
    rot = rig.rotations[:, :NUM_JOINTS].copy()
    rot[:, 0] = Y_UP_TO_Z_UP @ rot[:, 0]
    poses = np.zeros((T, 3 * NUM_JOINTS + HAND_POSE_DIMS))
    poses[:, :3 * NUM_JOINTS] = matrix_to_axis_angle(np.ascontiguousarray(rot)).reshape(T, -1)
    trans = rig.root @ Y_UP_TO_Z_UP.T - SMPL_OFFSETS_24[0]
    return {"poses": poses, "trans": trans, "betas": np.zeros(NUM_BETAS), "gender": np.array("neutral"),
            "mocap_framerate": np.array(float(rig.fps)), "dmpls": np.zeros((T, NUM_DMPLS))}


def smpl_joints(params: dict) -> np.ndarray:
    """(T, 22, 3) SMPL-neutral body joints (betas 0) of AMASS arrays, back in the Y-up frame: the
    forward kinematics a body model computes for these parameters."""

    poses = np.asarray(params["poses"], dtype=np.float64)
    T = len(poses)
    rot = axis_angle_to_matrix(poses[:, :3 * NUM_JOINTS].reshape(T, NUM_JOINTS, 3))
    rot[:, 0] = Y_UP_TO_Z_UP.T @ rot[:, 0]
    pelvis = (np.asarray(params["trans"], dtype=np.float64) + SMPL_OFFSETS_24[0]) @ Y_UP_TO_Z_UP
    return fk(rot, pelvis, SMPL_OFFSETS_24[:NUM_JOINTS])


def write_amass_npz(path: str | Path, params: dict) -> Path:
    """np.savez of the AMASS arrays, atomically; returns the path."""

    path = Path(path)
    for k, v in params.items():
        if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"SMPL parameter {k!r} contains NaN/inf")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **params)
    return path
