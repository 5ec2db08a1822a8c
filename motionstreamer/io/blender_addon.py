"""`motionstreamer blender-addon`: zip integrations/blender (a Blender 4.2+ extension) together with
the motionstreamer modules it runs inside Blender (io.blender_process.VENDORED: numpy-only retargeting,
rig, feet and FBX code, the same copy FBX's worker runs on), copied from this installation into the
zip's vendor/ folder, so the add-on needs nothing installed in Blender's own Python. The add-on's
sources are read from the source tree (a checkout or an editable install); the package modules are
copied verbatim, with empty package __init__ files."""
from __future__ import annotations

import zipfile
from pathlib import Path

from motionstreamer.io.blender_process import PACKAGE, write_vendored
from motionstreamer.utils import atomic_path

ADDON_DIR = PACKAGE.parent / "integrations" / "blender"
ADDON_FILES = ("blender_manifest.toml", "__init__.py", "client.py", "session.py")


def build_addon_zip(out) -> Path:
    """Write the extension zip to `out` (atomically); returns the path."""
    missing = [f for f in ADDON_FILES if not (ADDON_DIR / f).is_file()]
    if missing:
        raise OSError(f"the add-on's sources are not in this installation ({ADDON_DIR}: no {', '.join(missing)}); "
                      "build it from a source checkout of motionstreamer")
    out = Path(out)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in ADDON_FILES:
                z.write(ADDON_DIR / f, f)
            write_vendored(lambda src, rel: z.write(src, f"vendor/{rel}"),
                           lambda rel, text: z.writestr(f"vendor/{rel}", text))
    return out
