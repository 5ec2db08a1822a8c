#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve pyproject.toml's dependencies with the extras CI installs, the
# build requirements and the platform's torch (requirements/lock.in) to exact versions with hashes, for
# this platform (Linux x86-64, CPython 3.11); and requirements/blender-lock.txt, the environment Blender
# runs from in the tests (the `blender` extra alone, requirements/blender-lock.in: bpy pins numpy < 2).
# Run it in an environment with pip-tools (the `dev` extra), then run `bash scripts/test.sh` (the locks)
# and `bash scripts/test.sh --latest` before committing.
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
python -m piptools compile --quiet --generate-hashes --strip-extras --resolver backtracking --no-emit-index-url \
  --no-emit-find-links "${args[@]}" "$@" --output-file requirements/blender-lock.txt requirements/blender-lock.in
for lock in requirements/lock.txt requirements/blender-lock.txt; do
  echo "$lock: $(grep -c '^[a-zA-Z]' "$lock") packages"
done
