// Streams for model parallelism (cuda/runtime/device_runtime.cu has the design): several compute streams per device
// (one per tower, selected per thread before a layer runs), a copy stream per (source, destination)
// device pair, and a barrier that makes every stream of some devices wait for all the others.
// A CPU-only build has none of this (csrc/cuda_fallback.cpp): no CUDA device exists there, so bindings.cpp
// copies with ops::copy_ and ignores streams.
#pragma once

#include <cstddef>
#include <vector>

namespace convnet {
namespace cuda {

constexpr int kStreamSlots = 4;  // compute streams per device (towers); Python sees convnet._C.stream_slots

// This thread's compute stream on `device` becomes number `slot` (created on first use, after
// everything already queued on the device). current_stream() and the allocator use it.
void set_stream_slot(int device, int slot);
int stream_slot(int device);

// dst (on dst_device) <- src (on src_device), bytes of them, from the producer's compute stream
// (src_device, src_slot) to the consumer's (dst_device, dst_slot): the copy runs on the pair's copy
// stream after an event recorded on the producer's stream, and the consumer's stream waits for an
// event recorded after the copy. With hold_source, the producer's stream also waits for the copy
// (so the source may be freed or overwritten at once); without, the caller keeps the source alive
// and unwritten until the next stream_barrier (what the Net does).
void copy_between(int dst_device, int dst_slot, void* dst, int src_device, int src_slot, const void* src,
                  size_t bytes, bool hold_source);

// Every stream (compute and copy) of these devices waits for everything queued so far on all of them.
void stream_barrier(const std::vector<int>& devices);

}  // namespace cuda
}  // namespace convnet
