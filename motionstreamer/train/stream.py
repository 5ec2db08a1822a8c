"""Streaming-model data: BABEL-stream A/B pairs as (history A, target B) latent examples.

Layout (dataset_TM_train_motionstreamer.py of the original): one latent file per pair holding the
latents of the concatenated motion A+B (end latent appended), and a text file whose lines read
`A_text#A_tokens*B_text#B_tokens#A_frames`. The caption trained on is B's; A's first A_frames // 4
latents are the history; the loss covers B's latents only (see train/t2m.py).

What the original left out and we chose: the history is capped so that history + B fits the
78-token window (the oldest history latents are dropped first, as the streaming runtime slides its
window); pairs are never edge-dropped (their first latent must stay aligned with A_frames).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from motionstreamer import FRAMES_PER_LATENT
from motionstreamer.train.t2m import LatentExample, motion_root_path
from motionstreamer.utils import load_npy


def parse_stream_line(line: str, where: str) -> tuple[str, str, int]:
    """`A_text#A_tokens*B_text#B_tokens#A_frames` -> (A_text, B_text, A_frames)."""
    if "*" not in line:
        raise ValueError(f"{where}: expected 'A_text#A_tokens*B_text#B_tokens#A_frames', no '*' found")
    a_part, b_part = line.split("*", 1)
    b_fields = b_part.split("#")
    if len(b_fields) < 3:
        raise ValueError(f"{where}: B part needs 'B_text#B_tokens#A_frames', got {b_part!r}")
    try:
        a_frames = int(float(b_fields[-1]))
    except ValueError:
        raise ValueError(f"{where}: A_frames {b_fields[-1]!r} is not a number") from None
    if a_frames < 0:
        raise ValueError(f"{where}: A_frames must be >= 0, got {a_frames}")
    return a_part.split("#")[0], b_fields[0], a_frames


def load_stream_examples(stream_root: str | Path, latent_dir: str | Path, split: str = "train",
                         max_latents: int = 78, unit_length: int = FRAMES_PER_LATENT, text_dir: str | None = None,
                         paths: bool = False) -> list[LatentExample]:
    """paths=True also reads each pair's motion (stream_root/<split>_stream/<name>.npy) for its root path
    at the latent boundaries (goals, train/goals.py)."""
    stream_root, latent_dir = Path(stream_root), Path(latent_dir)
    tdir = stream_root / (text_dir or f"{split}_stream_text")
    if not tdir.is_dir():
        raise FileNotFoundError(f"{tdir}: no stream text folder (expected BABEL-stream layout)")
    examples = []
    for txt in sorted(tdir.glob("*.txt")):
        lat_path = latent_dir / f"{txt.stem}.npy"
        if not lat_path.exists():
            raise FileNotFoundError(f"{lat_path}: no latents for stream pair {txt.stem!r}; run encode-latents")
        try:
            lat = load_npy(lat_path)
        except OSError as e:
            raise ValueError(f"{lat_path}: cannot read ({e.strerror or e})") from None
        if lat.ndim != 2 or len(lat) == 0 or not np.all(np.isfinite(lat)):
            raise ValueError(f"{lat_path}: expected finite (L, latent_dim) latents, got shape {lat.shape}")
        root = motion_root_path(stream_root / f"{split}_stream" / f"{txt.stem}.npy", len(lat), unit_length) \
            if paths else None
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            if not line.strip():
                continue
            a_text, b_text, a_frames = parse_stream_line(line.strip(), f"{txt}:{n}")
            if not b_text:
                continue
            a_len = a_frames // unit_length
            if a_len >= len(lat):
                raise ValueError(f"{txt}:{n}: A has {a_len} latents but {lat_path} holds only {len(lat)}")
            a, b = lat[:a_len], lat[a_len:]
            b = b[: max_latents - 1]
            first = max(0, len(a) - (max_latents - 1 - len(b)))
            a = a[first:]
            examples.append(LatentExample(b_text, a, b, edge_drop=False, ends=a_len + len(b) == len(lat),
                                          path=None if root is None else root[first:a_len + len(b) + 1],
                                          history_caption=a_text))
    if not examples:
        raise ValueError(f"{tdir}: no stream pairs found")
    return examples
