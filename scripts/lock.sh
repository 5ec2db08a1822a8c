#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve pyproject.toml's dependencies with the extras CI installs, the
# build requirements and the platform's torch (requirements/lock.in) to exact versions with hashes, for
# this platform (Linux x86-64, CPython 3.11). Run it in an environment with pip-tools (the `dev` extra),
# then run `bash scripts/test.sh` (the lock) and `bash scripts/test.sh --latest` before committing.
# Usage: bash scripts/lock.sh [--upgrade-package NAME ...]   (default: every package to its newest allowed)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=(test triton)      # test pulls onnx, eval, serve, docs and dev in
args=(--upgrade)
[ "${1:-}" = "--upgrade-package" ] && args=()
# the package itself (reached through its own extras, test -> motionstreamer[onnx,...]) is left out of
# the lock by naming it "unsafe", which also makes pip and setuptools ordinary pinned packages
python -m piptools compile --quiet --generate-hashes --unsafe-package motionstreamer --strip-extras --resolver backtracking \
  --no-emit-index-url --no-emit-find-links "${EXTRAS[@]/#/--extra=}" "${args[@]}" "$@" \
  --output-file requirements/lock.txt pyproject.toml requirements/lock.in
echo "requirements/lock.txt: $(grep -c '^[a-zA-Z]' requirements/lock.txt) packages"
