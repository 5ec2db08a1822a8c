"""Check an export in Blender's own importers: import PREFIX.bvh (File > Import > BVH) and PREFIX.glb
(File > Import > glTF 2.0), read every bone's world position at each frame, and compare with
PREFIX_joints.npy (the joints the video shows). Needs Blender's Python module, e.g. in a throwaway venv:

    python3.11 -m venv /tmp/bpy && /tmp/bpy/bin/pip install "bpy==4.5.*" numpy
    motionstreamer generate "a person walks forward" --out out/walk --bvh --glb
    /tmp/bpy/bin/python scripts/blender_check.py out/walk            # [--rig mixamo]

Both importers convert Y up to Blender's Z up; the positions are converted back here.
"""
import argparse

import bpy
import numpy as np

SMPL = ["Pelvis", "Left_hip", "Right_hip", "Spine1", "Left_knee", "Right_knee", "Spine2", "Left_ankle", "Right_ankle",
        "Spine3", "Left_foot", "Right_foot", "Neck", "Left_collar", "Right_collar", "Head", "Left_shoulder",
        "Right_shoulder", "Left_elbow", "Right_elbow", "Left_wrist", "Right_wrist"]
MIXAMO = ["mixamorig:" + n for n in (
    "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot", "Spine2",
    "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm", "RightArm",
    "LeftForeArm", "RightForeArm", "LeftHand", "RightHand")]


def sample(names, frames, first_frame):
    arm = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
    out = np.zeros((frames, len(names), 3))
    for t in range(frames):
        bpy.context.scene.frame_set(first_frame + t)
        for j, n in enumerate(names):
            p = arm.matrix_world @ arm.pose.bones[n].head
            out[t, j] = (p[0], p[2], -p[1])                    # Blender Z up -> Y up
    return out


def report(what, got, joints):
    err = np.linalg.norm(got - joints, axis=-1)
    print(f"{what}: joints differ from _joints.npy by {err.mean() * 1000:.3f} mm on average "
          f"({err.max() * 1000:.3f} mm at worst); "
          f"lowest foot joint at y = {got[:, [7, 8, 10, 11], 1].min() * 1000:.1f} mm")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("prefix")
    p.add_argument("--rig", choices=("smpl", "mixamo"), default="smpl")
    args = p.parse_args()
    joints = np.load(args.prefix + "_joints.npy").astype(np.float64)
    names = SMPL if args.rig == "smpl" else MIXAMO

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_anim.bvh(filepath=args.prefix + ".bvh", frame_start=1, use_fps_scale=False, update_scene_fps=True)
    report("Blender BVH importer", sample(names, len(joints), 1), joints)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = 30             # the importer turns key times into frames at the scene's rate
    bpy.ops.import_scene.gltf(filepath=args.prefix + ".glb")
    report("Blender glTF importer", sample(names, len(joints), 0), joints)   # it puts t = 0 at frame 0


if __name__ == "__main__":
    main()
