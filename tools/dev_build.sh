#!/usr/bin/env bash
# Developer build: compile convnet._C into build-dev/ and link it into python/convnet/, so that
# `PYTHONPATH=python pytest` runs against the working tree without reinstalling.
#   CONVNET_CUDA=OFF tools/dev_build.sh      CPU only (fast)
#   CUDAARCHS=90 tools/dev_build.sh          CUDA for sm_90 only
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build-dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVNET_CUDA="${CONVNET_CUDA:-AUTO}" \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$BUILD"
so=$(ls "$BUILD"/_C*.so)
ln -sf "$(pwd)/$so" python/convnet/
echo "built $so -> python/convnet/"
