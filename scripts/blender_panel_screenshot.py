"""Retake docs/blender_panel.png: the add-on's panel in a real Blender window after Generate on
Blender's human metarig. The `bpy` module from PyPI draws no UI, so this runs a Blender application
under Xvfb (Debian's: `apt-get install blender xvfb xdotool python3-numpy`), with a running server:

    motionstreamer serve --port 8766 &
    motionstreamer blender-addon --out /tmp/ms_addon.zip
    xvfb-run -a -s "-screen 0 1600x1000x24" blender --python scripts/blender_panel_screenshot.py -- \
        /tmp/ms_addon.zip http://127.0.0.1:8766 /tmp/panel_full.png

The add-on is registered from the zip's contents (an older Blender has no extension system), the
sidebar tab is clicked with xdotool as a user would, and Blender's own screenshot operator saves the
window; crop it to the 3D view for the docs."""
import os
import subprocess
import sys
import tempfile
import zipfile

import bpy

zip_path, url, out = sys.argv[sys.argv.index("--") + 1:][:3]
src = tempfile.mkdtemp()
zipfile.ZipFile(zip_path).extractall(os.path.join(src, "motionstreamer_addon"))
sys.path.insert(0, src)
import motionstreamer_addon  # noqa: E402

motionstreamer_addon.register()
__import__("addon_utils").enable("rigify")     # Blender's human metarig (3.4's Rigify prints a KeyError: harmless)
bpy.ops.object.select_all(action="SELECT")
bpy.ops.object.delete()
bpy.ops.object.armature_human_metarig_add()
obj = bpy.context.active_object
obj.data.display_type = "BBONE"
obj.show_in_front = True
s = bpy.context.scene.motionstreamer
s.server, s.prompt, s.seed = url, "a person walks forward then waves", 3
print("generate:", bpy.ops.motionstreamer.generate(), s.status)
bpy.context.scene.frame_set(30)
win = bpy.context.window_manager.windows[0]
area = next(a for a in win.screen.areas if a.type == "VIEW_3D")
space = area.spaces.active
space.show_region_ui = True
region = next(r for r in area.regions if r.type == "WINDOW")
with bpy.context.temp_override(window=win, area=area, region=region):
    bpy.ops.view3d.view_axis(type="FRONT")
    bpy.ops.view3d.view_selected()
space.region_3d.view_rotation.rotate(__import__("mathutils").Euler((0.25, 0, 0.5)))
space.region_3d.view_distance *= 1.15


def click_tab():
    ui = next(r for r in area.regions if r.type == "UI")     # the tabs run down the sidebar's right edge
    x, top = ui.x + ui.width - 8, win.height - (ui.y + ui.height)
    subprocess.run(["xdotool", "mousemove", str(x), str(top + 200), "click", "1"], check=False)


def shoot():
    with bpy.context.temp_override(window=win, screen=win.screen, area=area):
        bpy.ops.screen.screenshot(filepath=out)
    bpy.ops.wm.quit_blender()


bpy.app.timers.register(click_tab, first_interval=2.0)
bpy.app.timers.register(shoot, first_interval=4.0)
