// STUB: to be replaced by the real lrn kernels (cpu backend).
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cpu {
namespace {
[[noreturn]] void not_yet(const char* op) { throw std::runtime_error(std::string(op) + ": not implemented yet on cpu"); }
}  // namespace
void lrn_forward(const float*, float*, int64_t, int, const LrnParams&) { not_yet("lrn_forward"); }
void lrn_backward(const float*, const float*, const float*, float*, int64_t, int, const LrnParams&) { not_yet("lrn_backward"); }
}  // namespace cpu
}  // namespace convnet
