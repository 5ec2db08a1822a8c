"""Skeleton video rendering: valid mp4/gif with the right frame count and size, the reference's framing
(body centred, floor moving, chain colours), argument checks and atomic output. Clips are short."""
import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import motionstreamer.io.render as render
from motionstreamer.io.render import render_frames, render_motion
from motionstreamer.representation.skeleton import forward_kinematics

SIZE = 160


def walking_joints(T=30, speed=(0.03, 0.0, 0.02)):
    """Rest pose on the floor, translated by a constant per-frame velocity (m/frame)."""
    rotations = np.tile(np.eye(3), (T, 22, 1, 1))
    root = np.array([0.0, 0.95, 0.0]) + np.arange(T)[:, None] * np.array(speed)
    return forward_kinematics(rotations, root)


def colour_mask(frame, rgb, tol=60):
    return np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < tol


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


def test_frames_are_the_reference_picture():
    T, size = 25, 320     # lines are 4 pt = size / 180 px wide: wide enough here for pure colours
    frames = np.stack(list(render_frames(walking_joints(T), title="a person walks", size=size)))
    assert frames.shape == (T, size, size, 3) and frames.dtype == np.uint8
    first, last = frames[0], frames[-1]
    for rgb in ((255, 0, 0), (0, 0, 255), (0, 0, 0)):                    # red/blue chains, black spine
        assert colour_mask(first, rgb).sum() > 20, rgb
    grey = colour_mask(first, (191, 191, 191), tol=12)                     # 50% grey floor over white
    assert grey.sum() > 200
    # body centred: the red and blue bones stay where they were while the root moved 0.72 m
    for rgb in ((255, 0, 0), (0, 0, 255)):
        a, b = np.argwhere(colour_mask(first, rgb)), np.argwhere(colour_mask(last, rgb))
        np.testing.assert_allclose(a.mean(0), b.mean(0), atol=1.0)
    # ... and the floor moved under it
    assert np.abs(np.argwhere(grey).mean(0) - np.argwhere(colour_mask(last, (191, 191, 191), 12)).mean(0)).max() > 3
    # the root trajectory: a thin blue line on the floor behind the body, absent at frame 0
    def pale_blue(f):   # blue blended with white/grey: bone edges and the 1 pt trajectory
        x = f.astype(int)
        return ((x[..., 2] - x[..., 0] > 25) & (x[..., 0] > 60) & (x[..., 0] == x[..., 1])).sum()

    assert pale_blue(frames[1]) == pale_blue(first) and pale_blue(last) > pale_blue(first) + 30
    # the title is drawn in the top band; without it the band is blank
    untitled = next(iter(render_frames(walking_joints(1), size=size)))
    assert (first[: size // 12] < 128).any() and (untitled[: size // 12] == 255).all()


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
    (dict(joints=np.zeros((5, 24, 3))), r"joints must have shape \(frames, 22, 3\)"),
    (dict(joints=np.zeros((0, 22, 3))), "joints has no frames"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(joints=walking_joints(3), out="x.mp4", size=SIZE, fps=30)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render_motion(args["joints"], tmp_path / args["out"], fps=args["fps"], size=args["size"], progress=False)
    assert not list(tmp_path.iterdir())


def test_nan_named_and_failure_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"previous")
    joints = walking_joints(4)
    joints[2, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at frame 2, joint 5\)"):
        render_motion(joints, out, progress=False, size=SIZE)

    draw = render._draw_frames

    def crashing(*args, **kwargs):      # a failure half-way through the frames
        frames = draw(*args, **kwargs)
        yield next(frames)
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(render, "_draw_frames", crashing)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        render_motion(walking_joints(4), out, progress=False, size=SIZE)
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["clip.gif"]

