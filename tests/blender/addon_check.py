"""Run by tests/test_blender_addon.py in Blender (io.blender_process.run_script: a Python with bpy, or
Blender's executable in the background):
install the add-on's zip as an extension, build three armatures by hand, run Generate and a few
seconds of Live against the server at URL through the add-on's own operators and timer, and print
JSON: per rig and mode the world positions (Y up, metres) of the bones standing for the SMPL joints,
evaluated by Blender from the keyed action, their rest positions, and the source joints.

Usage: python addon_check.py ZIP URL TOKEN OUT.json [LIVE_SECONDS]
       blender --background --python addon_check.py -- ZIP URL TOKEN OUT.json [LIVE_SECONDS]
"""
import json
import math
import sys
import time
from pathlib import Path

import bpy
import numpy as np

ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]   # Blender's own come first
ZIP, URL, TOKEN, OUT = ARGS[:4]
LIVE_SECONDS = float(ARGS[4]) if len(ARGS) > 4 else 3.0

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests/: the hand-drawn humanoids
from _rigs import MIXAMO, PARENTS, RIGIFY, UNREAL4, humanoid  # noqa: E402


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
    j = humanoid()
    names = RIGIFY
    extra = [("DEF-f_index.01.L", "DEF-hand.L", j[20], j[20] + [0.08, 0, 0.02]),
             ("DEF-f_index.01.R", "DEF-hand.R", j[21], j[21] + [-0.08, 0, 0.02])]
    return build("rigify", names, j, extra), names, j


def mixamo():
    """(b) Mixamo names, an A-pose (arms 45 degrees down), longer legs, random bone rolls, the object
    scaled 0.01 with bones in centimetres."""
    j = humanoid(leg_scale=1.1, arm_down_deg=45.0)
    names = MIXAMO
    extra = [("mixamorig:HeadTop_End", "mixamorig:Head", j[15] + [0, 0.18, 0], j[15] + [0, 0.25, 0])]
    rolls = np.random.default_rng(0).uniform(-math.pi, math.pi, 22)
    return build("mixamo", names, j, extra, obj_scale=0.01, rolls=rolls), names, j


def small():
    """(c) a scaled-down character (0.5) with Unreal mannequin names under a root bone at the origin."""
    j = humanoid(scale=0.5)
    names = UNREAL4
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
