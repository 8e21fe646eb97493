// STUB: to be replaced by the real conv kernels (cuda backend).
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cuda {
namespace {
[[noreturn]] void not_yet(const char* op) { throw std::runtime_error(std::string(op) + ": not implemented yet on cuda"); }
}  // namespace
void conv_forward(const ConvShape&, const float*, const float*, const float*, float*, bool) { not_yet("conv_forward"); }
void conv_backward_data(const ConvShape&, const float*, const float*, float*, bool) { not_yet("conv_backward_data"); }
void conv_backward_filter(const ConvShape&, const float*, const float*, float*, float*, bool) { not_yet("conv_backward_filter"); }
}  // namespace cuda
}  // namespace convnet
