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

echo "== tests"
$PY -m pytest tests -q -x -p no:cacheprovider --durations=5 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== benchmarks (CUDA)"
for op in conv2d pool2d attention training; do
  $PY -m pytest "benchmarks/bench_$op.py" -k cuda -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_${op}_cuda.json" >"$OUT/bench_$op.log" 2>&1 || tail -30 "$OUT/bench_$op.log"
done
for op in conv2d pool2d attention training; do
  $PY benchmarks/summarize.py "$OUT/bench_${op}_cuda.json" --device cuda | tee "$OUT/summary_$op.md"
done
