"""The browser app in a real browser: headless Chromium (Debian's, driven by Playwright through
executable_path; `scripts/test.sh` installs it when missing) loads the page from a real server, a
prompt is typed and sent with Enter, and the test checks that frames arrive and play, the character
moves on screen (projected joints and the pixels around them), the screenshot is not blank, and the
"Download BVH" file parses with an independent BVH parser and equals motionstreamer.io.bvh's writer
on the same rotations."""
import io
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from _serve_testing import ServerThread  # noqa: E402
from playwright import sync_api  # noqa: E402  (the test extra's: a missing one fails, never skips)

from motionstreamer.serve.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module", autouse=True)
def chromium_installed():
    """A missing browser fails the test (as in CI), it never skips it: scripts/test.sh installs it."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: scripts/test.sh installs Debian's `chromium` for this test")


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(sampling_steps=4)) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    """One Playwright for the module: a second sync_playwright() while the first is open fails (it sees
    the first one's event loop)."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url: str, **context):
    """(context, page) at `url` in a 1280 x 760 view; page.errors collects the page's uncaught errors."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 760}, **context)
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(url)
    return ctx, pg


@pytest.fixture(scope="module")
def page(server, browser, tmp_path_factory):
    ctx, pg = open_page(browser, server.http + "/?seed=5", accept_downloads=True)
    yield pg
    ctx.close()


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def character_box(joints, shape, pad=40):
    xy = np.array(joints)
    x0, y0 = np.clip(xy.min(0) - pad, 0, None).astype(int)
    x1, y1 = (xy.max(0) + pad).astype(int)
    return slice(y0, min(y1, shape[0])), slice(x0, min(x1, shape[1]))


def test_page_streams_types_and_moves(page):
    page.wait_for_function("window.motionstreamer && motionstreamer.state.framesPlayed > 20", timeout=120_000)
    chips = page.locator("#examples button")
    assert chips.count() >= 10                                     # example prompts from /v1/info
    page.fill("#prompt", "a person jumps up")
    page.press("#prompt", "Enter")
    page.wait_for_function("motionstreamer.state.prompt === 'a person jumps up'", timeout=60_000)
    state = page.evaluate("({r: motionstreamer.state.framesReceived, p: motionstreamer.state.framesPlayed,"
                          " lat: motionstreamer.state.latencyRecv})")
    assert state["r"] >= state["p"] > 20 and state["lat"] is not None
    assert page.locator("#now").inner_text() == "a person jumps up"
    assert "prompt change" in page.locator("#events").inner_text()

    j1 = page.evaluate("motionstreamer.projectJoints()")
    shot1 = pixels(page.screenshot())
    time.sleep(0.6)
    j2 = page.evaluate("motionstreamer.projectJoints()")
    shot2 = pixels(page.screenshot())
    j1, j2 = np.array(j1), np.array(j2)
    assert j1.shape == (22, 2)
    assert np.isfinite(j1).all() and (j1 > 0).all() and (j1[:, 0] < 1280).all() and (j1[:, 1] < 760).all()
    assert np.abs(j2 - j1).max() > 3.0, "the joints did not move on screen"

    # not blank: many colours overall; the character's pixels (orange right side, blue left side) are
    # around the projected joints, and they changed between the two screenshots
    assert shot1.std() > 10 and len(np.unique(shot1.reshape(-1, 3), axis=0)) > 500
    box = character_box(j1, shot1.shape)
    region = shot1[box]
    orange = ((region[..., 0] > 170) & (region[..., 1] < 160) & (region[..., 2] < 140)).sum()
    blue = ((region[..., 2] > 170) & (region[..., 0] < 140)).sum()
    assert orange > 200 and blue > 200, (orange, blue)
    box2 = character_box(np.concatenate([j1, j2]), shot1.shape)
    assert np.abs(shot2[box2] - shot1[box2]).sum(-1).astype(bool).mean() > 0.01
    from PIL import Image
    Image.fromarray(shot1.astype(np.uint8)).save(os.environ.get("MOTIONSTREAMER_SCREENSHOT", "/dev/null"), "PNG") \
        if os.environ.get("MOTIONSTREAMER_SCREENSHOT") else None
    assert page.errors == []


def euler_matrices(degrees: np.ndarray, axes: list) -> np.ndarray:
    """(T, 3, 3) rotations of BVH Euler channels: R = R_axes[0](a0) R_axes[1](a1) R_axes[2](a2)."""
    out = np.broadcast_to(np.eye(3), (len(degrees), 3, 3)).copy()
    for k, axis in enumerate(axes):
        t = np.radians(degrees[:, k])
        c, s = np.cos(t), np.sin(t)
        m = np.zeros((len(t), 3, 3))
        i = "XYZ".index(axis)
        j, l = (i + 1) % 3, (i + 2) % 3
        m[:, i, i] = 1.0
        m[:, j, j], m[:, j, l], m[:, l, j], m[:, l, l] = c, -s, s, c
        out = out @ m
    return out


def test_download_bvh_matches_the_python_writer(page, tmp_path):
    import bvh as bvh_parser  # an independent parser
    import torch

    from motionstreamer.io.bvh import bvh_text
    from motionstreamer.representation.rotation import quaternion_to_matrix

    page.wait_for_function("motionstreamer.state.recRot.length > 30", timeout=60_000)
    snap = page.evaluate("""() => { const s = motionstreamer.state;
        return {text: motionstreamer.bvhText(), rot: s.recRot.map(r => Array.from(r)),
                root: s.recRoot.map(r => Array.from(r)), index: s.recIndex}; }""")
    T = len(snap["rot"])
    assert snap["index"] == list(range(snap["index"][0], snap["index"][0] + T))   # every frame, in order
    rot = quaternion_to_matrix(torch.tensor(snap["rot"], dtype=torch.float64).reshape(T, 22, 4))
    ref = bvh_parser.Bvh(bvh_text(rot.numpy(), np.array(snap["root"], dtype=np.float64), fps=30))
    got = bvh_parser.Bvh(snap["text"])
    assert got.nframes == ref.nframes == T and abs(got.frame_time - 1 / 30) < 1e-6
    assert got.get_joints_names() == ref.get_joints_names()
    a = np.array(got.frames, dtype=np.float64)
    b = np.array(ref.frames, dtype=np.float64)
    assert a.shape == b.shape == (T, 75)
    # positions as printed; rotations as the matrices their Euler channels make (BVH: intrinsic, in channel
    # order). The page decomposes in fp32: near the middle angle's +-90 degrees asin of a rounded sine is
    # off by up to sqrt(2 * 6e-8) = 3.5e-4 rad (seen: 4.9e-5 at -89.9 degrees), so matrices within 5e-4;
    # a wrong order, axis or sign is off by O(0.1-1)
    col = 0
    for name in got.get_joints_names():
        channels = got.joint_channels(name)
        assert channels == ref.joint_channels(name)
        for k, ch in enumerate(channels):
            if ch.endswith("position"):
                np.testing.assert_allclose(a[:, col + k], b[:, col + k], atol=2e-3, err_msg=f"{name} {ch}")
        rot = [k for k, ch in enumerate(channels) if ch.endswith("rotation")]
        axes = [channels[k][0] for k in rot]
        ma, mb = (euler_matrices(x[:, [col + k for k in rot]], axes) for x in (a, b))
        np.testing.assert_allclose(ma, mb, atol=5e-4, err_msg=name)
        col += len(channels)
    assert col == 75

    with page.expect_download() as dl:
        page.click("#bvh")
    path = tmp_path / "stream.bvh"
    dl.value.save_as(path)
    mocap = bvh_parser.Bvh(path.read_text())
    assert mocap.nframes >= T and len(mocap.get_joints_names()) == 24
    pelvis = np.array([[float(v) for v in f[:3]] for f in mocap.frames])
    assert np.isfinite(pelvis).all() and np.ptp(pelvis, axis=0).max() > 0.05    # the character moved
    assert page.errors == []
