#!/usr/bin/env bash
# One GPU session's checks, in the order that matters if time runs out: build with CUDA, the GPU
# tests, the streaming benchmark (official size), the Triton kernel benchmark, the causal-conv and
# training benchmarks, then the whole suite with CUDA visible. Every stage gets at most its cap and
# never more than what is left of TOTAL_S, so a slow stage cannot starve the rest; logs and result
# JSON land in $OUT (default gpu_out/), the tables are in log.txt.
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh          # on a machine with an NVIDIA GPU, torch and triton
#   STAGES=build,stream,suite SUITE_ARGS="tests --deselect ..." TOTAL_S=240 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDAARCHS=${CUDAARCHS:-90} MOTIONSTREAMER_CUDA=${MOTIONSTREAMER_CUDA:-1}
TOTAL_S=${TOTAL_S:-560}
STAGES=",${STAGES:-build,gputests,stream,kernels,external,suite},"
SUITE_ARGS=${SUITE_ARGS:-tests}
want() { [[ "$STAGES" == *",$1,"* ]]; }
LOG="$OUT/log.txt"
stage() { echo "=== $(date +%T) +${SECONDS}s $*" | tee -a "$LOG"; }
budget() { local left=$((TOTAL_S - SECONDS - 5)); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
run_stage() {  # run_stage CAP CMD...: the command under `timeout`, skipped when under 10 s are left
  local cap; cap=$(budget "$1"); shift
  if [ "$cap" -lt 10 ]; then echo "skipped: out of time" | tee -a "$LOG"; return 124; fi
  timeout "$cap" "$@"
  local rc=$?; echo "rc=$rc (cap ${cap}s)" | tee -a "$LOG"; return $rc
}

stage "machine"
{ nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"

want build && stage "build (editable, CUDA ext for sm_${CUDAARCHS})"
want build && run_stage 180 python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/build.log" 2>&1
python3 -c "import motionstreamer._C as c; print('cuda ext compiled:', c.with_cuda())" 2>&1 | tee -a "$LOG"

# -n 8: on the H200 the kernel tests are compile-bound (one Triton compile per shape and dtype; 70 tests
# took 150 s in one process), so workers compile in parallel
want gputests && stage "GPU tests" && run_stage 150 pytest -q -rfEs --tb=line -p no:cacheprovider -n 8 \
  tests/test_causal_conv_cuda.py tests/test_kernels_attention.py tests/test_kernels_head.py \
  tests/test_kernels_integration.py tests/test_kernels_bench.py tests/test_runtime_engine.py \
  tests/test_tae_streaming.py tests/test_default_model.py >"$OUT/gpu_tests.log" 2>&1
want gputests && tail -n 25 "$OUT/gpu_tests.log" | tee -a "$LOG"

bench() {  # bench CAP ARGS...: benchmarks/run.py on the GPU, its table into the log
  local cap=$1; shift
  run_stage "$cap" python3 benchmarks/run.py --device cuda --out "$OUT" "$@" 2>&1 | tail -n 40 | tee -a "$LOG"
}
want stream && stage "benchmark: streaming + throughput, official size" && bench 120 --cases stream,throughput
want kernels && stage "benchmark: Triton kernels" && bench 120 --cases external --external bench_kernels
want external && stage "benchmark: causal conv + training" && bench 90 --cases external --external bench_causal_conv,bench_train

want suite && stage "suite with CUDA visible: $SUITE_ARGS" && \
  run_stage 200 pytest -q -p no:cacheprovider -rfE --tb=line -n 12 $SUITE_ARGS >"$OUT/suite.log" 2>&1
want suite && tail -n 60 "$OUT/suite.log" | tee -a "$LOG"
rm -f "$OUT"/*.md   # the tables are in log.txt; fewer files to bring back
stage "done"
