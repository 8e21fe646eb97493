// Shared by the CPU kernels: when a loop is worth an OpenMP parallel region, and the named selectors
// that pick a kernel's driver (serial or parallel) from the problem size and the thread count.
//
// Every choice that depends on the thread count goes through a selector here or in the kernel's file
// (select_conv_driver in conv.cpp, select_gemm_threads in gemm.cpp), and every selector obeys the
// test hook forced_path(): tests force each driver on any machine (convnet._C.cpu_path), and set the
// thread count at run time (convnet._C.set_cpu_threads), so line coverage of csrc/cpu/ does not
// depend on the machine's core count.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "tensor.h"  // OutOfMemoryError

// Every OpenMP directive of the CPU kernels is written CONVNET_OMP(directive): `#pragma omp directive`
// in an OpenMP build, nothing in a build without OpenMP (-DCONVNET_OPENMP=OFF, or none found), which
// then compiles warning-free under -Werror (a bare #pragma omp is an unknown pragma there).
#ifdef CONVNET_WITH_OPENMP
#define CONVNET_OMP(...) _Pragma(CONVNET_OMP_TEXT(omp __VA_ARGS__))
#define CONVNET_OMP_TEXT(...) #__VA_ARGS__
#else
#define CONVNET_OMP(...)
#endif

namespace convnet {
namespace cpu {

// Below this many elements of one pass over memory, forking threads costs more than it saves.
// (The GEMM counts multiply-adds instead: kParallelMultiplyAdds in csrc/cpu/gemm.cpp.)
constexpr int64_t kParallelGrain = 1 << 15;

// Which driver the selectors pick: Auto (by size and thread count: production), or forced Serial /
// Parallel (tests). A process-wide setting, not per call.
enum class ForcedPath { Auto, Serial, Parallel };
ForcedPath forced_path();
void set_forced_path(ForcedPath path);
const char* path_name(ForcedPath path);  // "auto", "serial", "parallel"

// Threads for OpenMP regions from now on (omp_set_num_threads); num_threads() reads it back.
void set_num_threads(int threads);

// The small kernels (elementwise, bias, LRN, pooling): one parallel region when `work` elements
// exceed kParallelGrain (forced: always / never).
bool select_parallel_loop(int64_t work);

// Kernel workspaces: a failed allocation raises OutOfMemoryError (MemoryError) naming the op and the
// bytes, like a tensor allocation does, instead of a bare std::bad_alloc.
[[noreturn]] inline void throw_workspace_oom(const char* op, size_t bytes) {
  throw OutOfMemoryError(std::string(op) + ": out of host memory for a kernel workspace: asked for " +
                         std::to_string(bytes) + " bytes");
}
// A float workspace that only grows, 64-byte aligned, never zeroed: held thread_local by a kernel,
// so a thread (OpenMP reuses its pool threads) allocates it once and reuses it on every call.
struct AlignedWorkspace {
  float* p = nullptr;
  int64_t cap = 0;
  AlignedWorkspace() = default;
  AlignedWorkspace(const AlignedWorkspace&) = delete;
  AlignedWorkspace& operator=(const AlignedWorkspace&) = delete;
  ~AlignedWorkspace() { std::free(p); }
  // At least n floats (OutOfMemoryError naming `op` when the allocation fails).
  float* reserve(int64_t n, const char* op) {
    if (cap < n) {
      std::free(p);
      p = nullptr;
      cap = 0;
      const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) throw_workspace_oom(op, bytes);
      cap = n;
    }
    return p;
  }
};
inline void resize_workspace(std::vector<float>& v, size_t n, const char* op) {
  try {
    v.resize(n);
  } catch (const std::bad_alloc&) {
    throw_workspace_oom(op, n * sizeof(float));
  } catch (const std::length_error&) {
    throw_workspace_oom(op, n * sizeof(float));
  }
}

}  // namespace cpu
}  // namespace convnet
