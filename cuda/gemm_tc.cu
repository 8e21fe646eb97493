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
#include "mma.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int BM = kGemmTile, BN = kGemmTile;
constexpr int kRowWords = 20;                 // one staged row: 16 words (64 bytes) of data + 4 of padding
constexpr int kStageWords = BM * kRowWords;   // one operand's stage (BM == BN)

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
        dst[g] = S0 + row * kRowWords + (q % 4) * 4;
      } else {
        const int row = 4 * (4 * (q / 64) + q % 4), u = (q / 4) % 16, rg = r0 + row;
        if (g == 0) r = rg, k = k0 + u * KROWS;
        src[g] = base + k * ld + (rg < R ? rg : 0);
        dst[g] = S0 + row * kRowWords + u;
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
      uint32_t* d = dst[g] + stage * kStageWords;
      if (KCONTIG) {
        *reinterpret_cast<int4*>(d) = make_int4(static_cast<int>(w[g][0]), static_cast<int>(w[g][1]),
                                                static_cast<int>(w[g][2]), static_cast<int>(w[g][3]));
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) d[j * kRowWords] = w[g][j];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// the kernel

// KCONTIG for op(A) when A is (M, K) (not transposed), for op(B) when B is (N, K) (transposed).
template <Precision P, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocksPerSM)
    gemm_tc_kernel(GemmParams p, bool vec_a, bool vec_b) {
  __shared__ __align__(16) uint32_t As[2 * kStageWords];
  __shared__ __align__(16) uint32_t Bs[2 * kStageWords];
  constexpr int BK = Tc<P>::kBK;

  const int tile_m = blockIdx.x / p.tiles_n, tile_n = blockIdx.x % p.tiles_n;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = blockIdx.z * p.k_per_split;
  const int k_end = min(p.K, k_begin + p.k_per_split);
  const int slices = (max(0, k_end - k_begin) + BK - 1) / BK;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm0 = (warp % 2) * 64, wn0 = (warp / 2) * 32;
  // ldmatrix row addresses at k-step 0 of a stage, in words. A: lane L gives row L % 8 of matrix
  // L / 8 = (rows + 8 if L / 8 is odd, k half L / 16). B: matrix L / 8 = (n tile L / 16, k half
  // (L / 8) % 2).
  const int a_word = (wm0 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRowWords + (lane >> 4) * 4;
  const int b_word = (wn0 + (lane >> 4) * 8 + (lane & 7)) * kRowWords + ((lane >> 3) & 1) * 4;

  TcLoader<P, !TRANS_A> load_a(p.A, p.lda, p.M, m0, k_begin, k_end, vec_a, As);
  TcLoader<P, TRANS_B> load_b(p.B, p.ldb, p.N, n0, k_begin, k_end, vec_b, Bs);

  float acc[4][4][4];
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
    const uint32_t* as = As + stage * kStageWords + a_word;
    const uint32_t* bs = Bs + stage * kStageWords + b_word;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k-steps of 32 bytes (8 words) each
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) ldmatrix_x4(a[mt], as + mt * 16 * kRowWords + ks * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t f[4];
        ldmatrix_x4(f, bs + np * 16 * kRowWords + ks * 8);
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

  // Epilogue: C = act(alpha * acc + beta * C + bias), in bounds only; beta == 0 never reads C.
  float* C = p.C + blockIdx.z * p.split_stride;
  const int g = lane >> 2, t = lane & 3;
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

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

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
