// Devices, streams, memory and copies for the CUDA backend.
//
// Memory: a caching allocator per device. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks go to a free list keyed by their rounded size and are handed out
// again to the next request of that size; a training step asks for the same sizes every step, so
// after the first step it allocates nothing. All kernels of a device run on that device's one
// stream, so a block freed on the host and reused by a later launch is ordered after its last use.
// When cudaMalloc fails we return the cache to the driver and try once more before raising
// OutOfMemoryError (MemoryError in Python) with the bytes asked.
//
// Copies between two GPUs go peer to peer (cudaMemcpyPeerAsync, peer access enabled once per pair)
// when the devices can reach each other, and through pinned host memory when they cannot.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "common.cuh"
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

struct DeviceState {
  std::mutex mutex;
  cudaStream_t stream = nullptr;
  std::multimap<size_t, void*> free_blocks;  // rounded size -> block
  size_t allocated = 0;                      // bytes handed to tensors
  size_t cached = 0;                         // bytes sitting in free_blocks
  std::vector<bool> peer_enabled;
};

DeviceState& state(int device) {
  static DeviceState states[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) throw std::invalid_argument("bad CUDA device ordinal");
  return states[device];
}

// 512-byte granules below 1 MiB, whole MiB above: a few percent of waste, and exact reuse for the
// repeating sizes of a training loop.
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
};

cudaStream_t stream_of(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.stream) {
    DeviceGuard guard(device);
    CONVNET_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  }
  return s.stream;
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
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.free_blocks.find(size);
  if (it != s.free_blocks.end()) {
    void* p = it->second;
    s.free_blocks.erase(it);
    s.cached -= size;
    s.allocated += size;
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
  s.allocated += size;
  return p;
}

void device_free(int device, void* ptr, size_t bytes) {
  const size_t size = round_size(bytes);
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  s.free_blocks.emplace(size, ptr);
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

void synchronize(int device) {
  cudaStream_t stream = stream_of(device);
  DeviceGuard guard(device);
  CONVNET_CUDA_CHECK(cudaStreamSynchronize(stream));
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

void copy_device_to_device(int dst_device, void* dst, int src_device, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == src_device) {
    cudaStream_t stream = stream_of(dst_device);
    DeviceGuard guard(dst_device);
    CONVNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    return;
  }
  cudaStream_t src_stream = stream_of(src_device), dst_stream = stream_of(dst_device);
  if (ensure_peer_access(dst_device, src_device)) {
    // Order: the source's producers (src stream) -> the copy (dst stream) -> the source may be
    // reused (src stream waits for the copy before anything later writes that memory).
    cudaEvent_t produced, copied;
    {
      DeviceGuard guard(src_device);
      CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&produced, cudaEventDisableTiming));
      CONVNET_CUDA_CHECK(cudaEventRecord(produced, src_stream));
    }
    DeviceGuard guard(dst_device);
    CONVNET_CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
    CONVNET_CUDA_CHECK(cudaStreamWaitEvent(dst_stream, produced, 0));
    CONVNET_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, dst_stream));
    CONVNET_CUDA_CHECK(cudaEventRecord(copied, dst_stream));
    CONVNET_CUDA_CHECK(cudaStreamWaitEvent(src_stream, copied, 0));
    CONVNET_CUDA_CHECK(cudaEventDestroy(produced));  // destruction is deferred until they complete
    CONVNET_CUDA_CHECK(cudaEventDestroy(copied));
    return;
  }
  // No peer path: stage through pinned host memory (both ends synchronous).
  void* staging = nullptr;
  CONVNET_CUDA_CHECK(cudaMallocHost(&staging, bytes));
  try {
    copy_device_to_host(src_device, staging, src, bytes);
    copy_host_to_device(dst_device, dst, staging, bytes);
  } catch (...) {
    cudaFreeHost(staging);
    throw;
  }
  CONVNET_CUDA_CHECK(cudaFreeHost(staging));
}

}  // namespace cuda
}  // namespace convnet
