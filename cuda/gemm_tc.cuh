// What cuda/gemm.cu (the FP32 SIMT kernels and all host-side planning: tiles, split-K, the reduce)
// and cuda/gemm_tc.cu (the TF32 / BF16 tensor-core kernels) share: the 128 x 128 tile of C per
// block of 256 threads, and the parameters of one kernel launch.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace convnet {
namespace cuda {

constexpr int kGemmTile = 128;           // BM = BN: a block's tile of C is 128 x 128
constexpr int kGemmThreads = 256;        // 8 warps
constexpr int kGemmMinBlocksPerSM = 2;   // both kernel families fit 2 blocks per SM (split_count plans for it)

struct GemmParams {
  const float* A;
  const float* B;
  float* C;          // C, or the split-K scratch (split z at C + z * split_stride)
  const float* bias; // (N,) added to every row, or null; only without split-K (the reduce adds it)
  int M, N, K;
  int64_t lda, ldb, ldc;
  float alpha, beta;
  bool relu;
  int k_per_split;   // K range of blockIdx.z: [z * k_per_split, min(K, (z + 1) * k_per_split))
  int64_t split_stride;
  int tiles_n;       // tiles along N (blockIdx.x = tile_m * tiles_n + tile_n)
  bool vec_c;        // float4 access to C allowed (16-byte aligned base, ldc % 4 == 0)
};

// The tensor-core kernel for `precision` (TF32 or BF16) on grid (tiles, 1, splits), on the current
// stream; same contract as the FP32 kernel of gemm.cu for the same parameters (cuda/gemm_tc.cu).
void launch_gemm_tc(Precision precision, bool trans_a, bool trans_b, dim3 grid, const GemmParams& p);

}  // namespace cuda
}  // namespace convnet
