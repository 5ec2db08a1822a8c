"""Skeleton video rendering: valid mp4/gif with the right frame count and size, the picture (figure large
and centred by a following camera, checkerboard floor moving under it, title in its own band, literal
titles, three views), argument checks, atomic output and no temporaries left by a killed render."""
import os
import signal
import subprocess
import sys
import time

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import motionstreamer.io.render as render
from motionstreamer.io.render import LEFT, RIGHT, SkeletonRenderer, render_frames, render_motion
from motionstreamer.representation.skeleton import forward_kinematics

SIZE = 160


def walking_joints(T=30, speed=(0.03, 0.0, 0.02)):
    """Rest pose with its lowest joint on the floor, translated by a constant per-frame velocity (m/frame)."""
    rotations = np.tile(np.eye(3), (T, 22, 1, 1))
    root = np.array([0.0, 0.0, 0.0]) + np.arange(T)[:, None] * np.array(speed)
    j = forward_kinematics(rotations, root)
    j[..., 1] -= j[..., 1].min()
    return j


def colour_mask(frame, rgb, tol=60):
    return np.abs(frame.astype(int) - np.array(rgb) * 255).sum(-1) < tol


def test_mp4_frames_size_and_fps(tmp_path):
    out = render_motion(walking_joints(30), tmp_path / "clip.mp4", title="walks", fps=30, progress=False, size=SIZE)
    assert out == tmp_path / "clip.mp4" and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with imageio_v2.get_reader(out, format="FFMPEG") as reader:
        meta = reader.get_metadata() if hasattr(reader, "get_metadata") else reader.get_meta_data()
        frames = [f for f in reader]
    assert meta["codec"] == "h264" and meta["fps"] == 30.0 and "yuv420p" in meta["pix_fmt"]
    assert len(frames) == 30 and frames[0].shape == (SIZE, SIZE, 3)


def test_gif_frames_size_and_timing(tmp_path):
    out = render_motion(walking_joints(30), tmp_path / "clip.gif", fps=30, progress=False, size=SIZE)
    frames = iio.imread(out, index=None)
    assert frames.shape[:3] == (30, SIZE, SIZE)
    with Image.open(out) as im:
        assert im.info.get("loop") == 0
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert sum(durations) == 1000            # 30 frames at 30 fps, in GIF's 10 ms steps
    reference = np.stack(list(render_frames(walking_joints(30), size=SIZE)))
    assert np.abs(frames[..., :3].astype(int) - reference).mean() < 2.0   # palette quantisation only


def _figure_box(frame):
    """Bounding box (rows, cols) of the red and blue bone pixels."""
    mask = colour_mask(frame, LEFT) | colour_mask(frame, RIGHT)
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_picture_figure_large_centred_floor_moving_title_band():
    T, size = 90, 320
    joints = walking_joints(T, speed=(0.0, 0.0, 0.05))         # 4.5 m forward in 3 s
    frames = np.stack(list(render_frames(joints, title="a person walks forward", size=size)))
    assert frames.shape == (T, size, size, 3) and frames.dtype == np.uint8
    r = SkeletonRenderer(joints, title="a person walks forward", size=size)
    band_rows = int(round(r.band * size))
    assert 0 < band_rows < size // 5
    for t in (0, T // 2, T - 1):
        top, bottom, left, right = _figure_box(frames[t])
        assert top > band_rows                                     # the title band holds no figure
        assert bottom - top > 0.55 * (size - band_rows)            # the figure fills most of the height
        assert abs((left + right) / 2 - size / 2) < 0.1 * size     # and stays centred: the camera follows
    # the title is drawn in its band
    assert (frames[0, :band_rows] < 100).any() and not (frames[0, :band_rows] < 100)[:, : size // 20].any()
    # a checkerboard: both tile shades appear below the figure, and the floor moves under it
    low = frames[:, -size // 6:]
    shades = [colour_mask(low[0], (s, s, s), tol=12).sum() for s in render.TILE_SHADES]
    assert min(shades) > 200, shades
    moved = np.abs(low[T // 2 - 5].astype(int) - low[T // 2 + 5].astype(int)).max(-1) > 15   # 0.5 m: one tile
    assert moved.mean() > 0.5
    # the path walked so far is drawn on the floor: absent at the start, present later
    def path_pixels(f):
        return colour_mask(f, render.PATH_COLOUR, tol=70).sum()
    assert path_pixels(frames[0]) < path_pixels(frames[-1]) - 20


def test_views_three_side_by_side():
    frames = np.stack(list(render_frames(walking_joints(3), size=128, views=3)))
    assert frames.shape == (3, 128, 3 * 128, 3)
    for k in range(3):                                             # a figure in every panel
        panel = frames[1, :, 128 * k:128 * (k + 1)]
        assert (colour_mask(panel, LEFT) | colour_mask(panel, RIGHT)).sum() > 20, k


def _ink_width(frame, rows):
    dark = (frame[:rows] < 100).all(-1)
    cols = np.nonzero(dark.any(0))[0]
    return cols.max() - cols.min()


def test_title_is_literal_text_and_any_unicode():
    """Issue 18: `$...$` is not mathtext (it would render as a short alpha), any UTF-8 text renders."""
    r = SkeletonRenderer(walking_joints(1), title="$\\alpha$ wave", size=320)
    assert r.title.get_text() == "$\\alpha$ wave" and r.title.get_parse_math() is False
    literal = next(render_frames(walking_joints(1), title="$\\alpha$ wave", size=320))
    short = next(render_frames(walking_joints(1), title="α wave", size=320))
    assert _ink_width(literal, 40) > _ink_width(short, 40) + 30
    for title in ("marche → avant", "走る人", "😀 $$ \\ % {} _^", "x" * 400):
        frame = next(render_frames(walking_joints(1), title=title, size=128))
        assert frame.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="title is not valid UTF-8"):
        SkeletonRenderer(walking_joints(1), title="bad \udcff byte")


def test_sizes_and_torch_input():
    joints = torch.from_numpy(walking_joints(2)).float()
    for size in (64, 98):
        frame = next(iter(render_frames(joints, size=size)))
        assert frame.shape == (size, size, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(out="x.avi"), r"must end in \.mp4 or \.gif"),
    (dict(size=161), "size must be an even number"),
    (dict(size=32), "size must be an even number"),
    (dict(fps=0), "fps must be a positive number"),
    (dict(views=2), r"views must be one of \[1, 3\]"),
    (dict(joints=np.zeros((5, 24, 3))), r"joints must have shape \(frames, 22, 3\)"),
    (dict(joints=np.zeros((0, 22, 3))), "joints has no frames"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(joints=walking_joints(3), out="x.mp4", size=SIZE, fps=30, views=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render_motion(args["joints"], tmp_path / args["out"], fps=args["fps"], size=args["size"], progress=False,
                      views=args["views"])
    assert not list(tmp_path.iterdir())


def test_nan_named_and_failure_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"previous")
    joints = walking_joints(4)
    joints[2, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at frame 2, joint 5\)"):
        render_motion(joints, out, progress=False, size=SIZE)

    frames = SkeletonRenderer.frames

    def crashing(self, progress=False):      # a failure half-way through the frames
        it = frames(self, progress)
        yield next(it)
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(SkeletonRenderer, "frames", crashing)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        render_motion(walking_joints(4), out, progress=False, size=SIZE)
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


def test_killed_render_leaves_no_temporary_after_the_next_run(tmp_path):
    """Issue 18 item 5: SIGKILL mid-render leaves `.x.mp4.*.tmp.mp4`; the next render of x.mp4 removes it
    (a live render's temporary, locked by its writer, is left alone)."""
    out = tmp_path / "x.mp4"
    code = ("import numpy as np, sys; sys.path.insert(0, %r)\n"
            "from test_io_render import walking_joints\n"
            "from motionstreamer.io.render import render_motion\n"
            "render_motion(walking_joints(100000), %r, progress=False, size=64)\n") \
        % (os.path.dirname(__file__), str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        # killed once ffmpeg has opened (and begun) the temporary: ffmpeg opens its output by name only after
        # the first frames arrive, so an ffmpeg orphaned before that creates the file again after the next
        # render removed it (seen under load); that orphan's file goes at the render after
        while (not any(p.stat().st_size > 0 for p in tmp_path.glob(".x.mp4.*.tmp.mp4"))
               and time.time() < deadline):
            time.sleep(0.1)
        temporaries = list(tmp_path.glob(".x.mp4.*.tmp.mp4"))
        assert temporaries, "the render never started"
        from motionstreamer.utils import remove_stale_temporaries
        assert remove_stale_temporaries(out) == []               # alive: its temporary is kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".x.mp4.*.tmp.mp4")) == temporaries   # killed: the orphan is there
    render_motion(walking_joints(3), out, progress=False, size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mp4"]
