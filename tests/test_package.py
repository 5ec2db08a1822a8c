"""The package as users get it, not as the checkout holds it. `python -m build` makes the sdist and, from
the sdist, the wheel (MOTIONSTREAMER_CUDA=0); the sdist also builds a CUDA wheel (=1, nvcc), whose native
extension carries the device code the CPU one lacks. The CPU wheel goes into a fresh virtual environment
with the lock (scripts/install.sh --wheel), and from a folder outside the checkout the installed
`motionstreamer` generates with the embedded model, serves (/health, /v1/info, the page), exports ONNX,
and finds its assets (the embedded model, the page, three.js) inside the installed package."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def build_env(cuda: str) -> dict:
    env = dict(os.environ, MOTIONSTREAMER_CUDA=cuda)
    env.pop("MOTIONSTREAMER_BUILD_TYPE", None)
    return env


def native_extension(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("motionstreamer/_C") and n.endswith(".so")]
        assert len(names) == 1, z.namelist()
        return z.read(names[0])


def checkout_copy(dst: Path) -> Path:
    """The files git sees (tracked and new, not ignored): a build from the checkout itself would also read
    what earlier builds left there (an egg-info's file list can bring back files the config dropped)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    src = checkout_copy(tmp_path_factory.mktemp("src"))
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], src, build_env("0"))
    sdist, = out.glob("motionstreamer-*.tar.gz")
    wheel, = out.glob("motionstreamer-*.whl")
    return sdist, wheel


def test_sdist_builds_a_cuda_wheel(dists, tmp_path):
    sdist, cpu_wheel = dists
    with tarfile.open(sdist) as t:
        names = t.getnames()
        t.extractall(tmp_path, filter="data")
    top = names[0].split("/")[0]
    for needed in ("CMakeLists.txt", "csrc/cuda/causal_conv.cu", "csrc/cpu/causal_conv.cpp", "kernels/__init__.py",
                   "LICENSE"):
        assert f"{top}/{needed}" in names
    assert shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists(), "nvcc is needed to build the CUDA wheel"
    env = build_env("1")
    env["PATH"] = f"/usr/local/cuda/bin{os.pathsep}{env['PATH']}"
    run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", tmp_path / "cuda", tmp_path / top],
        tmp_path, env)
    cuda_wheel, = (tmp_path / "cuda").glob("*.whl")
    # the device code is embedded as a fat binary section: in the CUDA build's extension, not in the CPU one
    assert b".nv_fatbin" in native_extension(cuda_wheel)
    assert b".nv_fatbin" not in native_extension(cpu_wheel)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def test_wheel_in_a_fresh_venv_with_the_lock(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    run(["bash", ROOT / "scripts" / "install.sh", "--wheel", wheel], ROOT, env, timeout=1500)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ms = venv / "bin" / "motionstreamer"

    # the installed package, with its native extension and assets, not the checkout
    probe = ("import json, importlib.resources as r, motionstreamer, motionstreamer._C\n"
             "root = r.files('motionstreamer')\n"
             "paths = ['assets/default_model/config.json', 'assets/default_model/t2m.safetensors',\n"
             "         'assets/default_model/tae.safetensors', 'serve/static/index.html',\n"
             "         'serve/static/vendor/three/three.module.js', 'serve/static/vendor/three/LICENSE']\n"
             "print(json.dumps({'file': motionstreamer.__file__, 'missing': [p for p in paths\n"
             "                  if not root.joinpath(p).is_file()]}))\n")
    info = json.loads(run([venv / "bin" / "python", "-c", probe], outside, env).stdout)
    assert info["missing"] == []
    assert Path(info["file"]).resolve().is_relative_to(venv.resolve()), info["file"]

    run([ms, "generate", "a person walks forward", "--max-seconds", "2", "--steps", "2", "--out", "walk", "--glb",
         "--quiet"], outside, env)
    assert (outside / "walk.npy").stat().st_size > 0 and (outside / "walk.glb").stat().st_size > 0

    run([ms, "export-onnx", "--out", "onnx"], outside, env)
    assert sorted(p.suffix for p in (outside / "onnx").iterdir()).count(".onnx") >= 4

    port = free_port()
    server = subprocess.Popen([ms, "serve", "--port", str(port)], cwd=outside, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                status, _ = get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health in 180 s"
                time.sleep(0.5)
        assert status == 200
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"three" in page
        status, body = get(f"http://127.0.0.1:{port}/v1/info")
        assert status == 200 and json.loads(body)["fps"] == 30
    finally:
        server.terminate()
        server.wait(timeout=30)
