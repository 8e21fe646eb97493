// STUB: to be replaced by the real lrn kernels (cuda backend).
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cuda {
namespace {
[[noreturn]] void not_yet(const char* op) { throw std::runtime_error(std::string(op) + ": not implemented yet on cuda"); }
}  // namespace
void lrn_forward(const float*, float*, int64_t, int, const LrnParams&) { not_yet("lrn_forward"); }
void lrn_backward(const float*, const float*, const float*, float*, int64_t, int, const LrnParams&) { not_yet("lrn_backward"); }
}  // namespace cuda
}  // namespace convnet
