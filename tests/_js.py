"""Node.js helpers for the tests: the Khronos glTF validator and three.js's GLTFLoader, installed in
tests/js by `npm ci` (scripts/test.sh does it). A missing node or install fails the test that needs it,
everywhere: a read-back check that skips where its tool is installable passes without checking."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"


def require_js() -> None:
    missing = []
    if shutil.which("node") is None:
        missing.append("node")
    if not (JS_DIR / "node_modules" / "three").is_dir() or not (JS_DIR / "node_modules" / "gltf-validator").is_dir():
        missing.append("tests/js/node_modules (run `npm ci` in tests/js)")
    if missing:
        pytest.fail("needs " + " and ".join(missing) + "; scripts/test.sh installs them")


def run_node(script: str, *args, timeout: float = 300) -> dict:
    require_js()
    res = subprocess.run(["node", str(JS_DIR / script), *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=JS_DIR)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def validate_gltf(path) -> dict:
    """The validator's report: report['issues']['numErrors'], ... and the messages."""
    return run_node("validate_gltf.mjs", path)


def read_gltf(path, fps: float, frames: int, skin_frames=()) -> dict:
    """three.js: world positions of every node at t = i / fps (positions [frames][nodes][3]), node names,
    clip duration and track count, skinned vertex positions at `skin_frames`."""
    return run_node("read_gltf.mjs", path, fps, frames, *skin_frames)
