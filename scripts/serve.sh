#!/usr/bin/env bash
# The README's live-service command: install with the `serve` extra, then serve the embedded default
# model (CPU, offline) on http://127.0.0.1:8000/ : a browser app at /, the WebSocket API at /v1/stream.
# Extra arguments go to `motionstreamer serve` (e.g. --port 9000, --sampling-steps 50, --max-streams 64).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh                 # the active virtual environment, or .venv
bash scripts/install.sh          # the lock: exactly what CI tested (scripts/install.sh --latest: the newest)
exec motionstreamer serve "$@"
