// Uploader (csrc/upload.h): the slot ring and its rules; the CUDA side is cuda/upload.cu (in a CPU-only
// build, cuda_fallback.cpp: no CUDA device exists there, so only the CPU branches run).
#include "upload.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace convnet {

Uploader::Uploader(Device device, int depth) : device_(device) {
  if (depth < 1 || depth > kMaxDepth)
    throw std::invalid_argument("Uploader: depth " + std::to_string(depth) + " outside [1, " +
                                std::to_string(kMaxDepth) + "]");
  slots_.resize(depth);
  if (device_.is_cuda())
    for (Slot& s : slots_) s.done = cuda::event_create(device_.index);
}

Uploader::~Uploader() {
  // A copy may still read a pinned buffer or write a tensor that goes back to the allocator: wait for
  // each slot's last copy before freeing anything. Destructors must not throw.
  for (Slot& s : slots_) {
    try {
      if (s.copying) cuda::event_synchronize(s.done);
      cuda::pinned_free(s.pinned);
      cuda::event_destroy(s.done);
    } catch (...) {
    }
  }
}

int Uploader::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_;
}

int64_t Uploader::allocations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return allocations_;
}

void Uploader::put(const void* src, const std::vector<int64_t>& shape, DType dtype) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pending_ == depth())
    throw std::invalid_argument("Uploader.put: " + std::to_string(pending_) +
                                " uploads are already waiting (depth " + std::to_string(depth()) +
                                "); get() one first");
  Slot& s = slots_[(head_ + pending_) % depth()];
  // A fresh tensor when the shape or dtype changed, or when the one handed out last time is still
  // held (by a Net, a loop variable): that one must keep its contents.
  if (!s.tensor.defined() || s.tensor.shape() != shape || s.tensor.dtype() != dtype || s.tensor.use_count() > 1) {
    s.tensor = Tensor();
    s.tensor = Tensor::empty(shape, dtype, device_);
    ++allocations_;
  }
  const size_t bytes = s.tensor.nbytes();
  if (!device_.is_cuda()) {
    if (bytes) std::memcpy(s.tensor.raw(), src, bytes);
    ++pending_;
    return;
  }
  if (s.copying) cuda::event_synchronize(s.done);  // the slot's previous copy has read `pinned`
  if (s.pinned_bytes < bytes) {
    cuda::pinned_free(s.pinned);
    s.pinned = nullptr;
    s.pinned_bytes = 0;
    s.pinned = cuda::pinned_alloc(bytes);
    s.pinned_bytes = bytes;
  }
  if (bytes) std::memcpy(s.pinned, src, bytes);
  cuda::upload_async(device_.index, s.tensor.raw(), s.pinned, bytes, s.done);
  s.copying = true;
  ++pending_;
}

Tensor Uploader::get() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pending_ == 0) throw std::invalid_argument("Uploader.get: nothing is waiting (put() an array first)");
  Slot& s = slots_[head_];
  if (device_.is_cuda()) cuda::stream_wait_event(device_.index, s.done);
  head_ = (head_ + 1) % depth();
  --pending_;
  return s.tensor;
}

}  // namespace convnet
