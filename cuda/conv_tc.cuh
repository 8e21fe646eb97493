// The tensor-core (TF32 / BF16) implicit-GEMM convolutions of cuda/conv_tc.cu, which the launchers
// of cuda/conv.cu call at their top when the process-wide precision (backend.h) is tf32 or bf16.
// Same contracts as the launchers (backend.h: conv_forward, conv_backward_data,
// conv_backward_filter), on the current stream.
#pragma once

#include "backend.h"

namespace convnet {
namespace cuda {

// Whether the tensor-core kernels take this shape: every shape with C / groups > 0 (the others
// have nothing to multiply and stay on conv.cu's FP32 path).
bool conv_tc_supported(const ConvShape& s);

void conv_forward_tc(Precision precision, const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                     bool accumulate, bool relu);
void conv_backward_data_tc(Precision precision, const ConvShape& s, const float* dy, const float* w, float* dx,
                           bool accumulate);
void conv_backward_filter_tc(Precision precision, const ConvShape& s, const float* dy, const float* x, float* dw,
                             float* db, bool accumulate);

}  // namespace cuda
}  // namespace convnet
