#!/bin/bash
# Line coverage of csrc/cpu/ by the op tests at OMP_NUM_THREADS = 1, 2 and 3 (issue 12, category 10):
# the three numbers must be equal, since every CPU path is forced by tests/test_robustness.py.
#
#   tools/cpu_coverage.sh            # CPU-only coverage build in build/coverage, then the three runs
#
# Needs gcovr (pip install gcovr). The build is Release (-O3) with --coverage, installed with
# `pip --target` into build/coverage/site so the environment's own convnet is left alone. Writes
# build/coverage/cov_<threads>.txt and prints one line per thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build/coverage
FILES="tests/test_conv.py tests/test_fc.py tests/test_lrn.py tests/test_pool.py tests/test_elementwise.py tests/test_robustness.py"
mkdir -p "$OUT"
CONVNET_CUDA=OFF pip install --no-build-isolation --no-deps -q . --target "$OUT/site" --upgrade \
  -C build-dir="$OUT/build" -C "cmake.define.CMAKE_CXX_FLAGS=--coverage" \
  -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=--coverage" -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=--coverage"
for T in 1 2 3; do
  find "$OUT/build" -name "*.gcda" -delete
  OMP_NUM_THREADS=$T PYTHONPATH="$OUT/site" python -m pytest $FILES -q -p no:cacheprovider > "$OUT/tests_$T.log" 2>&1 ||
    { echo "tests failed at $T threads: $OUT/tests_$T.log"; exit 1; }
  gcovr -r "$ROOT" "$OUT/build/CMakeFiles/_C.dir" --gcov-ignore-errors=source_not_found --filter 'csrc/cpu/' \
    --txt "$OUT/cov_$T.txt" > /dev/null
  echo "threads $T: $(grep '^TOTAL' "$OUT/cov_$T.txt")"
done
