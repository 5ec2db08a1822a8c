"""The Blender add-on (issue 26) in a headless Blender (the one io.blender_process finds: in CI `bpy`
from PyPI in its own environment, scripts/blender_env.sh; a fresh process running
tests/blender/addon_check.py) against a real `motionstreamer serve` on loopback: the zip that
`motionstreamer blender-addon` writes installs as an extension and registers, runs on its vendored
motionstreamer modules, reports errors in Blender's UI, and Generate and a few seconds of Live key
an action onto (a) a Rigify-style armature, (b) a Mixamo-named one in an A-pose (centimetres under a
0.01 object), (c) a scaled-down one with Unreal's names. Blender evaluates the actions; the checks
are computed here from the rigs' own rest poses and the source joints."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _rigs import leg_length
from _serve_testing import ServerThread

from motionstreamer.cli import main
from motionstreamer.io.blender_process import run_script
from motionstreamer.representation import feet
from motionstreamer.runtime.loading import default_model_dir

pytestmark = pytest.mark.skipif(not (default_model_dir() / "config.json").exists(),
                                reason="embedded default model not built (scripts/train_default_model.py)")

TOKEN = "blender-test-token"
CHECK = Path(__file__).parent / "blender" / "addon_check.py"
LIVE_SECONDS = 3.0
END_EFFECTORS = [15, 20, 21, 7, 8]          # head, wrists, ankles


@pytest.fixture(scope="module")
def blender_run(tmp_path_factory):
    from motionstreamer.serve.app import create_app

    d = tmp_path_factory.mktemp("blender")
    assert main(["blender-addon", "--out", str(d / "addon.zip")]) == 0
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(d / "blender_user")}     # Blender's user folders, not $HOME's
    # the teacher head, the motion these bounds were set on: the add-on, not the model, is under test. (With
    # the embedded model's default 4-step student, "a person walks forward" seed 0 slides its right foot
    # through its first contact, and the add-on's foot planting then departs from the raw source by up to
    # 0.18 m, 22% of a leg, at that contact's first frame: over the Generate bound of 15%.)
    with ServerThread(create_app(token=TOKEN, head="teacher")) as server:
        res = run_script(CHECK, [d / "addon.zip", server.http, TOKEN, d / "result.json", LIVE_SECONDS], timeout=500,
                         env=env, cwd=d)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return json.loads((d / "result.json").read_text()), d


def test_addon_installs_registers_and_runs_on_its_vendored_modules(blender_run):
    result, d = blender_run
    assert result["install"] == ["FINISHED"] and result["registered"]
    vendored = result["vendored_from"]
    assert vendored.startswith(str(d / "blender_user")) and "/vendor/motionstreamer/io/" in vendored


def test_errors_are_reported_in_blenders_ui_not_as_tracebacks(blender_run):
    errors = blender_run[0]["errors"]
    assert set(errors) == {"no_armature", "server_down", "token", "unmappable"}
    for e in errors.values():
        assert e.startswith("Error: ") and "Traceback" not in e and len(e.strip().splitlines()) == 1, e
    assert "select an armature" in errors["no_armature"]
    assert "cannot reach the motionstreamer server at http://127.0.0.1:9" in errors["server_down"]
    assert "wrong token" in errors["token"]
    assert "cannot map the rig notahuman" in errors["unmappable"] and "bone map" in errors["unmappable"]


@pytest.mark.parametrize("rig", ["rigify", "mixamo", "small"])
@pytest.mark.parametrize("mode", ["generate", "live"])
def test_actions_follow_the_motion_scaled_by_leg_length(blender_run, rig, mode):
    """End effectors within 6% (mean) / 15% (Generate) or 30% (Live, whose first second settles the
    source skeleton) of a leg length of the motion scaled by leg length; no foot joint more than 1 cm
    below the floor; planted feet (the source's contacts) slide less than half as fast as the source's."""
    entry = blender_run[0][rig]
    rest, got, source = np.array(entry["rest"]), np.array(entry[mode]["positions"]), np.array(entry[mode]["source"])
    frames = {"generate": 4.0 * 30, "live": LIVE_SECONDS * 30}[mode]
    assert len(got) == len(source) and len(got) >= 0.6 * frames
    if mode == "live":
        # the armature moved while it streamed: its pose changed in several of the timer's ticks (how
        # many depends on the machine's load: a server behind real time sends fewer frames in the window;
        # exactly 10 were seen with a training job beside the suite on 2 cores)
        assert entry["live"]["distinct_live_poses"] >= 5
    leg = leg_length(rest)
    s = leg / leg_length(source)
    err = np.linalg.norm(got[:, END_EFFECTORS] - source[:, END_EFFECTORS] * s, axis=-1)
    assert err.mean() < 0.06 * leg and err.max() < (0.15 if mode == "generate" else 0.30) * leg, (err.mean(), err.max())
    assert got[:, [7, 8, 10, 11], 1].min() > -0.01
    contacts = feet.foot_contacts(source)

    def slide(x, scale):
        v = np.linalg.norm(np.diff(x[:, [10, 11]][..., [0, 2]], axis=0), axis=-1) * 30 / scale
        return v[contacts[:-1] & contacts[1:]].mean()

    assert slide(got, s) < 0.5 * slide(source, 1.0)
