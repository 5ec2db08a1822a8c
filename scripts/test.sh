#!/usr/bin/env bash
# The README's test command: install (CPU torch first, then the package and test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==2.13.0"
python -m pip install -r requirements-build.txt
python -m pip install --no-build-isolation -e ".[test,triton]"
# What the tests run outside Python, from Debian's packages when missing: Chromium for the browser test
# (tests/test_serve_browser.py drives it through Playwright's executable_path; Playwright never downloads
# a browser here) and Node.js for tests/js (the Khronos glTF validator and three.js's GLTFLoader, pinned
# by package-lock.json). With MOTIONSTREAMER_REQUIRE_JS=1 a missing node tool fails its tests.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    || echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them will fail" >&2
fi
(cd tests/js && npm ci --no-audit --no-fund)
export MOTIONSTREAMER_REQUIRE_JS=1
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, where the top-level
# kernels/ folder would shadow the `kernels` name that transformers probes for.
pytest -q -x tests
