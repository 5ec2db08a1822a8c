"""Do the locks still satisfy pyproject.toml? Every requirement of the package, of the extras the main
lock is made for (scripts/lock.sh: test and triton, and the extras they name) and of requirements/lock.in
must be pinned in requirements/lock.txt at a version its range allows; requirements/blender-lock.in must
say what the `blender` extra says, and requirements/blender-lock.txt (Blender's own environment, as
bpy pins numpy < 2) must pin it within that range. `pip check` after an install sees only the base
requirements, not the extras, so a range edited without re-locking shows here first (pre-commit hook
and tests/test_lock.py). Exit 1 with one line per problem.

    python scripts/check_lock.py [--lock requirements/lock.txt] [--blender-lock requirements/blender-lock.txt]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCKED_EXTRAS = ("test", "triton")          # as scripts/lock.sh
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_pins(lock: Path) -> dict[str, Version]:
    pins = {}
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def wanted(pyproject: Path, lock_in: Path) -> list[tuple[str, Requirement]]:
    project = tomllib.loads(pyproject.read_text())["project"]
    name = canonicalize_name(project["name"])
    extras = project.get("optional-dependencies", {})
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    todo, seen = list(LOCKED_EXTRAS), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, extras[extra]):
            if canonicalize_name(r.name) == name:     # test -> motionstreamer[onnx, ...]
                todo.extend(r.extras)
            else:
                out.append((f"extra '{extra}'", r))
    for line in lock_in.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            for sub in (lock_in.parent / line[3:].strip()).read_text().splitlines():
                sub = sub.split("#", 1)[0].strip()
                if sub:
                    out.append((line[3:].strip(), Requirement(sub)))
        elif line:
            out.append((lock_in.name, Requirement(line)))
    return out


def blender_problems(lock: Path, pyproject: Path, lock_in: Path) -> list[str]:
    """The Blender lock: its .in file is the `blender` extra, and the lock pins that within range."""
    extra = {str(Requirement(r)) for r in tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
             ["blender"]}
    listed = [Requirement(line) for line in (ln.split("#", 1)[0].strip() for ln in lock_in.read_text().splitlines())
              if line]
    found = [] if {str(r) for r in listed} == extra else [
        f"{lock_in.name} holds {sorted(map(str, listed))}, the `blender` extra {sorted(extra)}"]
    return found + problems(lock, pyproject, lock_in, [(lock_in.name, r) for r in listed])


def problems(lock: Path, pyproject: Path, lock_in: Path, requirements=None) -> list[str]:
    pins = read_pins(lock)
    found = []
    for where, req in (wanted(pyproject, lock_in) if requirements is None else requirements):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            found.append(f"{req} ({where}) is not in {lock.name}")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"{req} ({where}): {lock.name} pins {version}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements" / "lock.txt")
    ap.add_argument("--blender-lock", type=Path, default=ROOT / "requirements" / "blender-lock.txt")
    args = ap.parse_args(argv)
    pyproject = ROOT / "pyproject.toml"
    found = problems(args.lock, pyproject, ROOT / "requirements" / "lock.in") + \
        blender_problems(args.blender_lock, pyproject, ROOT / "requirements" / "blender-lock.in")
    for p in found:
        print(f"check_lock: {p}; run `bash scripts/lock.sh`", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
