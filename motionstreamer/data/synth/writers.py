"""Dataset writers: the HumanML3D-272 layout, BABEL-stream pairs and the BABEL-272 layout of their
segments (`make_dataset`); steered locomotion for goal training (`make_steered_clips`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from motionstreamer import FPS
from motionstreamer.representation.normalize import compute_mean_std
from motionstreamer.utils import atomic_dir, atomic_save_npy, atomic_write_json, atomic_write_text

from .actions import ACTIONS, FINAL_ONLY
from .assembly import Clip, generate_clip, generate_composite, generate_sequence, generate_steered_clip
from .captions import SUBJECTS, tokens_for, verb_phrases

VERSION = 2


def _text_line(caption: str, start: float = 0.0, end: float = 0.0) -> str:
    return f"{caption}#{tokens_for(caption)}#{start:.4f}#{end:.4f}" if (start or end) else \
        f"{caption}#{tokens_for(caption)}#0.0#0.0"


def _write_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "\n".join(lines) + "\n")


def _split(ids: list[str], rng, fractions=(0.8, 0.1, 0.1), names=("train", "val", "test")) -> dict:
    """Random split with every part non-empty when there are enough ids."""
    order = [ids[k] for k in rng.permutation(len(ids))]
    n = len(order)
    sizes = [int(round(f * n)) for f in fractions[1:]]
    if n >= len(fractions):
        sizes = [max(1, s) for s in sizes]
    out, pos = {}, 0
    for name, size in zip(names[1:], sizes):
        out[name] = sorted(order[pos:pos + size])
        pos += size
    out[names[0]] = sorted(order[pos:])
    return out


def make_dataset(out: str | Path, clips: int, seed: int = 0, stream_pairs: int = 0,
                 min_seconds: float = 2.0, max_seconds: float = 10.0, progress: bool = True,
                 composite_fraction: float = 0.1, overwrite: bool = False) -> dict:
    """Write a synthetic dataset in the HumanML3D-272 layout.

    `out` must not exist or be empty; with overwrite=True a folder in the way (a previous dataset) is
    replaced as a whole. The dataset is written beside it and renamed into place once complete
    (utils.atomic_dir), so a failed or interrupted run leaves `out` as it was and nothing is mixed.

    out/motion_data/<id>.npy (T, 272) float32 · out/texts/<id>.txt lines `caption#tokens#start#end`
    (0.0#0.0 = whole clip; composite clips add sub-captions with their seconds) · out/split/{train,val,
    test}.txt (80/10/10) · out/mean_std/{Mean,Std}.npy (group-averaged Std over the train clips) ·
    out/synth_meta.json (action label per id, seed, version, captions, segments).

    With stream_pairs > 0, also sequences of 2-4 actions: out/babel_stream/{train,val}_stream/seq_<n>.npy
    (motion A+B) with {train,val}_stream_text/seq_<n>.txt lines `A#A_tokens*B#B_tokens#A_frames`, and
    the segments themselves in the BABEL-272 layout: out/babel_272/{motion_data,texts,split/{train,val}.txt,
    t2m_babel_mean_std} (Mean/Std over HumanML3D train + BABEL train, as the t2m_babel statistics).
    """

    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if stream_pairs < 0:
        raise ValueError(f"stream_pairs must be >= 0, got {stream_pairs}")
    if not 0.5 <= min_seconds <= max_seconds <= 60.0:
        raise ValueError(f"need 0.5 <= min_seconds <= max_seconds <= 60, got {min_seconds}, {max_seconds}")
    if not 0.0 <= composite_fraction <= 1.0:
        raise ValueError(f"composite_fraction must be in [0, 1], got {composite_fraction}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir())[:4] if out.is_dir() else []
    if held and not overwrite:
        raise ValueError(f"{out} is not empty (it holds {', '.join(held)}...): writing a dataset there would mix "
                         f"two; choose another --out, or replace it with --overwrite")
    with atomic_dir(out) as tmp:
        return _write_dataset(tmp, clips, seed, stream_pairs, min_seconds, max_seconds, progress, composite_fraction)


def _write_dataset(out: Path, clips: int, seed: int, stream_pairs: int, min_seconds: float, max_seconds: float,
                   progress: bool, composite_fraction: float) -> dict:
    rng = np.random.default_rng(seed)
    names = list(ACTIONS)
    meta = {"seed": seed, "version": VERSION, "fps": FPS, "actions": {}, "captions": {}, "segments": {},
            "action_kinds": names}
    feats = {}
    # balanced classes: the actions in a fresh random order every round
    order = np.concatenate([rng.permutation(len(names)) for _ in range(clips // len(names) + 1)])[:clips]
    for i in tqdm(range(clips), desc="synth clips", disable=not progress):
        name = f"{i:06d}"
        action = names[int(order[i])]
        if i >= len(names) and rng.uniform() < composite_fraction and max_seconds >= 4.0:
            second = [a for a in names if a != action and a not in FINAL_ONLY]
            first = action if action not in FINAL_ONLY else str(rng.choice(second))
            pair = [first, str(rng.choice([a for a in names if a != first]))]
            clip = generate_composite(pair, rng, max(min_seconds, 4.0), max_seconds, name)
        else:
            clip = generate_clip(action, rng, min_seconds, max_seconds, name)
        x = clip.features()
        atomic_save_npy(out / "motion_data" / f"{name}.npy", x)
        lines = [_text_line(c) for c in clip.captions] + [_text_line(c, s, e) for c, s, e in clip.sub_captions]
        _write_lines(out / "texts" / f"{name}.txt", lines)
        meta["actions"][name] = clip.action
        meta["captions"][name] = clip.captions
        meta["segments"][name] = [[a, s, e] for a, s, e in clip.segments]
        feats[name] = x
    split = _split(list(feats), rng)
    for k, v in split.items():
        _write_lines(out / "split" / f"{k}.txt", v)
    mean, std = compute_mean_std([feats[k] for k in split["train"]], split["train"])
    atomic_save_npy(out / "mean_std" / "Mean.npy", mean.astype(np.float32))
    atomic_save_npy(out / "mean_std" / "Std.npy", std.astype(np.float32))
    meta["split_sizes"] = {k: len(v) for k, v in split.items()}
    if stream_pairs:
        meta.update(write_stream(out, stream_pairs, rng, [feats[k] for k in split["train"]], progress=progress))
    atomic_write_json(out / "synth_meta.json", meta)
    return meta


def write_stream(out: Path, pairs: int, rng, hml_train: list, progress: bool = True) -> dict:
    """Sequences of 2-4 actions -> BABEL-stream pairs (A_i, A_i+1) and BABEL-272 segments.

    Every segment is a multiple of 4 frames long (so A_frames // 4 latents cover A exactly), 2-4.5 s
    (the readers drop segments under 60 frames; a pair stays under the 78-latent window). All pairs and
    segments of one sequence land in the same split.
    """

    out = Path(out)
    names = list(ACTIONS)
    stream_info, babel_actions, babel_split = {}, {}, {"train": [], "val": []}
    babel_train = []
    written, seq = 0, 0
    bar = tqdm(total=pairs, desc="synth stream pairs", disable=not progress)
    while written < pairs:
        k = int(min(rng.integers(2, 5), pairs - written + 1))        # k actions give k - 1 pairs
        acts = []
        for i in range(k):
            pool = [a for a in names if (not acts or a != acts[-1]) and (i == k - 1 or a not in FINAL_ONLY)]
            acts.append(str(rng.choice(pool)))
        lengths = [int(rng.integers(15, 34)) * 4 for _ in acts]          # 60..132 frames
        joints, rotations, segs = generate_sequence(acts, lengths, rng)
        clip = Clip("", "+".join(acts), joints, rotations, [])
        split = "val" if seq % 10 == 1 else "train"        # the 2nd, 12th, ... sequence: val
        caps = [[f"{SUBJECTS[int(rng.integers(len(SUBJECTS)))]} {v}"
                 for v in verb_phrases(s["action"], s["params"], rng)]
                for s in segs]
        seg_ids = []
        for i, s in enumerate(segs):                                    # BABEL-272: one clip per segment
            sid = f"{seq:05d}{i}"
            x = clip.features(s["start"], s["end"])
            atomic_save_npy(out / "babel_272" / "motion_data" / f"{sid}.npy", x)
            chosen = [caps[i][j] for j in rng.permutation(len(caps[i]))[:3]]
            _write_lines(out / "babel_272" / "texts" / f"{sid}.txt", [_text_line(c) for c in chosen])
            babel_actions[sid] = s["action"]
            babel_split[split].append(sid)
            seg_ids.append(sid)
            if split == "train":
                babel_train.append(x)
        for i in range(len(segs) - 1):                                  # BABEL-stream: consecutive pairs
            a, b = segs[i], segs[i + 1]
            pid = f"seq_{written}"
            x = clip.features(a["start"], b["end"])
            a_frames = a["end"] - a["start"]
            atomic_save_npy(out / "babel_stream" / f"{split}_stream" / f"{pid}.npy", x)
            lines = []
            for ja, jb in zip(rng.permutation(len(caps[i]))[:2], rng.permutation(len(caps[i + 1]))[:2]):
                ta, tb = caps[i][ja], caps[i + 1][jb]
                lines.append(f"{ta}#{tokens_for(ta)}*{tb}#{tokens_for(tb)}#{a_frames}")
            _write_lines(out / "babel_stream" / f"{split}_stream_text" / f"{pid}.txt", lines)
            stream_info[pid] = {"split": split, "actions": [a["action"], b["action"]], "a_frames": a_frames,
                                "frames": int(x.shape[0]), "segments": [seg_ids[i], seg_ids[i + 1]]}
            written += 1
            bar.update(1)
        seq += 1
    bar.close()
    for k, v in babel_split.items():
        _write_lines(out / "babel_272" / "split" / f"{k}.txt", sorted(v))
    mean, std = compute_mean_std(list(hml_train) + babel_train)     # t2m_babel: both datasets
    atomic_save_npy(out / "babel_272" / "t2m_babel_mean_std" / "Mean.npy", mean.astype(np.float32))
    atomic_save_npy(out / "babel_272" / "t2m_babel_mean_std" / "Std.npy", std.astype(np.float32))
    return {"stream": stream_info, "babel_actions": babel_actions}


def make_steered_clips(out: str | Path, clips: int, seed: int = 0, min_seconds: float = 2.0, max_seconds: float = 10.0,
                       progress: bool = True, overwrite: bool = False, pursuit: float = 0.0) -> None:
    """Steered locomotion clips (assembly.generate_steered_clip: turns the captions do not name), for
    goal training only, in the HumanML3D-272 layout without statistics (normalise them with the main
    dataset's): out/motion_data/<id>.npy, out/texts/<id>.txt, out/split/train.txt (every clip), written
    atomically like make_dataset. `pursuit`: the share of clips that head for a target point."""
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty: choose another folder, or replace it with overwrite=True")
    rng = np.random.default_rng([seed, 27])
    with atomic_dir(out) as tmp:
        names = []
        for i in tqdm(range(clips), desc="steered clips", disable=not progress):
            name = f"steer_{i:06d}"
            clip = generate_steered_clip(rng, min_seconds, max_seconds, name, pursuit=bool(rng.uniform() < pursuit))
            atomic_save_npy(tmp / "motion_data" / f"{name}.npy", clip.features())
            _write_lines(tmp / "texts" / f"{name}.txt", [_text_line(c) for c in clip.captions])
            names.append(name)
        _write_lines(tmp / "split" / "train.txt", names)
