#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine (see DEVELOPERS notes / ../shared): builds cnnext
# against the torch installed there, runs the whole test suite (CUDA tests included), runs the
# CUDA benchmarks, and prints a short ratio table last. Logs and JSON go to $OUT (or /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cnnext-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "editable install failed; trying build_ext --inplace"
  $PY setup.py build_ext --inplace >>"$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
fi
echo "build took $(($(date +%s) - start)) s"
$PY -c "import cnnext; print(cnnext.build_info())" || exit 1

echo "== tests (CUDA cases; their emulated twins and the CPU ones run in CI)"
$PY -m pytest tests -q -p no:cacheprovider --durations=5 -k "cuda and not emu and not emulation" 2>&1 \
  | tee "$OUT/tests.log" | tail -25

echo "== benchmarks (CUDA)"
# conv2d in float32 (TF32 off), TF32, float16 and bfloat16 against cuDNN; attention in float32 and
# 16-bit against SDPA (16-bit: its FlashAttention backend, forced); pooling against native and the
# copy bandwidth; the training steps.
# One JSON for every op, as `make bench` writes for the CPU. Copy it to benchmarks/results/cuda.json
# in the repository and run `python -m benchmarks.report` there to put the CUDA rows into
# RESULTS.md, the chart and the README.
$PY -m pytest benchmarks/bench_*.py -k cuda -q -p no:cacheprovider \
  --benchmark-json="$OUT/cuda.json" >"$OUT/bench.log" 2>&1 || tail -40 "$OUT/bench.log"
$PY -m benchmarks.report "$OUT/cuda.json" --out "$OUT/RESULTS_cuda.md" --chart "$OUT/ratios_cuda.png" --readme ""
cat "$OUT/RESULTS_cuda.md"

echo "== compute-sanitizer (memcheck, racecheck) over every kernel (last: a time-out here keeps the figures)"
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ -x "$SANITIZER" ]; then
  for tool in memcheck racecheck; do
    timeout 150 "$SANITIZER" --tool "$tool" --error-exitcode 3 $PY tests/cuda_kernel_workload.py --device cuda \
      conv2d pool2d attention >"$OUT/sanitizer-$tool.log" 2>&1
    echo "$tool: exit $? ($(grep -c -E '^========= (Invalid|Error|Race)' "$OUT/sanitizer-$tool.log") reports)"
    tail -5 "$OUT/sanitizer-$tool.log"
  done
else
  echo "compute-sanitizer not found: skipped"
fi

