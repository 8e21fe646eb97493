// Shared by the CPU kernels: when a loop is worth an OpenMP parallel region.
#pragma once

#include <cstdint>

namespace convnet {
namespace cpu {

// Below this many elements of one pass over memory, forking threads costs more than it saves.
// (The GEMM counts multiply-adds instead: kParallelMultiplyAdds in csrc/cpu/gemm.cpp.)
constexpr int64_t kParallelGrain = 1 << 15;

}  // namespace cpu
}  // namespace convnet
