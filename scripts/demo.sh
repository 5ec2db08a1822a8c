#!/usr/bin/env bash
# The README's main command: install, then stream text -> motion with the embedded default model
# (CPU, offline) and write a video and a BVH. Usage: bash scripts/demo.sh ["a prompt" ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh                 # the active virtual environment, or .venv
bash scripts/install.sh          # the lock: exactly what CI tested (scripts/install.sh --latest: the newest)
mkdir -p out
if [ "$#" -eq 0 ]; then set -- "a person jogs forward then waves"; fi
motionstreamer generate "$1" --out out/demo --render mp4 --bvh --glb
if [ "$#" -gt 1 ]; then
  args=(); for p in "$@"; do args+=(--prompt "$p"); done
  motionstreamer stream "${args[@]}" --out out/stream --render mp4 --bvh --glb
fi
echo "open out/demo.mp4 (video), out/demo.bvh (Blender: File > Import > BVH) or out/demo.glb (any glTF viewer)"
