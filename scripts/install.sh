#!/usr/bin/env bash
# Installs motionstreamer with everything it needs into the active virtual environment, or else into the
# checkout's own .venv (scripts/venv.sh); the README's commands and .ci/run go through it.
#   bash scripts/install.sh [--editable] [--wheel FILE]
#       the lock, requirements/lock.txt: every dependency (runtime, build, test, serve, docs, dev) at the
#       exact version and hash CI tested, then the package itself (built here with --no-build-isolation
#       against the locked build requirements, or the given wheel), then `pip check`
#   bash scripts/install.sh --latest [--editable]
#       instead, the newest versions pyproject.toml's ranges allow (with the test and triton extras):
#       what a user's `pip install motionstreamer` gets today. torch is the exception: it stays the
#       platform's wheel ($MOTIONSTREAMER_TORCH, default torch==2.13.0, the CPU wheel in /opt/wheels on
#       the project's machines), since which build of torch to take is a choice of platform, not of date.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=lock editable=() wheel=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --latest) mode=latest ;;
    --editable) editable=(-e) ;;
    --wheel) wheel="${2:?--wheel needs a file}"; shift ;;
    *) echo "scripts/install.sh: unknown argument '$1' (use --latest, --editable, --wheel FILE)" >&2; exit 2 ;;
  esac
  shift
done
. scripts/venv.sh                 # the active virtual environment, or .venv
if [ "$mode" = lock ]; then
  python -m pip install --require-hashes --no-deps -r requirements/lock.txt
  if [ -n "$wheel" ]; then
    python -m pip install --no-deps "$wheel"
  else
    python -m pip install --no-deps --no-build-isolation "${editable[@]}" .
  fi
  python -m pip check
else
  torch_spec="${MOTIONSTREAMER_TORCH:-torch==2.13.0}"
  keep_torch="$(mktemp)"; trap 'rm -f "$keep_torch"' EXIT
  echo "$torch_spec" > "$keep_torch"      # a constraint: --upgrade-strategy eager must not swap the torch build
  python -m pip install "$torch_spec"
  python -m pip install --upgrade -c "$keep_torch" -r requirements-build.txt
  python -m pip install --upgrade --upgrade-strategy eager -c "$keep_torch" --no-build-isolation "${editable[@]}" \
    ".[test,triton]"
  python -m pip check
fi
