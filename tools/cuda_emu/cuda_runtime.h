// cuda_emu: a fake CUDA runtime for g++, so cuda/*.cu can be compiled as C++ and its kernels run on
// the CPU (see tools/cuda_emu/README.md). Included instead of the real <cuda_runtime.h> through
// -I tools/cuda_emu; tools/cuda_emu/translate.py rewrites each `k<<<grid, block, smem, stream>>>(args)`
// into `::emu::launch("k", ::emu::Cfg(grid, block, smem, stream), k, args)` and each `__shared__`
// declaration into a function-static array that the runtime poisons at the start of every block.
//
// Model: blocks run one after another on the calling OS thread; within a block each CUDA thread is a
// user-space fiber (emu_runtime.cpp) that runs until it reaches __syncthreads(), a warp-level
// exchange (__shfl_*_sync, __syncwarp) or returns. So a function-static array is exactly the block's
// shared memory, and threadIdx / blockIdx read the fiber that is running.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>

// --- qualifiers --------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
// __shared__ is rewritten by translate.py; a stray one still compiles as a static.
#define __shared__ static

// --- vector types ------------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

// --- runtime API types -------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorLaunchFailure = 4,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorPeerAccessAlreadyEnabled = 704,
  cudaErrorPeerAccessNotEnabled = 705,
  cudaErrorNoDevice = 100,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major, minor;
  int multiProcessorCount;
  int l2CacheSize;
};

struct CUstream_st;
struct CUevent_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;

#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1
#define cudaEventDefault 0x0
#define cudaEventBlockingSync 0x1
#define cudaEventDisableTiming 0x2
#define cudaHostAllocDefault 0x0

const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaDeviceCanAccessPeer(int* can, int device, int peer);
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = 0);
cudaError_t cudaMemcpyPeer(void* dst, int dst_device, const void* src, int src_device, size_t bytes);
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t bytes,
                                cudaStream_t stream = 0);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaFuncSetAttribute_(const void* func, cudaFuncAttribute attr, int value);
template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute_(reinterpret_cast<const void*>(func), attr, value);
}

// --- the emulator's interface (emu_runtime.cpp) --------------------------------------------------
namespace emu {

struct Thread {  // one emulated CUDA thread (a fiber)
  uint3 tid;
  int linear, warp, lane;
};
extern Thread* g_cur;  // the running thread
extern uint3 g_blockIdx, g_blockDim, g_gridDim;

struct Cfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = 0) : grid(g), block(b), smem(s), stream(st) {}
};

// Runs body() as every thread of every block of cfg (or records a launch error, as a real launch).
void launch_impl(const char* name, const void* func, const Cfg& cfg, const std::function<void()>& body);

void check_kernel_pointer(const char* name, int index, const void* p);
template <typename T>
void check_arg(const char*, int, const T&) {}
template <typename T>
void check_arg(const char* name, int index, T* p) { check_kernel_pointer(name, index, p); }

template <typename... P, typename... A>
void launch(const char* name, const Cfg& cfg, void (*kernel)(P...), A&&... args) {
  // Arguments are converted to the kernel's parameter types and copied once, as a real launch
  // copies them into the parameter buffer.
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  std::tuple<typename std::decay<P>::type...> params(static_cast<P>(args)...);
  std::apply([name](const auto&... v) { int i = 0; (check_arg(name, i++, v), ...); }, params);
  launch_impl(name, reinterpret_cast<const void*>(kernel), cfg,
              [&params, kernel] { std::apply(kernel, params); });
}

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
// Warp exchange: every lane of the warp publishes `bits`, waits for the warp, and reads lane `src`'s
// value (src < 0: its own).
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src, const char* file, int line);
void* dynamic_shared();
void shared_touch(void* ptr, size_t bytes);  // first touch in a block: poison, count static smem
[[noreturn]] void kernel_error(const char* what);

// Device-allocator hooks, called by cuda/runtime/device_runtime.cu through the two macros below
// (exact-size bounds inside the caching allocator's rounded blocks, poison on every hand-out,
// use-after-free of cached blocks).
void on_device_alloc(void* ptr, size_t bytes, size_t rounded);
void on_device_free(void* ptr, size_t bytes, size_t rounded);

}  // namespace emu
#define CONVNET_EMU_ON_DEVICE_ALLOC(ptr, bytes, rounded) ::emu::on_device_alloc(ptr, bytes, rounded)
#define CONVNET_EMU_ON_DEVICE_FREE(ptr, bytes, rounded) ::emu::on_device_free(ptr, bytes, rounded)

// --- built-in variables --------------------------------------------------------------------------
#define threadIdx (::emu::g_cur->tid)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)
#define warpSize 32

// --- synchronisation and warp functions ---------------------------------------------------------------
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(::emu::mask_or_full(__VA_ARGS__), __FILE__, __LINE__)
namespace emu {
inline unsigned mask_or_full() { return 0xffffffffu; }
inline unsigned mask_or_full(unsigned m) { return m; }

template <typename T>
T shfl_impl(unsigned mask, T v, int src, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src, file, line);
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}
inline int segment_base(int width) { return g_cur->lane & ~(width - 1); }
}  // namespace emu

#define __shfl_sync(mask, v, src, ...) ::emu::shfl_sync_(mask, v, src, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::emu::shfl_down_(mask, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::emu::shfl_up_(mask, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::emu::shfl_xor_(mask, v, m, __FILE__, __LINE__, ##__VA_ARGS__)
namespace emu {
template <typename T>
T shfl_sync_(unsigned mask, T v, int src, const char* f, int l, int width = 32) {
  return shfl_impl(mask, v, segment_base(width) + (src & (width - 1)), f, l);
}
template <typename T>
T shfl_down_(unsigned mask, T v, unsigned d, const char* f, int l, int width = 32) {
  const int lane = g_cur->lane, rel = lane & (width - 1);
  return shfl_impl(mask, v, rel + (int)d < width ? lane + (int)d : -1, f, l);
}
template <typename T>
T shfl_up_(unsigned mask, T v, unsigned d, const char* f, int l, int width = 32) {
  const int lane = g_cur->lane, rel = lane & (width - 1);
  return shfl_impl(mask, v, rel - (int)d >= 0 ? lane - (int)d : -1, f, l);
}
template <typename T>
T shfl_xor_(unsigned mask, T v, int m, const char* f, int l, int width = 32) {
  const int lane = g_cur->lane, src = lane ^ m;
  return shfl_impl(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : -1, f, l);
}
}  // namespace emu

// --- loads, atomics ------------------------------------------------------------------------------------
template <typename T>
inline T __ldg(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) ::emu::kernel_error("__ldg: misaligned address");
  return *p;
}
inline float atomicAdd(float* p, float v) { float old = *p; *p = old + v; return old; }
inline int atomicAdd(int* p, int v) { int old = *p; *p = old + v; return old; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned old = *p; *p = old + v; return old; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  unsigned long long old = *p; *p = old + v; return old;
}
inline int atomicMax(int* p, int v) { int old = *p; *p = old > v ? old : v; return old; }
inline int atomicMin(int* p, int v) { int old = *p; *p = old < v ? old : v; return old; }
inline int atomicExch(int* p, int v) { int old = *p; *p = v; return old; }
inline int atomicCAS(int* p, int cmp, int v) { int old = *p; if (old == cmp) *p = v; return old; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// --- math: CUDA's device overloads of min/max and the intrinsics the kernels use ------------------
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// Separately rounded operations: an empty asm keeps the compiler from fusing them into an FMA.
inline float __emu_opaque(float r) { __asm__("" : "+x"(r)); return r; }
inline float __fmul_rn(float a, float b) { return __emu_opaque(a * b); }
inline float __fadd_rn(float a, float b) { return __emu_opaque(a + b); }
inline float __fsub_rn(float a, float b) { return __emu_opaque(a - b); }
inline float __fdiv_rn(float a, float b) { return __emu_opaque(a / b); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return __emu_opaque(1.0f / a); }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
inline int __float2int_rn(float a) { return (int)nearbyintf(a); }
inline float __int_as_float(int a) { float f; memcpy(&f, &a, 4); return f; }
inline int __float_as_int(float a) { int i; memcpy(&i, &a, 4); return i; }
inline unsigned __float_as_uint(float a) { unsigned i; memcpy(&i, &a, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
