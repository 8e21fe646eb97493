// STUB: to be replaced by the tiled shared-memory CUDA GEMM.
#include <stdexcept>

#include "backend.h"

namespace convnet {
namespace cuda {
void gemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
  throw std::runtime_error("gemm: not implemented yet on cuda");
}
}  // namespace cuda
}  // namespace convnet
