#!/usr/bin/env bash
# cuda_emu: build the emulated module and run the pytest suite's cuda:0 / cuda:1 cases against the
# real kernel source (tools/cuda_emu/README.md). Each step prints its wall time; the exit status is
# non-zero when any step fails.
#
#   tools/cuda_emu/run_tests.sh            build, self-test, the suite, then the race checks
#   EMU_QUICK=1 tools/cuda_emu/run_tests.sh   the suite only
#   EMU_FULL=1 ...                          also the AlexNet conv1 shapes (about 6 more minutes)
#   extra arguments go to pytest (e.g. -x, -k gemm)
#
# Skipped by default: test_conv_alexnet_layers[*conv1*] -- conv_backward_data at conv1's shape is
# 806 blocks x 256 threads x 1452 barriers (~3e8 fiber switches): ~100 s per case under ASan -- and
# test_winograd_alexnet_layers (AlexNet's 3x3 / 5x5 layers at batch 1 through every Winograd pass,
# ~20 s per case and device).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
status=0
step() {  # name command...
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  "$@"
  rc=$?
  printf '== %-40s rc=%d  %.1f s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

step build tools/cuda_emu/build.sh || exit 1
# shellcheck source=/dev/null
source tools/cuda_emu/env.sh
export CONVNET_TEST_DEVICES=cuda:0,cuda:1

FILES=(tests/test_elementwise.py tests/test_fc.py tests/test_conv.py tests/test_lrn.py tests/test_pool.py
       tests/test_tensor.py tests/test_upload.py tests/test_errors.py tests/test_parallel.py
       tests/test_precision_cuda.py tests/test_winograd.py)
K=(-k "not conv1 and not winograd_alexnet")
[ "${EMU_FULL:-0}" = 1 ] && K=()

if [ "${EMU_QUICK:-0}" != 1 ]; then
  step "selftest (planted bugs are caught)" tools/cuda_emu/selftest/run.sh
fi
# the emulated tensor-core instructions of cuda/mma.cuh, tile by tile (a few seconds)
step "mma_check (emulated ldmatrix / mma fragments)" tools/cuda_emu/selftest/mma_check.sh
for f in "${FILES[@]}"; do
  step "pytest $f" python3 -m pytest -q -m "not slow" "${K[@]}" "$@" "$f"
done
[ "${EMU_QUICK:-0}" = 1 ] && exit $status

# Races: run every op with threads and blocks in forward and in reverse order, compare bit for bit;
# then the suite again in reverse order.
tmp=$(mktemp -d)
step "order_check forward" env CONVNET_EMU_ORDER=forward python3 tools/cuda_emu/order_check.py run "$tmp/f.npz"
step "order_check reverse" env CONVNET_EMU_ORDER=reverse python3 tools/cuda_emu/order_check.py run "$tmp/r.npz"
step "order_check compare" python3 tools/cuda_emu/order_check.py compare "$tmp/f.npz" "$tmp/r.npz"
# The debug mode (CONVNET_SYNC=1, cuda/common.cuh: a wait and a check after every launch) runs every
# op and changes no result.
step "order_check CONVNET_SYNC=1" env CONVNET_SYNC=1 python3 tools/cuda_emu/order_check.py run "$tmp/s.npz"
step "order_check compare sync" python3 tools/cuda_emu/order_check.py compare "$tmp/f.npz" "$tmp/s.npz"
rm -rf "$tmp"
step "pytest, reverse order" env CONVNET_EMU_ORDER=reverse python3 -m pytest -q -m "not slow" "${K[@]}" "$@" "${FILES[@]}"
# Other machine shapes: one SM (no split-K: the direct-write GEMM / backward-filter paths), and two
# devices without peer access (copies staged through pinned host memory).
step "pytest fc+conv, 1 SM (no split-K)" env CONVNET_EMU_SMS=1 python3 -m pytest -q -m "not slow" "${K[@]}" "$@" \
  tests/test_fc.py tests/test_conv.py
step "pytest tensor, no peer access" env CONVNET_EMU_PEER=0 python3 -m pytest -q "$@" tests/test_tensor.py
exit $status
