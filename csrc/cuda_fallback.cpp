// What a CPU-only build says about CUDA: not compiled in, no devices.
#include "backend.h"

#ifndef CONVNET_WITH_CUDA
namespace convnet {
namespace cuda {
bool compiled() { return false; }
int device_count() { return 0; }
}  // namespace cuda
}  // namespace convnet
#endif
