#!/usr/bin/env bash
# cuda_emu build: convnet._C with the CUDA backend compiled by g++ against the CPU emulator in
# tools/cuda_emu, into build-emu/ (or $EMU_BUILD_DIR). See tools/cuda_emu/README.md.
#
#   tools/cuda_emu/build.sh            AddressSanitizer build (run python with LD_PRELOAD=libasan,
#                                      as tools/cuda_emu/env.sh does)
#   EMU_ASAN=0 tools/cuda_emu/build.sh plain build (no bounds checks, faster)
#
# It is the project's own CMake build in its emulator mode (CONVNET_CUDA=EMU, CMakeLists.txt), so the
# host sources get exactly the flags of `pip install .` (-Werror included) and ninja rebuilds only
# what changed. RelWithDebInfo (host code -O2 -g) rather than Release, because pybind11 strips a Release
# module and an ASan report would then not name the .cu line. Then: source tools/cuda_emu/env.sh; python3 -c "import convnet; print(convnet.devices())"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${EMU_BUILD_DIR:-$ROOT/build-emu}
ASAN=${EMU_ASAN:-1}
JOBS=${EMU_JOBS:-$(nproc)}
case $ASAN in 1) ASAN_OPT=ON ;; *) ASAN_OPT=OFF ;; esac
for tool in cmake ninja; do
  command -v "$tool" >/dev/null || { echo "cuda_emu: $tool not found (pip install cmake ninja)" >&2; exit 1; }
done

cmake -S "$ROOT" -B "$OUT" -G Ninja -DCONVNET_CUDA=EMU -DCONVNET_EMU_ASAN=$ASAN_OPT \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$(command -v python3)" \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >"$OUT.cmake.log" 2>&1 ||
  { cat "$OUT.cmake.log" >&2; exit 1; }
mv "$OUT.cmake.log" "$OUT/cmake.log"
cmake --build "$OUT" -j "$JOBS"
echo "$ASAN" > "$OUT/asan"

# the Python layer beside the module (links, so edits in python/ are picked up)
EXT=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
for p in "$ROOT"/python/convnet/*; do
  case $(basename "$p") in _C*.so | __pycache__) continue ;; esac
  ln -sfn "$p" "$OUT/convnet/$(basename "$p")"
done
echo "cuda_emu: built $OUT/convnet/_C$EXT (asan=$ASAN)"
