#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (see benchmarks/RESULTS.md for what it gave).
#
#   1. builds convnet with CONVNET_CUDA=ON for sm_90 (H100/H200; CUDAARCHS overrides),
#   2. runs the whole test suite against the CUDA device (CONVNET_TEST_DEVICES=cuda:0 plus the CPU),
#   3. runs compute-sanitizer memcheck and racecheck on a small case of every op,
#   4. runs the benchmarks side by side with PyTorch/cuDNN (TF32 off),
#   5. prints a short summary table last.
# Logs and JSON go to $OUT (or ./device_check_out when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A STATUS
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember pass/fail
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  STATUS[$name]="rc=$rc ($((SECONDS - t0)) s)"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee "$OUT/commit.txt"

export CUDAARCHS=${CUDAARCHS:-90}
step build env CONVNET_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -q . || {
  echo "build failed: see $OUT/build.log"; exit 1; }

CONVNET_SKIP_EMULATOR=1 CONVNET_TEST_DEVICES=cpu,cuda:0 step tests python3 -m pytest -q --maxfail=20 -p no:cacheprovider \
  -o addopts="" -m "not slow" --junitxml="$OUT/junit.xml" tests/ || true

if command -v compute-sanitizer >/dev/null; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitizer_case.py || true
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 9 python3 tools/sanitizer_case.py || true
else
  echo "compute-sanitizer not found"; STATUS[memcheck]="not run (no compute-sanitizer)"
fi

# Data parallelism: NCCL (loaded at run time from the nvidia-nccl-cu13 wheel) on the GPU, then the
# MPI data-parallel tests and benchmark (K = 1, 2 ranks on this machine's CPUs).
python3 -m pip install -q "nvidia-nccl-cu13" "mpi4py>=4" mpich >/dev/null 2>&1 || echo "pip install of nccl/mpi failed"
step nccl python3 tools/nccl_check.py || true
step dp_nccl python3 tools/dp_nccl_check.py || true
step distributed python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_distributed.py tests/test_nccl.py || true
step bench_dp python3 benchmarks/bench_dp.py --json "$OUT/bench_dp.json" || true

step bench_conv python3 benchmarks/bench_conv.py --device cuda:0 --json "$OUT/bench_conv.json" || true
if [ -f benchmarks/bench_train.py ]; then
  step bench_train python3 benchmarks/bench_train.py --device cuda:0 --json "$OUT/bench_train.json" || true
fi

echo
echo "=== summary ($(cat "$OUT/gpu.txt" 2>/dev/null), commit $(cat "$OUT/commit.txt" 2>/dev/null))"
for name in build tests memcheck racecheck nccl dp_nccl distributed bench_dp bench_conv bench_train; do
  [ -n "${STATUS[$name]:-}" ] && printf '%-12s %s\n' "$name" "${STATUS[$name]}"
done
tail -n 3 "$OUT/tests.log" 2>/dev/null
grep -E "ERROR SUMMARY" "$OUT/memcheck.log" "$OUT/racecheck.log" 2>/dev/null
