"""The committed lock: every line a pin with hashes, and every range of pyproject.toml (package, locked
extras, build requirements, torch) satisfied by it; scripts/check_lock.py, which says so in CI and in the
pre-commit hook, reports one bad range or one missing package among good ones."""
import importlib.util
import re
from pathlib import Path

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
