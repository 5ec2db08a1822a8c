"""One motion, every format: the joints every output shows, and the skeleton + rotations the file
formats (BVH, glTF, SMPL) carry.

`prepare_motion` turns 272-dim features (or joint positions) into a `Motion`:
  1. joints from the position channels (representation.features.recover_joints);
  2. one rigid skeleton with the motion's own bone lengths (median over frames) along the SMPL rest
     directions, rotations re-solved onto the positions (representation.ik; the model's rotation
     channels are the initial guess and give the twist about each bone). Generated positions stretch
     their bones from frame to frame, so this moves them a little (reported as `fit_error_mm`);
  3. grounded by foot contacts (representation.feet.ground); optionally the foot-skating clean-up
     (`clean_feet`), then re-grounded; the rotations are solved once more on the result.
`Motion.joints` is what `PREFIX_joints.npy`, the video and every export show: the FK of
(`offsets`, `rotations`, root = joints[:, 0]), equal to `joints` to float precision.

`make_rig` picks what a file carries (`--skeleton`, `--rotations`, `--rig`):
  skeleton "motion" + rotations "solved" (default): exactly `Motion.joints`;
  skeleton "smpl-neutral" + rotations "model" + converter=True: the released converter's BVH (SMPL
    neutral offsets, the model's rotation channels, root = offset[0] + (tau_x, h, tau_z)); its joints
    differ from `Motion.joints` (other bone lengths and rotations) and its feet are not on y = 0;
  any other pairing: that skeleton with those rotations, root at the motion's pelvis, grounded where
    the motion's feet are planted, frame by frame (feet.ground_by_contacts: its own planted feet on the
    floor, even though its joints differ).
Rest pose of every skeleton: SMPL's, a T-pose (arms straight out along +-X, palms down), facing +Z,
Y up, all local rotations identity, the lowest joint on y = 0 ("motion") or the pelvis at SMPL's J0
("smpl-neutral", as the converter).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motionstreamer import FPS
from motionstreamer.io.motion_io import check_fps, motion_kind, to_features, to_joints
from motionstreamer.representation import feet, ik
from motionstreamer.representation.ik import fk
from motionstreamer.representation.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS_24, SMPL_OFFSETS_24

SKELETONS = ("motion", "smpl-neutral")
ROTATION_MODES = ("solved", "model")

# Joint names per rig, in SMPL order (24: the 22 body joints and the two palms).
RIG_NAMES = {
    "smpl": JOINT_NAMES,   # the released converter's names
    # Mixamo's bone names: Unity's Humanoid auto-mapping and Mixamo-based retargeters (Blender's
    # Rokoko/Auto-Rig Pro, Unreal's IK Retargeter templates) recognise them.
    "mixamo": tuple("mixamorig:" + n for n in (
        "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot",
        "Spine2", "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm",
        "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand", "LeftHandMiddle1",
        "RightHandMiddle1")),
}


@dataclass
class Rig:
    """A skinned-skeleton animation: 24 joints (SMPL order, parents PARENTS_24)."""
    names: tuple
    offsets: np.ndarray        # (24, 3) rest offsets from the parent; [0] the root's rest position
    rotations: np.ndarray      # (T, 24, 3, 3): [0] the root's global rotation, [1:] parent-local
    root: np.ndarray           # (T, 3) root (pelvis) position
    fps: float = FPS

    @property
    def parents(self) -> tuple:
        return PARENTS_24

    def joints(self) -> np.ndarray:
        """(T, 24, 3) joint positions by forward kinematics."""

        return fk(self.rotations, self.root, self.offsets)


@dataclass
class Motion:
    """One motion as every output shows it (see the module docstring)."""
    joints: np.ndarray                  # (T, 22, 3) final joints: rigid, grounded, cleaned if asked
    rotations: np.ndarray               # (T, 22, 3, 3) solved on `offsets`; FK = joints
    offsets: np.ndarray                 # (24, 3) the motion's own skeleton
    model_rotations: np.ndarray | None  # (T, 22, 3, 3) the features' rotation channels
    model_translation: np.ndarray | None  # (T, 3) the features' (tau_x, h, tau_z)
    fps: float
    fit_error_mm: float                 # mean distance from the position channels to the rigid skeleton
    contacts: np.ndarray | None = None  # (T, 2) planted feet, when cleaned

    def __len__(self) -> int:
        return len(self.joints)


def prepare_motion(motion, clean_feet: bool = False, fps: float = FPS, name: str = "motion") -> Motion:
    """De-normalised 272 features (T, 272) or joint positions (T, 22, 3) / (T, 66) -> Motion.
    ValueError naming `name` for bad input."""
    fps = check_fps(fps)
    if motion_kind(motion, name) == "features":
        # torch for features only: joints stay numpy alone, as Blender's Python runs them (the add-on)
        from motionstreamer.representation.features import recover_rotations  # noqa: PLC0415

        features = to_features(motion, name=name)
        model_rot, model_trans = recover_rotations(features)
    else:
        model_rot = model_trans = None
    raw = to_joints(motion, name=name)
    offsets = ik.scaled_offsets(ik.bone_lengths(raw))
    rotations, fitted = ik.solve_rotations(raw, offsets, model_rot)
    fit_error = float(np.linalg.norm(fitted - raw, axis=-1).mean() * 1000)
    joints, _ = feet.ground(fitted, fps)
    contacts = None
    if clean_feet:
        joints, contacts = feet.clean_feet(joints, fps)
        joints[..., 1] += feet.lift_offsets(joints)[:, None]
    rotations, joints = ik.solve_rotations(joints, offsets, rotations)   # exact: bone lengths were kept
    return Motion(joints, rotations, offsets, model_rot, model_trans, fps, fit_error, contacts)


def _pad24(rotations: np.ndarray) -> np.ndarray:
    out = np.tile(np.eye(3), (len(rotations), len(PARENTS_24), 1, 1))
    out[:, :NUM_JOINTS] = rotations
    return out


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def make_rig(motion: Motion, skeleton: str = "motion", rotations: str = "solved", rig: str = "smpl",
             converter: bool = False, floor_at_zero: bool = False) -> Rig:
    """The skeleton + rotations a file carries; see the module docstring for the pairings."""

    check_choice(skeleton, SKELETONS, "skeleton")
    check_choice(rotations, ROTATION_MODES, "rotations")
    names = RIG_NAMES[check_choice(rig, tuple(RIG_NAMES), "rig")]
    if rotations == "model" and motion.model_rotations is None:
        raise ValueError("rotations 'model' needs 272-dim features (their rotation channels); joint "
                         "positions only have solved rotations")
    if floor_at_zero and not (converter and skeleton == "smpl-neutral" and rotations == "model"):
        raise ValueError("floor_at_zero applies to the released converter's layout only (skeleton "
                         "'smpl-neutral', rotations 'model'); the other skeletons are already on the floor")
    if skeleton == "motion" and rotations == "solved":
        return Rig(names, motion.offsets, _pad24(motion.rotations), motion.joints[:, 0].copy(), motion.fps)
    offsets = motion.offsets if skeleton == "motion" else SMPL_OFFSETS_24
    if rotations == "model":
        local = motion.model_rotations
        if converter and skeleton == "smpl-neutral":
            root = motion.model_translation + (0.0 if floor_at_zero else SMPL_OFFSETS_24[0])
            return Rig(names, SMPL_OFFSETS_24, _pad24(local), root, motion.fps)
    else:
        local, _ = ik.solve_rotations(motion.joints, offsets, motion.rotations)
    # This body's feet are not the motion's: grounded where the motion's feet are planted (its own
    # foot heights then), not by one constant shift, which leaves it floating where its legs differ.
    root = motion.joints[:, 0].copy()
    contacts = feet.foot_contacts(motion.joints, fps=motion.fps)
    _, vertical = feet.ground_by_contacts(ik.fk(local, root, offsets[:NUM_JOINTS]), contacts, motion.fps)
    root[:, 1] += vertical
    return Rig(names, offsets, _pad24(local), root, motion.fps)
