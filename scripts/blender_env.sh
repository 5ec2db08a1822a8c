#!/usr/bin/env bash
# Blender as a Python module (bpy from PyPI) in a virtual environment of its own: bpy pins numpy < 2 and
# the main environment has numpy 2, so FBX and the Blender add-on's tests run Blender from here
# (scripts/test.sh exports DIR/bin/python as MOTIONSTREAMER_BLENDER; docs/blender.md).
#   bash scripts/blender_env.sh [--latest] [DIR]          DIR: .venv-blender (git ignores it)
#       the lock, requirements/blender-lock.txt (bpy and its dependencies, numpy 1.26 among them, at the
#       exact versions and hashes CI tested), or with --latest the newest bpy that pyproject.toml's `blender`
#       extra allows (requirements/blender-lock.in holds that extra's requirement). bpy's wheels are built for
#       one Python: $MOTIONSTREAMER_BLENDER_PYTHON, default python3.11. An environment already installed from
#       the same lock is kept as it is; pip's cache keeps the bpy wheel (~370 MB) for the next one.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=lock dir=.venv-blender
for arg in "$@"; do
  case "$arg" in
    --latest) mode=latest ;;
    -*) echo "scripts/blender_env.sh: unknown option '$arg' (use --latest)" >&2; exit 2 ;;
    *) dir="$arg" ;;
  esac
done
python="${MOTIONSTREAMER_BLENDER_PYTHON:-python3.11}"
stamp="$dir/motionstreamer-blender-lock"
if [ "$mode" = lock ]; then
  want="$(sha256sum requirements/blender-lock.txt | cut -d' ' -f1)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$dir: installed from requirements/blender-lock.txt already"
    exit 0
  fi
  "$python" -m venv --clear "$dir"
  "$dir/bin/python" -m pip install --quiet --require-hashes --no-deps -r requirements/blender-lock.txt
else
  want=latest
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -r requirements/blender-lock.in
fi
"$dir/bin/python" -m pip check
echo "$want" > "$stamp"
"$dir/bin/python" -c 'import sys, bpy, numpy; print(f"{sys.argv[1]}: bpy {bpy.app.version_string}, numpy {numpy.__version__}")' "$dir"
