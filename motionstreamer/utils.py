"""Small shared helpers: atomic writes and checked inputs."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def _try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock on an open file without waiting; False if another process
    holds it. The kernel drops a lock when its process dies, even by SIGKILL. Without fcntl (Windows)
    nothing is locked and False is returned, so nothing is ever taken for stale there."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files atomic_path makes for `path` (`.NAME.XXXX.tmpSUFFIX` beside it)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries of `path` left by writers that died (killed mid-write): a live writer holds
    a lock on its temporary, a dead one does not. Returns what was removed."""
    removed = []
    for tmp in temporaries_of(path):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    An interrupted write leaves the previous file (if any) intact and no partial file behind. The
    temporary is locked while it is written; one left by a killed writer is removed by the next
    write of the same `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    _try_lock(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)   # mkstemp makes 0600; outputs get the usual permissions
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        os.close(fd)
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_finite(name: str, array) -> None:
    """Raise ValueError naming `name` when the array holds NaN or inf."""
    a = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        raise ValueError(f"{name} contains NaN/inf (first at index {tuple(int(i) for i in bad[0])})")
