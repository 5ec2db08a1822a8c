#!/usr/bin/env bash
# The README's test command: install (CPU torch first, then the package and test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==2.13.0"
python -m pip install -r requirements-build.txt
python -m pip install --no-build-isolation -e ".[test,triton]"
# Node.js tools the tests run (tests/js: the Khronos glTF validator and three.js's GLTFLoader), pinned by
# package-lock.json; with MOTIONSTREAMER_REQUIRE_JS=1 a missing tool fails its tests instead of skipping.
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/js && npm ci --no-audit --no-fund)
export MOTIONSTREAMER_REQUIRE_JS=1
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, where the top-level
# kernels/ folder would shadow the `kernels` name that transformers probes for.
pytest -q -x tests
