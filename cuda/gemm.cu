// CUDA GEMM: C (M, N) = alpha * op(A) op(B) + beta * C, row-major float32, all four transposes.
//
// What it computes: op(A) is (M, K) (A stored (M, K) with row stride lda, or (K, M) when trans_a),
// op(B) is (K, N) (B stored (K, N) with row stride ldb, or (N, K) when trans_b). beta == 0 never
// reads C; K == 0 or alpha == 0 gives C = beta * C (zeros when beta == 0) without reading A or B.
// It carries the fully-connected layers (fc_forward is nt, fc_backward_data nn, fc_backward_weights
// tn).
//
// Tiling (the classic SIMT register-blocked GEMM, as in cuda-convnet2 / CUTLASS's SIMT path):
//   * a block of 256 threads computes a 128 x 128 tile of C, stepping through K in slices of BK = 8;
//   * each slice of op(A) (128 x 8) and op(B) (8 x 128) is staged in shared memory k-major
//     (As[k][m], Bs[k][n]), so the inner loop reads one float4 of A and one of B per 4 rows/cols;
//   * each thread keeps an 8 x 8 tile of C in registers: rows {ty*4 .. +3, 64 + ty*4 .. +3},
//     columns {tx*4 .. +3, 64 + tx*4 .. +3} (two 4-wide halves, so a warp's float4 shared loads
//     are conflict-free broadcasts); per k it does 64 FMAs for 4 shared float4 loads;
//   * double buffering: while the block computes slice k from shared buffer k & 1, each thread
//     holds slice k + 1 in registers (one float4 of A and one of B, loaded from global before the
//     math) and stores it into the other buffer after; one __syncthreads per slice;
//   * global loads: each thread loads 4 consecutive floats along the dimension that is contiguous
//     in memory (k for A (M, K) and for B (N, K), m / n otherwise) as one float4 when the pointer
//     and leading dimension allow (16-byte aligned, ld % 4 == 0) and the 4 are in bounds; else 4
//     bounds-checked scalar loads (out of range reads as 0, so edge tiles need no other care);
//   * the four transpose cases are template parameters: only the loader's addressing changes.
//   * split-K: when the M x N tiles cannot fill the GPU (fc6 forward: M = 128 gives 1 x 32 tiles
//     for 132 SMs), blockIdx.z splits K into slices; each writes its partial tile to scratch and a
//     second kernel sums the slices in a fixed order (deterministic) and applies alpha / beta.
//
// Napkin math, fc6 forward (M = 128 batch, N = 4096, K = 9216) on an H100 SXM:
//   2 * 128 * 4096 * 9216 = 9.66 GFLOP -> 0.19 ms at ~51 TFLOP/s fp32 (non-tensor-core);
//   bytes: W 4096 x 9216 x 4 = 151 MB (read once), x 4.7 MB, y 2.1 MB -> ~0.05 ms at ~3 TB/s,
//   so it is compute-bound (64 FLOP/byte against a ridge of ~17). With split-K 9 (288 blocks),
//   the scratch adds 9 x 2.1 MB written and read, ~0.01 ms. A SIMT kernel like this one reaches
//   perhaps 60-70 % of fp32 peak: ~0.3 ms expected. (Not yet measured on a GPU.)
// Per block: 2 x (8 x 132 + 8 x 132) floats = 16.9 KB shared; ~128 registers per thread.
#include <algorithm>

#include "common.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 8;
constexpr int kThreads = 256;
constexpr int PAD = 4;  // row padding of the shared tiles: the transposing stores avoid bank conflicts

struct Params {
  const float* A;
  const float* B;
  float* C;          // C, or the split-K scratch (split z at C + z * split_stride)
  int M, N, K;
  int64_t lda, ldb, ldc;
  float alpha, beta;
  int k_per_split;   // K range of blockIdx.z: [z * k_per_split, min(K, (z + 1) * k_per_split))
  int64_t split_stride;
  int tiles_n;       // tiles along N (blockIdx.x = tile_m * tiles_n + tile_n)
  bool vec_a, vec_b, vec_c;  // float4 access allowed (16-byte aligned base, ld % 4 == 0)
};

// ---------------------------------------------------------------------------------------------
// loaders: one thread's 4 floats of a 128 x 8 slice of an operand, and where they go in shared
//
// An operand is viewed as (R, K) logical (R = M for A, N for B): element (r, k).
// KCONTIG: stored (R, K) (r * ld + k): thread t loads r = t / 2, k = (t % 2) * 4 .. + 3.
// else:    stored (K, R) (k * ld + r): thread t loads k = t / 32, r = (t % 32) * 4 .. + 3.
template <bool KCONTIG>
__device__ __forceinline__ void load_slice(const float* __restrict__ base, int64_t ld, int R, int k_end, int r0,
                                           int k0, bool vec, float (&v)[4]) {
  const int t = threadIdx.x;
  if (KCONTIG) {
    const int r = r0 + t / 2, k = k0 + (t % 2) * 4;
    const float* p = base + r * ld + k;
    if (vec && r < R && k + 3 < k_end) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(p));
      v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = (r < R && k + j < k_end) ? __ldg(p + j) : 0.0f;
    }
  } else {
    const int k = k0 + t / 32, r = r0 + (t % 32) * 4;
    const float* p = base + k * ld + r;
    if (vec && k < k_end && r + 3 < R) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(p));
      v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = (k < k_end && r + j < R) ? __ldg(p + j) : 0.0f;
    }
  }
}

// Note on the scalar fallbacks above: `p + j` is formed only when the access is in bounds
// (the conditional short-circuits), so no out-of-range address is ever dereferenced.

template <bool KCONTIG>
__device__ __forceinline__ void store_slice(float (*S)[BM + PAD], const float (&v)[4]) {
  const int t = threadIdx.x;
  if (KCONTIG) {
    const int r = t / 2, k = (t % 2) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) S[k + j][r] = v[j];
  } else {
    const int k = t / 32, r = (t % 32) * 4;
    *reinterpret_cast<float4*>(&S[k][r]) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// ---------------------------------------------------------------------------------------------
// kernels

// op(A)'s storage is k-contiguous when A is (M, K), i.e. not transposed; op(B)'s when B is (N, K).
template <bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(kThreads) gemm_kernel(Params p) {
  __shared__ __align__(16) float As[2][BK][BM + PAD];
  __shared__ __align__(16) float Bs[2][BK][BN + PAD];

  const int tile_m = blockIdx.x / p.tiles_n, tile_n = blockIdx.x % p.tiles_n;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = blockIdx.z * p.k_per_split;
  const int k_end = min(p.K, k_begin + p.k_per_split);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  float va[4], vb[4];
  if (k_begin < k_end) {
    load_slice<!TRANS_A>(p.A, p.lda, p.M, k_end, m0, k_begin, p.vec_a, va);
    load_slice<TRANS_B>(p.B, p.ldb, p.N, k_end, n0, k_begin, p.vec_b, vb);
    store_slice<!TRANS_A>(As[0], va);
    store_slice<TRANS_B>(Bs[0], vb);
  }
  __syncthreads();

  int buf = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    const bool more = k0 + BK < k_end;
    if (more) {  // prefetch the next slice into registers; its latency hides behind the math
      load_slice<!TRANS_A>(p.A, p.lda, p.M, k_end, m0, k0 + BK, p.vec_a, va);
      load_slice<TRANS_B>(p.B, p.ldb, p.N, k_end, n0, k0 + BK, p.vec_b, vb);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) {
      // The other buffer was last read in the previous iteration, which every thread finished
      // before the __syncthreads that ended it: safe to overwrite now.
      store_slice<!TRANS_A>(As[buf ^ 1], va);
      store_slice<TRANS_B>(Bs[buf ^ 1], vb);
    }
    __syncthreads();
    buf ^= 1;
  }

  // Epilogue: C = alpha * acc + beta * C, in bounds only; beta == 0 never reads C.
  float* C = p.C + blockIdx.z * p.split_stride;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (m >= p.M) continue;
    float* crow = C + m * p.ldc;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + h * 64 + tx * 4;
      float r[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) r[j] = p.alpha * acc[i][h * 4 + j];
      if (p.vec_c && n + 3 < p.N) {
        float4* c4 = reinterpret_cast<float4*>(crow + n);
        if (p.beta != 0.0f) {
          const float4 old = *c4;
          r[0] += p.beta * old.x; r[1] += p.beta * old.y; r[2] += p.beta * old.z; r[3] += p.beta * old.w;
        }
        *c4 = make_float4(r[0], r[1], r[2], r[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (n + j < p.N) crow[n + j] = p.beta != 0.0f ? r[j] + p.beta * crow[n + j] : r[j];
        }
      }
    }
  }
}

// Split-K pass 2: C = alpha * sum_z partial[z] + beta * C, the slices added in z order.
__global__ void splitk_reduce_kernel(const float* __restrict__ partial, int splits, int M, int N, float* C,
                                     int64_t ldc, float alpha, float beta) {
  const int64_t mn = static_cast<int64_t>(M) * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < mn; idx += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[z * mn + idx];
    const int64_t m = idx / N, n = idx % N;
    float* c = C + m * ldc + n;
    *c = beta != 0.0f ? alpha * s + beta * *c : alpha * s;
  }
}

// C = beta * C (zeros when beta == 0, never reading C): K == 0 or alpha == 0.
__global__ void scale_kernel(float* C, int M, int N, int64_t ldc, float beta) {
  const int64_t mn = static_cast<int64_t>(M) * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < mn; idx += (int64_t)gridDim.x * blockDim.x) {
    float* c = C + (idx / N) * ldc + idx % N;
    *c = beta != 0.0f ? beta * *c : 0.0f;
  }
}


bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

void launch(bool trans_a, bool trans_b, dim3 grid, const Params& p) {
  cudaStream_t stream = current_stream();
  if (!trans_a && !trans_b) gemm_kernel<false, false><<<grid, kThreads, 0, stream>>>(p);
  else if (!trans_a && trans_b) gemm_kernel<false, true><<<grid, kThreads, 0, stream>>>(p);
  else if (trans_a && !trans_b) gemm_kernel<true, false><<<grid, kThreads, 0, stream>>>(p);
  else gemm_kernel<true, true><<<grid, kThreads, 0, stream>>>(p);
  CONVNET_LAUNCH_CHECK("gemm_kernel");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launcher

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cudaStream_t stream = current_stream();
  if (K <= 0 || alpha == 0.0f) {
    const int64_t mn = static_cast<int64_t>(M) * N;
    scale_kernel<<<grid_for(mn, kThreads), kThreads, 0, stream>>>(C, M, N, ldc, beta);
    CONVNET_LAUNCH_CHECK("gemm scale_kernel");
    return;
  }

  const int64_t tiles_m = ceil_div(M, BM), tiles_n = ceil_div(N, BN);
  const int64_t tiles = tiles_m * tiles_n;
  if (tiles > 0x7fffffffLL) throw std::invalid_argument("gemm: too many tiles for one grid");

  // Split K when the tiles alone leave SMs idle: aim for ~2 blocks per SM, each slice at least
  // 256 deep (so the split-K scratch traffic stays small next to the math), at most 16 slices.
  int device = 0, sms = 0;
  CONVNET_CUDA_CHECK(cudaGetDevice(&device));
  CONVNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int splits = 1;
  if (tiles < 2LL * sms) {
    const int64_t want = ceil_div(2LL * sms, tiles);
    const int64_t deep = std::max<int64_t>(1, K / 256);
    splits = static_cast<int>(std::min<int64_t>({want, deep, 16}));
  }
  // Slices are whole multiples of BK so a float4 load never straddles two of them.
  const int k_per_split = static_cast<int>(ceil_div(ceil_div(K, splits), BK) * BK);
  splits = static_cast<int>(ceil_div(K, k_per_split));

  Params p{};
  p.A = A;
  p.B = B;
  p.M = M;
  p.N = N;
  p.K = K;
  p.lda = lda;
  p.ldb = ldb;
  p.k_per_split = k_per_split;
  p.tiles_n = static_cast<int>(tiles_n);
  p.vec_a = aligned16(A) && lda % 4 == 0;
  p.vec_b = aligned16(B) && ldb % 4 == 0;
  const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(splits));

  if (splits == 1) {
    p.C = C;
    p.ldc = ldc;
    p.alpha = alpha;
    p.beta = beta;
    p.split_stride = 0;
    p.vec_c = aligned16(C) && ldc % 4 == 0;
    launch(trans_a, trans_b, grid, p);
    return;
  }

  const int64_t mn = static_cast<int64_t>(M) * N;
  Scratch partial(static_cast<size_t>(splits) * mn);
  p.C = partial.ptr;
  p.ldc = N;
  p.alpha = 1.0f;
  p.beta = 0.0f;
  p.split_stride = mn;
  // N % 4 == 0 makes every slice's offset z * M * N a multiple of 4 floats too.
  p.vec_c = aligned16(partial.ptr) && N % 4 == 0;
  launch(trans_a, trans_b, grid, p);
  splitk_reduce_kernel<<<grid_for(mn, kThreads), kThreads, 0, stream>>>(partial.ptr, splits, M, N, C, ldc, alpha,
                                                                         beta);
  CONVNET_LAUNCH_CHECK("gemm splitk_reduce_kernel");
}

}  // namespace cuda
}  // namespace convnet
