"""Humanoid rigs drawn by hand for the retargeting and Blender tests (tests/test_io_retarget.py,
tests/blender/addon_check.py): SMPL's neutral rest offsets (the spec's), and the bone names of the
naming schemes as their tools write them. No motionstreamer import: the expectations stay independent.
numpy only: addon_check.py imports it in Blender's environment (bpy and its dependencies, no scipy)."""
import numpy as np

# SMPL's 22 joints (spec): parents and neutral rest offsets, Y up, metres; the rigs below are drawn from them
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
OFFSETS = np.array([
    [-0.001795, -0.223333, 0.028219], [0.069520, -0.091406, -0.006815], [-0.067670, -0.090522, -0.004320],
    [-0.002533, 0.108963, -0.026696], [0.034277, -0.375199, -0.004496], [-0.038290, -0.382569, -0.008850],
    [0.005487, 0.135180, 0.001092], [-0.013596, -0.397960, -0.043693], [0.015774, -0.398415, -0.042312],
    [0.001457, 0.052922, 0.025425], [0.026358, -0.055791, 0.119288], [-0.025372, -0.048144, 0.123348],
    [-0.002778, 0.213870, -0.042857], [0.078845, 0.121749, -0.034090], [-0.081759, 0.118833, -0.038615],
    [0.005152, 0.064970, 0.051349], [0.090977, 0.030469, -0.008868], [-0.096012, 0.032551, -0.009143],
    [0.259612, -0.012772, -0.027456], [-0.253742, -0.013329, -0.021401], [0.249234, 0.008986, -0.001171],
    [-0.255298, 0.007772, -0.005559]])
MIXAMO = ["mixamorig:" + n for n in (
    "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot", "Spine2",
    "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm", "RightArm",
    "LeftForeArm", "RightForeArm", "LeftHand", "RightHand")]
UNREAL4 = ["pelvis", "thigh_l", "thigh_r", "spine_01", "calf_l", "calf_r", "spine_02", "foot_l", "foot_r", "spine_03",
           "ball_l", "ball_r", "neck_01", "clavicle_l", "clavicle_r", "head", "upperarm_l", "upperarm_r",
           "lowerarm_l", "lowerarm_r", "hand_l", "hand_r"]
RIGIFY = ["DEF-spine", "DEF-thigh.L", "DEF-thigh.R", "DEF-spine.001", "DEF-shin.L", "DEF-shin.R", "DEF-spine.002",
          "DEF-foot.L", "DEF-foot.R", "DEF-spine.003", "DEF-toe.L", "DEF-toe.R", "DEF-spine.004", "DEF-shoulder.L",
          "DEF-shoulder.R", "DEF-spine.006", "DEF-upper_arm.L", "DEF-upper_arm.R", "DEF-forearm.L", "DEF-forearm.R",
          "DEF-hand.L", "DEF-hand.R"]


def humanoid(leg_scale=1.0, arm_down_deg=0.0, scale=1.0, thumbs=False) -> np.ndarray:
    """(22, 3) rest joints: SMPL's T-pose, legs scaled, arms lowered (an A-pose), on y = 0, scaled;
    thumbs=True: (24, 3), two thumb tips after them, 5 cm in front of the wrists and 3 cm along the hand."""
    off = OFFSETS.copy()
    off[[1, 2, 4, 5, 7, 8, 10, 11]] *= leg_scale
    pos = np.zeros((24, 3))
    for j in range(1, 22):
        pos[j] = pos[PARENTS[j]] + off[j]
    pos[22], pos[23] = pos[20] + [0.03, 0, 0.05], pos[21] + [-0.03, 0, 0.05]
    for side, arm in ((1, (16, 18, 20, 22)), (-1, (17, 19, 21, 23))):
        a = np.radians(-side * arm_down_deg)                 # about z (the arm swings down in the x-y plane)
        turn = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        for j in arm[1:]:
            pos[j] = pos[arm[0]] + turn @ (pos[j] - pos[arm[0]])
    pos[:, 1] -= pos[:22, 1].min()
    return (pos if thumbs else pos[:22]) * scale


def leg_length(pos) -> float:
    """Thigh + shin, the median over frames of (..., 22, 3) joints, averaged over both legs."""
    def bone(a, b):
        return np.median(np.linalg.norm(pos[..., a, :] - pos[..., b, :], axis=-1))

    return float(np.mean([bone(1 + k, 4 + k) + bone(4 + k, 7 + k) for k in (0, 1)]))
