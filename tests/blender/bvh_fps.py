"""Run in Blender by tests/test_io_retarget.py: import a BVH with Blender's own importer and print,
as JSON, the scene's frame rate it set (fps, fps_base).

Usage: python bvh_fps.py FILE.bvh   |   blender --background --python bvh_fps.py -- FILE.bvh
"""
import json
import sys

import bpy

ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_anim.bvh(filepath=ARGS[0], update_scene_fps=True)
print(json.dumps({"fps": bpy.context.scene.render.fps, "fps_base": bpy.context.scene.render.fps_base}))
