"""The committed lock: every line a pin with hashes, and every range of pyproject.toml (package, locked
extras, build requirements, torch) satisfied by it; scripts/check_lock.py, which says so in CI and in the
pre-commit hook, reports one bad range or one missing package among good ones."""
import importlib.util
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_lock)


def entries(text: str) -> list[str]:
    """The lock's requirement entries, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line and not line.lstrip().startswith("#")]


def test_every_entry_is_an_exact_pin_with_a_sha256():
    found = entries(LOCK.read_text())
    assert len(found) > 100
    for line in found:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+(\s+--hash=sha256:[0-9a-f]{64})+\s*$", line), line
    names = {line.split("==")[0].lower() for line in found}
    for needed in ("torch", "numpy", "setuptools", "pybind11", "cmake", "ninja", "pytest", "fastapi", "ray",
                   "onnxruntime", "mkdocs", "ruff", "build", "transformers"):
        assert needed in names, needed
    assert "motionstreamer" not in names             # the package itself is built, never pinned
    assert re.search(r"^torch==2\.13\.0\+cpu\s", "\n".join(found), re.M)   # the platform's CPU wheel


def test_committed_lock_satisfies_pyproject():
    assert check_lock.problems(LOCK, ROOT / "pyproject.toml", ROOT / "requirements" / "lock.in") == []
    assert check_lock.main([]) == 0


def test_one_bad_range_or_missing_pin_is_reported(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock_in = ROOT / "requirements" / "lock.in"
    numpy = re.search(r'"numpy[^"]*"', pyproject).group(0)
    # a base dependency whose range the pin leaves, and one pin just inside the range
    bad = tmp_path / "pyproject.toml"
    pinned = check_lock.read_pins(LOCK)["numpy"]
    bad.write_text(pyproject.replace(numpy, f'"numpy>{pinned}"'))
    assert check_lock.problems(LOCK, bad, lock_in) == [f"numpy>{pinned} (dependencies): lock.txt pins {pinned}"]
    bad.write_text(pyproject.replace(numpy, f'"numpy>={pinned}"'))
    assert check_lock.problems(LOCK, bad, lock_in) == []
    # an extra reached through the test extra's self-reference (serve) naming a package the lock lacks
    bad.write_text(pyproject.replace('"pydantic>=2,<3"', '"pydantic>=2,<3", "not-a-locked-package>=1"'))
    assert check_lock.problems(LOCK, bad, lock_in) == ["not-a-locked-package>=1 (extra 'serve') is not in lock.txt"]
    # a lock that lost one pin
    lock = tmp_path / "lock.txt"
    lock.write_text(re.sub(r"^scipy==", "# scipy==", LOCK.read_text(), flags=re.M))
    missing = check_lock.problems(lock, ROOT / "pyproject.toml", lock_in)
    assert len(missing) == 1 and missing[0].startswith("scipy") and missing[0].endswith("is not in lock.txt")


# ----------------------------------------------------------------------------------------- Blender's environment
BLENDER_LOCK = ROOT / "requirements" / "blender-lock.txt"
BLENDER_IN = ROOT / "requirements" / "blender-lock.in"


def test_main_environment_stays_on_numpy_2_without_bpy():
    """What `pip install motionstreamer` users get (numpy 2) is what CI tests: bpy, which pins numpy < 2,
    is not in the main lock; it has a lock and an environment of its own."""
    pins = check_lock.read_pins(LOCK)
    assert pins["numpy"].major >= 2, pins["numpy"]
    assert "bpy" not in pins


def test_blender_lock_is_bpy_and_its_dependencies_only():
    found = entries(BLENDER_LOCK.read_text())
    for line in found:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+( ; [^\\]+)?(\s+--hash=sha256:[0-9a-f]{64})+\s*$", line), line
    pins = check_lock.read_pins(BLENDER_LOCK)
    assert pins["bpy"].release[:2] >= (4, 2) and pins["numpy"].major == 1     # bpy 5.0.1: numpy>=1.26,<2
    assert not {"torch", "scipy", "motionstreamer", "pygltflib"} & set(pins)
    assert len(pins) < 15, sorted(pins)                                        # nothing but bpy's own closure
    assert check_lock.blender_problems(BLENDER_LOCK, ROOT / "pyproject.toml", BLENDER_IN) == []


def test_blender_lock_follows_the_blender_extra(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r'^blender = \["([^"]*)"\]', pyproject, re.M).group(1)
    bpy = check_lock.read_pins(BLENDER_LOCK)["bpy"]
    bad = tmp_path / "pyproject.toml"
    # the extra's range moved past the pin: the .in file no longer says the same, and the pin is outside
    moved = extra.replace(">=4.2", f">{bpy}")
    bad.write_text(pyproject.replace(extra, moved))
    found = check_lock.blender_problems(BLENDER_LOCK, bad, BLENDER_IN)
    assert len(found) == 1 and found[0].startswith("blender-lock.in holds") and f">{bpy}" in found[0], found
    blender_in = tmp_path / "blender-lock.in"
    blender_in.write_text(moved + "\n")
    assert check_lock.blender_problems(BLENDER_LOCK, bad, blender_in) == [
        f"{Requirement(moved)} (blender-lock.in): blender-lock.txt pins {bpy}"]
    # just inside the range, and a lock that lost bpy
    inside = extra.replace(">=4.2", f">={bpy}")
    bad.write_text(pyproject.replace(extra, inside))
    blender_in.write_text(inside + "\n")
    assert check_lock.blender_problems(BLENDER_LOCK, bad, blender_in) == []
    lock = tmp_path / "blender-lock.txt"
    lock.write_text(re.sub(r"^bpy==", "# bpy==", BLENDER_LOCK.read_text(), flags=re.M))
    missing = check_lock.blender_problems(lock, ROOT / "pyproject.toml", BLENDER_IN)
    assert len(missing) == 1 and missing[0].endswith("is not in blender-lock.txt"), missing
