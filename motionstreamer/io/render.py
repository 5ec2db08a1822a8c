"""Skeleton video (mp4/gif) in the style of the reference visualiser (spec §4), on current matplotlib.

The body stays centred while the floor and the root trajectory move under it; bones use HumanML3D's
kinematic chains and colours; the title is wrapped at 40 characters. One figure is created and its
artists are updated frame by frame (the reference makes a new figure per frame, which is ~10x
slower); frames stream into imageio's writer.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from motionstreamer.representation.skeleton import CHAIN_COLORS, KINEMATIC_CHAIN


def _check(joints) -> np.ndarray:
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (22, 3):
        raise ValueError(f"joints must be (frames, 22, 3), got {j.shape}")
    if len(j) == 0:
        raise ValueError("joints has no frames")
    if not np.all(np.isfinite(j)):
        raise ValueError("joints contain NaN or inf")
    return j


def render_frames(joints, title: str = "", size: int = 480, progress: bool = False):
    """Yield RGB frames (size, size, 3) uint8."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from tqdm import tqdm

    j = _check(joints).copy()
    j[..., 1] -= j[..., 1].min()                      # floor at 0
    traj = j[:, 0, [0, 2]].copy()
    j[..., 0] -= traj[:, None, 0]
    j[..., 2] -= traj[:, None, 1]
    mins, maxs = traj.min(0), traj.max(0)

    dpi = 96
    fig = plt.figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    ax = fig.add_subplot(projection="3d")
    fig.subplots_adjust(0, 0, 1, 1)
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1.2, 2.8)   # reference: (-2, 2); shifted so the body sits mid-frame
    ax.set_zlim(0, 2)
    ax.view_init(elev=110, azim=-90)
    ax.set_box_aspect(None, zoom=1.6)   # stands in for the reference's ax.dist = 7.5
    ax.grid(False)
    ax.set_axis_off()
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 40)), fontsize=max(8, size // 40))
    # plotted as (x, y, z) with the reference camera (elev 110, azim -90): y, the height, points up
    floor = Poly3DCollection([np.zeros((4, 3))], facecolors=(0.5, 0.5, 0.5, 0.5))
    ax.add_collection3d(floor)
    (path,) = ax.plot([], [], [], color="blue", linewidth=1.0)
    bones = [ax.plot([], [], [], color=c, linewidth=4.0 if i < 5 else 2.0)[0]
             for i, c in enumerate(CHAIN_COLORS)]
    canvas = fig.canvas
    try:
        for t in tqdm(range(len(j)), desc="render", disable=not progress, leave=False):
            cur = traj[t]
            x0, x1 = mins[0] - cur[0], maxs[0] - cur[0]
            z0, z1 = mins[1] - cur[1], maxs[1] - cur[1]
            floor.set_verts([[(x0, 0, z0), (x0, 0, z1), (x1, 0, z1), (x1, 0, z0)]])
            if t > 1:
                p = traj[:t] - cur
                path.set_data_3d(p[:, 0], np.zeros(t), p[:, 1])
            for line, chain in zip(bones, KINEMATIC_CHAIN):
                pts = j[t, list(chain)]
                line.set_data_3d(pts[:, 0], pts[:, 1], pts[:, 2])
            canvas.draw()
            frame = np.asarray(canvas.buffer_rgba())[..., :3]
            yield frame.copy()
    finally:
        plt.close(fig)


def render_motion(joints, out_path: str | Path, title: str = "", fps: int = 30, size: int = 480,
                  progress: bool = True) -> Path:
    """Write joints (T, 22, 3) to .mp4 (H.264 via imageio-ffmpeg) or .gif; atomic."""
    import imageio.v2 as imageio

    from motionstreamer.utils import atomic_path

    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"output must end in .mp4 or .gif, got {out_path.name!r}")
    if size < 64 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and >= 64, got {size}")
    joints = _check(joints)
    with atomic_path(out_path) as tmp:
        if ext == ".mp4":
            writer = imageio.get_writer(str(tmp), format="FFMPEG", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error")
        else:
            writer = imageio.get_writer(str(tmp), format="GIF", duration=1000.0 / fps, loop=0)
        with writer:
            for frame in render_frames(joints, title, size, progress):
                writer.append_data(frame)
    return out_path
