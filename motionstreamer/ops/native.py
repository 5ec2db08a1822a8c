"""Loader for the compiled extension motionstreamer._C (CMake + pybind11)."""
from __future__ import annotations


def load():
    """Return the compiled module, or raise ImportError with a hint on how to build it."""
    try:
        from motionstreamer import _C  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "motionstreamer._C is not built: reinstall with `pip install --no-build-isolation -e .`"
        ) from e
    return _C


def available() -> bool:
    try:
        load()
        return True
    except ImportError:
        return False
