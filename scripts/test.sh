#!/usr/bin/env bash
# The README's test command: install (CPU torch first, then the package and test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==2.13.0"
python -m pip install -r requirements-build.txt
python -m pip install --no-build-isolation -e ".[test,triton]"
# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, where the top-level
# kernels/ folder would shadow the `kernels` name that transformers probes for.
pytest -q -x tests
