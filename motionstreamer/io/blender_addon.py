"""`motionstreamer blender-addon`: zip integrations/blender (a Blender 4.2+ extension) together with
the motionstreamer modules it runs inside Blender (VENDORED: numpy-only retargeting, rig, feet and FBX
code), copied from this installation into the zip's vendor/ folder, so the add-on needs nothing installed
in Blender's own Python. The same modules are what io.blender_process copies for its worker
(io.blender_worker) when FBX goes through a Blender outside this process. The add-on's sources are read
from the source tree (a checkout or an editable install); the package modules are copied verbatim, with
empty package __init__ files."""
from __future__ import annotations

import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
ADDON_DIR = PACKAGE.parent / "integrations" / "blender"
ADDON_FILES = ("blender_manifest.toml", "__init__.py", "client.py", "session.py")
# numpy + the standard library only (tests/test_blender_process.py imports them with nothing else installed)
VENDORED = ("__init__.py", "utils.py", "io/rig.py", "io/motion_io.py", "io/retarget.py", "io/blender_rig.py",
            "io/bvh.py", "io/fbx.py", "io/blender_process.py", "io/blender_worker.py", "representation/ik.py",
            "representation/feet.py", "representation/skeleton.py")
SUBPACKAGES = ("io", "representation")
PACKAGE_STUB = '"""motionstreamer modules vendored for Blender (motionstreamer/io/blender_addon.py)."""\n'


def write_vendored(write_file, write_text) -> None:
    """Lay the vendored package out through write_file(source file, path) and write_text(path, text),
    paths relative to the package's parent folder; the sub-packages get empty __init__ files (theirs
    would import the rest of the package)."""
    for f in VENDORED:
        write_file(PACKAGE / f, f"motionstreamer/{f}")
    for sub in SUBPACKAGES:
        write_text(f"motionstreamer/{sub}/__init__.py", PACKAGE_STUB)


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
            write_vendored(lambda src, rel: z.write(src, f"vendor/{rel}"),
                           lambda rel, text: z.writestr(f"vendor/{rel}", text))
    return out
