"""CLI verbs of this area (filled in by its owner)."""


def register(subparsers) -> None:
    pass
