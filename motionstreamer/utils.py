"""Small shared helpers: atomic writes and checked inputs."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

try:
    import fcntl
except ImportError:   # Windows: no advisory locks
    fcntl = None


def _try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock on an open file without waiting; False if another process
    holds it. The kernel drops a lock when its process dies, even by SIGKILL. Without fcntl (Windows)
    nothing is locked and False is returned, so nothing is ever taken for stale there."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporaries atomic_path / atomic_dir make for `path` (`.NAME.XXXX.tmpSUFFIX` beside it)."""
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
                if tmp.is_dir() and not tmp.is_symlink():   # atomic_dir's
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
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
        os.chmod(tmp_path, 0o666 & ~_umask())   # mkstemp makes 0600; outputs get the usual permissions
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        os.close(fd)
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path` (`.NAME.XXXX.tmp`); on success it replaces the
    folder `path`: the old one is renamed aside, the new one renamed in, the old one removed. A failed
    or interrupted write leaves `path` as it was; the temporary is locked while written, and one left
    by a killed writer is removed by the next atomic_dir of the same `path` (as atomic_path does)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent))
    fd = os.open(tmp, os.O_RDONLY)
    _try_lock(fd)
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; a dataset gets the usual permissions
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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


def as_numeric_array(x, name: str) -> np.ndarray:
    """`x` (a numpy array, torch tensor or nested sequence) as a numpy array of numbers; ValueError naming
    `name` when it holds anything else (strings, objects, booleans, complex numbers)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a


def check_finite(name: str, array) -> None:
    """Raise ValueError naming `name` when the array holds NaN or inf."""
    a = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        raise ValueError(f"{name} contains NaN/inf (first at index {tuple(int(i) for i in bad[0])})")


def check_writable(path: str | os.PathLike, kind: str = "file") -> None:
    """ValueError naming `path` when a file (kind="file") or folder (kind="folder") cannot be written
    there: a folder where the file should go or the reverse, a parent that is a file, a folder this
    process may not write in (read-only, permissions). Run before long work, so that it fails before
    anything is computed. Creates nothing: a probe file is made and removed in the nearest existing
    folder."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path).expanduser()
    if path.exists():
        if kind == "file" and path.is_dir():
            raise ValueError(f"{path} is a folder; give a file name")
        if kind == "folder" and not path.is_dir():
            raise ValueError(f"{path} is a file, not a folder")
    folder = path if kind == "folder" else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".motionstreamer-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {folder} is not writable ({e.strerror or e})") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """One numeric array from a .npy file, read safely: no pickled objects (nothing runs), and the
    header's shape checked against the file's size before anything is allocated (a header claiming
    10**12 rows would otherwise be a MemoryError). ValueError naming the file for a bad file."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            raise ValueError(f"{path}: not a valid .npy file ({e})") from None
        data_start = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (pickled); only plain numeric arrays are loaded, "
                         f"for safety")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = path.stat().st_size - data_start
    if needed > have:
        raise ValueError(f"{path}: the header claims shape {tuple(shape)} ({needed} bytes of {dtype}) but the "
                         f"file holds {have} bytes (truncated or corrupt)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a valid .npy file ({e})") from None
