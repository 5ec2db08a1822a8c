"""The one helper every plain config dataclass shares (model configs, trainer configs): from_dict that
names unknown fields, to_dict for JSON (tuples as lists, nested configs as dicts), and the
positive-int check."""
from __future__ import annotations

from dataclasses import asdict, fields


class ConfigDict:
    """Mixin for a @dataclass config."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
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
