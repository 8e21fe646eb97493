// cuda_emu: CUDA's cp.async primitives (<cuda_pipeline_primitives.h>) for the CPU emulator.
//
// __pipeline_memcpy_async queues a copy of the calling thread; __pipeline_commit closes the thread's
// open batch; __pipeline_wait_prior(n) performs every queued copy except those of the newest n
// committed batches. So the copy lands in shared memory only when the program waits for it, as late
// as the hardware may make it land: a kernel that reads a stage before waiting for it (or, with the
// reverse thread order, before the barrier after the wait) reads stale data or the poison that shared
// memory starts with, and its results are wrong. Size, zero-fill and alignment are checked as the
// hardware requires (4, 8 or 16 bytes, both addresses aligned to the size); with zfill == size the
// source is not read.
#pragma once

#include <stddef.h>

namespace emu {
void pipeline_copy(void* dst_shared, const void* src_global, size_t size, size_t zfill);
void pipeline_commit();
void pipeline_wait_prior(size_t prior);
}  // namespace emu

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  ::emu::pipeline_copy(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { ::emu::pipeline_commit(); }
inline void __pipeline_wait_prior(size_t prior) { ::emu::pipeline_wait_prior(prior); }
