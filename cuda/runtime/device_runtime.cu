// The CUDA runtime of convnet: devices, streams, events, memory and copies (no kernels: those are
// cuda/*.cu, one file per op family; this file is the runtime interface of csrc/backend.h and streams.h).
//
// Streams. A device has up to kStreamSlots compute streams, one per model-parallel tower (the
// paper's two towers; both may share one GPU). Each host thread picks, per device, which of them
// its launches go to (set_stream_slot; current_stream() in common.cuh returns it; default 0). A pair
// of devices (src, dst) has its own copy streams: `pull` on dst (peer copies, same-device copies
// between towers, the host->device half of a staged copy) and `push` on src (the device->host half
// of a staged copy). All streams are non-blocking, created on first use, and a new stream first
// waits for everything already queued on its device, so it can never overtake older work there.
//
// Events order the streams, never the host:
//   producer stream --E1--> copy stream (the copy) --E2--> consumer stream
//   E1 is recorded on the producer's stream after the producing layer, the copy stream waits for it;
//   E2 is recorded on the copy stream after the copy, the consumer's stream waits for it. Gradients
//   go back the same way with the roles swapped. So tower a's copy runs while tower b computes, and
//   the host never blocks. stream_barrier(devices) is the join: every stream of those devices waits
//   for an event recorded on every other one; the Net (python/convnet/net.py) calls it at the start
//   and end of each forward, backward and update pass.
//
// Memory: a caching allocator per device. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks go to a free list and are handed out again to the next request of
// the same rounded size; a training step asks for the same sizes every step, so after the first
// step it allocates nothing. With several streams a free list is kept PER STREAM: a block remembers
// the stream that was current when it was allocated, returns to that stream's list when freed, and
// is reused only by a request on the same stream, which is ordered after every use on that stream.
// That makes the short-lived scratch of the kernels (elementwise.cu, gemm.cu, conv.cu: allocated,
// used and freed on the current stream) safe with no events. The rule for a tensor used on several
// streams: free it only after a stream_barrier that follows its last use (the Net allocates its
// activations, gradients and copy buffers between passes, keeps them, and replaces them only between
// passes, so this holds). When cudaMalloc fails we return the whole cache to the driver (after a
// device synchronisation) and try once more before raising OutOfMemoryError (MemoryError in Python).
//
// Copies between two GPUs go peer to peer (cudaMemcpyPeerAsync, peer access enabled once per pair)
// when cudaDeviceCanAccessPeer allows, and otherwise in two halves through a pinned host buffer kept
// per pair (device->host on `push`, host->device on `pull`, ordered by an event), still asynchronous.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common.cuh"
#include "streams.h"
#include "tensor.h"

namespace convnet {
namespace cuda {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  std::ostringstream msg;
  msg << "CUDA error in " << what << ": " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err)
      << ") at " << file << ":" << line;
  if (err == cudaErrorMemoryAllocation) throw OutOfMemoryError(msg.str());
  throw std::runtime_error(msg.str());
}

bool compiled() { return true; }

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: clear the error, report none
      return 0;
    }
    return n;
  }();
  return count;
}

namespace {

constexpr int kMaxDevices = 64;

// Copies from device `src` into this device: streams and the staging buffer of the pair.
struct PairIn {
  cudaStream_t pull = nullptr;       // on this (destination) device
  void* pinned = nullptr;            // staging buffer for a pair without peer access
  size_t pinned_bytes = 0;
  cudaEvent_t staged_done = nullptr;  // recorded after the last host->device half: pinned is free
};

struct DeviceState {
  std::mutex mutex;
  cudaStream_t compute[kStreamSlots] = {};
  std::map<int, PairIn> in;             // by source device
  std::map<int, cudaStream_t> push;     // by destination device: staged device->host halves
  // allocator: (stream, rounded size) -> free block; live block -> the stream it belongs to
  std::multimap<std::pair<cudaStream_t, size_t>, void*> free_blocks;
  std::unordered_map<void*, cudaStream_t> owner;
  size_t allocated = 0;                 // bytes handed to tensors
  size_t cached = 0;                    // bytes sitting in free_blocks
  std::vector<bool> peer_enabled;
};

DeviceState& state(int device) {
  static DeviceState states[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) throw std::invalid_argument("bad CUDA device ordinal");
  return states[device];
}

// This thread's compute stream slot per device (0 unless a Net selected a tower's).
thread_local int tl_slot[kMaxDevices] = {};

// 512-byte granules below 1 MiB, whole MiB above: a few percent of waste, and exact reuse for the
// repeating sizes of a training loop.
// The CPU emulator (tools/cuda_emu/cuda_runtime.h) defines these to watch every block handed out and
// returned: a tensor's exact byte range is addressable, the rest of its rounded block and every
// cached block are poisoned for AddressSanitizer. With the real toolkit they are nothing.
#ifndef CONVNET_EMU_ON_DEVICE_ALLOC
#define CONVNET_EMU_ON_DEVICE_ALLOC(ptr, bytes, rounded) ((void)0)
#define CONVNET_EMU_ON_DEVICE_FREE(ptr, bytes, rounded) ((void)0)
#endif

size_t round_size(size_t bytes) {
  const size_t granule = bytes < (1u << 20) ? 512 : (1u << 20);
  return (bytes + granule - 1) / granule * granule;
}

struct DeviceGuard {  // makes a device current for a scope, restores the previous one after
  int previous = -1;
  explicit DeviceGuard(int device) {
    CONVNET_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) CONVNET_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

// Every stream that lives on the device (caller holds s.mutex).
std::vector<cudaStream_t> streams_locked(DeviceState& s) {
  std::vector<cudaStream_t> out;
  for (cudaStream_t st : s.compute)
    if (st) out.push_back(st);
  for (auto& kv : s.in)
    if (kv.second.pull) out.push_back(kv.second.pull);
  for (auto& kv : s.push)
    if (kv.second) out.push_back(kv.second);
  return out;
}

// An event recorded now on `stream` (of `device`); destroy it with cudaEventDestroy when done
// (destruction is deferred by the driver until it completes).
cudaEvent_t record_event(int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  cudaEvent_t e;
  CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  CONVNET_CUDA_CHECK(cudaEventRecord(e, stream));
  return e;
}

void wait_event(int device, cudaStream_t stream, cudaEvent_t e) {
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaStreamWaitEvent(stream, e, 0));
}

// A new non-blocking stream on `device` that first waits for everything already queued on the
// device's other streams (caller holds s.mutex): older work there can never be overtaken by it.
cudaStream_t new_stream_locked(int device, DeviceState& s) {
  DeviceGuard guard(device);
  std::vector<cudaStream_t> older = streams_locked(s);
  cudaStream_t st;
  CONVNET_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (cudaStream_t o : older) {
    cudaEvent_t e = record_event(device, o);
    CONVNET_CUDA_CHECK(cudaStreamWaitEvent(st, e, 0));
    CONVNET_CUDA_CHECK(cudaEventDestroy(e));
  }
  return st;
}

cudaStream_t compute_stream(int device, int slot) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.compute[slot]) s.compute[slot] = new_stream_locked(device, s);
  return s.compute[slot];
}

cudaStream_t stream_of(int device) {
  if (device < 0 || device >= kMaxDevices) throw std::invalid_argument("bad CUDA device ordinal");
  return compute_stream(device, tl_slot[device]);
}

// The copy stream on `dst` for copies from `src` (a device to itself: copies between its towers).
cudaStream_t pull_stream(int dst, int src) {
  DeviceState& s = state(dst);
  std::lock_guard<std::mutex> lock(s.mutex);
  PairIn& p = s.in[src];
  if (!p.pull) p.pull = new_stream_locked(dst, s);
  return p.pull;
}

// The stream on `src` for the device->host halves of staged copies to `dst`.
cudaStream_t push_stream(int src, int dst) {
  DeviceState& s = state(src);
  std::lock_guard<std::mutex> lock(s.mutex);
  cudaStream_t& st = s.push[dst];
  if (!st) st = new_stream_locked(src, s);
  return st;
}

void release_cache_locked(int device, DeviceState& s) {
  if (s.free_blocks.empty()) return;
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& kv : s.free_blocks) cudaFree(kv.second);
  s.free_blocks.clear();
  s.cached = 0;
}

}  // namespace

void set_device(int device) { CONVNET_CUDA_CHECK(cudaSetDevice(device)); }

cudaStream_t current_stream() {
  int device = 0;
  CONVNET_CUDA_CHECK(cudaGetDevice(&device));
  return stream_of(device);
}

void set_stream_slot(int device, int slot) {
  if (device < 0 || device >= device_count())
    throw std::invalid_argument("set_stream: no CUDA device " + std::to_string(device));
  if (slot < 0 || slot >= kStreamSlots)
    throw std::invalid_argument("set_stream: stream slot " + std::to_string(slot) + " outside [0, " +
                                std::to_string(kStreamSlots) + ")");
  compute_stream(device, slot);  // create it now (after the device's older work)
  tl_slot[device] = slot;
}

int stream_slot(int device) {
  if (device < 0 || device >= kMaxDevices) throw std::invalid_argument("bad CUDA device ordinal");
  return tl_slot[device];
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  CONVNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

std::string device_capability(int device) {
  int major = 0, minor = 0;
  CONVNET_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CONVNET_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return std::to_string(major) + "." + std::to_string(minor);
}

void* device_alloc(int device, size_t bytes) {
  const size_t size = round_size(bytes);
  cudaStream_t stream = stream_of(device);  // the block belongs to the stream current now
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.free_blocks.find({stream, size});
  if (it != s.free_blocks.end()) {
    void* p = it->second;
    s.free_blocks.erase(it);
    s.owner[p] = stream;
    s.cached -= size;
    s.allocated += size;
    CONVNET_EMU_ON_DEVICE_ALLOC(p, bytes, size);
    return p;
  }
  DeviceGuard guard(device);
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, size);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear, give the cache back, try once more
    release_cache_locked(device, s);
    err = cudaMalloc(&p, size);
  }
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::ostringstream msg;
    msg << "CUDA out of memory on cuda:" << device << ": asked for " << bytes << " bytes; "
        << s.allocated << " bytes in use by convnet tensors, " << free_b << " free of " << total_b;
    throw OutOfMemoryError(msg.str());
  }
  CONVNET_CUDA_CHECK(err);
  s.owner[p] = stream;
  s.allocated += size;
  CONVNET_EMU_ON_DEVICE_ALLOC(p, bytes, size);
  return p;
}

void device_free(int device, void* ptr, size_t bytes) {
  const size_t size = round_size(bytes);
  CONVNET_EMU_ON_DEVICE_FREE(ptr, bytes, size);
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.owner.find(ptr);
  cudaStream_t stream = it != s.owner.end() ? it->second : s.compute[0];
  if (it != s.owner.end()) s.owner.erase(it);
  s.free_blocks.emplace(std::make_pair(stream, size), ptr);
  s.allocated -= size;
  s.cached += size;
}

size_t allocated_bytes(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.allocated;
}

size_t cached_bytes(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.cached;
}

void empty_cache(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  release_cache_locked(device, s);
}

void synchronize(int device) {  // every stream of the device: compute slots and copy streams
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaDeviceSynchronize());
}

void copy_host_to_device(int device, void* dst, const void* src, size_t bytes) {
  cudaStream_t stream = stream_of(device);
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  // The source is pageable memory the caller may free as soon as we return.
  CONVNET_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void copy_device_to_host(int device, void* dst, const void* src, size_t bytes) {
  cudaStream_t stream = stream_of(device);
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  CONVNET_CUDA_CHECK(cudaStreamSynchronize(stream));
}

bool can_access_peer(int device, int peer) {
  if (device == peer) return true;
  int ok = 0;
  CONVNET_CUDA_CHECK(cudaDeviceCanAccessPeer(&ok, device, peer));
  return ok != 0;
}

namespace {
// Enable peer access from `device` to `peer` once; false when the hardware cannot.
bool ensure_peer_access(int device, int peer) {
  DeviceState& s = state(device);
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.peer_enabled.size() > static_cast<size_t>(peer) && s.peer_enabled[peer]) return true;
  }
  if (!can_access_peer(device, peer)) return false;
  DeviceGuard guard(device);
  cudaError_t err = cudaDeviceEnablePeerAccess(peer, 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();
  } else {
    CONVNET_CUDA_CHECK(err);
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.peer_enabled.size() <= static_cast<size_t>(peer)) s.peer_enabled.resize(peer + 1, false);
  s.peer_enabled[peer] = true;
  return true;
}
}  // namespace

void copy_between(int dst_device, int dst_slot, void* dst, int src_device, int src_slot, const void* src,
                  size_t bytes, bool hold_source) {
  if (bytes == 0) return;
  if (dst_slot < 0 || dst_slot >= kStreamSlots || src_slot < 0 || src_slot >= kStreamSlots)
    throw std::invalid_argument("copy_between: stream slot outside [0, " + std::to_string(kStreamSlots) + ")");
  cudaStream_t producer = compute_stream(src_device, src_slot);
  cudaStream_t consumer = compute_stream(dst_device, dst_slot);
  if (producer == consumer) {  // one stream: already in order
    DeviceGuard guard(dst_device);
    CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, producer));
    return;
  }
  cudaEvent_t produced = record_event(src_device, producer);  // E1: after the producing layer
  cudaEvent_t copied = nullptr;                                // E2: after the copy
  if (src_device == dst_device || ensure_peer_access(dst_device, src_device)) {
    cudaStream_t pull = pull_stream(dst_device, src_device);
    {
      DeviceGuard guard(dst_device);
      CONVNET_CUDA_CHECK(cudaStreamWaitEvent(pull, produced, 0));
      if (src_device == dst_device)
        CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, pull));
      else
        CONVNET_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, pull));
    }
    copied = record_event(dst_device, pull);
  } else {
    // No peer path: device->host into the pair's pinned buffer on `push` (source device), then
    // host->device on `pull` (destination device), ordered by an event; the next staged copy of
    // the pair waits until this one's host->device half has read the buffer.
    cudaStream_t push = push_stream(src_device, dst_device);
    cudaStream_t pull = pull_stream(dst_device, src_device);
    DeviceState& ds = state(dst_device);
    std::lock_guard<std::mutex> lock(ds.mutex);
    PairIn& p = ds.in[src_device];
    if (p.pinned_bytes < bytes) {
      if (p.pinned) {
        DeviceGuard guard(dst_device);
        CONVNET_CUDA_CHECK(cudaStreamSynchronize(pull));  // no copy reads the old buffer any more
        CONVNET_CUDA_CHECK(cudaFreeHost(p.pinned));
        p.pinned = nullptr;
        p.pinned_bytes = 0;
      }
      CONVNET_CUDA_CHECK(cudaMallocHost(&p.pinned, bytes));
      p.pinned_bytes = bytes;
    }
    if (!p.staged_done) {
      DeviceGuard guard(dst_device);
      CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&p.staged_done, cudaEventDisableTiming));
      CONVNET_CUDA_CHECK(cudaEventRecord(p.staged_done, pull));
    }
    {
      DeviceGuard guard(src_device);
      CONVNET_CUDA_CHECK(cudaStreamWaitEvent(push, produced, 0));
      CONVNET_CUDA_CHECK(cudaStreamWaitEvent(push, p.staged_done, 0));
      CONVNET_CUDA_CHECK(cudaMemcpyAsync(p.pinned, src, bytes, cudaMemcpyDeviceToHost, push));
    }
    cudaEvent_t on_host = record_event(src_device, push);
    {
      DeviceGuard guard(dst_device);
      CONVNET_CUDA_CHECK(cudaStreamWaitEvent(pull, on_host, 0));
      CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, p.pinned, bytes, cudaMemcpyHostToDevice, pull));
      CONVNET_CUDA_CHECK(cudaEventRecord(p.staged_done, pull));
      CONVNET_CUDA_CHECK(cudaEventDestroy(on_host));
    }
    copied = record_event(dst_device, pull);
  }
  wait_event(dst_device, consumer, copied);               // the consumer reads dst after the copy
  if (hold_source) wait_event(src_device, producer, copied);  // the source may be reused at once
  CONVNET_CUDA_CHECK(cudaEventDestroy(produced));
  CONVNET_CUDA_CHECK(cudaEventDestroy(copied));
}

void copy_device_to_device(int dst_device, void* dst, int src_device, const void* src, size_t bytes) {
  // ops::copy_ (Tensor.to, copy_): between the thread's current streams of the two devices, and the
  // source's stream waits for the copy, because the caller may free the source right after.
  copy_between(dst_device, tl_slot[dst_device], dst, src_device, tl_slot[src_device], src, bytes, true);
}

void stream_barrier(const std::vector<int>& devices) {
  std::vector<std::pair<int, cudaStream_t>> all;
  for (int d : devices) {
    if (d < 0 || d >= device_count()) throw std::invalid_argument("stream_barrier: no CUDA device " + std::to_string(d));
    bool seen = false;
    for (auto& a : all) seen = seen || a.first == d;
    if (seen) continue;
    DeviceState& s = state(d);
    std::lock_guard<std::mutex> lock(s.mutex);
    for (cudaStream_t st : streams_locked(s)) all.emplace_back(d, st);
  }
  if (all.size() < 2) return;
  std::vector<cudaEvent_t> events;
  events.reserve(all.size());
  for (auto& a : all) events.push_back(record_event(a.first, a.second));
  for (size_t i = 0; i < all.size(); ++i) {
    DeviceGuard guard(all[i].first);
    for (size_t j = 0; j < events.size(); ++j)
      if (j != i) CONVNET_CUDA_CHECK(cudaStreamWaitEvent(all[i].second, events[j], 0));
  }
  for (cudaEvent_t e : events) CONVNET_CUDA_CHECK(cudaEventDestroy(e));
}

}  // namespace cuda
}  // namespace convnet
