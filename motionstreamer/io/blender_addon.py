"""`motionstreamer blender-addon`: zip integrations/blender (a Blender 4.2+ extension) together with
the motionstreamer modules it runs inside Blender (VENDORED: numpy-only retargeting, rig and feet code),
copied from this installation into the zip's vendor/ folder, so the add-on needs nothing installed in
Blender's own Python. The add-on's sources are read from the source tree (a checkout or an editable
install); the package modules are copied verbatim, with empty package __init__ files."""
from __future__ import annotations

import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
ADDON_DIR = PACKAGE.parent / "integrations" / "blender"
ADDON_FILES = ("blender_manifest.toml", "__init__.py", "client.py", "session.py")
VENDORED = ("__init__.py", "utils.py", "io/rig.py", "io/motion_io.py", "io/retarget.py", "io/blender_rig.py",
            "io/bvh.py", "representation/ik.py", "representation/feet.py", "representation/skeleton.py")
PACKAGE_STUB = '"""motionstreamer modules vendored into the Blender add-on (motionstreamer/io/blender_addon.py)."""\n'


def build_addon_zip(out) -> Path:
    """Write the extension zip to `out` (atomically); returns the path."""
    from motionstreamer.utils import atomic_path

    missing = [f for f in ADDON_FILES if not (ADDON_DIR / f).is_file()]
    if missing:
        raise OSError(f"the add-on's sources are not in this installation ({ADDON_DIR}: no {', '.join(missing)}); "
                      "build it from a source checkout of motionstreamer")
    out = Path(out)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in ADDON_FILES:
                z.write(ADDON_DIR / f, f)
            for f in VENDORED:
                z.write(PACKAGE / f, f"vendor/motionstreamer/{f}")
            for sub in ("io", "representation"):
                z.writestr(f"vendor/motionstreamer/{sub}/__init__.py", PACKAGE_STUB)
    return out
