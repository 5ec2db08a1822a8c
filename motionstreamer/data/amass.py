"""AMASS -> 272 preparation (filled in by its owner)."""


def register(subparsers) -> None:
    pass
