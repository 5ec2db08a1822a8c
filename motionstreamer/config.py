"""The one helper every plain config dataclass shares (model configs, trainer configs, the bundle's
config.json): from_dict that names unknown fields and reads the keys an earlier release wrote, to_dict
for JSON (tuples as lists, nested configs as dicts), and the positive-int check."""
from __future__ import annotations

import sys
from dataclasses import asdict, fields


def current_keys(d: dict, legacy: dict[str, str], what: str, note: bool = False) -> dict:
    """`d` with the keys an earlier release wrote (legacy: old name -> current name) under their
    current names. Both spellings at once is a ValueError naming them. note=True prints a one-line
    deprecation note per old key to stderr (for spellings a user typed; files on disk are read
    silently)."""
    if not any(k in d for k in legacy):
        return d
    out = dict(d)
    for old, new in legacy.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{what}: give {new!r} or its old name {old!r}, not both")
        out[new] = out.pop(old)
        if note:
            print(f"motionstreamer: {what}: {old!r} is deprecated, use {new!r} (the old name goes in the next "
                  f"release)", file=sys.stderr)
    return out


class ConfigDict:
    """Mixin for a @dataclass config. LEGACY_KEYS (a plain class attribute, not a field): old key ->
    current key, read by from_dict."""

    LEGACY_KEYS = {}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be a mapping, got {type(d).__name__}")
        d = current_keys(d, cls.LEGACY_KEYS, cls.__name__)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def check_positive_ints(config, names) -> None:
    """ValueError naming the first field of `names` that is not an int >= 1 (bools are not counts)."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {v!r}")
