"""Blender out of process (motionstreamer/io/blender_process.py, io/blender_worker.py): which Blender is
found and how it is told apart (a Python with bpy, a Blender executable, bpy here), each refusal as one
line, the answer cached; the worker's closure (numpy, the standard library and the vendored
motionstreamer modules: nothing else installed) and its jobs and errors in the Blender the tests use
(CI: bpy from PyPI in its own environment, scripts/blender_env.sh; numpy < 2 there, numpy 2 here)."""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from motionstreamer.io import blender_process
from motionstreamer.io.blender_process import Blender, BlenderError, BlenderMissing, find_blender, run_job

HEAVY = ("torch", "scipy", "pygltflib", "yaml", "transformers", "matplotlib", "safetensors", "motionstreamer._C")


def fake_executable(path: Path, version_line: str, log: Path | None = None) -> Path:
    """A program that answers `--version` with `version_line` (and logs each run): what a Blender or a
    Python says, without being one."""
    lines = ["#!/bin/sh"] + ([f'echo "$@" >> "{log}"'] if log else []) + [f'echo "{version_line}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def nothing_found(monkeypatch, tmp_path):
    """No bpy here, nothing in MOTIONSTREAMER_BLENDER, an empty PATH: each test names what it adds."""
    monkeypatch.setitem(sys.modules, "bpy", None)
    monkeypatch.delenv(blender_process.ENV, raising=False)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(blender_process, "_PROBED", {})
    return tmp_path


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ----------------------------------------------------------------------------------------- finding Blender
def test_none_found_names_the_three_ways(nothing_found):
    with pytest.raises(BlenderMissing) as e:
        find_blender()
    text = one_line(e)
    for way in ('pip install "motionstreamer[blender]"', "MOTIONSTREAMER_BLENDER", "`blender` on PATH",
                "Blender 4.2+"):
        assert way in text


def test_a_blender_executable_is_told_apart_by_its_version_and_4_2_is_the_oldest(nothing_found, monkeypatch):
    bin_dir = nothing_found / "bin"
    log = nothing_found / "runs.log"
    for line, ok in (("Blender 4.1.1", False), ("Blender 4.2.0", True), ("Blender 5.0.1\n\tbuild date: x", True),
                     ("Blender 3.6.0", False), ("Blender 10.0", True)):
        blender_process._PROBED.clear()
        fake_executable(bin_dir / "blender", line, log)
        os.utime(bin_dir / "blender", ns=(1, hash(line) & 0xFFFFFFFF))     # a new file: probed afresh
        if ok:
            b = find_blender()
            assert (b.kind, b.version, b.executable) == ("blender", line.split()[1], str(bin_dir / "blender"))
            assert b.origin.startswith("blender on PATH")
        else:
            with pytest.raises(BlenderError) as e:
                find_blender()
            assert f"is Blender {line.split()[1]}; FBX needs Blender 4.2 or later" in one_line(e)
    # MOTIONSTREAMER_BLENDER before PATH, probed once however often it is asked for
    named = fake_executable(nothing_found / "my blender", "Blender 4.5.3", log)
    monkeypatch.setenv(blender_process.ENV, str(named))
    log.write_text("")
    for _ in range(3):
        b = find_blender()
        assert (b.kind, b.version, b.executable, b.origin) == ("blender", "4.5.3", str(named),
                                                               f"MOTIONSTREAMER_BLENDER={named}")
    assert log.read_text().splitlines() == ["--version"]
    assert b.command("job.py", ["a b", 3]) == [str(named), "--background", "--factory-startup", "--python-exit-code",
                                               "1", "--python", "job.py", "--", "a b", "3"]


def test_what_motionstreamer_blender_names_is_checked(nothing_found, monkeypatch):
    cases = [
        (str(nothing_found / "absent"), "no such executable file"),
        (str(fake_executable(nothing_found / "other", "other 1.0")), "is neither Blender nor Python"),
    ]
    # a real Python without bpy: this one with its site turned off (-S), so nothing but the standard library
    wrapper = nothing_found / "bare_python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    cases.append((str(wrapper), "is a Python without a working bpy (ModuleNotFoundError: No module named 'bpy')"))
    for value, expected in cases:
        monkeypatch.setenv(blender_process.ENV, value)
        with pytest.raises(BlenderError) as e:
            find_blender()
        text = one_line(e)
        assert text.startswith(f"MOTIONSTREAMER_BLENDER={value}") and expected in text, text
        assert not isinstance(e.value, BlenderMissing) or "absent" in value
    # a `blender` on PATH does not stand in for a broken MOTIONSTREAMER_BLENDER
    fake_executable(nothing_found / "bin" / "blender", "Blender 5.0.1")
    with pytest.raises(BlenderError):
        find_blender()


def test_the_other_python_does_not_get_this_environment(monkeypatch):
    """A Blender built on the system's Python (Debian's) takes its prefix from the first python3 on
    PATH: our virtual environment's bin folder and Python variables are not passed on."""
    monkeypatch.setattr(sys, "prefix", "/venv")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    env = blender_process.other_python_env({"PATH": "/venv/bin:/usr/local/bin:/venv/bin/:/usr/bin",
                                            "PYTHONPATH": "/x", "VIRTUAL_ENV": "/venv", "HOME": "/h",
                                            "BLENDER_USER_RESOURCES": "/r"})
    assert env == {"PATH": "/usr/local/bin:/usr/bin", "HOME": "/h", "BLENDER_USER_RESOURCES": "/r"}


# ----------------------------------------------------------------------------------------- the worker's closure
def test_the_worker_imports_nothing_but_numpy_and_the_standard_library(tmp_path):
    """Every vendored module (the worker's closure) imported by a Python that sees only the standard
    library, numpy and the vendored copy; then the worker run there reports its missing bpy as one line."""
    pkg = blender_process.copy_vendored(tmp_path / "pkg")
    only_numpy = tmp_path / "site"
    only_numpy.mkdir()
    np_dir = Path(np.__file__).parent
    for d in (np_dir, np_dir.parent / "numpy.libs"):
        if d.exists():
            (only_numpy / d.name).symlink_to(d)
    modules = [("motionstreamer." + f[:-3].replace("/", ".")).replace(".__init__", "")
               for f in blender_process.VENDORED]
    assert "motionstreamer.io.blender_worker" in modules and "motionstreamer.io.fbx" in modules
    code = f"""
import importlib, json, sys
sys.path[:0] = [{str(pkg)!r}, {str(only_numpy)!r}]
import numpy
with_numpy = set(sys.modules)           # numpy's own (numpy 1.x also registers Cython's runtime modules)
for m in {modules!r}:
    importlib.import_module(m)
print(json.dumps([sorted(with_numpy), sorted(sys.modules)]))
"""
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    with_numpy, loaded = json.loads(res.stdout)
    added = {m.split(".")[0] for m in set(loaded) - set(with_numpy)}
    assert added - set(sys.stdlib_module_names) == {"motionstreamer"}, added
    assert not [m for m in loaded if m.startswith(HEAVY)]
    # the worker itself, as io.blender_process runs it, in that Python: a job needing bpy fails in one line
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"job": "probe", "args": {}}))
    np.savez(job / "inputs.npz")
    env = {"PYTHONPATH": str(only_numpy)}
    res = subprocess.run([sys.executable, "-S", str(pkg / "motionstreamer" / "io" / "blender_worker.py"), str(job)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    result = json.loads((job / "result.json").read_text())
    assert result["type"] == "BlenderError" and result["error"].startswith(
        "ModuleNotFoundError in Blender: No module named 'bpy' (at blender_worker.py:"), result


# ----------------------------------------------------------------------------------------- in the test Blender
def test_jobs_run_in_the_blender_the_tests_use_on_its_own_numpy(tmp_path):
    """The Blender found (fails, never skips, when there is none): out of process in CI, with numpy 1.x
    there and 2.x here; the job runs on the copy of the package, without torch or scipy; arrays and
    arguments make the round trip; the worker's exceptions come back as themselves."""
    from motionstreamer.io.blender_process import pack_target_rig
    from motionstreamer.io.retarget import RetargetError, Skeleton, TargetRig

    b = find_blender()
    assert tuple(int(x) for x in b.version.split(".")[:2]) >= (4, 2)
    x = np.random.default_rng(0).normal(size=(5, 3))
    result, arrays = run_job("probe", {"text": "héllo", "n": [1, 2]}, {"x": x})
    assert result["echo"] == {"text": "héllo", "n": [1, 2]}
    np.testing.assert_array_equal(arrays["x"], 2 * x)
    assert result["blender"] == b.version
    assert not [m for m in result["modules"] if m.startswith(HEAVY)], result["modules"]
    if not b.in_process:
        assert Path(result["motionstreamer"]).is_relative_to(Path(tempfile.gettempdir()).resolve())
        if int(np.__version__.split(".")[0]) >= 2 and b.kind == "python":
            assert int(result["numpy"].split(".")[0]) == 1      # CI: bpy's numpy 1.26 there, numpy 2 here
    with pytest.raises(RetargetError) as e:
        run_job("read_fbx_skeleton", {"path": str(tmp_path / "absent.fbx")})
    assert "Blender cannot import it as FBX" in one_line(e)
    sk = Skeleton(["hips", "spine"], [-1, 0], [[0, 1, 0], [0, 1.2, 0]], np.tile(np.eye(3), (2, 1, 1)))
    meta, rig_arrays = pack_target_rig(TargetRig(sk, np.tile(np.eye(3), (3, 2, 1, 1)), 0, np.zeros((3, 3))))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError) as e:                        # its folder is a file
        run_job("write_fbx", {"path": str(tmp_path / "a_file" / "x.fbx"), "rig": meta}, rig_arrays)
    assert "a_file" in one_line(e)
    with pytest.raises(ValueError) as e:
        run_job("format_disk", {})
    assert "unknown Blender job 'format_disk'" in one_line(e)


def test_blender_dying_is_one_line(tmp_path):
    """A Blender that exits without a result (here: killed by a signal) is a BlenderError naming it."""
    killer = tmp_path / "dies"
    killer.write_text('#!/bin/sh\necho "about to die" >&2\nkill -9 $$\n')
    killer.chmod(0o755)
    b = Blender("python", str(killer), "5.0.1", "a test Blender that dies")
    with pytest.raises(BlenderError) as e:
        run_job("probe", {}, blender=b)
    assert one_line(e) == "Blender (a test Blender that dies) stopped with exit code -9 during probe: about to die"


def test_a_script_error_names_the_exception(tmp_path):
    """Blender prints a failing script's traceback on stdout and only 'script failed' on stderr (as
    Debian's Blender without python3-numpy does): the error names the exception, not the last line."""
    fails = tmp_path / "fails"
    fails.write_text("#!/bin/sh\n"
                     "echo 'Error: Python: Traceback (most recent call last):'\n"
                     "echo \"ModuleNotFoundError: No module named 'numpy'\"\n"
                     "echo 'Blender quit'\n"
                     "echo \"Error: script failed, file: 'worker.py', exiting.\" >&2\n")
    fails.chmod(0o755)
    b = Blender("blender", str(fails), "4.2.0", "a Blender without numpy")
    with pytest.raises(BlenderError) as e:
        run_job("probe", {}, blender=b)
    assert one_line(e) == ("Blender (a Blender without numpy) stopped with exit code 0 during probe: "
                           "ModuleNotFoundError: No module named 'numpy'")


def test_a_real_blender_executable_runs_the_worker():
    """The Blender-executable way (`blender --background ... --python worker -- JOB`) with the Blender on
    PATH whatever its version (Debian's 3.4 on the project's machines, refused by find_blender as too
    old for support, but the command line and the worker are the same for every version)."""
    exe = shutil.which("blender")
    assert exe, "no Blender executable on PATH: scripts/test.sh installs Debian's blender"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120).stdout
    b = Blender("blender", exe, out.split()[1], "blender on PATH")
    result, arrays = run_job("probe", {"k": 1}, {"x": np.arange(4.0)}, blender=b)
    assert result["echo"] == {"k": 1} and arrays["x"].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert not [m for m in result["modules"] if m.startswith(HEAVY)]
    assert Path(result["motionstreamer"]).is_relative_to(Path(tempfile.gettempdir()).resolve())
    if sys.prefix != sys.base_prefix:      # Blender's own numpy, not this virtual environment's
        assert not Path(result["numpy_path"]).resolve().is_relative_to(Path(sys.prefix).resolve())
