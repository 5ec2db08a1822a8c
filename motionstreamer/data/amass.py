"""AMASS -> 272 preparation: the released pipeline of the 272 repository (spec §1.1-1.4).

Per index row (AMASS file, start, end, id):
  1. read `poses`, `trans`, `betas`, `mocap_framerate` (or `mocap_frame_rate`) from the AMASS npz;
  2. smpl_85 at a floor integer stride int(fps / 30) (no interpolation: 100 fps -> stride 3);
  3. crop [start, end) in the strided sequence;
  4. Z-up -> Y-up (root rotation C·R, translation (x, z, -y)), cast to float32;
  5. the mirrored copy M<id> (swap L/R, negate axis-angle y/z, negate trans x);
  6. each copy by itself: face +Z at frame 0 (rotation about the world origin);
  7. joints from the user's SMPL-X-style body model (betas[:10]), then joints_to_272.
Writes <out>/motion_data/<id>.npy and M<id>.npy (float64 (T, 272), as released) and
<out>/mean_std/Mean.npy, Std.npy over every clip written (originals and mirrors, spec §5).

No body model ships with the package: pass the SMPL-X NEUTRAL .npz you are licensed to use (keys
v_template, shapedirs, J_regressor, kintree_table). Only betas and the 22 body rotations move the
body joints, so plain linear shape blending plus rigid forward kinematics reproduces its `Jtr[:, :22]`.
"""
from __future__ import annotations

import csv
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from motionstreamer import FPS, NUM_JOINTS
from motionstreamer.representation.features import heading_angle, joints_to_272
from motionstreamer.representation.mirror import mirror_smpl85
from motionstreamer.representation.normalize import compute_mean_std
from motionstreamer.representation.rotation import axis_angle_to_matrix, matrix_to_axis_angle, rot_y
from motionstreamer.representation.skeleton import PARENTS, forward_kinematics
from motionstreamer.utils import atomic_save_npy

TARGET_FPS = FPS      # the 272 format's rate: the floor stride samples AMASS down to it
NUM_BETAS = 10
NUM_BODY_JOINTS = NUM_JOINTS
# Z-up -> Y-up: (x, y, z) -> (x, z, -y), applied to the root rotation by left-multiplication.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# AMASS sequence -> smpl_85


def _read_npz(path: str, what: str, required: tuple, optional: tuple = ()) -> dict:
    """Load the named fields of an .npz (no pickles); ValueError naming the file and field."""
    errors = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        data = np.load(path, allow_pickle=False)
    except errors as e:
        raise ValueError(f"{path}: cannot read {what}: {e}") from e
    if not hasattr(data, "files"):
        raise ValueError(f"{path}: cannot read {what}: not an .npz archive")
    with data:
        missing = [k for k in required if k not in data.files]
        if missing:
            raise ValueError(f"{path}: {what} is missing field(s) {missing} (has {sorted(data.files)})")
        try:
            return {k: data[k] for k in required + optional if k in data.files}
        except errors as e:
            raise ValueError(f"{path}: cannot read {what}: {e}") from e


@dataclass
class AmassSequence:
    poses: np.ndarray   # (N, >=66) axis-angle, root first
    trans: np.ndarray   # (N, 3)
    betas: np.ndarray   # (>=10,)
    fps: float
    path: str


def load_amass(path: str | os.PathLike) -> AmassSequence:
    """Read an AMASS SMPL-H npz; ValueError naming the file and field when something is off."""
    path = str(path)
    fields = _read_npz(path, "AMASS npz", ("poses", "trans", "betas"),
                       optional=("mocap_framerate", "mocap_frame_rate"))
    fps_key = "mocap_framerate" if "mocap_framerate" in fields else "mocap_frame_rate"
    if fps_key not in fields:
        raise ValueError(f"{path}: missing field 'mocap_framerate' / 'mocap_frame_rate'")
    try:
        poses, trans, betas = (np.asarray(fields[k], dtype=np.float64) for k in ("poses", "trans", "betas"))
        fps = float(np.asarray(fields[fps_key], dtype=np.float64).reshape(()))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: non-numeric field: {e}") from e
    if poses.ndim != 2 or poses.shape[1] < 66:
        raise ValueError(f"{path}: field 'poses' must be (N, >=66), got {poses.shape}")
    if trans.shape != (poses.shape[0], 3):
        raise ValueError(f"{path}: field 'trans' must be ({poses.shape[0]}, 3), got {trans.shape}")
    betas = betas.reshape(-1)
    if betas.shape[0] < NUM_BETAS:
        raise ValueError(f"{path}: field 'betas' needs >= {NUM_BETAS} values, got {betas.shape[0]}")
    for name, a in (("poses", poses[:, :66]), ("trans", trans), ("betas", betas[:NUM_BETAS])):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: field '{name}' contains NaN/inf")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{path}: field '{fps_key}' must be a positive frame rate, got {fps}")
    return AmassSequence(poses, trans, betas, fps, path)


def downsample_stride(fps: float, target_fps: int = TARGET_FPS) -> int:
    """The reference's floor integer stride int(fps / target): 120 -> 4, 100 -> 3, 59.99 -> 1."""
    stride = int(fps / target_fps)
    if stride < 1:
        raise ValueError(f"frame rate {fps} is below the target {target_fps} fps")
    return stride


def amass_to_smpl85(seq: AmassSequence, target_fps: int = TARGET_FPS) -> np.ndarray:
    """(N', 85) float64 at frames 0, s, 2s, ...: [pose 0:66 | zeros 6 | trans | betas[:10]]."""
    stride = downsample_stride(seq.fps, target_fps)
    poses, trans = seq.poses[::stride, :66], seq.trans[::stride]
    n = poses.shape[0]
    return np.concatenate([poses, np.zeros((n, 6)), trans, np.broadcast_to(seq.betas[:NUM_BETAS], (n, NUM_BETAS))],
                          axis=1)


def crop(params: np.ndarray, start, end) -> np.ndarray:
    """params[int(start):int(end)] (indices in the strided sequence); ValueError when empty."""
    s, e = int(float(start)), int(float(end))
    out = params[s:e]
    if out.shape[0] == 0:
        raise ValueError(f"crop [{s}, {e}) is empty for a sequence of {params.shape[0]} frames")
    return out


def z_up_to_y_up(params: np.ndarray) -> np.ndarray:
    """smpl_85 from AMASS Z-up to Y-up: root rotation C·R, trans (x, z, -y); returns float32."""

    out = np.array(params, dtype=np.float64)
    out[:, :3] = matrix_to_axis_angle(Z_UP_TO_Y_UP @ axis_angle_to_matrix(out[:, :3]))
    out[:, 72:75] = out[:, 72:75] @ Z_UP_TO_Y_UP.T
    return out.astype(np.float32)


def face_z(params: np.ndarray) -> np.ndarray:
    """Rotate root orientation and translation by Q = Ry(-theta0) about the world origin so that
    frame 0's pelvis local +Z projects onto +Z (spec §1.2). Keeps the input dtype."""

    p = np.asarray(params)
    root = axis_angle_to_matrix(p[:, :3].astype(np.float64))
    q = rot_y(heading_angle(root[0]))
    out = np.array(p, dtype=np.float64)
    out[:, :3] = matrix_to_axis_angle(q @ root)
    out[:, 72:75] = out[:, 72:75] @ q.T
    return out.astype(p.dtype)


# ---------------------------------------------------------------------------------------------
# Body model joints


class BodyModelJoints:
    """The 22 body joints of an SMPL(-X)-style model: J = J_regressor (v_template + shapedirs·betas),
    then rigid forward kinematics with the 22 body rotations; pelvis at trans + J0."""

    def __init__(self, v_template: np.ndarray, shapedirs: np.ndarray, j_regressor: np.ndarray,
                 kintree_table: np.ndarray, source: str = "body model"):
        v_template = np.asarray(v_template, dtype=np.float64)
        shapedirs = np.asarray(shapedirs, dtype=np.float64)
        j_regressor = np.asarray(j_regressor, dtype=np.float64)
        kintree = np.asarray(kintree_table)
        n_verts = v_template.shape[0] if v_template.ndim == 2 else -1
        if v_template.ndim != 2 or v_template.shape[1] != 3:
            raise ValueError(f"{source}: 'v_template' must be (V, 3), got {v_template.shape}")
        if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n_verts, 3) or shapedirs.shape[2] < NUM_BETAS:
            raise ValueError(f"{source}: 'shapedirs' must be ({n_verts}, 3, >={NUM_BETAS}), got {shapedirs.shape}")
        if j_regressor.ndim != 2 or j_regressor.shape[1] != n_verts or j_regressor.shape[0] < NUM_BODY_JOINTS:
            raise ValueError(f"{source}: 'J_regressor' must be (>={NUM_BODY_JOINTS}, {n_verts}), "
                             f"got {j_regressor.shape}")
        if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.shape[1] < NUM_BODY_JOINTS:
            raise ValueError(f"{source}: 'kintree_table' must be (2, >={NUM_BODY_JOINTS}), got {kintree.shape}")
        parents = tuple(int(p) for p in kintree[0, 1:NUM_BODY_JOINTS])
        if parents != tuple(PARENTS[1:]):
            raise ValueError(f"{source}: 'kintree_table' parents of joints 1..21 are {parents}, "
                             f"expected the SMPL tree {tuple(PARENTS[1:])}")
        reg = j_regressor[:NUM_BODY_JOINTS]
        # J is linear in betas: precompute its template part and its per-beta directions.
        self.joint_template = reg @ v_template                                    # (22, 3)
        self.joint_shapedirs = np.einsum("jv,vcs->jcs", reg, shapedirs[:, :, :NUM_BETAS])  # (22, 3, 10)
        self.source = source

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "BodyModelJoints":
        path = str(path)
        keys = ("v_template", "shapedirs", "J_regressor", "kintree_table")
        f = _read_npz(path, "body model npz", keys)
        return cls(*(f[k] for k in keys), source=path)

    def rest_joints(self, betas: np.ndarray) -> np.ndarray:
        """(..., 10) betas -> (..., 22, 3) shaped rest joints."""
        return self.joint_template + np.einsum("jcs,...s->...jc", self.joint_shapedirs, betas)

    def joints(self, params: np.ndarray) -> np.ndarray:
        """smpl_85 (T, 85) -> global joints (T, 22, 3) float64: Jtr[:, :22] of the body model."""

        p = np.asarray(params, dtype=np.float64)
        rest = self.rest_joints(p[:, 75:75 + NUM_BETAS])                          # (T, 22, 3)
        offsets = rest - rest[:, list((0,) + PARENTS[1:])]                        # offset[0] unused
        rotations = axis_angle_to_matrix(p[:, :66].reshape(-1, NUM_BODY_JOINTS, 3))
        # forward_kinematics indexes offsets[j]; joint-major (22, T, 3) broadcasts per frame.
        return forward_kinematics(rotations, p[:, 72:75] + rest[:, 0], offsets.transpose(1, 0, 2))


def smpl85_to_272(params: np.ndarray, body_model: BodyModelJoints) -> np.ndarray:
    """Face-z'd smpl_85 (T, 85) -> (T, 272) float64: body-model joints + SMPL rotations (spec §1.3-1.4)."""

    p = np.asarray(params, dtype=np.float64)
    rotations = axis_angle_to_matrix(p[:, :66].reshape(-1, NUM_BODY_JOINTS, 3))
    return joints_to_272(body_model.joints(p), rotations)


def process_clip(seq: AmassSequence, start, end, body_model: BodyModelJoints,
                 target_fps: int = TARGET_FPS) -> tuple[np.ndarray, np.ndarray]:
    """One index row -> (features, mirrored features), each (T, 272) float64."""

    params = z_up_to_y_up(crop(amass_to_smpl85(seq, target_fps), start, end))
    mirrored = mirror_smpl85(params)
    return smpl85_to_272(face_z(params), body_model), smpl85_to_272(face_z(mirrored), body_model)


# ---------------------------------------------------------------------------------------------
# Index file and driver


@dataclass
class IndexRow:
    source: str
    start: str
    end: str
    clip_id: str
    where: str  # "file:line" for messages


_HEADER_ALIASES = {"source": ("source_path", "path", "amass_path", "source"), "start": ("start_frame", "start"),
                   "end": ("end_frame", "end"), "id": ("new_name", "id", "name")}


def read_index(path: str | os.PathLike) -> list[IndexRow]:
    """Read the clip index: a CSV with a header naming source_path, start_frame, end_frame, new_name
    (HumanML3D's index.csv, an unnamed pandas index column allowed), or headerless rows of
    `path start end id` separated by commas or whitespace. '#' lines and blank lines are skipped."""
    path = str(path)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read index: {e}") from e
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        raise ValueError(f"{path}: index has no rows")

    def split(line):
        return [f.strip() for f in next(csv.reader([line]))] if "," in line else line.split()

    def is_number(v):
        try:
            float(v)
            return True
        except ValueError:
            return False

    first = [f.lower() for f in split(numbered[0][1])]
    columns = None
    if not any(is_number(f) for f in first[1:]):  # a header row: no frame numbers in it
        columns = {}
        for key, names in _HEADER_ALIASES.items():
            hit = next((first.index(n) for n in names if n in first), None)
            if hit is None:
                raise ValueError(f"{path}:{numbered[0][0]}: header has no '{names[0]}' column (got {first})")
            columns[key] = hit
        numbered = numbered[1:]
    rows = []
    for lineno, line in numbered:
        fields = split(line)
        where = f"{path}:{lineno}"
        if columns is None:
            if len(fields) != 4:
                raise ValueError(f"{where}: expected 4 fields 'path start end id', got {len(fields)}: {line!r}")
            src, start, end, cid = fields
        else:
            if len(fields) <= max(columns.values()):
                raise ValueError(f"{where}: expected {max(columns.values()) + 1} fields, got {len(fields)}: {line!r}")
            src, start, end, cid = (fields[columns[k]] for k in ("source", "start", "end", "id"))
        for name, v in (("start", start), ("end", end)):
            if not is_number(v):
                raise ValueError(f"{where}: {name} frame {v!r} is not a number")
        cid = cid[:-4] if cid.endswith(".npy") else cid
        if not cid or "/" in cid or "\\" in cid or cid.startswith("."):
            raise ValueError(f"{where}: bad clip id {cid!r}")
        rows.append(IndexRow(src, start, end, cid, where))
    ids = [r.clip_id for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: clip id {dup!r} appears more than once")
    return rows


def resolve_source(source: str, amass_root: str | os.PathLike | None) -> Path:
    """Find the AMASS npz of an index entry. HumanML3D-style entries (./pose_data/KIT/.../x.npy,
    ./datasets/pose_data/...) map to <amass_root>/KIT/.../x.npz."""
    p = Path(source)
    if p.is_absolute() or amass_root is None:
        candidates = [p, p.with_suffix(".npz")]
    else:
        parts = list(p.parts)
        while parts and parts[0] in ("datasets", "pose_data", "amass_data"):
            parts = parts[1:]
        rel = [p] + ([Path(*parts)] if parts else [])
        candidates = [Path(amass_root) / r for r in rel] + [Path(amass_root) / r.with_suffix(".npz") for r in rel]
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"AMASS file not found for {source!r} (tried {', '.join(map(str, dict.fromkeys(candidates)))})")


def prepare_amass(index_path, amass_root, body_model_path, out_dir, target_fps: int = TARGET_FPS,
                  strict: bool = False, progress: bool = True) -> dict:
    """Run the pipeline over an index; returns {'written': [...ids], 'failed': [(where, reason)], ...}."""

    rows = read_index(index_path)
    body_model = BodyModelJoints.from_npz(body_model_path)
    motion_dir, stats_dir = Path(out_dir) / "motion_data", Path(out_dir) / "mean_std"
    motion_dir.mkdir(parents=True, exist_ok=True)
    written, failed, cache = [], [], {}
    it = rows
    if progress:
        it = tqdm(rows, desc="prepare-amass", unit="clip", file=sys.stderr)
    for row in it:
        try:
            src = resolve_source(row.source, amass_root)
            if src not in cache:  # consecutive rows often share a source file
                cache = {src: load_amass(src)}
            feats, mirrored = process_clip(cache[src], row.start, row.end, body_model, target_fps)
        except ValueError as e:
            if strict:
                raise ValueError(f"{row.where}: {e}") from e
            failed.append((row.where, str(e)))
            continue
        atomic_save_npy(motion_dir / f"{row.clip_id}.npy", feats)
        atomic_save_npy(motion_dir / f"M{row.clip_id}.npy", mirrored)
        written.append(row.clip_id)
    if written:
        paths = [motion_dir / f"{p}{cid}.npy" for cid in written for p in ("", "M")]
        mean, std = compute_mean_std(paths)
        atomic_save_npy(stats_dir / "Mean.npy", mean)
        atomic_save_npy(stats_dir / "Std.npy", std)
    return {"written": written, "failed": failed, "motion_dir": str(motion_dir), "mean_std_dir": str(stats_dir)}
