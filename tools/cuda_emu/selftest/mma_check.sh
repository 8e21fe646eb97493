#!/usr/bin/env bash
# cuda_emu: build and run selftest/mma_check.cu, the check of cuda/mma.cuh's emulated tensor-core
# instructions (conversions, ldmatrix, one mma tile of each precision) against the PTX ISA's
# fragment tables and a double-precision reference. Compiles it with the emulator runtime, with the
# sanitizers of the last build.sh (its asan file; ASan when there is none).
set -euo pipefail
EMU=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$EMU/../.." && pwd)
OUT=${EMU_BUILD_DIR:-$ROOT/build-emu}
mkdir -p "$OUT/selftest"
python3 "$EMU/translate.py" "$EMU/selftest/mma_check.cu" "$OUT/selftest/mma_check.cpp" 2>/dev/null
SAN=()
[ "$(cat "$OUT/asan" 2>/dev/null || echo 1)" = 1 ] &&
  SAN=(-fsanitize=address,alignment,signed-integer-overflow -fno-sanitize-recover=alignment,signed-integer-overflow)
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=fast -Wall -Wno-unused-function "${SAN[@]}" \
  -I "$EMU" -I "$ROOT/cuda" -I "$ROOT/csrc" "$OUT/selftest/mma_check.cpp" "$EMU/emu_runtime.cpp" \
  -o "$OUT/selftest/mma_check"
ASAN_OPTIONS=detect_leaks=0 "$OUT/selftest/mma_check"
