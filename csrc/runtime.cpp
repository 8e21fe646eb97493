// The runtime interface of runtime.h: argument checks, then the cuda:: runtime (streams.h, backend.h)
// for CUDA devices and nothing or a plain copy for the CPU.
#include "runtime.h"

#include <stdexcept>

#include "backend.h"
#include "ops.h"
#include "streams.h"

namespace convnet {
namespace runtime {

namespace {
int cuda_index(const std::string& device, const char* what) {
  const Device d = Device::parse(device);
  if (!d.is_cuda()) throw std::invalid_argument(std::string(what) + ": '" + device + "' is not a CUDA device");
  return d.index;
}
}  // namespace

void synchronize(const std::string& device) {
  const Device d = Device::parse(device);
  if (d.is_cuda()) cuda::synchronize(d.index);
}

MemoryStats memory_stats(const std::string& device) {
  const int index = cuda_index(device, "memory_stats");
  return MemoryStats{cuda::allocated_bytes(index), cuda::cached_bytes(index)};
}

void empty_cache(const std::string& device) { cuda::empty_cache(cuda_index(device, "empty_cache")); }

void set_device(const std::string& device) { cuda::set_device(cuda_index(device, "set_device")); }

bool can_access_peer(const std::string& device, const std::string& peer) {
  const int ia = cuda_index(device, "can_access_peer"), ib = cuda_index(peer, "can_access_peer");
  return cuda::can_access_peer(ia, ib);
}

void set_stream(const std::string& device, int slot) {
  const Device d = Device::parse(device);
  if (slot < 0 || slot >= cuda::kStreamSlots)
    throw std::invalid_argument("set_stream: slot " + std::to_string(slot) + " outside [0, " +
                                std::to_string(cuda::kStreamSlots) + ")");
  if (d.is_cuda()) cuda::set_stream_slot(d.index, slot);
}

void stream_barrier(const std::vector<std::string>& devices) {
  std::vector<int> idx;
  for (const auto& name : devices) {
    const Device d = Device::parse(name);
    if (d.is_cuda()) idx.push_back(d.index);
  }
  if (idx.empty()) return;  // cpu only: nothing is queued
  cuda::stream_barrier(idx);
}

void copy_between(const Tensor& dst, int dst_slot, const Tensor& src, int src_slot) {
  const char* op = "copy_between";
  if (!dst.defined() || !src.defined()) throw std::invalid_argument(std::string(op) + ": undefined tensor");
  if (dst.dtype() != src.dtype() || dst.shape() != src.shape())
    throw std::invalid_argument(std::string(op) + ": dst is " + dst.describe() + ", src is " + src.describe());
  if (dst_slot < 0 || dst_slot >= cuda::kStreamSlots || src_slot < 0 || src_slot >= cuda::kStreamSlots)
    throw std::invalid_argument(std::string(op) + ": stream slot outside [0, " + std::to_string(cuda::kStreamSlots) + ")");
  if (dst.same_storage(src))
    throw std::invalid_argument(std::string(op) + ": dst and src share storage");
  const Device dd = dst.device(), sd = src.device();
  if (dd.is_cuda() && sd.is_cuda()) {
    cuda::copy_between(dd.index, dst_slot, dst.raw(), sd.index, src_slot, src.raw(), src.nbytes(), false);
    return;
  }
  // host <-> device: synchronous, on the CUDA side's slot
  const int dev = dd.is_cuda() ? dd.index : (sd.is_cuda() ? sd.index : -1);
  if (dev >= 0) {
    const int previous = cuda::stream_slot(dev);
    cuda::set_stream_slot(dev, dd.is_cuda() ? dst_slot : src_slot);
    try {
      ops::copy_(dst, src);
    } catch (...) {
      cuda::set_stream_slot(dev, previous);
      throw;
    }
    cuda::set_stream_slot(dev, previous);
    return;
  }
  ops::copy_(dst, src);
}

}  // namespace runtime
}  // namespace convnet
