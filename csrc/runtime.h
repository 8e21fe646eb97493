// The runtime interface beside the ops: devices, streams and the copies between streams, as Python
// sees them (convnet._C.synchronize, set_stream, stream_barrier, copy_between, memory_stats, ...).
// These are not ops of the table (csrc/ops.def): they order and place work rather than compute, take
// device names, and on the CPU they do nothing or a plain copy. cuda/runtime/device_runtime.cu
// implements the CUDA side (csrc/streams.h, backend.h); a CPU-only build links the stubs of
// csrc/cuda_fallback.cpp, which these functions never reach there (no CUDA device exists).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tensor.h"

namespace convnet {
namespace runtime {

// Wait until all work queued on `device` has finished (nothing to wait for on "cpu").
void synchronize(const std::string& device);

// Bytes held by tensors and by the caching allocator of a CUDA device; ValueError for "cpu".
struct MemoryStats {
  size_t allocated_bytes, cached_bytes;
};
MemoryStats memory_stats(const std::string& device);
void empty_cache(const std::string& device);
// Make a CUDA device current for this thread (NCCL creates its communicators there).
void set_device(const std::string& device);
bool can_access_peer(const std::string& device, const std::string& peer);

// This thread's launches on `device` go to its compute stream number `slot` in [0, kStreamSlots)
// (a tower); a no-op on "cpu".
void set_stream(const std::string& device, int slot);
// Every stream of these devices waits for everything queued on all of them.
void stream_barrier(const std::vector<std::string>& devices);
// dst <- src from the producer's stream (src's device, src_slot) to the consumer's (dst's device,
// dst_slot), ordered by events (streams.h: copy_between); a plain copy on the CPU.
void copy_between(const Tensor& dst, int dst_slot, const Tensor& src, int src_slot);

}  // namespace runtime
}  // namespace convnet
