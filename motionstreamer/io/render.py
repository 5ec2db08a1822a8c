"""Skeleton video (.mp4 / .gif) in the style of the reference visualiser (spec §4), on current matplotlib.

The picture is the reference's: a 10x10 in figure (960x960 px at 96 dpi), the title wrapped at 40
characters (16 pt), camera elev=110 azim=-90, limits x [-2, 2], y [-2, 2], z [0, 2], HumanML3D's
kinematic chains (width 4) in red/blue/black. The clip is put on its floor (min y = 0) and every frame
is re-centred so the pelvis stays at XZ = 0; the grey floor quad (the clip's XZ extent over all joints)
and the blue root trajectory (past frames, drawn from frame 2 on) move underneath.

Differences from the reference, all for speed or for current matplotlib:
- one figure for the whole clip whose artists are updated per frame (the reference builds a figure
  per frame and cannot run on matplotlib >= 3.5); no pyplot, so no global backend switch;
- `size` sets the dpi (size/10), so any size is the reference picture scaled; 480 by default;
- `ax.dist = 7.5` becomes `set_box_aspect(zoom=1.28)`: 10/7.5 times the 3.4 default, which
  matplotlib >= 3.6 already enlarges by 25/24;
- draw order is fixed (floor, trajectory, bones) instead of depth-sorted, so the floor never
  covers the legs (the camera is above the floor, so bones are always in front of it);
- frames stream into ffmpeg (H.264 yuv420p for .mp4; per-frame palettes for .gif) instead of being
  collected and written at the end; the output file appears atomically when complete.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np

from motionstreamer.representation.skeleton import CHAIN_COLORS, KINEMATIC_CHAIN

REFERENCE_SIZE = 960      # the reference's 10 in x 96 dpi
DEFAULT_SIZE = 480
FIGURE_INCHES = 10.0
LIMITS = ((-2.0, 2.0), (-2.0, 2.0), (0.0, 2.0))   # x, y (height), z
ZOOM = 10.0 / 7.5 * 24.0 / 25.0
FLOOR_RGBA = (0.5, 0.5, 0.5, 0.5)
VIDEO_FORMATS = (".mp4", ".gif")

# ffmpeg settings per output kind: (codec, output pixel format, extra output arguments).
_FFMPEG = {
    ".mp4": ("libx264", "yuv420p", ["-preset", "veryfast", "-movflags", "+faststart"]),
    # one palette per frame, generated and applied inside ffmpeg, so memory stays bounded
    ".gif": ("gif", "pal8", ["-filter_complex",
                             "split[a][b];[a]palettegen=stats_mode=single:reserve_transparent=0[p];"
                             "[b][p]paletteuse=new=1:dither=none",
                             "-loop", "0"]),
}


def check_joints(joints, name: str = "joints") -> np.ndarray:
    """(T, 22, 3) finite float64 array from numpy or torch input, or ValueError naming the problem."""
    if hasattr(joints, "detach"):
        joints = joints.detach().cpu().numpy()
    j = np.asarray(joints)
    if j.ndim != 3 or j.shape[1:] != (22, 3):
        raise ValueError(f"{name} must have shape (frames, 22, 3), got {j.shape}")
    if j.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if not np.issubdtype(j.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {j.dtype}")
    j = j.astype(np.float64)
    if not np.all(np.isfinite(j)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(j))[0])
        raise ValueError(f"{name} contains NaN/inf (first at frame {bad[0]}, joint {bad[1]})")
    return j


def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64 or size > 4096 or size % 2:
        raise ValueError(f"size must be an even number of pixels in [64, 4096], got {size!r}")
    return int(size)


def _draw_frames(joints: np.ndarray, title: str, size: int, progress: bool) -> Iterator[np.ndarray]:
    """Yield the canvas's RGBA buffer (size, size, 4) per frame: a view, valid until the next one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from tqdm import tqdm

    j = joints.copy()
    mins, maxs = j.min(axis=(0, 1)), j.max(axis=(0, 1))        # floor extent: all joints, all frames
    j[..., 1] -= mins[1]                                         # floor at y = 0
    traj = j[:, 0, [0, 2]].copy()                                # root XZ before re-centring
    j[..., 0] -= traj[:, None, 0]
    j[..., 2] -= traj[:, None, 1]

    fig = Figure(figsize=(FIGURE_INCHES, FIGURE_INCHES), dpi=size / FIGURE_INCHES)
    canvas = FigureCanvasAgg(fig)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 40)), fontsize=16)
    ax = fig.add_axes((0, 0, 1, 1), projection="3d", computed_zorder=False)
    ax.set_xlim(*LIMITS[0])
    ax.set_ylim(*LIMITS[1])
    ax.set_zlim(*LIMITS[2])
    ax.view_init(elev=110, azim=-90)
    ax.set_box_aspect(None, zoom=ZOOM)
    ax.grid(False)
    ax.set_axis_off()
    floor = Poly3DCollection([np.zeros((4, 3))], facecolors=FLOOR_RGBA, edgecolors="none", zorder=1)
    ax.add_collection3d(floor)
    (trajectory,) = ax.plot([], [], [], color="blue", linewidth=1.0, zorder=2)
    bones = [ax.plot([], [], [], color=color, linewidth=4.0, zorder=3)[0] for color in CHAIN_COLORS]
    chains = [list(chain) for chain in KINEMATIC_CHAIN]

    for t in tqdm(range(len(j)), desc="render", unit="frame", disable=not progress, leave=False):
        cx, cz = traj[t]
        x0, x1, z0, z1 = mins[0] - cx, maxs[0] - cx, mins[2] - cz, maxs[2] - cz
        floor.set_verts([[(x0, 0.0, z0), (x0, 0.0, z1), (x1, 0.0, z1), (x1, 0.0, z0)]])
        trajectory.set_visible(t > 1)
        if t > 1:
            past = traj[:t] - traj[t]
            trajectory.set_data_3d(past[:, 0], np.zeros(t), past[:, 1])
        for line, chain in zip(bones, chains):
            pts = j[t, chain]
            line.set_data_3d(pts[:, 0], pts[:, 1], pts[:, 2])
        canvas.draw()
        yield np.asarray(canvas.buffer_rgba())   # (size, size, 4): exact for every even size


def render_frames(joints, title: str = "", size: int = DEFAULT_SIZE, progress: bool = False
                  ) -> Iterator[np.ndarray]:
    """Yield one RGB frame (size, size, 3) uint8 per frame of joints (T, 22, 3); each a fresh array."""
    for rgba in _draw_frames(check_joints(joints), str(title), check_size(size), progress):
        yield np.ascontiguousarray(rgba[..., :3])


def render_motion(joints, out_path: str | Path, title: str = "", fps: float = 30, progress: bool = True,
                  size: int = DEFAULT_SIZE) -> Path:
    """Render joints (T, 22, 3) (Y-up metres) to `out_path` (.mp4 or .gif) at `fps`; returns the path.

    size: output width = height in pixels (even; REFERENCE_SIZE = 960 is the reference's). The file
    is written to a temporary name and renamed when complete.
    """
    import imageio_ffmpeg

    from motionstreamer.utils import atomic_path

    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    if ext not in VIDEO_FORMATS:
        raise ValueError(f"output {str(out_path)!r} must end in .mp4 or .gif")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not np.isfinite(fps) or not 0 < fps <= 1000:
        raise ValueError(f"fps must be a positive number (at most 1000), got {fps!r}")
    joints = check_joints(joints)
    size = check_size(size)
    codec, pix_fmt, extra = _FFMPEG[ext]
    with atomic_path(out_path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (size, size), pix_fmt_in="rgba", pix_fmt_out=pix_fmt, fps=float(fps), codec=codec,
            quality=5 if ext == ".mp4" else None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-f", ext[1:]] + extra)
        writer.send(None)   # start ffmpeg
        try:
            for rgba in _draw_frames(joints, str(title), size, progress):
                writer.send(rgba)   # ffmpeg drops alpha in its own process
        finally:
            writer.close()
    return out_path
