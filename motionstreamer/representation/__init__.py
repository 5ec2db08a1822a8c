"""The 272-dim motion representation (HumanML3D-272 / BABEL-272), numpy and torch."""
from motionstreamer.representation.features import (
                                                    FEATURE_DIM,
                                                    accumulate_headings,
                                                    canonicalize_facing,
                                                    heading_angle,
                                                    joints_to_272,
                                                    recover_joints,
                                                    recover_rotations,
                                                    recover_smpl85,
)
from motionstreamer.representation.mirror import mirror_272, mirror_smpl85
from motionstreamer.representation.normalize import FEATURE_GROUPS, compute_mean_std, denormalize, normalize
from motionstreamer.representation.rotation import (
                                                    axis_angle_to_matrix,
                                                    matrix_to_axis_angle,
                                                    matrix_to_euler_zyx,
                                                    matrix_to_quaternion,
                                                    matrix_to_rot6d,
                                                    quaternion_to_matrix,
                                                    rot6d_to_matrix,
                                                    rot_y,
)
from motionstreamer.representation.skeleton import forward_kinematics

__all__ = [
    "FEATURE_DIM", "FEATURE_GROUPS", "accumulate_headings", "axis_angle_to_matrix", "canonicalize_facing",
    "compute_mean_std", "denormalize", "forward_kinematics", "heading_angle", "joints_to_272",
    "matrix_to_axis_angle", "matrix_to_euler_zyx", "matrix_to_quaternion", "matrix_to_rot6d", "mirror_272",
    "mirror_smpl85", "normalize", "quaternion_to_matrix", "recover_joints", "recover_rotations",
    "recover_smpl85", "rot6d_to_matrix", "rot_y",
]
