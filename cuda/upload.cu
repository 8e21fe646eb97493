// Asynchronous host->device uploads for csrc/upload.cpp (the Uploader behind convnet's batch feeding):
// pinned staging memory, one upload stream per device, and the events that order it.
//
//   caller's stream ..[step k]..--released-->  upload stream: H2D copy (pinned -> dst) --done-->
//                                              caller's stream waits for `done` at get() (step k+1)
//
// The copy waits for everything queued on the caller's current stream of the device when it is
// issued (`released`), because dst may be a block of the caching allocator that queued work there
// still reads; and the consumer's stream waits for `done` only when it takes the tensor, so the copy
// runs while the step queued before it computes. The host never blocks here except in
// event_synchronize (before a pinned buffer is refilled or freed).
#include <cuda_runtime.h>

#include <mutex>

#include "common.cuh"
#include "tensor.h"
#include "upload.h"

namespace convnet {
namespace cuda {
namespace {

constexpr int kMaxUploadDevices = 64;

struct CurrentDevice {  // makes `device` current for a scope
  int previous = -1;
  explicit CurrentDevice(int device) {
    CONVNET_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) CONVNET_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CurrentDevice() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;
};

// The device's upload stream, created on first use (non-blocking: it never waits for the legacy
// default stream; every ordering it has comes from the events of upload_async).
cudaStream_t upload_stream(int device) {
  static std::mutex mutex;
  static cudaStream_t streams[kMaxUploadDevices] = {};
  if (device < 0 || device >= kMaxUploadDevices) throw std::invalid_argument("bad CUDA device ordinal");
  std::lock_guard<std::mutex> lock(mutex);
  if (!streams[device]) {
    CurrentDevice guard(device);
    CONVNET_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  }
  return streams[device];
}

}  // namespace

void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t err = cudaMallocHost(&p, bytes ? bytes : 1);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw OutOfMemoryError("out of pinned host memory: asked for " + std::to_string(bytes) + " bytes");
  }
  CONVNET_CUDA_CHECK(err);
  return p;
}

void pinned_free(void* p) {
  if (p) CONVNET_CUDA_CHECK(cudaFreeHost(p));
}

void* event_create(int device) {
  CurrentDevice guard(device);
  cudaEvent_t e;
  CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void event_destroy(void* e) {
  if (e) CONVNET_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(e)));
}

void event_synchronize(void* e) { CONVNET_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e))); }

void upload_async(int device, void* dst, const void* pinned_src, size_t bytes, void* done) {
  cudaStream_t copy = upload_stream(device);
  CurrentDevice guard(device);
  cudaEvent_t released;
  CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&released, cudaEventDisableTiming));
  CONVNET_CUDA_CHECK(cudaEventRecord(released, current_stream()));
  CONVNET_CUDA_CHECK(cudaStreamWaitEvent(copy, released, 0));
  CONVNET_CUDA_CHECK(cudaEventDestroy(released));
  if (bytes) CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, pinned_src, bytes, cudaMemcpyHostToDevice, copy));
  CONVNET_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(done), copy));
}

void stream_wait_event(int device, void* e) {
  CurrentDevice guard(device);
  CONVNET_CUDA_CHECK(cudaStreamWaitEvent(current_stream(), static_cast<cudaEvent_t>(e), 0));
}

}  // namespace cuda
}  // namespace convnet
