"""Where Blender comes from, and running work in it (FBX, the add-on's tests).

`find_blender()` decides once per executable, in this order:
1. `bpy` importable in this Python (`pip install "motionstreamer[blender]"`): Blender runs in this process.
2. `$MOTIONSTREAMER_BLENDER`: a Python that has bpy (e.g. a virtual environment of its own: bpy pins
   numpy < 2) or a Blender executable (4.2+), told apart by running it once with `--version`.
3. `blender` on PATH (a Blender 4.2+ install).
Otherwise BlenderMissing: one line naming the three.

Out of process, `run_job` runs io.blender_worker in that interpreter: the inputs and outputs are
files in a temporary folder (the job folder's protocol and the packing of rigs are here, shared by
both sides), the worker imports only numpy, the standard library and motionstreamer's numpy-only
modules (VENDORED: a copy of them goes first on its sys.path; the Blender add-on's zip carries the same
copy), and a failure comes back as one line (result.json), raised here as the same exception type.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motionstreamer.io.retarget import RetargetError, Skeleton, TargetRig

ENV = "MOTIONSTREAMER_BLENDER"
MIN_VERSION = (4, 2)
BLENDER_EXTRA = 'pip install "motionstreamer[blender]"'
OPTIONS = (f"{BLENDER_EXTRA} (bpy: Python 3.11, numpy < 2), or set {ENV} to a Python that has bpy or to a "
           f"Blender executable, or install Blender {MIN_VERSION[0]}.{MIN_VERSION[1]}+ with `blender` on PATH")
PROBE_TIMEOUT = 120.0

PACKAGE = Path(__file__).resolve().parents[1]
# What of motionstreamer runs inside Blender (the worker here, the add-on): numpy + the standard library
# at import (tests/test_blender_process.py imports them with nothing else installed)
VENDORED = ("__init__.py", "utils.py", "io/rig.py", "io/motion_io.py", "io/retarget.py", "io/blender_rig.py",
            "io/bvh.py", "io/fbx.py", "io/blender_process.py", "io/blender_worker.py", "representation/ik.py",
            "representation/feet.py", "representation/skeleton.py")
SUBPACKAGES = ("io", "representation")
PACKAGE_STUB = '"""motionstreamer modules vendored for Blender (motionstreamer/io/blender_process.py)."""\n'
# the job folder: what io.blender_worker reads and writes
INPUT, INPUTS, OUTPUT, RESULT = "job.json", "inputs.npz", "outputs.npz", "result.json"
WORKER = "motionstreamer/io/blender_worker.py"
# exceptions a job raises that run_job raises again as such (the CLI's one-line errors); any other
# failure comes back as BlenderError
ERRORS = {"RetargetError": RetargetError, "ValueError": ValueError, "OSError": OSError}


class BlenderError(RuntimeError):
    """Blender cannot be used, or failed: one line."""


class BlenderMissing(BlenderError):
    """No Blender found (no bpy here, no MOTIONSTREAMER_BLENDER, no `blender` on PATH)."""


@dataclass(frozen=True)
class Blender:
    """One way to run Blender. kind: "in-process" (bpy imported here), "python" (an interpreter with
    bpy) or "blender" (the Blender executable, run in the background)."""
    kind: str
    executable: str
    version: str                 # Blender's, e.g. "5.0.1"
    origin: str                  # how it was found, for messages

    @property
    def in_process(self) -> bool:
        return self.kind == "in-process"

    def command(self, script, args=()) -> list[str]:
        """The command line that runs the Python file `script` with `args` in this Blender (a script
        reads its arguments after "--" when there is one: script_args)."""
        args = [str(a) for a in args]
        if self.kind == "blender":
            return [self.executable, "--background", "--factory-startup", "--python-exit-code", "1",
                    "--python", str(script), "--", *args]
        # -I: neither PYTHONPATH nor the user's site nor the script's folder on sys.path
        return [self.executable, "-I", str(script), *args]


def script_args(argv=None) -> list[str]:
    """A script's own arguments, the same under Blender (after "--") and under Python."""
    argv = sys.argv if argv is None else argv
    return list(argv[argv.index("--") + 1:]) if "--" in argv else list(argv[1:])


def find_blender() -> Blender:
    """The Blender to use (see the module's docstring); BlenderError when the one named cannot be used."""
    try:
        import bpy
    except ImportError:
        pass
    else:
        return Blender("in-process", sys.executable, bpy.app.version_string, "bpy in this Python")
    named = os.environ.get(ENV, "").strip()
    if named:
        exe = shutil.which(named)
        if exe is None:
            raise BlenderError(f"{ENV}={named}: no such executable file (name a Python that has bpy or a "
                               "Blender executable)")
        return _probe(os.path.abspath(exe), f"{ENV}={named}")
    exe = shutil.which("blender")
    if exe is None:
        raise BlenderMissing(f"FBX goes through Blender, and none was found: {OPTIONS}")
    return _probe(os.path.abspath(exe), f"blender on PATH ({exe})")


_PROBED: dict = {}


def _probe(exe: str, origin: str) -> Blender:
    """Run `exe --version` (and, for a Python, import bpy in it) once per executable (its path, not
    resolved: a virtual environment's python is a link to another) and modification time."""
    key = (exe, os.stat(exe).st_mtime_ns)
    if key not in _PROBED:
        _PROBED[key] = _identify(exe, origin)
    found = _PROBED[key]
    if isinstance(found, BlenderError):
        raise found
    return Blender(found.kind, found.executable, found.version, origin)


def _identify(exe: str, origin: str):
    """Blender, or the BlenderError to raise (kept, so a broken one is not run again)."""
    try:
        res = _run([exe, "--version"])
        out = res.stdout + res.stderr
        m = re.search(r"^Blender (\d+)\.(\d+)(?:\.(\d+))?", out, re.M)
        if m:
            kind, version = "blender", m.group(0).split()[1]
        elif re.match(r"Python 3\.\d+", out.strip()):
            kind = "python"
            code = "import bpy, numpy; print('bpy', bpy.app.version_string)"
            res = _run([exe, "-I", "-c", code])
            m = re.search(r"^bpy (\d+)\.(\d+)(?:\.(\d+))?", res.stdout, re.M)
            if res.returncode != 0 or not m:
                why = _last_line(res.stderr) or f"exit code {res.returncode}"
                return BlenderError(f"{origin} is a Python without a working bpy ({why}); {OPTIONS}")
            version = m.group(0).split()[1]
        else:
            return BlenderError(f"{origin} is neither Blender nor Python (`--version` said "
                                f"{_last_line(out)[:80]!r}); {OPTIONS}")
    except (OSError, subprocess.SubprocessError) as e:
        return BlenderError(f"{origin} cannot be run ({_last_line(str(e))}); {OPTIONS}")
    if tuple(int(x) for x in m.groups()[:2]) < MIN_VERSION:
        return BlenderError(f"{origin} is Blender {version}; FBX needs Blender {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                            f"or later: {OPTIONS}")
    return Blender(kind, exe, version, origin)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                          env=other_python_env())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# the exception line that ends a Python traceback ("ModuleNotFoundError: No module named 'numpy'")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit): .+$")


def _failure(res: subprocess.CompletedProcess) -> str:
    """Why a job's Blender stopped: the last exception line it printed (Blender prints a script's
    traceback on stdout and only 'script failed' on stderr), else its last line."""
    for text in (res.stderr, res.stdout):
        found = [line.strip() for line in str(text or "").splitlines() if _EXCEPTION_LINE.match(line.strip())]
        if found:
            return found[-1][:300]
    return _last_line(res.stderr) or _last_line(res.stdout) or "no output"


def other_python_env(env=None) -> dict:
    """The environment for another Python (a Blender): without this one's virtual environment and
    Python variables. A Blender built against the system's Python (Debian's) takes its sys.prefix from
    the first python3.x on PATH, so it would load this environment's numpy 2 and packages."""
    env = dict(os.environ if env is None else env)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "CONDA_PREFIX"):
        env.pop(var, None)
    if sys.prefix != sys.base_prefix:
        ours = os.path.normcase(os.path.abspath(os.path.join(sys.prefix, "Scripts" if os.name == "nt" else "bin")))
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if os.path.normcase(os.path.abspath(p or ".")) != ours)
    return env


def run_script(script, args=(), blender: Blender | None = None, timeout: float | None = None, env=None, **kw):
    """Run a Python file in Blender (found by find_blender unless given; in process means with this
    Python, which has bpy) in a new process; subprocess.CompletedProcess with text output."""
    blender = blender or find_blender()
    if blender.in_process:
        cmd = [sys.executable, "-I", str(script), *map(str, args)]
    else:
        cmd, env = blender.command(script, args), other_python_env(env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          **kw)


def write_vendored(write_file, write_text) -> None:
    """Lay the vendored package out through write_file(source file, path) and write_text(path, text),
    paths relative to the package's parent folder; the sub-packages get empty __init__ files (theirs
    would import the rest of the package)."""
    for f in VENDORED:
        write_file(PACKAGE / f, f"motionstreamer/{f}")
    for sub in SUBPACKAGES:
        write_text(f"motionstreamer/{sub}/__init__.py", PACKAGE_STUB)


def copy_vendored(folder: Path) -> Path:
    """The vendored package under `folder` (which goes on sys.path); returns `folder`."""
    def target(rel: str) -> Path:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        return folder / rel

    write_vendored(lambda src, rel: shutil.copyfile(src, target(rel)), lambda rel, text: target(rel).write_text(text))
    return folder


def run_job(job: str, args: dict, arrays: dict | None = None, blender: Blender | None = None,
            timeout: float | None = None) -> tuple[dict, dict]:
    """Run io.blender_worker's `job` in Blender out of process, with `args` (JSON) and `arrays` (numpy);
    returns its (result, arrays). Raises what the job raised there (RetargetError, ValueError,
    OSError), or BlenderError with one line."""
    blender = blender or find_blender()
    with tempfile.TemporaryDirectory(prefix="motionstreamer-blender-") as tmp:
        d = Path(tmp)
        script = copy_vendored(d / "pkg") / WORKER
        (d / INPUT).write_text(json.dumps({"job": job, "args": args}))
        np.savez(d / INPUTS, **(arrays or {}))
        try:
            res = run_script(script, [d], blender=blender, timeout=timeout, cwd=os.getcwd())
        except subprocess.TimeoutExpired:
            raise BlenderError(f"Blender ({blender.origin}) did not finish {job} within {timeout:g} s") from None
        except OSError as e:
            raise BlenderError(f"Blender ({blender.origin}) cannot be run: {e}") from None
        if not (d / RESULT).is_file():
            raise BlenderError(f"Blender ({blender.origin}) stopped with exit code {res.returncode} during {job}: "
                               f"{_failure(res)}")
        result = json.loads((d / RESULT).read_text())
        if "error" in result:
            raise ERRORS.get(result.get("type"), BlenderError)(result["error"])
        out = {}
        if (d / OUTPUT).is_file():
            with np.load(d / OUTPUT) as z:
                out = {k: z[k] for k in z.files}
        return result, out


# ----------------------------------------------------------------------------------------- packing (both sides)
def pack_skeleton(sk: Skeleton, prefix: str = "") -> tuple[dict, dict]:
    meta = {"names": list(sk.names), "parents": list(sk.parents), "unit": sk.unit, "source": sk.source,
            "fbx_armature": sk.fbx_armature}
    return meta, {f"{prefix}rest_positions": sk.rest_positions, f"{prefix}rest_rotations": sk.rest_rotations}


def unpack_skeleton(meta: dict, arrays: dict, prefix: str = "") -> Skeleton:
    return Skeleton(meta["names"], meta["parents"], arrays[f"{prefix}rest_positions"],
                    arrays[f"{prefix}rest_rotations"], meta["unit"], meta["source"], meta["fbx_armature"])


def pack_target_rig(rig: TargetRig) -> tuple[dict, dict]:
    meta, arrays = pack_skeleton(rig.skeleton, "skeleton_")
    meta = {"skeleton": meta, "mover": rig.mover, "fps": rig.fps, "scheme": rig.scheme,
            "bone_map": [[int(j), int(b)] for j, b in rig.bone_map.items()]}
    return meta, {**arrays, "rotations": rig.rotations, "translation": rig.translation}


def unpack_target_rig(meta: dict, arrays: dict) -> TargetRig:
    return TargetRig(unpack_skeleton(meta["skeleton"], arrays, "skeleton_"), arrays["rotations"], meta["mover"],
                     arrays["translation"], meta["fps"], {j: b for j, b in meta["bone_map"]}, meta["scheme"])
