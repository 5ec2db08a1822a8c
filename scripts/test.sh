#!/usr/bin/env bash
# The README's test command: install (scripts/install.sh: the lock, editable), Blender in an environment
# of its own, the tools the tests run outside Python, then the linter and the whole suite.
#   bash scripts/test.sh            the locks (requirements/lock.txt, requirements/blender-lock.txt): what CI runs
#   bash scripts/test.sh --latest   the newest versions pyproject.toml's ranges allow: drift seen before
#                                   users see it (run it in a fresh virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") latest=() ;;
  --latest) latest=(--latest) ;;
  *) echo "usage: bash scripts/test.sh [--latest]" >&2; exit 2 ;;
esac
. scripts/venv.sh                 # the active virtual environment, or .venv
bash scripts/install.sh "${latest[@]}" --editable
# Blender (bpy from PyPI) for the FBX and add-on tests: bpy pins numpy < 2, so it lives in .venv-blender
# (scripts/blender_env.sh) and FBX runs there through motionstreamer/io/blender_process.py. A Blender of
# your own (MOTIONSTREAMER_BLENDER set: a Python with bpy or a Blender 4.2+ executable) is used instead.
if [ -z "${MOTIONSTREAMER_BLENDER:-}" ]; then
  bash scripts/blender_env.sh "${latest[@]}"
  export MOTIONSTREAMER_BLENDER="$PWD/.venv-blender/bin/python"
fi
# What the tests run outside Python, from Debian's packages when missing: Chromium for the browser test
# (tests/test_serve_browser.py drives it through Playwright's executable_path; Playwright never downloads
# a browser here) and Node.js for tests/js (the Khronos glTF validator and three.js's GLTFLoader, pinned
# by package-lock.json), and on x86-64 qemu-user: the int8 ONNX test (tests/test_export_onnx.py) reruns
# the int8 graphs on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell) and requires the same bits;
# a Blender executable (Debian's blender, with python3-numpy) for the test that runs the FBX worker the way
# a user's installed Blender app runs it (tests/test_blender_process.py).
# A missing tool fails the tests that need it (tests/_js.py, test_serve_browser.py, test_export_onnx.py,
# test_blender_process.py): a read-back test never skips where its tool is installable.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ "$(uname -m)" != x86_64 ] || command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
# Debian's blender runs its scripts in the system Python 3.11 without depending on its numpy (the FBX
# worker imports numpy): python3-numpy comes with it
if ! command -v blender >/dev/null 2>&1; then
  missing+=(blender python3-numpy)
elif command -v dpkg >/dev/null 2>&1 && [ "$(command -v blender)" = /usr/bin/blender ] \
    && ! dpkg -s python3-numpy >/dev/null 2>&1; then
  missing+=(python3-numpy)
fi
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    || echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them will fail" >&2
fi
(cd tests/js && npm ci --no-audit --no-fund)
ruff check .              # the lint rules are pyproject.toml's [tool.ruff]
pytest -q -x tests
