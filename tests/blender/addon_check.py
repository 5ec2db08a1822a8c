"""Run by tests/test_blender_addon.py in a fresh Python with bpy (Blender as a module, headless):
install the add-on's zip as an extension, build three armatures by hand, run Generate and a few
seconds of Live against the server at URL through the add-on's own operators and timer, and print
JSON: per rig and mode the world positions (Y up, metres) of the bones standing for the SMPL joints,
evaluated by Blender from the keyed action, their rest positions, and the source joints.

Usage: python addon_check.py ZIP URL TOKEN OUT.json [LIVE_SECONDS]
"""
import json
import math
import sys
import time

import bpy
import numpy as np

ZIP, URL, TOKEN, OUT = sys.argv[1:5]
LIVE_SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0

# SMPL neutral rest offsets (the spec's; Y up, metres), parents: the humanoid every rig is drawn from
OFFSETS = np.array([
    [-0.001795, -0.223333, 0.028219], [0.069520, -0.091406, -0.006815], [-0.067670, -0.090522, -0.004320],
    [-0.002533, 0.108963, -0.026696], [0.034277, -0.375199, -0.004496], [-0.038290, -0.382569, -0.008850],
    [0.005487, 0.135180, 0.001092], [-0.013596, -0.397960, -0.043693], [0.015774, -0.398415, -0.042312],
    [0.001457, 0.052922, 0.025425], [0.026358, -0.055791, 0.119288], [-0.025372, -0.048144, 0.123348],
    [-0.002778, 0.213870, -0.042857], [0.078845, 0.121749, -0.034090], [-0.081759, 0.118833, -0.038615],
    [0.005152, 0.064970, 0.051349], [0.090977, 0.030469, -0.008868], [-0.096012, 0.032551, -0.009143],
    [0.259612, -0.012772, -0.027456], [-0.253742, -0.013329, -0.021401], [0.249234, 0.008986, -0.001171],
    [-0.255298, 0.007772, -0.005559]])
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
LEGS = {1, 2, 4, 5, 7, 8, 10, 11}
LEFT_ARM, RIGHT_ARM = (16, 18, 20), (17, 19, 21)


def joints_y_up(leg_scale=1.0, arm_down_deg=0.0, scale=1.0):
    """(22, 3) rest joints: SMPL's T-pose, legs scaled, arms lowered by arm_down_deg (an A-pose), the
    lowest joint on the floor, all scaled."""
    off = OFFSETS.copy()
    for j in LEGS:
        off[j] *= leg_scale
    pos = np.zeros((22, 3))
    for j in range(1, 22):
        pos[j] = pos[PARENTS[j]] + off[j]
    a = math.radians(arm_down_deg)
    for side, arm in ((1, LEFT_ARM), (-1, RIGHT_ARM)):
        c, s = math.cos(a), math.sin(a) * side
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])          # about +Z (forward): arm tips go down
        root = pos[arm[0]].copy()
        for j in arm[1:]:
            pos[j] = root + rot @ (pos[j] - root)
    pos[:, 1] -= pos[:, 1].min()
    return pos * scale


def to_blender(p):
    return np.array([p[0], -p[2], p[1]])


def build(name, names, joints, extra=(), obj_scale=1.0, rolls=None, root_bone=None):
    """An armature: bone j (names[j], SMPL joint j) from joint j towards its child (or upwards for
    leaves); `extra` (name, parent name, head, tail) bones; obj_scale: bones drawn 1/obj_scale larger
    under an object scaled by obj_scale (as FBX imports of Mixamo characters)."""
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    obj.scale = (obj_scale,) * 3
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    k = 1.0 / obj_scale
    first_child = {p: c for c, p in reversed(list(enumerate(PARENTS))) if p >= 0}
    first_child[9] = 12
    eb = {}
    if root_bone:
        r = data.edit_bones.new(root_bone)
        r.head, r.tail = (0, 0, 0), (0, 0.1 * k * 0 + 0.1, 0)
        eb[root_bone] = r
    for j, n in enumerate(names):
        b = data.edit_bones.new(n)
        head = to_blender(joints[j]) * k
        tail = to_blender(joints[first_child[j]]) * k if j in first_child else head + np.array([0, 0, 0.08 * k])
        b.head, b.tail = head.tolist(), tail.tolist()
        if rolls is not None:
            b.roll = rolls[j]
        if PARENTS[j] >= 0:
            b.parent = eb[names[PARENTS[j]]]
        elif root_bone:
            b.parent = eb[root_bone]
        eb[n] = b
    for n, parent, head, tail in extra:
        b = data.edit_bones.new(n)
        b.head, b.tail = (to_blender(head) * k).tolist(), (to_blender(tail) * k).tolist()
        b.parent = eb[parent]
        eb[n] = b
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def rigify():
    """(a) a Rigify-style armature: DEF- deform bones with the metarig's names, extra segments."""
    j = joints_y_up()
    names = ["DEF-spine", "DEF-thigh.L", "DEF-thigh.R", "DEF-spine.001", "DEF-shin.L", "DEF-shin.R", "DEF-spine.002",
             "DEF-foot.L", "DEF-foot.R", "DEF-spine.003", "DEF-toe.L", "DEF-toe.R", "DEF-spine.004",
             "DEF-shoulder.L", "DEF-shoulder.R", "DEF-spine.006", "DEF-upper_arm.L", "DEF-upper_arm.R",
             "DEF-forearm.L", "DEF-forearm.R", "DEF-hand.L", "DEF-hand.R"]
    extra = [("DEF-f_index.01.L", "DEF-hand.L", j[20], j[20] + [0.08, 0, 0.02]),
             ("DEF-f_index.01.R", "DEF-hand.R", j[21], j[21] + [-0.08, 0, 0.02])]
    return build("rigify", names, j, extra), names, j


def mixamo():
    """(b) Mixamo names, an A-pose (arms 45 degrees down), longer legs, random bone rolls, the object
    scaled 0.01 with bones in centimetres."""
    j = joints_y_up(leg_scale=1.1, arm_down_deg=45.0)
    names = ["mixamorig:" + n for n in (
        "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot", "Spine2",
        "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm", "RightArm",
        "LeftForeArm", "RightForeArm", "LeftHand", "RightHand")]
    extra = [("mixamorig:HeadTop_End", "mixamorig:Head", j[15] + [0, 0.18, 0], j[15] + [0, 0.25, 0])]
    rolls = np.random.default_rng(0).uniform(-math.pi, math.pi, 22)
    return build("mixamo", names, j, extra, obj_scale=0.01, rolls=rolls), names, j


def small():
    """(c) a scaled-down character (0.5) with Unreal mannequin names under a root bone at the origin."""
    j = joints_y_up(scale=0.5)
    names = ["pelvis", "thigh_l", "thigh_r", "spine_01", "calf_l", "calf_r", "spine_02", "foot_l", "foot_r", "spine_03",
             "ball_l", "ball_r", "neck_01", "clavicle_l", "clavicle_r", "head", "upperarm_l", "upperarm_r",
             "lowerarm_l", "lowerarm_r", "hand_l", "hand_r"]
    return build("small", names, j, root_bone="root"), names, j


def world_y_up(obj, names, frames):
    out = np.zeros((len(frames), len(names), 3))
    mw = np.array(obj.matrix_world)
    for i, f in enumerate(frames):
        bpy.context.scene.frame_set(f)
        for k, n in enumerate(names):
            h = mw @ np.append(np.array(obj.pose.bones[n].head), 1.0)
            out[i, k] = (h[0], h[2], -h[1])
    return out


def main():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = {"install": sorted(bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default",
                                                                         enable_on_install=True))}
    import addon_utils  # noqa: F401
    pkg = next(m for m in sys.modules if m.endswith(".motionstreamer") and m.startswith("bl_ext."))
    addon = sys.modules[pkg]
    import motionstreamer.io.retarget as vendored
    result["vendored_from"] = vendored.__file__
    result["registered"] = hasattr(bpy.types.Scene, "motionstreamer") and hasattr(bpy.ops.motionstreamer, "generate")
    scene = bpy.context.scene
    s = scene.motionstreamer
    s.server, s.seconds, s.seed = URL, 4.0, 0

    # errors reach the UI as reports, not tracebacks
    errors = {}
    bpy.context.view_layer.objects.active = None
    try:
        bpy.ops.motionstreamer.generate()
    except RuntimeError as e:
        errors["no_armature"] = str(e)
    rigs = {}
    for build_rig in (rigify, mixamo, small):
        obj, names, rest = build_rig()
        rigs[obj.name] = (obj, names, rest)
    bpy.context.view_layer.objects.active = rigs["rigify"][0]
    s.server = "http://127.0.0.1:9"          # nothing listens on the discard port
    try:
        bpy.ops.motionstreamer.generate()
    except RuntimeError as e:
        errors["server_down"] = str(e)
    s.server, s.token = URL, "wrong-token-123"
    try:
        bpy.ops.motionstreamer.live()
    except RuntimeError as e:
        errors["token"] = str(e)
    s.token = TOKEN
    bad = bpy.data.objects.new("notahuman", bpy.data.armatures.new("notahuman"))
    scene.collection.objects.link(bad)
    bpy.context.view_layer.objects.active = bad
    bpy.ops.object.mode_set(mode="EDIT")
    prev = None
    for n, (h, t) in {"a": ((0, 0, 0), (0, 0, 1)), "b": ((0, 0, 1), (0, 0, 2))}.items():
        b = bad.data.edit_bones.new(n)
        b.head, b.tail, b.parent = h, t, prev
        prev = b
    bpy.ops.object.mode_set(mode="OBJECT")
    try:
        bpy.ops.motionstreamer.generate()
    except RuntimeError as e:
        errors["unmappable"] = str(e)
    result["errors"] = errors

    from motionstreamer.io.blender_rig import armature_skeleton  # noqa: F401  (the vendored copy)
    for name, (obj, names, rest) in rigs.items():
        bpy.context.view_layer.objects.active = obj
        s.prompt = "a person walks forward"
        t0 = time.time()
        assert bpy.ops.motionstreamer.generate() == {"FINISHED"}
        gen_s = time.time() - t0
        last = addon.session.last
        action = obj.animation_data.action
        lo, hi = (int(round(v)) for v in action.frame_range)
        frames = list(range(lo, hi + 1))
        entry = {"generate": {"positions": world_y_up(obj, names, frames).tolist(), "source": last["source"].tolist(),
                              "frames": len(frames), "action": action.name, "seconds": gen_s,
                              "scheme": last["retargeter"].scheme}}
        # Live: the add-on's operator starts the stream and registers its timer; Blender's event loop
        # does not run in a headless bpy, so this loop calls the registered timer as Blender would.
        s.prompt = "a person walks forward"
        assert bpy.ops.motionstreamer.live() == {"FINISHED"}
        tick = addon._tick
        assert bpy.app.timers.is_registered(tick)
        start, sent, poses = time.time(), False, []
        while time.time() - start < LIVE_SECONDS:
            nxt = tick()
            assert nxt is not None, scene.motionstreamer.status
            if not sent and time.time() - start > LIVE_SECONDS / 2:
                s.prompt = "a person jogs forward"
                assert bpy.ops.motionstreamer.send() == {"FINISHED"}
                sent = True
            hips = obj.pose.bones[names[0]]
            poses.append(tuple(hips.location) + tuple(hips.rotation_quaternion))
            time.sleep(nxt)
        assert bpy.ops.motionstreamer.stop() == {"FINISHED"}
        last = addon.session.last
        action = obj.animation_data.action
        lo, hi = (int(round(v)) for v in action.frame_range)
        frames = list(range(lo, hi + 1))
        entry["live"] = {"positions": world_y_up(obj, names, frames).tolist(), "source": last["source"].tolist(),
                         "frames": len(frames), "action": action.name,
                         "distinct_live_poses": len(set(map(tuple, np.round(poses, 4).tolist())))}
        entry["rest"] = rest.tolist()
        result[name] = entry
    with open(OUT, "w") as f:
        json.dump(result, f)


main()
