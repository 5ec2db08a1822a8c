"""The checkout's top-level kernels/ folder is `motionstreamer.kernels`, never the top-level `kernels`
(Hugging Face ships a package of that name and transformers imports it). Run from the checkout root,
where `python -m` and scripts put the root first on sys.path: `import kernels` gets the installed
package, or fails as if the folder were not there; `python -m motionstreamer --help` and a one-second
`generate` work with a package named `kernels` importable, and whatever `kernels` that process ends
up holding is not the checkout's."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "kernels"

# Imports `kernels` as a library would, lazily, once `python -m` has put the root on sys.path (when the
# CLI module is first imported), and reports at exit which `kernels` the process held.
SITECUSTOMIZE = """
import atexit, importlib.abc, sys

class _ImportKernelsWithTheCli(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "motionstreamer.cli":
            sys.meta_path.remove(self)
            import kernels  # noqa: F401
        return None

sys.meta_path.insert(0, _ImportKernelsWithTheCli())
atexit.register(lambda: sys.stderr.write(f"\\nKERNELS_FILE={sys.modules['kernels'].__file__}\\n"))
"""


def importable_kernels_dir(tmp_path: Path) -> str:
    """A PYTHONPATH entry under which a `kernels` package is importable: none needed if one is installed
    (transformers >= 5.25 brings Hugging Face's), else a stand-in."""
    spec = importlib.util.find_spec("kernels")
    if spec is not None and not Path(spec.origin).resolve().is_relative_to(OURS):
        return ""
    fake = tmp_path / "fake" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'stand-in'\n")
    return str(fake.parent)


def run_from_root(args, tmp_path, extra_path=(), **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*extra_path, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          **kw)


def kernels_file(stderr: str) -> Path:
    line = [s for s in stderr.splitlines() if s.startswith("KERNELS_FILE=")][-1]
    return Path(line.split("=", 1)[1]).resolve()


def test_import_kernels_from_the_root_is_never_the_checkouts(tmp_path):
    fake = tmp_path / "fake" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'stand-in'\n")
    r = run_from_root(["-c", "import kernels, sys; print(kernels.MARK, sys.modules['kernels'] is kernels)"],
                      tmp_path, [str(fake.parent)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["stand-in", "True"]
    # no `kernels` anywhere but the checkout (-S: no site-packages): not found, as if the folder were absent
    r = run_from_root(["-S", "-c", "import kernels"], tmp_path)
    assert r.returncode == 1 and "ModuleNotFoundError: No module named 'kernels'" in r.stderr, r.stderr
    # the package itself still imports under its own name from the root
    r = run_from_root(["-c", "import motionstreamer.kernels as k; print(k.__file__)"], tmp_path)
    assert r.returncode == 0 and Path(r.stdout.strip()).resolve() == OURS / "__init__.py", r.stderr


def test_python_m_motionstreamer_from_the_root(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = [str(site), importable_kernels_dir(tmp_path)]
    r = run_from_root(["-m", "motionstreamer", "--help"], tmp_path, path)
    assert r.returncode == 0 and "usage: motionstreamer" in r.stdout, r.stderr
    assert not kernels_file(r.stderr).is_relative_to(OURS)
    out = tmp_path / "walk"
    r = run_from_root(["-m", "motionstreamer", "generate", "a person walks forward", "--max-seconds", "1",
                       "--steps", "2", "--out", str(out), "--quiet"], tmp_path, path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "walk.npy").exists() and (tmp_path / "walk_joints.npy").exists()
    assert not kernels_file(r.stderr).is_relative_to(OURS)
