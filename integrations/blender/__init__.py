"""MotionStreamer for Blender: text to motion on the selected armature, from a running
`motionstreamer serve` (one-shot Generate, or Live while you type). See docs/blender.md.

The motion math (bone maps, retargeting, feet) is motionstreamer's own, vendored into vendor/ when
`motionstreamer blender-addon` zips the add-on; it needs only numpy, which Blender ships. Errors are
reported in Blender's status bar (self.report), never as a traceback.
"""
from __future__ import annotations

import os
import sys

import bpy
from bpy.props import FloatProperty, IntProperty, PointerProperty, StringProperty

VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
if os.path.isdir(VENDOR) and VENDOR not in sys.path:
    sys.path.insert(0, VENDOR)

from . import client, session  # noqa: E402  (after the vendored package is importable)

_live: session.Live | None = None


def _say(e: Exception) -> str:
    """Every failure of a button becomes a one-line report: the expected ones (server, token, rig) say
    what to do, anything else names what broke; never a traceback in Blender's UI."""
    from motionstreamer.io.retarget import RetargetError

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if isinstance(e, (client.ServerError, RetargetError)) else f"{type(e).__name__}: {text}"


class MotionStreamerSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="a person walks forward", maxlen=300,
                           description="what the character does (the server's prompt limits apply)")
    seconds: FloatProperty(name="Seconds", default=4.0, min=0.5, max=30.0, description="length of Generate's motion")
    seed: IntProperty(name="Seed", default=0, min=0)
    server: StringProperty(name="Server", default="http://127.0.0.1:8000",
                           description="a running `motionstreamer serve`")
    token: StringProperty(name="Token", default="", subtype="PASSWORD",
                          description="the server's --token (needed beyond loopback)")
    bone_map: StringProperty(name="Bone map", default="", subtype="FILE_PATH",
                             description="optional JSON/YAML {SMPL joint: bone}; empty: detected from bone names")
    status: StringProperty(name="Status", default="")


def _armature(context, op, busy: str):
    """The selected armature, or None after reporting why not (none selected, or Live running: `busy`)."""
    obj = context.active_object
    if obj is None or obj.type != "ARMATURE":
        op.report({"ERROR"}, "select an armature (the character to animate) first")
        return None
    if _live is not None:
        op.report({"ERROR"}, busy)
        return None
    return obj


def _failed(op, settings, e: Exception) -> set:
    op.report({"ERROR"}, _say(e))
    settings.status = f"error: {_say(e)}"
    return {"CANCELLED"}


class MOTIONSTREAMER_OT_generate(bpy.types.Operator):
    """Generate a motion from the prompt on the server and key it onto the selected armature"""
    bl_idname = "motionstreamer.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.motionstreamer
        obj = _armature(context, self, "a Live stream is running: Stop it first")
        if obj is None:
            return {"CANCELLED"}
        try:
            action = session.generate(obj, s.server, s.token, s.prompt, s.seconds, s.seed, bpy.path.abspath(s.bone_map))
        except Exception as e:
            return _failed(self, s, e)
        s.status = f"keyed {action.name!r}: {int(action.frame_range[1] - action.frame_range[0]) + 1} frames"
        self.report({"INFO"}, s.status)
        return {"FINISHED"}


def _tick():
    """The Live timer (Blender's main thread): pose the armature with the frames due."""
    global _live
    if _live is None:
        return None
    try:
        nxt = _live.tick()
    except Exception as e:      # never a traceback from a timer: stop and say why
        _live.error = f"live playback failed ({e})"
        nxt = None
    if nxt is None:
        scene = bpy.context.scene
        scene.motionstreamer.status = f"live stopped: {_live.error}" if _live.error else "live ended"
        try:
            _live.stop(bake=True)
        except Exception:
            pass
        _live = None
    return nxt


class MOTIONSTREAMER_OT_live(bpy.types.Operator):
    """Stream motion live onto the selected armature; type prompts while it plays, Stop bakes it"""
    bl_idname = "motionstreamer.live"
    bl_label = "Live"

    def execute(self, context):
        global _live
        s = context.scene.motionstreamer
        obj = _armature(context, self, "Live is already running")
        if obj is None:
            return {"CANCELLED"}
        try:
            _live = session.Live(obj, s.server, s.token, s.prompt, s.seed, bpy.path.abspath(s.bone_map))
        except Exception as e:
            return _failed(self, s, e)
        bpy.app.timers.register(_tick, first_interval=0.0)     # main-thread application, UI never blocked
        s.status = "live: type a prompt and press Send"
        return {"FINISHED"}


class MOTIONSTREAMER_OT_send(bpy.types.Operator):
    """Send the prompt to the running Live stream (it takes effect at the next latent)"""
    bl_idname = "motionstreamer.send"
    bl_label = "Send prompt"

    def execute(self, context):
        s = context.scene.motionstreamer
        if _live is None:
            self.report({"ERROR"}, "Live is not running")
            return {"CANCELLED"}
        try:
            _live.prompt(s.prompt)
        except OSError as e:
            self.report({"ERROR"}, f"the stream broke ({e})")
            return {"CANCELLED"}
        return {"FINISHED"}


class MOTIONSTREAMER_OT_stop(bpy.types.Operator):
    """Stop the Live stream and bake what was played into an action"""
    bl_idname = "motionstreamer.stop"
    bl_label = "Stop"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        global _live
        s = context.scene.motionstreamer
        if _live is None:
            self.report({"ERROR"}, "Live is not running")
            return {"CANCELLED"}
        live, _live = _live, None
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)
        try:
            action = live.stop(bake=True)
        except Exception as e:
            return _failed(self, s, e)
        s.status = f"baked {action.name!r}" if action else "nothing was played"
        self.report({"INFO"}, s.status)
        return {"FINISHED"}


class MOTIONSTREAMER_PT_panel(bpy.types.Panel):
    bl_label = "MotionStreamer"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MotionStreamer"

    def draw(self, context):
        s = context.scene.motionstreamer
        col = self.layout.column()
        obj = context.active_object
        col.label(text=f"Armature: {obj.name}" if obj is not None and obj.type == "ARMATURE"
                  else "Select an armature", icon="ARMATURE_DATA")
        col.prop(s, "prompt", text="")
        row = col.row(align=True)
        row.prop(s, "seconds")
        row.prop(s, "seed")
        col.operator(MOTIONSTREAMER_OT_generate.bl_idname, icon="PLAY")
        row = col.row(align=True)
        if _live is None:
            row.operator(MOTIONSTREAMER_OT_live.bl_idname, icon="REC")
        else:
            row.operator(MOTIONSTREAMER_OT_send.bl_idname, icon="TEXT")
            row.operator(MOTIONSTREAMER_OT_stop.bl_idname, icon="SNAP_FACE")
        box = col.box()
        box.prop(s, "server")
        box.prop(s, "token")
        box.prop(s, "bone_map")
        if s.status:
            col.label(text=s.status)


CLASSES = (MotionStreamerSettings, MOTIONSTREAMER_OT_generate, MOTIONSTREAMER_OT_live, MOTIONSTREAMER_OT_send,
           MOTIONSTREAMER_OT_stop, MOTIONSTREAMER_PT_panel)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.Scene.motionstreamer = PointerProperty(type=MotionStreamerSettings)


def unregister():
    global _live
    if _live is not None:
        _live.stop(bake=False)
        _live = None
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    del bpy.types.Scene.motionstreamer
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
