// STUB: to be replaced by the real conv kernels (cpu backend).
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cpu {
namespace {
[[noreturn]] void not_yet(const char* op) { throw std::runtime_error(std::string(op) + ": not implemented yet on cpu"); }
}  // namespace
void conv_forward(const ConvShape&, const float*, const float*, const float*, float*, bool) { not_yet("conv_forward"); }
void conv_backward_data(const ConvShape&, const float*, const float*, float*, bool) { not_yet("conv_backward_data"); }
void conv_backward_filter(const ConvShape&, const float*, const float*, float*, float*, bool) { not_yet("conv_backward_filter"); }
}  // namespace cpu
}  // namespace convnet
