"""One rigid skeleton for a motion: bone lengths from its joint positions, local rotations re-solved
from those positions, and forward kinematics back. numpy, float64, batched over frames.

The 272 format stores joint positions and SMPL rotations side by side. Generated positions are not
exactly rigid (bones stretch from frame to frame) and generated rotations do not reproduce them
(their FK differs by ~5 cm on the embedded model). To export one motion in every format, the
exports take a rigid skeleton whose bone lengths are the motion's own (median over frames) and
rotations solved so that FK lands on the positions:

- a joint with one child (knee, elbow, neck, ...) gets the smallest rotation ("swing") that turns
  its bone from where the initial guess points it onto the target child, so the guess keeps its
  twist about the bone; the guess is the parent's solved rotation times the model's local rotation;
- a joint with several children (pelvis: hips and spine; spine3: neck and collars) gets the rotation
  that best maps its rest offsets onto the targets (Kabsch; the children fix all three axes);
- a leaf (feet, head, wrists) keeps the guess: its rotation moves no other body joint.

Each bone aims from the parent's SOLVED position at the target child, so errors do not accumulate
down a chain. On positions that are rigid with these bone lengths the solve is exact.
"""
from __future__ import annotations

import numpy as np

from motionstreamer.representation.skeleton import NUM_JOINTS, PARENTS, PARENTS_24, SMPL_OFFSETS_24

CHILDREN = tuple(tuple(c for c in range(1, NUM_JOINTS) if PARENTS[c] == p) for p in range(NUM_JOINTS))
PALMS = (22, 23)             # BVH/GLB-only leaves below the wrists, never animated
_EPS = 1e-9


def _np64(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN/inf")
    return a


def _check_joints(joints) -> np.ndarray:
    j = _np64(joints, "joints")
    if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3) or j.shape[0] == 0:
        raise ValueError(f"joints must have shape (frames, 22, 3) with frames >= 1, got {j.shape}")
    return j


MIN_BONE = 1e-3              # m: a shorter (degenerate) bone takes SMPL neutral's length


def bone_lengths(joints) -> np.ndarray:
    """(22,) median length over frames of each bone joint -> parent ([0] = 0); a bone whose median is
    under 1 mm (degenerate input, e.g. all joints at one point) takes SMPL neutral's length."""
    j = _check_joints(joints)
    out = np.zeros(NUM_JOINTS)
    for c in range(1, NUM_JOINTS):
        out[c] = np.median(np.linalg.norm(j[:, c] - j[:, PARENTS[c]], axis=-1))
        if out[c] < MIN_BONE:
            out[c] = np.linalg.norm(SMPL_OFFSETS_24[c])
    return out


def rest_positions(offsets) -> np.ndarray:
    """(J, 3) rest-pose positions from (J, 3) offsets (J = 22 or 24); [0] is offsets[0]."""
    off = np.asarray(offsets, dtype=np.float64)
    pos = np.zeros_like(off)
    pos[0] = off[0]
    for j in range(1, len(off)):
        pos[j] = pos[PARENTS_24[j]] + off[j]
    return pos


def scaled_offsets(lengths, template=SMPL_OFFSETS_24) -> np.ndarray:
    """(24, 3) rest offsets: the template's bone directions (SMPL neutral rest pose: a T-pose facing
    +Z, Y up) with the given (22,) bone lengths; the palms keep their ratio to the forearm; [0] puts the
    rest pose's lowest joint on y = 0 under the pelvis."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.shape != (NUM_JOINTS,) or np.any(lengths[1:] <= 0) or not np.all(np.isfinite(lengths)):
        raise ValueError(f"lengths must be (22,) positive bone lengths, got {lengths}")
    t = np.asarray(template, dtype=np.float64)
    out = np.zeros((len(PARENTS_24), 3))
    for c in range(1, len(PARENTS_24)):
        d = t[c] / np.linalg.norm(t[c])
        if c < NUM_JOINTS:
            out[c] = d * lengths[c]
        else:   # palm: scaled as its wrist's forearm
            w = PARENTS_24[c]
            out[c] = t[c] * lengths[w] / np.linalg.norm(t[w])
    out[0] = (0.0, -rest_positions(out)[:, 1].min(), 0.0)
    return out


def _skew(v: np.ndarray) -> np.ndarray:
    z = np.zeros(v.shape[:-1])
    return np.stack([z, -v[..., 2], v[..., 1], v[..., 2], z, -v[..., 0], -v[..., 1], v[..., 0], z],
                    -1).reshape(*v.shape[:-1], 3, 3)


def swing(a, b) -> np.ndarray:
    """(..., 3, 3): the smallest rotation turning direction a onto direction b (any lengths > 0).
    Antiparallel pairs turn by pi about an axis perpendicular to a."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), _EPS)
    a, b = np.broadcast_arrays(a, b)
    v = np.cross(a, b)
    c = np.sum(a * b, axis=-1)
    k = _skew(v)
    eye = np.broadcast_to(np.eye(3), k.shape)
    flip = c < -1 + 1e-9
    r = eye + k + k @ k / np.where(flip, 1.0, 1.0 + c)[..., None, None]
    if np.any(flip):
        helper = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        axis = np.cross(a, helper)
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        half_turn = 2 * axis[..., :, None] * axis[..., None, :] - eye
        r = np.where(flip[..., None, None], half_turn, r)
    return r


def kabsch(rest, target) -> np.ndarray:
    """(..., 3, 3) rotation R minimising sum_i |R rest_i - target_i|^2; rest (n, 3), target (..., n, 3)."""
    h = np.einsum("ni,...nj->...ij", np.asarray(rest, dtype=np.float64), target)   # sum rest target^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    fix = np.ones(h.shape[:-2] + (3,))
    fix[..., 2] = d
    return np.swapaxes(vt, -1, -2) @ (fix[..., :, None] * np.swapaxes(u, -1, -2))


def solve_rotations(joints, offsets, init=None) -> tuple[np.ndarray, np.ndarray]:
    """Local rotations that put the skeleton `offsets` (22 or 24, 3) onto `joints` (T, 22, 3).

    init (T, 22, 3, 3): the model's rotations ([0] pelvis global, [1:] parent-local), the initial guess
    and twist source; None = no twist (identity local rotations as the guess).
    Returns (rotations (T, 22, 3, 3) [0] global / [1:] local, positions (T, 22, 3) by FK).
    """
    j = _check_joints(joints)
    off = np.asarray(offsets, dtype=np.float64)[:NUM_JOINTS]
    T = len(j)
    if init is None:
        local0 = np.broadcast_to(np.eye(3), (T, NUM_JOINTS, 3, 3))
    else:
        local0 = _np64(init, "init")
        if local0.shape != (T, NUM_JOINTS, 3, 3):
            raise ValueError(f"init must have shape ({T}, 22, 3, 3), got {local0.shape}")
    glob = np.zeros((T, NUM_JOINTS, 3, 3))
    pos = np.zeros((T, NUM_JOINTS, 3))
    pos[:, 0] = j[:, 0]
    for p in range(NUM_JOINTS):
        guess = local0[:, 0] if p == 0 else glob[:, PARENTS[p]] @ local0[:, p]
        kids = CHILDREN[p]
        if len(kids) == 1:
            c = kids[0]
            glob[:, p] = swing(guess @ off[c], j[:, c] - pos[:, p]) @ guess
        elif kids:
            glob[:, p] = kabsch(off[list(kids)], j[:, list(kids)] - pos[:, p, None])
        else:
            glob[:, p] = guess
        for c in kids:
            pos[:, c] = pos[:, p] + glob[:, p] @ off[c]
    local = glob.copy()
    for c in range(1, NUM_JOINTS):
        local[:, c] = np.swapaxes(glob[:, PARENTS[c]], -1, -2) @ glob[:, c]
    return local, pos


def global_rotations(local) -> np.ndarray:
    """(..., J, 3, 3) global rotations from local ones ([0] global already), J = 22 or 24."""
    g = np.array(local, dtype=np.float64, copy=True)
    for c in range(1, g.shape[-3]):
        g[..., c, :, :] = g[..., PARENTS_24[c], :, :] @ g[..., c, :, :]
    return g


def fk(local, root, offsets) -> np.ndarray:
    """(T, J, 3) joint positions of local rotations (T, J, 3, 3), root positions (T, 3) and offsets
    (J, 3) (offsets[0] unused), J = 22 or 24."""
    g = global_rotations(local)
    off = np.asarray(offsets, dtype=np.float64)
    pos = np.zeros(g.shape[:-3] + (g.shape[-3], 3))
    pos[..., 0, :] = root
    for c in range(1, g.shape[-3]):
        p = PARENTS_24[c]
        pos[..., c, :] = pos[..., p, :] + g[..., p, :, :] @ off[c]
    return pos
