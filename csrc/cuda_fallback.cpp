// The CUDA backend of a CPU-only build (CMakeLists.txt compiles this file only when CUDA is off):
// not compiled in, no devices, and every other function of backend.h, streams.h and upload.h defined so that
// callers link without an #ifdef. None is reachable: Device::parse refuses "cuda:N" when there is no
// device, so no CUDA tensor exists. Each raises RuntimeError naming itself should that ever change.
#include <stdexcept>
#include <string>

#include "backend.h"
#include "streams.h"
#include "upload.h"

namespace convnet {
namespace cuda {

namespace {
[[noreturn]] void no_cuda(const char* name) {
  throw std::runtime_error(std::string("cuda::") + name + ": convnet was built without CUDA");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }

// The kernels: one stub per entry of CONVNET_KERNELS, so a new kernel needs no line here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define CONVNET_KERNEL_STUB(name, params) \
  void name params { no_cuda(#name); }
CONVNET_KERNELS(CONVNET_KERNEL_STUB)
#undef CONVNET_KERNEL_STUB
#pragma GCC diagnostic pop

// The runtime (cuda/runtime/device_runtime.cu).
void set_device(int) { no_cuda("set_device"); }
std::string device_name(int) { no_cuda("device_name"); }
std::string device_capability(int) { no_cuda("device_capability"); }
void* device_alloc(int, size_t) { no_cuda("device_alloc"); }
void device_free(int, void*, size_t) {}  // called from a destructor: never throws
size_t allocated_bytes(int) { no_cuda("allocated_bytes"); }
size_t cached_bytes(int) { no_cuda("cached_bytes"); }
void empty_cache(int) { no_cuda("empty_cache"); }
void copy_host_to_device(int, void*, const void*, size_t) { no_cuda("copy_host_to_device"); }
void copy_device_to_host(int, void*, const void*, size_t) { no_cuda("copy_device_to_host"); }
void copy_device_to_device(int, void*, int, const void*, size_t) { no_cuda("copy_device_to_device"); }
bool can_access_peer(int, int) { no_cuda("can_access_peer"); }
void synchronize(int) { no_cuda("synchronize"); }
bool winograd_chosen(const ConvShape&, ConvPass) { no_cuda("winograd_chosen"); }
void winograd_conv_forward(const ConvShape&, const float*, const float*, const float*, float*, bool, bool) {
  no_cuda("winograd_conv_forward");
}
void winograd_conv_backward_data(const ConvShape&, const float*, const float*, float*, bool) {
  no_cuda("winograd_conv_backward_data");
}
void winograd_conv_backward_filter(const ConvShape&, const float*, const float*, float*, float*, bool) {
  no_cuda("winograd_conv_backward_filter");
}
void set_stream_slot(int, int) { no_cuda("set_stream_slot"); }
int stream_slot(int) { no_cuda("stream_slot"); }
void copy_between(int, int, void*, int, int, const void*, size_t, bool) { no_cuda("copy_between"); }
void stream_barrier(const std::vector<int>&) { no_cuda("stream_barrier"); }

// The Uploader's pinned staging (cuda/upload.cu). Its destructor frees every slot: never throws.
void* pinned_alloc(size_t) { no_cuda("pinned_alloc"); }
void pinned_free(void*) {}
void* event_create(int) { no_cuda("event_create"); }
void event_destroy(void*) {}
void event_synchronize(void*) { no_cuda("event_synchronize"); }
void upload_async(int, void*, const void*, size_t, void*) { no_cuda("upload_async"); }
void stream_wait_event(int, void*) { no_cuda("stream_wait_event"); }

}  // namespace cuda
}  // namespace convnet
