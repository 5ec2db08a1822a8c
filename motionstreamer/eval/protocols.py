"""Evaluation protocols: gt (real vs real), tae (reconstruction), t2m (generation per caption),
stream (prompt sequences with transitions). Each repeat draws the test set afresh as the reference
loaders do, computes the metrics, and the summary reports mean and 95% CI over repeats.

The draw (`humanml3d_272/dataset_eval_t2m.py`, `dataset_eval_tae.py`): one sample per motion entry
(whole clips with their whole-clip captions, sub-caption crops as entries of their own; 60 <= frames
< 300), a random caption, a length cut to a multiple of 4 that is, 1 time in 3, one more 4-frame unit
shorter, at a random offset; shuffled into batches of 32 with the last partial batch dropped.
R-precision ranks the 32 motions of a batch. Features are normalised with the dataset's Mean/Std
(what the evaluator was trained on).

Generation is a parameter: `GenerateFn(captions, frame_lengths, seed) -> [de-normalised (T_i, 272)]`
for t2m and `StreamGenerateFn(prompt_lists, frame_length_lists, seed) -> [(features (T, 272),
boundaries)]` for stream, where boundaries[i] is the first frame of prompt i + 1. `runtime_generator`
and `runtime_stream_generator` build them from a model bundle with the streaming runtime.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.data.babel import BABELStreamDataset
from motionstreamer.data.humanml3d import HumanML3D272Dataset, load_mean_std, load_motions
from motionstreamer.eval import metrics as M
from motionstreamer.models.goal import wrap_angle
from motionstreamer.representation.features import recover_joints
from motionstreamer.runtime.batch import run_schedules
from motionstreamer.runtime.engine import GenerationConfig
from motionstreamer.train.goals import frame_root_path

GenerateFn = Callable[[list, list, int], list]
StreamGenerateFn = Callable[[list, list, int], list]

METRIC_LABELS = {
    "fid": "FID", "r_precision_top1": "R@1", "r_precision_top2": "R@2", "r_precision_top3": "R@3",
    "matching_score": "MM-Dist", "diversity": "Diversity", "multimodality": "MultiModality",
    "mpjpe_mm": "MPJPE (mm)", "transition_fid": "Transition FID", "peak_jerk": "Peak Jerk", "auj": "AUJ",
    "foot_skating": "Foot skating ratio", "foot_skating_clean": "Foot skating (--clean-feet)",
    "foot_skating_causal": "Foot skating (causal clean-up)",
    "floor_penetration_mm": "Floor penetration (mm)",
    "goal_distance_median": "Goal distance at deadline, median (m)", "goal_distance_p90": "Goal distance p90 (m)",
    "goal_heading_error_deg": "Goal facing error, median (deg)", "goal_success": "Goals reached (<= 0.3 m)",
    "goal_success_band": "Goals 2-5 m away reached", "goal_success_band_walking": "... at walking pace",
    "goal_distance_band_median": "Goal distance 2-5 m goals, median (m)",
}


def _joints_of(normalised: list, lengths, mean: np.ndarray, std: np.ndarray) -> list:
    """Joints (T, 22, 3) of normalised feature rows (cropped to their lengths), for the foot metrics."""

    return [recover_joints(np.asarray(m[:int(n)], np.float64) * std + mean) for m, n in zip(normalised, lengths)]


# ----------------------------------------------------------------------------- the test set
@dataclass
class EvalSet:
    """Entries (normalised motion (T, 272), captions or None) and the statistics that normalised them."""
    motions: list
    captions: list
    mean: np.ndarray
    std: np.ndarray
    unit_length: int = FRAMES_PER_LATENT
    source: str = ""

    @classmethod
    def load(cls, root: str | Path, split: str = "test", text: bool = True, mean_std_dir=None,
             min_frames: int = 60, max_frames: int = 300, lenient: bool = False) -> "EvalSet":
        """text=True: the t2m loader (captioned entries); text=False: the TAE loader (every clip of
        the split in [min_frames, max_frames), no captions)."""

        root = Path(root)
        if text:
            ds = HumanML3D272Dataset(root, split, min_frames=min_frames, max_frames=max_frames, lenient=lenient,
                                     mean_std_dir=mean_std_dir, too_long="drop")
            motions = [m for _, m, _ in ds.entries]
            captions = [[c.caption for c in caps] for _, _, caps in ds.entries]
            mean, std = ds.mean, ds.std
        else:
            mean, std = load_mean_std(mean_std_dir or root / "mean_std")
            clips = load_motions(root, split, normalize=True, mean_std_dir=mean_std_dir, lenient=lenient)
            motions = [x for x in clips.values() if min_frames <= len(x) < max_frames]
            captions = [None] * len(motions)
        if not motions:
            raise ValueError(f"{root}: split {split!r} has no clips of {min_frames} to {max_frames - 1} frames")
        return cls(motions, captions, np.asarray(mean, np.float32), np.asarray(std, np.float32),
                   source=f"{root} ({split})")

    def __len__(self) -> int:
        return len(self.motions)

    def draw(self, rng: np.random.Generator, batch: int = 32) -> list[dict]:
        """One pass: shuffled entries, random caption and crop each, full batches only.
        Batches: motion (B, T_max, 272) float32 zero-padded, lengths (B,), captions (list or None)."""
        if len(self) < batch:
            raise ValueError(f"{self.source}: {len(self)} entries, fewer than one batch of {batch}")
        u = self.unit_length
        out = []
        order = rng.permutation(len(self))
        for s in range(0, len(order) - batch + 1, batch):
            rows, caps = [], []
            for e in order[s:s + batch]:
                x, entry_caps = self.motions[e], self.captions[e]
                caps.append(entry_caps[int(rng.integers(len(entry_caps)))] if entry_caps else None)
                double = int(rng.integers(3)) == 2
                n = (len(x) // u - (1 if double else 0)) * u
                off = int(rng.integers(0, len(x) - n + 1))
                rows.append(x[off:off + n])
            lengths = torch.tensor([len(r) for r in rows])
            motion = torch.zeros(batch, int(lengths.max()), rows[0].shape[1])
            for i, r in enumerate(rows):
                motion[i, :len(r)] = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))
            out.append({"motion": motion, "lengths": lengths, "captions": caps if caps[0] is not None else None})
        return out


@dataclass
class StreamCase:
    """One prompt sequence: prompts, frames per prompt, and the ground-truth motion (normalised)."""
    prompts: list
    lengths: list
    motion: np.ndarray


def load_stream_cases(root: str | Path, split: str = "val", mean=None, std=None,
                      lenient: bool = False) -> list[StreamCase]:
    """BABEL-stream pairs -> two-prompt cases [A, B] with A_frames and the rest; a random line of each
    pair's text file (fixed seed)."""

    ds = BABELStreamDataset(root, split, mean=mean, std=std, lenient=lenient, captions="random", seed=0)
    cases = []
    for i in range(len(ds)):
        it = ds[i]
        if not it["text_a"]:
            continue
        cases.append(StreamCase([it["text_a"], it["text_b"]], [it["a_length"], it["length"] - it["a_length"]],
                                it["motion"]))
    if not cases:
        raise ValueError(f"{root}: split {split!r} has no stream pairs with both texts")
    return cases


# ----------------------------------------------------------------------------- results
@dataclass
class ProtocolResult:
    protocol: str
    values: dict = field(default_factory=dict)     # metric -> [value per repeat]
    info: dict = field(default_factory=dict)

    def add(self, **metrics) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(float(v))

    def summary(self) -> dict:
        out = {}
        for k, vs in self.values.items():
            mean, ci = M.mean_and_ci95(vs)
            out[k] = {"mean": mean, "ci95": ci, "values": vs}
        return out

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "metrics": self.summary(), "info": self.info}


def format_table(result: ProtocolResult) -> str:
    """Console table: metric | mean ± 95% CI | repeats."""
    def label(k: str) -> str:
        for prefix, name in (("real_", "Real "), ("text_only_", "Text only: ")):
            if k.startswith(prefix):
                return name + label(k[len(prefix):])
        return METRIC_LABELS.get(k, k)

    rows = [(label(k), f"{s['mean']:.4f} ± {s['ci95']:.4f}", str(len(s["values"])))
            for k, s in result.summary().items()]
    head = ("metric", "mean ± 95% CI", "repeats")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    line = "-+-".join("-" * x for x in w)
    fmt = lambda r: " | ".join(c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([f"{result.protocol} ({result.info.get('source', '')})", fmt(head), line] + [fmt(r) for r in rows])


# ----------------------------------------------------------------------------- helpers
def _diversity_pairs(n: int) -> int | None:
    """The reference: 300 pairs, 100 when there are at most 300 samples (None: too few)."""
    return 300 if n > 300 else 100 if n > 100 else None


def _retrieval_metrics(text_emb, motion_emb, batch: int, rng, prefix: str = "") -> dict:
    r = M.r_precision(text_emb, motion_emb, batch=batch, top_k=3)
    out = {f"{prefix}r_precision_top{k + 1}": r[k] for k in range(3)}
    out[f"{prefix}matching_score"] = M.matching_score(text_emb, motion_emb)
    pairs = _diversity_pairs(len(motion_emb))
    if pairs:
        out[f"{prefix}diversity"] = M.diversity(motion_emb, pairs, seed=rng)
    return out


def _progress(it, desc: str, on: bool):
    if not on:
        return it
    return tqdm(it, desc=desc, dynamic_ncols=True, leave=False)


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([r.shape[0] for r in rows])
    out = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[1])
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out, lengths


def _to_tensor(x) -> torch.Tensor:
    return x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))


def _normalise_generated(feats: list, mean: np.ndarray, std: np.ndarray, max_frames: int,
                         what: str) -> list[torch.Tensor]:
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    out = []
    for i, f in enumerate(feats):
        f = _to_tensor(f)
        if f.ndim != 2 or f.shape[1] != mean.shape[0]:
            raise ValueError(f"{what} returned features of shape {tuple(f.shape)} for item {i}; "
                             f"expected (frames, {mean.shape[0]})")
        if f.shape[0] == 0:
            raise ValueError(f"{what} returned no frames for item {i}")
        if not torch.isfinite(f).all():
            raise ValueError(f"{what} returned NaN/inf for item {i}")
        out.append(((f - mean_t) / std_t)[:max_frames])
    return out


# ----------------------------------------------------------------------------- protocols
@torch.no_grad()
def evaluate_gt(evaluator, evalset: EvalSet, repeats: int = 1, batch: int = 32, seed: int = 0,
                progress: bool = False) -> ProtocolResult:
    """Real vs real: retrieval metrics of the real (caption, motion) pairs of one draw, and FID between
    the motion embeddings of two independent draws (different captions, crops and batches)."""
    res = ProtocolResult("gt", info={"source": evalset.source, "batch": batch, "seed": seed, "entries": len(evalset)})
    for r in _progress(range(repeats), "gt repeats", progress):
        rng = np.random.default_rng([seed, r])
        first, second = evalset.draw(rng, batch), evalset.draw(rng, batch)
        et = torch.cat([evaluator.encode_text(b["captions"]) for b in first]).numpy()
        em = torch.cat([evaluator.encode_motion(b["motion"], b["lengths"]) for b in first]).numpy()
        em2 = torch.cat([evaluator.encode_motion(b["motion"], b["lengths"]) for b in second]).numpy()
        feet = M.foot_metrics([j for b in first
                               for j in _joints_of(b["motion"], b["lengths"], evalset.mean, evalset.std)])
        res.add(fid=M.fid(em, em2), **_retrieval_metrics(et, em, batch, rng), **feet)
    res.info["samples_per_repeat"] = len(first) * batch
    return res


def reconstruct(tae, motion: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """TAE round trip of a zero-padded batch. The TAE is causal (left-padded convolutions only), so the
    frames before a row's length do not depend on its padding: one batched call equals per-clip calls."""
    p = next(tae.parameters())
    z, mu, _ = tae.encode(motion.to(p.device, p.dtype), sample=sample, generator=generator)
    return tae.decode(z).float().cpu()


@torch.no_grad()
def evaluate_tae(evaluator, tae, evalset: EvalSet, repeats: int = 1, batch: int = 32, seed: int = 0,
                 sample: bool = True, progress: bool = False) -> ProtocolResult:
    """TAE reconstruction: pelvis-aligned MPJPE (mm, every frame of every clip weighted equally) on joints
    recovered from de-normalised features, and FID between evaluator embeddings of the real and the
    reconstructed clips. sample=True decodes the sampled z, as the original's `net(motion)`."""

    mean, std = torch.from_numpy(evalset.mean), torch.from_numpy(evalset.std)
    res = ProtocolResult("tae", info={"source": evalset.source, "batch": batch, "seed": seed, "entries": len(evalset),
                                      "latent": "sampled" if sample else "mean"})
    for r in _progress(range(repeats), "tae repeats", progress):
        rng = np.random.default_rng([seed, r])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        err, frames, em_real, em_rec = 0.0, 0, [], []
        for b in evalset.draw(rng, batch):
            x, lengths = b["motion"], b["lengths"]
            valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).float()[..., None]
            recon = reconstruct(tae, x, sample, gen) * valid
            for i, n in enumerate(lengths.tolist()):
                gt_j = recover_joints(x[i, :n].double() * std + mean)
                pr_j = recover_joints(recon[i, :n].double() * std + mean)
                err += float(M.mpjpe_per_frame(pr_j, gt_j).sum())
                frames += n
            em_real.append(evaluator.encode_motion(x, lengths))
            em_rec.append(evaluator.encode_motion(recon, lengths))
        res.add(fid=M.fid(torch.cat(em_real).numpy(), torch.cat(em_rec).numpy()), mpjpe_mm=err / frames * 1000.0)
    return res


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (n >= 2): a shifted random cycle order."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)      # each item takes the next one in a random cycle
    return perm


@torch.no_grad()
def evaluate_t2m(evaluator, evalset: EvalSet, generate: GenerateFn, repeats: int = 1, batch: int = 32,
                 seed: int = 0, max_frames: int = 300, mm_captions: int = 0, mm_repeats: int = 30,
                 mm_pairs: int = 10, progress: bool = False, shuffle_text: bool = False) -> ProtocolResult:
    """Generation for each test caption at its ground-truth length (frames), as `eval_t2m.py`: FID
    against the real motions of the same draw, retrieval metrics of (caption, generated) pairs, and the
    real pairs' metrics (prefixed real_). mm_captions > 0 adds MultiModality: that many captions
    generated mm_repeats times each, mm_pairs random pairs of repeats.

    shuffle_text: the random-text baseline. Each motion is generated from another caption of its
    batch (a random derangement) but scored against its own caption, so the retrieval metrics show
    how much of the score the text conditioning earns; FID still compares with the real motions."""
    res = ProtocolResult("t2m", info={"source": evalset.source, "batch": batch, "seed": seed, "entries": len(evalset),
                                      "shuffle_text": shuffle_text})
    for r in _progress(range(repeats), "t2m repeats", progress):
        rng = np.random.default_rng([seed, r])
        et, em_real, em_gen, batches, gen_joints = [], [], [], evalset.draw(rng, batch), []
        for k, b in enumerate(_progress(batches, "generate", progress)):
            captions = list(b["captions"])
            if shuffle_text:
                captions = [captions[j] for j in derangement(len(captions), rng)]
            feats = generate(captions, b["lengths"].tolist(), seed + 1_000_003 * r + 7919 * k)
            if len(feats) != len(b["captions"]):
                raise ValueError(f"the generator returned {len(feats)} motions for {len(b['captions'])} captions")
            gen, gen_len = _pad(_normalise_generated(feats, evalset.mean, evalset.std, max_frames, "the generator"))
            et.append(evaluator.encode_text(b["captions"]))
            em_real.append(evaluator.encode_motion(b["motion"], b["lengths"]))
            em_gen.append(evaluator.encode_motion(gen, gen_len))
            gen_joints += _joints_of(gen, gen_len, evalset.mean, evalset.std)
        et, em_real, em_gen = (torch.cat(v).numpy() for v in (et, em_real, em_gen))
        metrics = {"fid": M.fid(em_real, em_gen), **_retrieval_metrics(et, em_gen, batch, rng),
                   **_retrieval_metrics(et, em_real, batch, rng, prefix="real_"), **M.foot_metrics(gen_joints)}
        if mm_captions > 0:
            caps = [c for b in batches for c in b["captions"]][:mm_captions]
            lens = [n for b in batches for n in b["lengths"].tolist()][:mm_captions]
            reps = []
            for j in range(mm_repeats):
                feats = _normalise_generated(generate(caps, lens, seed + 97 * j + 1_000_003 * r + 13),
                                             evalset.mean, evalset.std, max_frames, "the generator")
                reps.append(evaluator.encode_motion(*_pad(feats)))
            metrics["multimodality"] = M.multimodality(torch.stack(reps, 1).numpy(), mm_pairs, seed=rng)
        res.add(**metrics)
    return res


@torch.no_grad()
def evaluate_stream(evaluator, cases: Sequence[StreamCase], generate: StreamGenerateFn, mean, std,
                    repeats: int = 1, batch: int = 32, seed: int = 0, transition_length: int = 60,
                    max_frames: int = 300, progress: bool = False) -> ProtocolResult:
    """Prompt sequences generated as one continuous stream each. Per repeat: the last segment of each
    generated sequence against its ground truth and caption (FID, R-precision, MM-Dist, Diversity);
    transitions (windows of transition_length frames around each prompt change): FID of evaluator
    embeddings of generated vs real windows, and Peak Jerk / Area Under Jerk (FlowMDM) of the generated
    windows against the mean jerk of the real sequences (the real windows' PJ/AUJ as real_*)."""

    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    if len(cases) < batch:
        raise ValueError(f"{len(cases)} stream cases, fewer than one batch of {batch}")
    real_joints = [recover_joints(torch.from_numpy(c.motion).double() * std_t + mean_t).numpy() for c in cases]
    gt_jerk = float(np.mean(np.concatenate([M.jerk_curve(j[None])[0] for j in real_joints if len(j) >= 4])))
    res = ProtocolResult("stream", info={"cases": len(cases), "batch": batch, "seed": seed,
                                         "transition_length": transition_length, "gt_jerk": gt_jerk})
    for r in _progress(range(repeats), "stream repeats", progress):
        rng = np.random.default_rng([seed, r])
        order = rng.permutation(len(cases))
        texts, seg_real, seg_gen, gen_joints = [], [], [], []
        win_real, win_gen, jwin_real, jwin_gen = [], [], [], []
        for k, s in enumerate(_progress(range(0, len(order) - batch + 1, batch), "generate", progress)):
            chunk = [cases[i] for i in order[s:s + batch]]
            outs = generate([c.prompts for c in chunk], [c.lengths for c in chunk], seed + 1_000_003 * r + 7919 * k)
            if len(outs) != len(chunk):
                raise ValueError(f"the stream generator returned {len(outs)} sequences for {len(chunk)}")
            for c, ci, (feats, bounds) in zip(chunk, order[s:s + batch], outs):
                g = _normalise_generated([feats], mean, std, 10**9, "the stream generator")[0]
                bounds = [int(x) for x in bounds]
                if len(bounds) != len(c.prompts) - 1 or any(not 0 < x < len(g) for x in bounds):
                    raise ValueError(f"the stream generator returned boundaries {bounds} for {len(c.prompts)} prompts "
                                     f"and {len(g)} frames")
                real_bounds = np.cumsum(c.lengths)[:-1].tolist()
                texts.append(c.prompts[-1])
                seg_real.append(torch.from_numpy(c.motion[real_bounds[-1]:][:max_frames]))
                seg_gen.append(g[bounds[-1]:][:max_frames])
                g_joints = recover_joints(g.double() * std_t + mean_t).numpy()
                gen_joints.append(g_joints)
                for rb, gb in zip(real_bounds, bounds):
                    wr = M.transition_windows(c.motion, [rb], transition_length)
                    wg = M.transition_windows(g.numpy(), [gb], transition_length)
                    if len(wr) and len(wg):
                        win_real.append(torch.from_numpy(wr[0]))
                        win_gen.append(torch.from_numpy(wg[0]))
                        jwin_real.append(M.transition_windows(real_joints[ci], [rb], transition_length)[0])
                        jwin_gen.append(M.transition_windows(g_joints, [gb], transition_length)[0])
        et = evaluator.encode_text(texts).numpy()
        em_real = evaluator.encode_motion(*_pad(seg_real)).numpy()
        em_gen = evaluator.encode_motion(*_pad(seg_gen)).numpy()
        metrics = {"fid": M.fid(em_real, em_gen), **_retrieval_metrics(et, em_gen, batch, rng),
                   **_retrieval_metrics(et, em_real, batch, rng, prefix="real_"), **M.foot_metrics(gen_joints)}
        if len(win_gen) >= 2:
            metrics["transition_fid"] = M.transition_fid(evaluator.encode_motion(*_pad(win_real)).numpy(),
                                                         evaluator.encode_motion(*_pad(win_gen)).numpy())
            jg = M.transition_jerk(np.stack(jwin_gen), gt_jerk)
            jr = M.transition_jerk(np.stack(jwin_real), gt_jerk)
            metrics.update(peak_jerk=jg["peak_jerk"], auj=jg["auj"], real_peak_jerk=jr["peak_jerk"], real_auj=jr["auj"])
        res.info["transitions_per_repeat"] = len(win_gen)
        res.add(**metrics)
    return res


GoalGenerateFn = Callable[[list, list, list, int], list]
GOAL_SUCCESS_M = 0.3                # "reached": within this distance of the goal at its deadline
GOAL_BAND_M = (2.0, 5.0)            # the goals the headline success rate is about
WALKING_SPEED_M_S = 1.6             # a goal reached at the clip's own pace no faster than this is a walking deadline


def crop_goal(normalised: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[float, float, float, float]:
    """The goal a crop of a real clip sets: where its root is at its last frame and its facing there,
    in the world its features recover to (as a stream's do: from the origin facing +Z before its first
    row, spec §2.2; a mid-clip crop's first row carries that frame's step and turn), and the crop's
    duration: (x, z, heading, seconds)."""
    x, z, heading = frame_root_path(np.asarray(normalised, np.float64) * std + mean)[-1]
    return float(x), float(z), float(heading), len(normalised) / FPS


@torch.no_grad()
def evaluate_goals(evaluator, evalset: EvalSet, generate: GoalGenerateFn, repeats: int = 1, batch: int = 32,
                   seed: int = 0, max_frames: int = 300, progress: bool = False) -> ProtocolResult:
    """Goals beside text on held-out clips. Each draw (the t2m protocol's: random caption and crop) gives
    every entry its own goal: where the crop's root ends, its facing there and its duration as the
    deadline (crop_goal). Each caption is generated at the crop's length twice with the same seed: with
    its goal (set from the first latent, held until the deadline) and without. Reported: the floor
    distance of the generated root to the goal at the deadline (median, p90), the facing error there
    (degrees, median), the share within GOAL_SUCCESS_M (all goals; goals GOAL_BAND_M away; those of them
    at walking pace), foot skating with goals, and text alignment with goals (FID, R-precision, MM-Dist)
    beside the same without goals (prefixed text_only_)."""
    res = ProtocolResult("goals", info={"source": evalset.source, "batch": batch, "seed": seed, "entries": len(evalset),
                                        "success_m": GOAL_SUCCESS_M, "band_m": list(GOAL_BAND_M),
                                        "walking_speed_m_s": WALKING_SPEED_M_S})
    for r in _progress(range(repeats), "goal repeats", progress):
        rng = np.random.default_rng([seed, r])
        et, em_real, em_goal, em_text, joints = [], [], [], [], []
        dist, heading_err, span, speed = [], [], [], []
        for k, b in enumerate(_progress(evalset.draw(rng, batch), "generate", progress)):
            lengths = b["lengths"].tolist()
            goals = [crop_goal(b["motion"][i, :n].numpy(), evalset.mean, evalset.std) for i, n in enumerate(lengths)]
            s = seed + 1_000_003 * r + 7919 * k
            with_goal = generate(list(b["captions"]), lengths, goals, s)
            text_only = generate(list(b["captions"]), lengths, [None] * len(goals), s)
            for feats, n, (x, z, heading, _) in zip(with_goal, lengths, goals):
                f = _to_tensor(feats)[:n].numpy()
                end = frame_root_path(f)[-1]
                dist.append(float(np.hypot(end[0] - x, end[1] - z)))
                heading_err.append(abs(float(wrap_angle(end[2] - heading))))
                span.append(float(np.hypot(x, z)))
                speed.append(span[-1] / (n / FPS))
            gen_g, len_g = _pad(_normalise_generated(with_goal, evalset.mean, evalset.std, max_frames, "the generator"))
            gen_t, len_t = _pad(_normalise_generated(text_only, evalset.mean, evalset.std, max_frames, "the generator"))
            et.append(evaluator.encode_text(b["captions"]))
            em_real.append(evaluator.encode_motion(b["motion"], b["lengths"]))
            em_goal.append(evaluator.encode_motion(gen_g, len_g))
            em_text.append(evaluator.encode_motion(gen_t, len_t))
            joints += _joints_of(gen_g, len_g, evalset.mean, evalset.std)
        et, em_real, em_goal, em_text = (torch.cat(v).numpy() for v in (et, em_real, em_goal, em_text))
        dist, span, speed = np.array(dist), np.array(span), np.array(speed)
        band = (span >= GOAL_BAND_M[0]) & (span <= GOAL_BAND_M[1])
        walk = band & (speed <= WALKING_SPEED_M_S)
        ok = dist <= GOAL_SUCCESS_M
        metrics = {"goal_distance_median": float(np.median(dist)), "goal_distance_p90": float(np.percentile(dist, 90)),
                   "goal_heading_error_deg": float(np.degrees(np.median(heading_err))),
                   "goal_success": float(ok.mean()),
                   # a repeat without goals in the band has no rate for it (left out: metrics refuse NaN)
                   **({"goal_success_band": float(ok[band].mean()),
                       "goal_distance_band_median": float(np.median(dist[band]))} if band.any() else {}),
                   **({"goal_success_band_walking": float(ok[walk].mean())} if walk.any() else {}),
                   "fid": M.fid(em_real, em_goal), **_retrieval_metrics(et, em_goal, batch, rng),
                   **M.foot_metrics(joints),
                   "text_only_fid": M.fid(em_real, em_text),
                   **_retrieval_metrics(et, em_text, batch, rng, "text_only_")}
        res.info.setdefault("band_goals_per_repeat", []).append(int(band.sum()))
        res.info.setdefault("band_walking_goals_per_repeat", []).append(int(walk.sum()))
        res.add(**metrics)
    return res


# ----------------------------------------------------------------------------- runtime adapters
def _frames_per_latent(bundle) -> int:
    tae = getattr(bundle, "tae", None)
    return tae.config.frames_per_latent if tae is not None else bundle.frames_per_latent


def runtime_generator(bundle, text_encoder, config=None, device=None, backend_factory=None) -> GenerateFn:
    """t2m generation with the streaming runtime: each caption for ceil(frames / 4) latents, batched.
    backend_factory(capacity) -> engine backend runs the models elsewhere (e.g. onnxruntime, with
    `bundle` then an OrtBundle of statistics)."""
    stream = runtime_stream_generator(bundle, text_encoder, config, device, backend_factory)

    def generate(captions: list, lengths: list, seed: int) -> list:
        return [feats for feats, _ in stream([[c] for c in captions], [[n] for n in lengths], seed)]

    return generate


def runtime_goal_generator(bundle, text_encoder, config=None, device=None, backend_factory=None) -> GoalGenerateFn:
    """Generation with goals: each caption for ceil(frames / 4) latents with its goal (x, z, heading,
    seconds) or None set from the first latent and held to the end (never "reached" early: the
    protocol measures where the stream is at the deadline), batched. With goals the model's action
    ends are on, as in the runtime, where an unreached goal restarts its action from the current
    pose (same length: the prompt's duration holds); without, they are off (the t2m protocol's way)."""
    fpl = _frames_per_latent(bundle)
    config = dataclasses.replace(config or GenerationConfig(), goal_tolerance=0.0)

    def generate(captions: list, lengths: list, goals: list, seed: int) -> list:
        backend = backend_factory(len(captions)) if backend_factory else None
        schedules = [[(c, max(1, -(-int(n) // fpl)))] for c, n in zip(captions, lengths)]
        return run_schedules(bundle, text_encoder, schedules, config, seed, device=device, backend=backend,
                             goals=goals, use_end_latent=all(g is not None for g in goals))

    return generate


def runtime_stream_generator(bundle, text_encoder, config=None, device=None, backend_factory=None) -> StreamGenerateFn:
    """Prompt sequences with the streaming runtime (runtime.batch.run_schedules): prompt i runs for
    ceil(frames_i / 4) latents, the next one queued to start right after (no end-latent stops), all
    sequences batched."""

    fpl = _frames_per_latent(bundle)

    def generate(prompt_lists: list, length_lists: list, seed: int) -> list:
        budgets = [[max(1, -(-int(n) // fpl)) for n in lens] for lens in length_lists]
        backend = backend_factory(len(prompt_lists)) if backend_factory else None
        feats = run_schedules(bundle, text_encoder, [list(zip(p, b)) for p, b in zip(prompt_lists, budgets)],
                              config, seed, device=device, backend=backend)
        return [(f, (np.cumsum(b)[:-1] * fpl).tolist()) for f, b in zip(feats, budgets)]

    return generate
