// CUDA GEMM on tensor cores: C (M, N) = act(alpha * op(A) op(B) + beta * C + bias), the contract of
// cuda/gemm.cu, with the products of op(A) op(B) in TF32 or BF16 and FP32 accumulation. gemm.cu
// plans every launch (tiles, split-K, the reduce, the K == 0 path) and calls launch_gemm_tc in
// place of its FP32 kernel when the process-wide precision (backend.h) is tf32 or bf16.
//
// What it rounds: A and B stay FP32 in global memory (master data); each element is rounded once,
// while it is staged into shared memory: TF32 by cvt.rna (nearest, ties away from zero, 10-bit
// mantissa), BF16 by cvt.rn (nearest even, 8-bit mantissa). Products are exact, sums FP32 (the
// .f32 accumulators of mma); the epilogue (alpha, beta * C, bias, ReLU) is FP32 on FP32 C.
// The tensor-core instructions are cuda/mma.cuh's functions (emulated there for tools/cuda_emu).
//
// Tiling:
//   * a block of 256 threads (8 warps: 2 along m x 4 along n) computes a 128 x 128 tile of C, a
//     warp a 64 x 32 tile = 4 x 4 mma tiles of 16 x 8: 64 FP32 accumulators per thread;
//   * K is stepped in slices of 64 bytes per row of each operand once converted: BK = 16 TF32 or
//     32 BF16 elements, two mma k-steps (k8 TF32, k16 BF16) per slice. Both operands are staged
//     k-contiguous, As[m][k] and Bs[n][k], as 32-bit words: 16 words of data + 4 of padding per row
//     (80 bytes, so the 8 rows of one ldmatrix 8x8 matrix start in 8 distinct 16-byte bank groups:
//     conflict-free). The byte layout, and so every ldmatrix address, is the same in both precisions;
//   * fragments, per k-step and warp: 4 ldmatrix.x4 for A (one 16-row tile each; its matrices are
//     rows 0-7 / 8-15 x the two 16-byte halves of the k-step: a0..a3 of the .row layout), 2
//     ldmatrix.x4 for B (two 8-column tiles each: b0, b1 of both), then 16 mma;
//   * global -> shared goes through registers (a conversion cannot ride on cp.async): each thread
//     loads its share of slice i+1 (2 groups of 4 (TF32) or 8 (BF16) floats per operand: float4
//     where aligned and wholly in range, else bounds-checked scalars, zeros outside) and converts
//     it (4 words per group) before the mma of slice i, and stores it to the other stage after them: 2 stages, one
//     __syncthreads per slice. An operand stored k-contiguous (A (M, K), B (N, K)) stores 16 bytes
//     per group; one stored along m / n (A (K, M), B (K, N)) transposes in the store, 4 words per
//     group (BF16: a word is the (k, k+1) pair of one row), with 2-way bank conflicts;
//   * epilogue: C = act(alpha * acc + beta * C + bias[n]) straight from the accumulator layout
//     (c0, c1 at (g, 2t), (g, 2t+1); c2, c3 at (g+8, ...)), float2 stores where C allows.
//
// Napkin math, fc6 forward (M = 128, N = 4096, K = 9216) on an H100 SXM: 9.66 GFLOP is 0.010 ms at
// the dense BF16 tensor peak (989 TFLOP/s) and 0.020 ms at TF32 (495), while W alone is 151 MB of
// FP32, 0.045 ms at 3.35 TB/s: with FP32 master weights read by the GEMM, fc6 is memory-bound in
// both modes (64 FLOP/byte against a ridge of ~150 TF32 / ~300 BF16).
// Per block: 2 stages x 2 operands x 128 rows x 80 B = 40 KB of shared memory; 2 blocks per SM.
#include "gemm_tc.cuh"
#include "tc_tile.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int BM = kGemmTile, BN = kGemmTile;

// ---------------------------------------------------------------------------------------------
// the kernel

// KCONTIG for op(A) when A is (M, K) (not transposed), for op(B) when B is (N, K) (transposed).
template <Precision P, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocksPerSM)
    gemm_tc_kernel(GemmParams p, bool vec_a, bool vec_b) {
  __shared__ __align__(16) uint32_t As[2 * kTcStageWords];
  __shared__ __align__(16) uint32_t Bs[2 * kTcStageWords];
  constexpr int BK = Tc<P>::kBK;

  const int tile_m = blockIdx.x / p.tiles_n, tile_n = blockIdx.x % p.tiles_n;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = blockIdx.z * p.k_per_split;
  const int k_end = min(p.K, k_begin + p.k_per_split);
  const int slices = (max(0, k_end - k_begin) + BK - 1) / BK;

  TcLoader<P, !TRANS_A> load_a(p.A, p.lda, p.M, m0, k_begin, k_end, vec_a, As);
  TcLoader<P, TRANS_B> load_b(p.B, p.ldb, p.N, n0, k_begin, k_end, vec_b, Bs);
  float acc[4][4][4];
  tc_block_mma<P>(load_a, load_b, slices, As, Bs, acc);

  // Epilogue: C = act(alpha * acc + beta * C + bias), in bounds only; beta == 0 never reads C.
  float* C = p.C + blockIdx.z * p.split_stride;
  const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int wm0 = tc_warp_m0(), wn0 = tc_warp_n0();
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = n0 + wn0 + nt * 8 + 2 * t;
    float bias[2] = {0.0f, 0.0f};
    if (p.bias) {
      bias[0] = n < p.N ? p.bias[n] : 0.0f;
      bias[1] = n + 1 < p.N ? p.bias[n + 1] : 0.0f;
    }
    const bool vec = p.vec_c && n + 1 < p.N;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = m0 + wm0 + mt * 16 + g + 8 * h;
        if (m >= p.M || n >= p.N) continue;
        float* crow = C + m * p.ldc;
        float old[2] = {0.0f, 0.0f};
        if (p.beta != 0.0f) {
          if (vec) {
            const float2 o = *reinterpret_cast<const float2*>(crow + n);
            old[0] = o.x;
            old[1] = o.y;
          } else {
            old[0] = crow[n];
            old[1] = n + 1 < p.N ? crow[n + 1] : 0.0f;
          }
        }
        float r[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          r[j] = p.alpha * acc[mt][nt][2 * h + j];
          if (p.beta != 0.0f) r[j] += p.beta * old[j];
          r[j] += bias[j];
          if (p.relu) r[j] = relu_value(r[j]);
        }
        if (vec) {
          *reinterpret_cast<float2*>(crow + n) = make_float2(r[0], r[1]);
        } else {
          crow[n] = r[0];
          if (n + 1 < p.N) crow[n + 1] = r[1];
        }
      }
  }
}


template <Precision P>
void launch_precision(bool trans_a, bool trans_b, dim3 grid, const GemmParams& p, bool vec_a, bool vec_b) {
  cudaStream_t stream = current_stream();
  if (!trans_a && !trans_b) gemm_tc_kernel<P, false, false><<<grid, kGemmThreads, 0, stream>>>(p, vec_a, vec_b);
  else if (!trans_a) gemm_tc_kernel<P, false, true><<<grid, kGemmThreads, 0, stream>>>(p, vec_a, vec_b);
  else if (!trans_b) gemm_tc_kernel<P, true, false><<<grid, kGemmThreads, 0, stream>>>(p, vec_a, vec_b);
  else gemm_tc_kernel<P, true, true><<<grid, kGemmThreads, 0, stream>>>(p, vec_a, vec_b);
  CONVNET_LAUNCH_CHECK("gemm_tc_kernel");
}

}  // namespace

void launch_gemm_tc(Precision precision, bool trans_a, bool trans_b, dim3 grid, const GemmParams& p) {
  // float4 loads need a 16-byte aligned base and ld % 4 == 0; every k and r a group starts at is a
  // multiple of 4 (k_per_split is a multiple of 8), and bounds are checked per group.
  const bool vec_a = aligned16(p.A) && p.lda % 4 == 0;
  const bool vec_b = aligned16(p.B) && p.ldb % 4 == 0;
  if (precision == Precision::TF32) launch_precision<Precision::TF32>(trans_a, trans_b, grid, p, vec_a, vec_b);
  else if (precision == Precision::BF16) launch_precision<Precision::BF16>(trans_a, trans_b, grid, p, vec_a, vec_b);
  else throw std::invalid_argument("launch_gemm_tc: precision must be tf32 or bf16");
}

}  // namespace cuda
}  // namespace convnet
