// Shared by every .cu file: error checks that become Python exceptions, the current stream that
// kernels run on, and launch-size helpers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "backend.h"

namespace convnet {
namespace cuda {

// A failing CUDA call becomes std::runtime_error (RuntimeError in Python) naming the call.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

#define CONVNET_CUDA_CHECK(expr)                                                   \
  do {                                                                             \
    cudaError_t convnet_err_ = (expr);                                             \
    if (convnet_err_ != cudaSuccess)                                               \
      ::convnet::cuda::throw_cuda_error(convnet_err_, #expr, __FILE__, __LINE__);  \
  } while (0)

// CONVNET_SYNC=1 (read once per process; any value but empty or "0"): the debug mode in which every
// launch check also waits for the kernel, so a fault inside a kernel (an illegal address, a trap) is
// reported by that kernel's own check, naming it, instead of by some later, unrelated call. Slow: it
// serialises the host with the device after every kernel.
inline bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("CONVNET_SYNC");
    return v != nullptr && v[0] != '\0' && std::string(v) != "0";
  }();
  return on;
}

// After every launch: a bad configuration shows up here, naming the kernel; under CONVNET_SYNC=1 so
// does a fault while the kernel ran (the launch was on current_stream()).
#define CONVNET_LAUNCH_CHECK(kernel_name)                                                   \
  do {                                                                                      \
    cudaError_t convnet_err_ = cudaGetLastError();                                          \
    if (convnet_err_ != cudaSuccess)                                                        \
      ::convnet::cuda::throw_cuda_error(convnet_err_, "launch of " kernel_name, __FILE__,   \
                                        __LINE__);                                          \
    if (::convnet::cuda::sync_after_launch()) {                                             \
      convnet_err_ = cudaStreamSynchronize(::convnet::cuda::current_stream());              \
      if (convnet_err_ == cudaSuccess) convnet_err_ = cudaGetLastError();                   \
      if (convnet_err_ != cudaSuccess)                                                      \
        ::convnet::cuda::throw_cuda_error(convnet_err_, "kernel " kernel_name               \
                                          " (CONVNET_SYNC=1: waited after its launch)",     \
                                          __FILE__, __LINE__);                              \
    }                                                                                       \
  } while (0)

// The stream every kernel of the current device is launched on: this thread's compute stream of the
// device (slot 0 unless a tower's was selected with set_stream_slot; see cuda/runtime/device_runtime.cu), created on
// first use, non-blocking with respect to the legacy default stream.
cudaStream_t current_stream();

// Temporary device memory for a kernel launcher (split-K partial sums, per-row statistics), from the
// caching allocator, returned when the scope ends. Freeing right after the launches is safe: the
// block goes back to the free list of the current stream, and only later work on that same stream
// can reuse it (cuda/runtime/device_runtime.cu).
struct Scratch {
  int device = 0;
  size_t bytes;
  float* ptr;
  explicit Scratch(size_t n) : bytes(n * sizeof(float)) {
    CONVNET_CUDA_CHECK(cudaGetDevice(&device));
    ptr = static_cast<float*>(device_alloc(device, bytes));
  }
  ~Scratch() { device_free(device, ptr, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Blocks for a grid-stride loop over n elements: enough to fill the machine, never more than needed.
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // grid-stride loops cover the rest
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The current device's multiprocessor count (split-K and wave sizing).
inline int sm_count() {
  int device = 0, sms = 0;
  CONVNET_CUDA_CHECK(cudaGetDevice(&device));
  CONVNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

// Grids must fit: y and z are at most 65535 (ValueError naming the kernel otherwise).
inline void check_grid(const dim3& grid, const char* kernel) {
  if (grid.y > 65535u || grid.z > 65535u)
    throw std::invalid_argument(std::string(kernel) + ": shape too large for the grid (" + std::to_string(grid.y) +
                                " x " + std::to_string(grid.z) + " blocks in y x z)");
}

// Whether a pointer allows 16-byte (float4 / 16-byte cp.async) accesses.
inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// dw[i] (=|+=) sum over `splits` partial arrays partial[j][i], j in order (deterministic): the second
// half of every split-K backward filter (cuda/conv.cu defines it).
void sum_splits(const float* partial, int splits, int64_t n, float* dw, bool accumulate);

// max(v, 0) with PyTorch's NaN rule (relu(NaN) = NaN), standalone and fused alike; fmaxf would turn
// NaN into 0. The CPU kernels use the same comparison.
__device__ __forceinline__ float relu_value(float v) { return v <= 0.0f ? 0.0f : v; }

}  // namespace cuda
}  // namespace convnet
