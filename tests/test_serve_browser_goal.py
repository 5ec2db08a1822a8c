"""Issue #27's acceptance test in a real browser (headless Chromium through Playwright, as
test_serve_browser.py): a click on the floor of the page sends the streamed character there. Its own
module, so no other page streams beside it (its walk is timed against the server's)."""
import numpy as np
import pytest

pytest.importorskip("fastapi")
from _serve_testing import ServerThread  # noqa: E402
from test_serve_browser import browser, chromium_installed, open_page  # noqa: E402,F401  (the fixtures)

from motionstreamer.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def goal_page(browser):  # noqa: F811  (the imported fixture)
    """The page on a server with the service's own sampler (10 steps) and the embedded model, whose goals
    steer through the root-motion warp (runtime/steering.py): issue #27's acceptance test."""
    with ServerThread(create_app()) as server:
        ctx, pg = open_page(browser, server.http + "/?seed=3")
        yield pg
        ctx.close()


def test_click_on_the_floor_sends_the_character_there(goal_page):
    """A click on the floor 2.5 m ahead of the character walking its first prompt (and 0.5 m to its left)
    sends a goal there (the page's raycast, checked against the point clicked); the stream reports
    goal_reached and stops, and the pelvis of the last frame played is within 0.5 m of the goal."""
    pg = goal_page
    pg.wait_for_function("window.motionstreamer && motionstreamer.state.info && motionstreamer.state.framesPlayed > 8",
                         timeout=120_000)
    assert pg.evaluate("motionstreamer.state.info.goals") is True
    # the page starts its stream with the first example prompt, a walk: the goal is set while it walks
    assert pg.evaluate("motionstreamer.state.prompt") == "a person walks forward"
    pose = np.array(pg.evaluate("Array.from(motionstreamer.state.pose)")).reshape(22, 3)
    left = pose[16] - pose[17]                                  # left minus right shoulder
    left = np.array([left[0], left[2]]) / np.hypot(left[0], left[2])
    ahead = np.array([-left[1], left[0]])                       # SMPL faces +z with its left on +x
    # the view from behind the character, held still (it follows the walk) from the projection to the
    # click; the goal 2.5 m ahead and 0.5 m to its left, on the 3D view above the prompt panel
    target = pose[0, [0, 2]] + 2.5 * ahead + 0.5 * left
    pg.evaluate(f"motionstreamer.cam.follow = false; motionstreamer.cam.azimuth = {np.arctan2(-ahead[0], -ahead[1])}")
    pg.wait_for_timeout(200)                                    # a few rendered frames with the new view
    x, y = pg.evaluate(f"motionstreamer.projectPoint({target[0]}, 0, {target[1]})")
    assert 0 < x < 1280 and 0 < y < 760 and pg.evaluate(f"document.elementFromPoint({x}, {y}).tagName") == "CANVAS"
    pg.mouse.click(x, y)
    goal = pg.evaluate("motionstreamer.cam.follow = true; motionstreamer.state.goal")
    # the floor point clicked
    assert goal is not None and np.hypot(goal["x"] - target[0], goal["z"] - target[1]) < 0.05
    pg.wait_for_function("motionstreamer.state.goalsReached > 0", timeout=180_000)
    pg.wait_for_function("motionstreamer.state.buffer.length === 0", timeout=30_000)   # everything played
    pelvis = np.array(pg.evaluate("Array.from(motionstreamer.state.pose.slice(0, 3))"))
    assert np.hypot(pelvis[0] - goal["x"], pelvis[2] - goal["z"]) < 0.5, (pelvis, goal)
    assert "goal reached" in pg.locator("#events").inner_text()
    assert pg.errors == []
