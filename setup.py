"""Build: setuptools drives CMake, which compiles csrc/ into motionstreamer._C (pybind11).

The CPU path always builds. CUDA sources are compiled when nvcc is found; set
MOTIONSTREAMER_CUDA=0 to force them off, or =1 to make a missing nvcc an error.
`kernels/` is installed as `motionstreamer.kernels`.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("MOTIONSTREAMER_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DMOTIONSTREAMER_EXT_SUFFIX={Path(self.get_ext_filename(ext.name)).name[len('_C'):]}",
        ]
        cuda = os.environ.get("MOTIONSTREAMER_CUDA", "auto").lower()
        args.append(f"-DMOTIONSTREAMER_CUDA={cuda}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)


packages = find_packages(include=["motionstreamer", "motionstreamer.*"])
packages.append("motionstreamer.kernels")

setup(
    packages=packages,
    package_dir={"motionstreamer.kernels": "kernels"},
    ext_modules=[CMakeExtension("motionstreamer._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
