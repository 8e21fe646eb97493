// The tensor-core block GEMM that cuda/gemm_tc.cu (the FC GEMM) and cuda/conv_tc.cu (the implicit-GEMM
// convolutions) share: a 128 x 128 tile of C per block of 256 threads, both operands staged
// k-contiguous in shared memory as 32-bit words (TF32, or BF16 pairs), fragments by ldmatrix, mma.sync
// per warp (64 x 32 of C), two stages with a register prefetch of the next slice (the layouts and the
// napkin math are in gemm_tc.cu's header).
//
//   Tc<P>          the precision's slice depth (BK elements = 64 bytes once converted), loader
//                  group size and mma instruction (cuda/mma.cuh)
//   TcLoader       one thread's share of each slice of a plain FP32 matrix operand, (R, K) or (K, R)
//   tc_block_mma   the K loop: acc (the warp's 4 x 4 mma tiles) += A_tile B_tile over `slices`
//                  slices from any two loaders with load() (the next slice into registers,
//                  converted) and store(stage) (those registers into a stage)
//   tc_warp_m0/n0  where the calling warp's 64 x 32 tile of C starts in the block's tile
#pragma once

#include <cstdint>

#include "gemm_tc.cuh"
#include "mma.cuh"

namespace convnet {
namespace cuda {

constexpr int kTcRowWords = 20;                       // one staged row: 16 words (64 bytes) of data + 4 of padding
constexpr int kTcStageWords = kGemmTile * kTcRowWords;  // one operand's stage (128 rows)

template <Precision P>
struct Tc;
template <>
struct Tc<Precision::TF32> {
  static constexpr int kBK = 16;    // elements of a slice row (16 x 4 bytes)
  static constexpr int kGroup = 4;  // floats per loader group
  __device__ __forceinline__ static void mma(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_tf32_m16n8k8(acc, a, b);
  }
};
template <>
struct Tc<Precision::BF16> {
  static constexpr int kBK = 32;    // 32 x 2 bytes
  static constexpr int kGroup = 8;
  __device__ __forceinline__ static void mma(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_bf16_m16n8k16(acc, a, b);
  }
};

// ---------------------------------------------------------------------------------------------
// the loader: one thread's share (2 groups) of each slice of one operand
//
// The operand is viewed as (R, K) logical (R = M for A, N for B), element (r, k); a slice is
// 128 rows x BK k, 512 groups, thread t owns groups q = t and t + 256:
// KCONTIG: stored (R, K) at r * ld + k. Group q: row q / 4, k (q % 4) * G .. + G - 1 of the slice
//          (G consecutive floats), stored as the 4 words (q % 4) * 4 .. + 3 of the row.
// else:    stored (K, R) at k * ld + r. Group q: rows r = 4 (4 (q / 64) + q % 4) .. + 3 and unit
//          u = (q / 4) % 16 of the slice (TF32: k = u; BF16: k = 2u, 2u + 1), stored as word u of
//          each of the 4 rows (BF16: bf16(k = 2u) in the low half, bf16(2u + 1) in the high half).
//          A warp reads 64 contiguous bytes of each of 8 k rows.
template <Precision P, bool KCONTIG>
struct TcLoader {
  static constexpr int G = Tc<P>::kGroup, BK = Tc<P>::kBK;
  static constexpr int KROWS = KCONTIG ? 1 : G / 4;  // k rows one group spans (stored (K, R))
  const float* src[2];  // each group's first element in the next slice (row clamped into range)
  int64_t ld;
  int k;                // that element's k, the same for both groups (q and q + 256 agree mod 64)
  int r;                // group 0's r (KCONTIG: the row; else the first of 4); group 1's is r + 64
  int R, k_end;
  bool vec;             // float4 loads allowed (16-byte aligned base, ld % 4 == 0)
  uint32_t* dst[2];     // each group's first word in stage 0
  uint32_t w[2][4];     // the loaded slice, converted (4 words per group), until it is stored

  __device__ __forceinline__ TcLoader(const float* __restrict__ base, int64_t ld_, int R_, int r0, int k0, int k_end_,
                                      bool vec_, uint32_t* S0)
      : ld(ld_), R(R_), k_end(k_end_), vec(vec_) {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      const int q = threadIdx.x + g * kGemmThreads;
      if (KCONTIG) {
        const int row = q / 4, rg = r0 + row;
        if (g == 0) r = rg, k = k0 + (q % 4) * G;
        src[g] = base + (rg < R ? rg : 0) * ld + k;
        dst[g] = S0 + row * kTcRowWords + (q % 4) * 4;
      } else {
        const int row = 4 * (4 * (q / 64) + q % 4), u = (q / 4) % 16, rg = r0 + row;
        if (g == 0) r = rg, k = k0 + u * KROWS;
        src[g] = base + k * ld + (rg < R ? rg : 0);
        dst[g] = S0 + row * kTcRowWords + u;
      }
    }
  }

  // The next slice into w (converted as it arrives: BF16 halves the registers that hold it), then
  // one slice on.
  __device__ __forceinline__ void load() {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      float v[G];
      const int rg = r + 64 * g;
      if (KCONTIG) {
        const bool row_ok = rg < R;
        if (vec && row_ok && k + G <= k_end) {
#pragma unroll
          for (int j = 0; j < G; j += 4) {
            const float4 f = *reinterpret_cast<const float4*>(src[g] + j);
            v[j] = f.x; v[j + 1] = f.y; v[j + 2] = f.z; v[j + 3] = f.w;
          }
        } else {
#pragma unroll
          for (int j = 0; j < G; ++j) v[j] = row_ok && k + j < k_end ? src[g][j] : 0.0f;
        }
        src[g] += BK;
      } else {
#pragma unroll
        for (int h = 0; h < KROWS; ++h) {
          const bool k_ok = k + h < k_end;
          const float* s = src[g] + h * ld;
          if (vec && k_ok && rg + 4 <= R) {
            const float4 f = *reinterpret_cast<const float4*>(s);
            v[4 * h] = f.x; v[4 * h + 1] = f.y; v[4 * h + 2] = f.z; v[4 * h + 3] = f.w;
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[4 * h + j] = k_ok && rg + j < R ? s[j] : 0.0f;
          }
        }
        src[g] += BK * ld;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (P == Precision::TF32) w[g][j] = f32_to_tf32(v[j]);
        else if (KCONTIG) w[g][j] = pack_bf16x2(v[2 * j], v[2 * j + 1]);
        else w[g][j] = pack_bf16x2(v[j], v[4 + j]);
      }
    }
    k += BK;
  }

  // w into stage `stage`.
  __device__ __forceinline__ void store(int stage) {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      uint32_t* d = dst[g] + stage * kTcStageWords;
      if (KCONTIG) {
        *reinterpret_cast<int4*>(d) = make_int4(static_cast<int>(w[g][0]), static_cast<int>(w[g][1]),
                                                static_cast<int>(w[g][2]), static_cast<int>(w[g][3]));
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) d[j * kTcRowWords] = w[g][j];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// the K loop

__device__ __forceinline__ int tc_warp_m0() { return ((threadIdx.x / 32) % 2) * 64; }
__device__ __forceinline__ int tc_warp_n0() { return ((threadIdx.x / 32) / 2) * 32; }

// acc (zeroed here) = the block's A tile (128 x K) times B tile (K x 128)^T over `slices` slices,
// A staged As[m][k], B staged Bs[n][k] (2 stages each of kTcStageWords words, 16-byte aligned).
// Every thread of the block calls it (it has barriers); on return both stages may be reused.
template <Precision P, class LoadA, class LoadB>
__device__ __forceinline__ void tc_block_mma(LoadA& load_a, LoadB& load_b, int slices, uint32_t* As, uint32_t* Bs,
                                             float (&acc)[4][4][4]) {
  const int lane = threadIdx.x % 32;
  const int wm0 = tc_warp_m0(), wn0 = tc_warp_n0();
  // ldmatrix row addresses at k-step 0 of a stage, in words. A: lane L gives row L % 8 of matrix
  // L / 8 = (rows + 8 if L / 8 is odd, k half L / 16). B: matrix L / 8 = (n tile L / 16, k half
  // (L / 8) % 2).
  const int a_word = (wm0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kTcRowWords + (lane >> 4) * 4;
  const int b_word = (wn0 + (lane >> 4) * 8 + (lane & 7)) * kTcRowWords + ((lane >> 3) & 1) * 4;

#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;

  if (slices > 0) {
    load_a.load();
    load_b.load();
    load_a.store(0);
    load_b.store(0);
  }
  __syncthreads();

  for (int i = 0; i < slices; ++i) {
    const int stage = i & 1;
    const bool more = i + 1 < slices;
    if (more) {  // slice i + 1 from global memory while slice i is multiplied
      load_a.load();
      load_b.load();
    }
    const uint32_t* as = As + stage * kTcStageWords + a_word;
    const uint32_t* bs = Bs + stage * kTcStageWords + b_word;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k-steps of 32 bytes (8 words) each
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) ldmatrix_x4(a[mt], as + mt * 16 * kTcRowWords + ks * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t f[4];
        ldmatrix_x4(f, bs + np * 16 * kTcRowWords + ks * 8);
        b[2 * np][0] = f[0];
        b[2 * np][1] = f[1];
        b[2 * np + 1][0] = f[2];
        b[2 * np + 1][1] = f[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) Tc<P>::mma(acc[mt][nt], a[mt], b[nt]);
    }
    if (more) {  // the other stage was last read in iteration i - 1, before its barrier
      load_a.store(stage ^ 1);
      load_b.store(stage ^ 1);
    }
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace convnet
