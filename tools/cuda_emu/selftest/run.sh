#!/usr/bin/env bash
# cuda_emu self-test: builds selftest/bugs.cu against the emulator (ASan + UBSan, as build.sh does)
# and checks that each planted bug is reported, and that the correct kernels give correct results.
set -uo pipefail
EMU=$(cd "$(dirname "$0")/.." && pwd)
OUT=${EMU_BUILD_DIR:-$EMU/../../build-emu}/selftest
mkdir -p "$OUT"
python3 "$EMU/translate.py" "$EMU/selftest/bugs.cu" "$OUT/bugs.cpp" 2>/dev/null
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=fast -I "$EMU" \
  -fsanitize=address,alignment -fno-sanitize-recover=alignment \
  "$OUT/bugs.cpp" "$EMU/emu_runtime.cpp" -o "$OUT/bugs" || exit 1
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1

fails=0
expect() {  # case pattern [order]
  local out
  out=$(CONVNET_EMU_ORDER=${3:-forward} "$OUT/bugs" "$1" 2>&1)
  if grep -qE "$2" <<<"$out"; then
    printf 'ok    %-18s %s\n' "$1" "$(grep -oE "$2" <<<"$out" | head -1)"
  else
    printf 'FAIL  %-18s expected /%s/, got:\n%s\n' "$1" "$2" "$(head -5 <<<"$out")"
    fails=$((fails + 1))
  fi
}
expect oob_global "heap-buffer-overflow"
expect oob_tensor "use-after-poison|heap-buffer-overflow"
expect use_after_free "use-after-poison"
expect oob_shared "global-buffer-overflow"
expect early_return "__syncthreads at .* after 16 thread\(s\) of the block returned"
expect divergent_barrier "different __syncthreads"
expect partial_mask "mask 0x0000ffff"
expect shuffle_deadlock "deadlock"
expect uninit_shared "result 32 NaN"
expect misaligned_vector "misaligned address|load of misaligned"
expect host_pointer "is not in device memory"
expect bad_block "result cudaErrorInvalidConfiguration"
expect big_dynamic_smem "result cudaErrorInvalidValue"
expect cp_async_no_wait "result [1-9][0-9]* wrong"
expect good_cp_async "result 0 wrong"
expect good_cp_async "result 0 wrong" reverse
expect good "result sum ok, transpose ok"
expect good "result sum ok, transpose ok" reverse
# a race: the result depends on the order the threads run in
a=$(CONVNET_EMU_ORDER=forward "$OUT/bugs" missing_barrier | grep result)
b=$(CONVNET_EMU_ORDER=reverse "$OUT/bugs" missing_barrier | grep result)
if [ "$a" != "$b" ]; then
  echo "ok    missing_barrier    forward '$a' != reverse '$b'"
else
  echo "FAIL  missing_barrier    same result in both orders: $a"
  fails=$((fails + 1))
fi
echo "cuda_emu selftest: $fails failure(s)"
exit $((fails > 0))
