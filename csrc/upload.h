// Uploader: host arrays onto a device without stalling the compute stream (the training loop's batch
// feeding; python/convnet/tensor.py upload_batches).
//
// A ring of `depth` slots, each a staging buffer in pinned host memory and a device tensor. put()
// copies the array into a slot's pinned buffer (the caller releases the GIL around it) and starts the
// host->device copy on the device's upload stream (cuda/upload.cu), after the work already queued on
// the caller's stream; get() hands out the oldest slot's tensor after making the caller's stream wait
// for its copy. So batch k+1 travels while step k computes, and nothing waits on the host.
//
// A tensor handed out is never overwritten while anyone still holds it: a slot whose tensor is still
// referenced outside the ring gets a fresh tensor instead (counted in allocations()). On the CPU the
// same ring runs with plain host memory and no streams.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "tensor.h"

namespace convnet {

namespace cuda {  // cuda/upload.cu (stubs in cuda_fallback.cpp)
void* pinned_alloc(size_t bytes);  // OutOfMemoryError when the driver refuses
void pinned_free(void* p);
void* event_create(int device);
void event_destroy(void* e);
void event_synchronize(void* e);  // the host waits until `e` has completed
// dst (on `device`) <- pinned_src, bytes of it, on the device's upload stream, after everything queued
// so far on the caller's current stream of `device`; `done` is recorded after the copy.
void upload_async(int device, void* dst, const void* pinned_src, size_t bytes, void* done);
// The caller's current stream of `device` waits for `e`.
void stream_wait_event(int device, void* e);
}  // namespace cuda

class Uploader {
 public:
  static constexpr int kMaxDepth = 16;
  Uploader(Device device, int depth);  // ValueError for depth outside [1, kMaxDepth]
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  // Start uploading `bytes` of host memory at `src` as a tensor of `shape` and `dtype`. Raises
  // ValueError when `depth` uploads are already waiting for get(). Thread-safe; may block only until
  // the slot's previous copy has read its pinned buffer.
  void put(const void* src, const std::vector<int64_t>& shape, DType dtype);
  // The oldest upload not yet taken, ordered before everything the caller's stream runs after this
  // call. Raises ValueError when nothing is waiting.
  Tensor get();

  Device device() const { return device_; }
  int depth() const { return static_cast<int>(slots_.size()); }
  int pending() const;
  int64_t allocations() const;  // device tensors made so far (reuse keeps this at `depth`)

 private:
  struct Slot {
    Tensor tensor;           // the destination; reused while nobody else holds it
    void* pinned = nullptr;  // staging buffer (CUDA devices)
    size_t pinned_bytes = 0;
    void* done = nullptr;    // recorded after the slot's last host->device copy
    bool copying = false;    // `done` has been recorded at least once
  };
  Device device_;
  std::vector<Slot> slots_;
  int head_ = 0, pending_ = 0;
  int64_t allocations_ = 0;
  mutable std::mutex mutex_;
};

}  // namespace convnet
