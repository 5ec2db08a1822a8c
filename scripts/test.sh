#!/usr/bin/env bash
# The README's test command: install (CPU torch first, then the package and test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==2.13.0"
python -m pip install -r requirements-build.txt
python -m pip install --no-build-isolation -e ".[test,triton]"
# The browser test (tests/test_serve_browser.py) drives Debian's Chromium through Playwright's
# executable_path (Playwright never downloads a browser here): install it when it is missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    || echo "scripts/test.sh: could not install chromium; the browser test will fail" >&2
fi
# The int8 ONNX test (tests/test_export_onnx.py) reruns the int8 graphs on an emulated AVX2-only CPU
# (qemu-x86_64 -cpu Haswell) and requires the same bits as on this CPU: install qemu-user when missing.
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user; } \
    || echo "scripts/test.sh: could not install qemu-user; the int8 ONNX test will fail" >&2
fi
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, where the top-level
# kernels/ folder would shadow the `kernels` name that transformers probes for.
pytest -q -x tests
