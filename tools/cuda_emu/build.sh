#!/usr/bin/env bash
# cuda_emu build: convnet._C with the CUDA backend compiled by g++ against the CPU emulator in
# tools/cuda_emu, into build-emu/ (or $EMU_BUILD_DIR). See tools/cuda_emu/README.md.
#
#   tools/cuda_emu/build.sh            AddressSanitizer build (run python with LD_PRELOAD=libasan,
#                                      as tools/cuda_emu/env.sh does)
#   EMU_ASAN=0 tools/cuda_emu/build.sh plain build (no bounds checks, faster)
#
# Then: source tools/cuda_emu/env.sh; python3 -c "import convnet; print(convnet.devices())"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EMU=$ROOT/tools/cuda_emu
OUT=${EMU_BUILD_DIR:-$ROOT/build-emu}
ASAN=${EMU_ASAN:-1}
JOBS=${EMU_JOBS:-$(nproc)}
mkdir -p "$OUT/gen" "$OUT/obj" "$OUT/convnet"

PYINC=$(python3 -m pybind11 --includes)
EXT=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# -ffp-contract=fast: nvcc fuses a*b+c into an FMA by default and so does the CMake build of the
# CPU kernels (GNU mode); -std=c++17 alone would turn contraction off.
COMMON=(-std=c++17 -O1 -g -fPIC -fopenmp -march=native -ffp-contract=fast -fno-omit-frame-pointer
        -Wall -Wno-unused-function -Wno-unknown-pragmas
        -DCONVNET_WITH_CUDA=1 -DCONVNET_WITH_OPENMP=1 "-DCONVNET_CUDA_ARCHS=\"emu\""
        "-DCONVNET_OPENMP=\"yes\"" "-DCONVNET_VERSION=\"emu\""
        -I "$EMU" -I "$ROOT/csrc" -I "$ROOT/cuda" $PYINC)
SAN=()
KSAN=()
if [ "$ASAN" = 1 ]; then
  SAN=(-fsanitize=address)
  # kernels only: misaligned float4 accesses and signed index overflow are kernel bugs
  KSAN=(-fsanitize=alignment,signed-integer-overflow -fno-sanitize-recover=alignment,signed-integer-overflow)
fi
echo "$ASAN" > "$OUT/asan"

for f in "$ROOT"/cuda/*.cu "$ROOT"/cuda/runtime/*.cu; do  # the kernels, then the runtime
  python3 "$EMU/translate.py" "$f" "$OUT/gen/$(basename "${f%.cu}").cpp"
done

compile() {  # src obj extra-flags...
  local src=$1 obj=$2
  shift 2
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$EMU/cuda_runtime.h" -nt "$obj" ] ||
     [ "$EMU/cuda_pipeline_primitives.h" -nt "$obj" ] || [ "$0" -nt "$obj" ]; then
    g++ "${COMMON[@]}" "${SAN[@]}" "$@" -c "$src" -o "$obj"
  fi
}
pids=()
objs=()
for src in "$ROOT"/csrc/*.cpp "$ROOT"/csrc/cpu/*.cpp; do
  [ "$(basename "$src")" = cuda_fallback.cpp ] && continue  # the emulated backend replaces it
  obj=$OUT/obj/$(basename "$(dirname "$src")")_$(basename "${src%.cpp}").o
  objs+=("$obj")
  compile "$src" "$obj" -O2 -w &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done
for src in "$OUT"/gen/*.cpp "$EMU/emu_runtime.cpp"; do
  obj=$OUT/obj/emu_$(basename "${src%.cpp}").o
  objs+=("$obj")
  compile "$src" "$obj" "${KSAN[@]}" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done
for p in "${pids[@]}"; do wait "$p"; done
g++ -shared -fopenmp "${SAN[@]}" "${KSAN[@]}" "${objs[@]}" -o "$OUT/convnet/_C$EXT"

# the Python layer beside the module (links, so edits in python/ are picked up)
for p in "$ROOT"/python/convnet/*; do
  case $(basename "$p") in _C*.so | __pycache__) continue ;; esac
  ln -sfn "$p" "$OUT/convnet/$(basename "$p")"
done
echo "cuda_emu: built $OUT/convnet/_C$EXT (asan=$ASAN)"
