// STUB: to be replaced by the real pool kernels (cuda backend).
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cuda {
namespace {
[[noreturn]] void not_yet(const char* op) { throw std::runtime_error(std::string(op) + ": not implemented yet on cuda"); }
}  // namespace
void max_pool_forward(const PoolShape&, const float*, float*, int32_t*) { not_yet("max_pool_forward"); }
void max_pool_backward(const PoolShape&, const float*, const int32_t*, float*) { not_yet("max_pool_backward"); }
void avg_pool_forward(const PoolShape&, const float*, float*) { not_yet("avg_pool_forward"); }
void avg_pool_backward(const PoolShape&, const float*, float*) { not_yet("avg_pool_backward"); }
}  // namespace cuda
}  // namespace convnet
