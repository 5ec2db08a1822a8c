"""Skeleton video (.mp4 / .gif): a figure on a checkerboard floor, filmed by a camera that follows it.

The picture, per view:
- a perspective camera that follows the pelvis smoothly (its floor position smoothed over ~0.4 s,
  centred in time, so a walk stays in the middle of the frame without the camera jittering with
  each step); the figure's height range fills about 3/4 of the picture height;
- a checkerboard floor (0.5 m tiles, fixed in the world so that the floor visibly moves under a
  walking figure) in a disc centred under the camera's target, fading out at its edge, with the
  pelvis path so far drawn on it and a soft shadow under the body;
- bones as thick round-capped lines (left side blue, right side red, spine and head dark), painted
  far to near, and joint dots; the head a larger disc; all scaled with the frame size, so they read
  at 480 px;
- the title, if any, in its own band above the picture (literal text: no `$...$` math; wrapped to
  the frame width, at most three lines).
`views=3` films front, side (the figure's left) and top views side by side (width 3 x size).

The floor is y = 0: pass grounded joints (io.rig.prepare_motion does; `render_motion` does not move
the motion). Frames stream into ffmpeg (H.264 yuv420p for .mp4; per-frame palettes for .gif); the
output file appears atomically when complete.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import imageio_ffmpeg
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from motionstreamer import FPS
from motionstreamer.io.motion_io import check_fps
from motionstreamer.representation.skeleton import LEFT_JOINTS, NUM_JOINTS, PARENTS, RIGHT_JOINTS
from motionstreamer.utils import as_numeric_array, atomic_path

DEFAULT_SIZE = 480
VIDEO_FORMATS = (".mp4", ".gif")
TILE = 0.5                    # m, checkerboard tile
BACKGROUND = (0.97, 0.97, 0.98)
TILE_SHADES = (0.90, 0.80)
LEFT, RIGHT, CENTRE = (0.16, 0.38, 0.85), (0.86, 0.22, 0.22), (0.22, 0.22, 0.26)
PATH_COLOUR = (0.30, 0.45, 0.75)
HEAD = 15
FOLLOW_SECONDS = 0.4          # camera smoothing (Gaussian sigma of the followed floor position)


@dataclass(frozen=True)
class View:
    name: str
    azimuth: float            # degrees about +Y from +Z (0: in front of a figure facing +Z; 90: its left)
    elevation: float          # degrees above the floor
    distance: float           # m from the target
    floor_radius: float       # m of checkerboard around the target
    span: float = 1.36        # picture heights ([-1, 1] = 2) per figure height: 1.36 -> the figure fills ~3/4


VIEWS = {
    1: (View("", 35.0, 15.0, 4.6, 4.0),),
    3: (View("front", 0.0, 8.0, 4.6, 4.0, 1.55), View("side", 90.0, 8.0, 4.6, 4.0, 1.55),
        View("top", 0.0, 90.0, 4.5, 2.0)),
}

# ffmpeg settings per output kind: (codec, output pixel format, extra output arguments).
_FFMPEG = {
    ".mp4": ("libx264", "yuv420p", ["-preset", "veryfast", "-movflags", "+faststart"]),
    # one palette per frame, generated and applied inside ffmpeg, so memory stays bounded; 64 colours
    # hold the picture (flat colours, anti-aliased edges) and make files ~25% smaller than 256
    ".gif": ("gif", "pal8", ["-filter_complex",
                             "split[a][b];[a]palettegen=stats_mode=single:max_colors=64:reserve_transparent=0[p];"
                             "[b][p]paletteuse=new=1:dither=none",
                             "-loop", "0"]),
}


def check_joints(joints, name: str = "joints") -> np.ndarray:
    """(T, 22, 3) finite float64 array from numpy or torch input, or ValueError naming the problem."""
    j = as_numeric_array(joints, name)
    if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"{name} must have shape (frames, {NUM_JOINTS}, 3), got {j.shape}")
    if j.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    j = j.astype(np.float64)
    if not np.all(np.isfinite(j)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(j))[0])
        raise ValueError(f"{name} contains NaN/inf (first at frame {bad[0]}, joint {bad[1]})")
    return j


def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64 or size > 4096 or size % 2:
        raise ValueError(f"size must be an even number of pixels in [64, 4096], got {size!r}")
    return int(size)


def check_views(views) -> int:
    if isinstance(views, bool) or views not in VIEWS:
        raise ValueError(f"views must be one of {sorted(VIEWS)}, got {views!r}")
    return int(views)


def check_title(title) -> str:
    """Any text; ValueError for strings that are not valid Unicode (bytes that did not decode as UTF-8
    reach Python as lone surrogates) or absurdly long ones."""
    title = str(title)
    try:
        title.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("title is not valid UTF-8 text (it holds bytes that do not decode)") from None
    if len(title) > 1000:
        raise ValueError(f"title is too long ({len(title)} characters, at most 1000)")
    return title


def follow_targets(joints: np.ndarray, fps: float) -> np.ndarray:
    """(T, 3) camera targets: the pelvis floor position smoothed over FOLLOW_SECONDS (centred), at
    the height of the middle of the figure's usual vertical extent."""

    xz = gaussian_filter1d(joints[:, 0, [0, 2]], sigma=max(FOLLOW_SECONDS * fps, 1e-3), axis=0, mode="nearest")
    top = float(np.percentile(joints[..., 1].max(axis=1), 95))
    return np.stack([xz[:, 0], np.full(len(xz), max(top, 0.5) / 2), xz[:, 1]], axis=1)


class _Camera:
    def __init__(self, view: View, height: float):
        az, el = np.deg2rad(view.azimuth), np.deg2rad(view.elevation)
        self.back = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        forward = -self.back
        hint = np.array([0.0, 0.0, 1.0]) if view.elevation > 89 else np.array([0.0, 1.0, 0.0])
        self.right = np.cross(forward, hint)
        self.right /= np.linalg.norm(self.right)
        self.up = np.cross(self.right, forward)
        self.forward = forward
        self.distance = view.distance
        # the figure's vertical extent (plus margins) spans the picture's height [-1, 1]; from above,
        # the picture spans 3 m of floor
        self.focal = 2 * view.distance / (view.span * max(height, 1.0)) if view.elevation < 89 else view.distance / 1.5

    def project(self, points: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 3) world points -> (..., 2) picture coordinates (y up, [-1, 1] vertically), depth (m)."""
        d = points - (target + self.distance * self.back)
        depth = d @ self.forward
        safe = np.maximum(depth, 1e-3)
        xy = np.stack([d @ self.right, d @ self.up], axis=-1) * (self.focal / safe)[..., None]
        return xy, depth


def _floor_tiles(target: np.ndarray, radius: float):
    """Tile corners (n, 4, 3) within `radius` of the target, their shade index and fade (0..1)."""
    n = int(np.ceil(radius / TILE)) + 1
    ix = np.floor(target[0] / TILE) + np.arange(-n, n + 1)
    iz = np.floor(target[2] / TILE) + np.arange(-n, n + 1)
    gx, gz = np.meshgrid(ix, iz, indexing="ij")
    gx, gz = gx.ravel(), gz.ravel()
    dist = np.hypot((gx + 0.5) * TILE - target[0], (gz + 0.5) * TILE - target[2])
    keep = dist < radius
    gx, gz, dist = gx[keep], gz[keep], dist[keep]
    corners = np.stack([np.stack([gx + a, np.zeros_like(gx), gz + b], -1) * TILE
                        for a, b in ((0, 0), (1, 0), (1, 1), (0, 1))], axis=1)
    fade = np.clip((radius - dist) / (0.35 * radius), 0.0, 1.0)
    return corners, ((gx + gz) % 2).astype(int), fade


def _bone_colour(child: int):
    return LEFT if child in LEFT_JOINTS else RIGHT if child in RIGHT_JOINTS else CENTRE


class SkeletonRenderer:
    """Draws frames of joints (T, 22, 3) (grounded, Y up, metres). `frames()` yields RGBA buffers."""

    def __init__(self, joints, title: str = "", size: int = DEFAULT_SIZE, views: int = 1, fps: float = FPS):
        self.joints = check_joints(joints)
        self.size, self.views = check_size(size), VIEWS[check_views(views)]
        self.title_text = check_title(title)
        self.width, self.height = self.size * len(self.views), self.size
        self.dpi = 100.0
        self.fig = Figure(figsize=(self.width / self.dpi, self.height / self.dpi), dpi=self.dpi,
                          facecolor=BACKGROUND)
        self.canvas = FigureCanvasAgg(self.fig)
        self.px = self.size / 480.0                        # scale of strokes and text
        pt = 72.0 / self.dpi                               # points per pixel
        self.title = None
        band = 0.0
        if self.title_text.strip():
            font_px = 20 * self.px
            chars = max(10, int(self.width / (0.55 * font_px)))
            lines = textwrap.wrap(self.title_text, chars, max_lines=3, placeholder=" ...") or [self.title_text[:chars]]
            band = (len(lines) * 1.35 + 0.9) * font_px / self.height
            self.title = self.fig.text(0.5, 1 - band / 2, "\n".join(lines), ha="center", va="center",
                                       fontsize=font_px * pt, color=(0.1, 0.1, 0.12), parse_math=False,
                                       linespacing=1.2)
        self.band = band
        self.targets = follow_targets(self.joints, fps)
        extent = float(np.percentile(self.joints[..., 1].max(axis=1), 95))
        self.panels = []
        for i, view in enumerate(self.views):
            ax = self.fig.add_axes((i / len(self.views), 0.0, 1 / len(self.views), 1 - band))
            aspect = (self.width / len(self.views)) / (self.height * (1 - band))
            ax.set_xlim(-aspect, aspect)
            ax.set_ylim(-1, 1)
            ax.set_axis_off()
            ax.set_facecolor(BACKGROUND)
            cam = _Camera(view, extent)
            floor = PolyCollection([], edgecolors="none", zorder=1)
            path = LineCollection([], colors=[PATH_COLOUR], linewidths=2.2 * self.px * pt, alpha=0.85, zorder=2,
                                  capstyle="round")
            shadow = PolyCollection([], facecolors=[(0, 0, 0, 0.12)], edgecolors="none", zorder=3)
            bones = LineCollection([], linewidths=9 * self.px * pt, capstyle="round", zorder=4)
            head = PolyCollection([], zorder=6, edgecolors="white", linewidths=1.5 * self.px * pt)
            for artist in (floor, path, shadow, bones, head):
                ax.add_collection(artist)
            dots = ax.scatter(np.zeros(NUM_JOINTS - 1), np.zeros(NUM_JOINTS - 1), zorder=5,
                              s=(12 * self.px * pt) ** 2, linewidths=1.0 * self.px * pt, edgecolors="white")
            if view.name:
                ax.text(0.04, 0.95, view.name, transform=ax.transAxes, fontsize=14 * self.px * pt,
                        color=(0.35, 0.35, 0.4), va="top", parse_math=False)
            self.panels.append(dict(view=view, cam=cam, aspect=aspect, floor=floor, path=path, shadow=shadow,
                                    bones=bones, dots=dots, head=head))

    def _draw_panel(self, p: dict, t: int) -> None:
        cam, view, target = p["cam"], p["view"], self.targets[t]
        j = self.joints[t]
        # floor
        corners, shade, fade = _floor_tiles(target, view.floor_radius)
        xy, depth = cam.project(corners, target)
        ok = (depth > 0.2).all(axis=1)
        base = np.array(BACKGROUND)
        tone = np.array(TILE_SHADES)[shade[ok]][:, None] * np.ones(3)
        colour = base + (tone - base) * fade[ok][:, None]
        p["floor"].set_verts(list(xy[ok]))
        p["floor"].set_facecolor(colour)
        # path so far
        trail = np.concatenate([self.joints[:t + 1, 0, [0]], np.full((t + 1, 1), 0.004),
                                self.joints[:t + 1, 0, [2]]], 1)
        near = np.hypot(trail[:, 0] - target[0], trail[:, 2] - target[2]) < view.floor_radius
        txy, tdepth = cam.project(trail, target)
        seg_ok = near[1:] & near[:-1] & (tdepth[1:] > 0.2) & (tdepth[:-1] > 0.2)
        p["path"].set_segments(list(np.stack([txy[:-1], txy[1:]], 1)[seg_ok]))
        # shadow
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ring = np.stack([j[0, 0] + 0.28 * np.cos(ang), np.full_like(ang, 0.002), j[0, 2] + 0.22 * np.sin(ang)], 1)
        sxy, sdepth = cam.project(ring, target)
        p["shadow"].set_verts([sxy] if (sdepth > 0.2).all() else [])
        # bones, far to near
        pts, pdepth = cam.project(j, target)
        children = np.arange(1, NUM_JOINTS)
        order = children[np.argsort(-(pdepth[children] + pdepth[list(PARENTS[1:])]))]
        p["bones"].set_segments([pts[[PARENTS[c], c]] for c in order])
        p["bones"].set_color([_bone_colour(c) for c in order])
        body = [k for k in np.argsort(-pdepth) if k != HEAD]
        p["dots"].set_offsets(pts[body])
        p["dots"].set_facecolor([_bone_colour(k) if k else CENTRE for k in body])
        r = 0.1 * cam.focal / max(pdepth[HEAD], 0.2)
        p["head"].set_verts([pts[HEAD] + r * np.stack([np.cos(ang), np.sin(ang)], 1)])
        p["head"].set_facecolor([CENTRE])

    def frames(self, progress: bool = False) -> Iterator[np.ndarray]:
        """Yield the canvas's RGBA buffer (height, width, 4) per frame: a view, valid until the next one."""

        for t in tqdm(range(len(self.joints)), desc="render", unit="frame", disable=not progress, leave=False):
            for p in self.panels:
                self._draw_panel(p, t)
            self.canvas.draw()
            yield np.asarray(self.canvas.buffer_rgba())


def render_frames(joints, title: str = "", size: int = DEFAULT_SIZE, views: int = 1, fps: float = FPS,
                  progress: bool = False) -> Iterator[np.ndarray]:
    """Yield one RGB frame (size, size * views, 3) uint8 per frame of joints (T, 22, 3); each a fresh array."""
    for rgba in SkeletonRenderer(joints, title, size, views, fps).frames(progress):
        yield np.ascontiguousarray(rgba[..., :3])


def render_motion(joints, out_path: str | Path, title: str = "", fps: float = FPS, progress: bool = True,
                  size: int = DEFAULT_SIZE, views: int = 1) -> Path:
    """Render joints (T, 22, 3) (Y-up metres, floor at y = 0) to `out_path` (.mp4 or .gif) at `fps`.

    size: picture height and width per view in pixels (even); views: 1, or 3 (front, side, top side by
    side). The file is written to a locked temporary name and renamed when complete; temporaries left
    by a killed render of the same file are removed first."""

    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    if ext not in VIDEO_FORMATS:
        raise ValueError(f"output {str(out_path)!r} must end in .mp4 or .gif")
    check_fps(fps)
    renderer = SkeletonRenderer(joints, title, size, views, fps)
    codec, pix_fmt, extra = _FFMPEG[ext]
    with atomic_path(out_path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (renderer.width, renderer.height), pix_fmt_in="rgba", pix_fmt_out=pix_fmt, fps=float(fps),
            codec=codec, quality=5 if ext == ".mp4" else None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-f", ext[1:]] + extra)
        writer.send(None)   # start ffmpeg
        try:
            for rgba in renderer.frames(progress):
                writer.send(rgba)   # ffmpeg drops alpha in its own process
        finally:
            writer.close()
    return out_path
