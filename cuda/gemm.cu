// CUDA GEMM: C (M, N) = alpha * op(A) op(B) + beta * C, row-major float32, all four transposes.
//
// What it computes: op(A) is (M, K) (A stored (M, K) with row stride lda, or (K, M) when trans_a),
// op(B) is (K, N) (B stored (K, N) with row stride ldb, or (N, K) when trans_b). beta == 0 never
// reads C; K == 0 or alpha == 0 gives C = beta * C (zeros when beta == 0) without reading A or B.
// It carries the fully-connected layers (fc_forward is nt, fc_backward_data nn, fc_backward_weights
// tn).
//
// Tiling (CUTLASS's SIMT SGEMM plan):
//   * a block of 256 threads (8 warps) computes a 128 x 128 tile of C, stepping through K in slices
//     of BK = 8; each thread keeps an 8 x 8 tile of C in registers: rows {ty*4 .. +3, 64 + ty*4 .. +3},
//     columns {tx*4 .. +3, 64 + tx*4 .. +3} (two 4-wide halves, so a warp's float4 shared loads are
//     conflict-free broadcasts); per k it does 64 FFMA for 4 LDS.128 (16 FFMA per shared load);
//   * the slices of op(A) (128 x 8) and op(B) (8 x 128) are staged k-major in shared memory
//     (As[stage][k][m], Bs[stage][k][n]) by a STAGES-deep cp.async pipeline (__pipeline_memcpy_async:
//     global -> shared with no register round trip): slices i+1 .. i+STAGES-1 are in flight while
//     slice i is computed, and one __syncthreads per slice both publishes slice i and frees the stage
//     slice i-1 used;
//   * global -> shared: an operand whose storage is contiguous along m / n (A (K, M), B (K, N)) moves
//     4 floats per thread as one 16-byte cp.async when the base is 16-byte aligned, ld % 4 == 0 and
//     the 4 are in bounds, else as four 4-byte ones; an operand contiguous along k (A (M, K),
//     B (N, K)) moves 4 consecutive k of one row as four 4-byte copies into four k rows of the stage
//     (the transpose to k-major happens in the copy). Out-of-range elements are zero-filled by the
//     copy itself (src-size 0), so edge tiles need no other care and no branch sits in the math;
//   * every address is a per-thread pointer made before the K loop and advanced by a constant per
//     slice: no multiply and no division in the K loop;
//   * the four transpose cases are template parameters: only the loader's addressing changes;
//   * epilogue: C = act(alpha * acc + beta * C + bias[n]) with act = ReLU or identity, float4 stores
//     where C allows (fc_forward's bias and ReLU run here, not as a second pass over y);
//   * precision: under tf32 / bf16 (the process-wide setting, backend.h) every launch with M > 1 and
//     N > 1 runs the tensor-core kernel of cuda/gemm_tc.cu instead, with the same tiles, split-K
//     plan, reduce and epilogue contract; the GEMV shapes stay FP32 (memory-bound), as on the CPU;
//   * split-K: when the M x N tiles cannot fill the GPU (fc6 forward: M = 128 gives 1 x 32 tiles for
//     132 SMs), blockIdx.z splits K into slices, the count chosen so the grid fills whole waves of
//     2 blocks per SM; each writes its partial tile to scratch and a second kernel sums the slices in
//     a fixed order (deterministic) and applies alpha, beta, bias and ReLU.
//
// Napkin math, fc6 forward (M = 128 batch, N = 4096, K = 9216) on an H100 SXM:
//   2 * 128 * 4096 * 9216 = 9.66 GFLOP -> 0.19 ms at ~51 TFLOP/s fp32 (non-tensor-core);
//   bytes: W 4096 x 9216 x 4 = 151 MB (read once), x 4.7 MB, y 2.1 MB -> ~0.05 ms at ~3 TB/s,
//   so it is compute-bound (64 FLOP/byte against a ridge of ~17). With split-K 8 (256 blocks, one
//   wave at 2 blocks per SM), the scratch adds 8 x 2.1 MB written and read, ~0.01 ms.
// Per block: STAGES x (8 x 132 + 8 x 132) floats = 33.8 KB shared at STAGES = 4; <= 128 registers
// per thread (__launch_bounds__(256, 2)), so 2 blocks (16 warps) fit on an SM.
#include <cuda_pipeline_primitives.h>

#include <algorithm>

#include "common.cuh"
#include "gemm_tc.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int BM = kGemmTile, BN = kGemmTile, BK = 8;
constexpr int kThreads = kGemmThreads;
constexpr int kMinBlocksPerSM = kGemmMinBlocksPerSM;  // 256 x 128 registers x 2 = the SM's 64K
constexpr int STAGES = 4;
constexpr int PAD = 4;  // row padding of the shared tiles: the transposing copies avoid bank conflicts

using Params = GemmParams;  // gemm_tc.cuh: shared with the tensor-core kernels

// ---------------------------------------------------------------------------------------------
// the loader: one thread's share (4 floats) of each 128 x 8 slice of one operand
//
// An operand is viewed as (R, K) logical (R = M for A, N for B): element (r, k).
// KCONTIG: stored (R, K) (r * ld + k): thread t copies row r = t / 2, k = (t % 2) * 4 .. + 3 into
//          S[k .. k + 3][r] (four 4-byte copies: the transpose to k-major happens in the copy);
// else:    stored (K, R) (k * ld + r): thread t copies k = t / 32, r = (t % 32) * 4 .. + 3 into
//          S[k][r .. r + 3]: one 16-byte copy when VEC (16-byte aligned base, ld % 4 == 0 and
//          R % 4 == 0, so a group of four is wholly in or out of range), else four 4-byte ones.
// The first slice of a block's K range is the short one (len % BK elements, when not a multiple):
// copy_first checks k; every later slice is whole, so copy_full checks nothing that changes in the
// K loop. Each copy is all or nothing: out of range it is zero-filled (src-size 0, which
// __pipeline_memcpy_async compiles to the predicated form of the one instruction) from a clamped,
// in-range address.
template <bool KCONTIG, bool VEC>
struct SliceLoader {
  const float* src;  // this thread's first element of the next slice
  int64_t ld;
  int k_in_slice;    // the thread's first k inside a slice
  int r_left;        // how many of its rows (KCONTIG: 1) / r (else: 4) are < R, clamped to [0, 1|4]
  float* dst;        // its first element in stage 0 (a stage is BK x (BM + PAD) floats further)

  __device__ __forceinline__ SliceLoader(const float* __restrict__ base, int64_t ld_, int R, int r0, int k0,
                                         float (*S0)[BM + PAD]) : ld(ld_) {
    const int t = threadIdx.x;
    if (KCONTIG) {
      const int r = r0 + t / 2;
      k_in_slice = (t % 2) * 4;
      r_left = r < R ? 1 : 0;
      src = base + (r_left ? r * ld : 0) + k0 + k_in_slice;
      dst = &S0[k_in_slice][t / 2];
    } else {
      const int r = r0 + (t % 32) * 4;
      k_in_slice = t / 32;
      r_left = min(4, max(0, R - r));
      src = base + (k0 + k_in_slice) * ld + (r_left > 0 ? r : 0);
      dst = &S0[k_in_slice][(t % 32) * 4];
    }
  }

  // One copy of 4 or 16 bytes, or as many zeros when !ok.
  __device__ __forceinline__ static void cp(float* d, const float* s, int bytes, bool ok) {
    __pipeline_memcpy_async(d, s, bytes, ok ? 0 : bytes);
  }

  // A whole slice into stage `stage`.
  __device__ __forceinline__ void copy_full(int stage) {
    float* d = dst + stage * (BK * (BM + PAD));
    if (KCONTIG) {
#pragma unroll
      for (int j = 0; j < 4; ++j) cp(d + j * (BM + PAD), src + j, 4, r_left > 0);
      src += BK;
    } else if (VEC) {
      cp(d, src, 16, r_left == 4);
      src += BK * ld;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) cp(d + j, src + (j < r_left ? j : 0), 4, j < r_left);
      src += BK * ld;
    }
  }

  // The block's first slice, `len` (1 .. BK) deep, into stage 0.
  __device__ __forceinline__ void copy_first(int len) {
    if (KCONTIG) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = r_left > 0 && k_in_slice + j < len;
        cp(dst + j * (BM + PAD), ok ? src + j : src, 4, ok);
      }
      src += len;
    } else {
      const bool k_ok = k_in_slice < len;
      if (VEC) {
        cp(dst, src, 16, k_ok && r_left == 4);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const bool ok = k_ok && j < r_left;
          cp(dst + j, ok ? src + j : src, 4, ok);
        }
      }
      src += len * ld;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// kernels

// op(A)'s storage is k-contiguous when A is (M, K), i.e. not transposed; op(B)'s when B is (N, K).
// VEC: the operands stored along m / n allow 16-byte copies (see SliceLoader).
template <bool TRANS_A, bool TRANS_B, bool VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) gemm_kernel(Params p) {
  __shared__ __align__(16) float As[STAGES][BK][BM + PAD];
  __shared__ __align__(16) float Bs[STAGES][BK][BN + PAD];

  const int tile_m = blockIdx.x / p.tiles_n, tile_n = blockIdx.x % p.tiles_n;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = blockIdx.z * p.k_per_split;
  const int k_end = min(p.K, k_begin + p.k_per_split);
  const int len = max(0, k_end - k_begin);
  const int slices = (len + BK - 1) / BK;
  const int first_len = len % BK ? len % BK : BK;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  SliceLoader<!TRANS_A, VEC> load_a(p.A, p.lda, p.M, m0, k_begin, As[0]);
  SliceLoader<TRANS_B, VEC> load_b(p.B, p.ldb, p.N, n0, k_begin, Bs[0]);

  // Prologue: slices 0 .. STAGES-2 in flight. Every thread commits one batch per slice, empty or
  // not, so "wait for all but the newest STAGES-2 batches" always means "slice i has landed".
  if (slices > 0) {
    load_a.copy_first(first_len);
    load_b.copy_first(first_len);
  }
  __pipeline_commit();
#pragma unroll
  for (int s = 1; s < STAGES - 1; ++s) {
    if (s < slices) {
      load_a.copy_full(s);
      load_b.copy_full(s);
    }
    __pipeline_commit();
  }

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  int read_stage = 0, write_stage = STAGES - 1;
  for (int i = 0; i < slices; ++i) {
    __pipeline_wait_prior(STAGES - 2);  // this thread's copies of slice i have landed
    __syncthreads();                    // everyone's have; and everyone is done with slice i-1's stage
    if (i + STAGES - 1 < slices) {      // refill the stage slice i-1 used
      load_a.copy_full(write_stage);
      load_b.copy_full(write_stage);
    }
    __pipeline_commit();
    write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;

    const float (*as)[BM + PAD] = As[read_stage];
    const float (*bs)[BN + PAD] = Bs[read_stage];
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&as[kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&as[kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int r = 0; r < 8; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
    read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
  }
  __pipeline_wait_prior(0);  // nothing may be in flight into shared memory when the block ends

  // Epilogue: C = act(alpha * acc + beta * C + bias), in bounds only; beta == 0 never reads C.
  float* C = p.C + blockIdx.z * p.split_stride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = n0 + h * 64 + tx * 4;
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (p.bias) {
#pragma unroll
      for (int j = 0; j < 4; ++j) bias[j] = n + j < p.N ? p.bias[n + j] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
      if (m >= p.M) continue;
      float* crow = C + m * p.ldc;
      const bool vec = p.vec_c && n + 3 < p.N;
      float r[4];
      float old[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (p.beta != 0.0f) {
        if (vec) {
          const float4 o = *reinterpret_cast<const float4*>(crow + n);
          old[0] = o.x; old[1] = o.y; old[2] = o.z; old[3] = o.w;
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) old[j] = n + j < p.N ? crow[n + j] : 0.0f;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        r[j] = p.alpha * acc[i][h * 4 + j];
        if (p.beta != 0.0f) r[j] += p.beta * old[j];
        r[j] += bias[j];
        if (p.relu) r[j] = relu_value(r[j]);
      }
      if (vec) {
        *reinterpret_cast<float4*>(crow + n) = make_float4(r[0], r[1], r[2], r[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (n + j < p.N) crow[n + j] = r[j];
      }
    }
  }
}

// Split-K pass 2: C = act(alpha * sum_z partial[z] + beta * C + bias), the slices added in z order.
__global__ void splitk_reduce_kernel(const float* __restrict__ partial, int splits, int M, int N, float* C,
                                     int64_t ldc, float alpha, float beta, const float* __restrict__ bias,
                                     bool relu) {
  const int64_t mn = static_cast<int64_t>(M) * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < mn; idx += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[z * mn + idx];
    const int64_t m = idx / N, n = idx % N;
    float* c = C + m * ldc + n;
    float r = alpha * s;
    if (beta != 0.0f) r += beta * *c;
    if (bias) r += bias[n];
    *c = relu ? relu_value(r) : r;
  }
}

// C = act(beta * C + bias) (beta == 0 never reads C): K == 0 or alpha == 0.
__global__ void scale_kernel(float* C, int M, int N, int64_t ldc, float beta, const float* __restrict__ bias,
                             bool relu) {
  const int64_t mn = static_cast<int64_t>(M) * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < mn; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = idx % N;
    float* c = C + (idx / N) * ldc + n;
    float r = beta != 0.0f ? beta * *c : 0.0f;
    if (bias) r += bias[n];
    *c = relu ? relu_value(r) : r;
  }
}


// The FP32 kernel for the transposes, or under tf32 / bf16 (`precision`) the tensor-core one.
void launch(Precision precision, bool trans_a, bool trans_b, bool vec, dim3 grid, const Params& p) {
  if (precision != Precision::FP32) {
    launch_gemm_tc(precision, trans_a, trans_b, grid, p);
    return;
  }
  cudaStream_t stream = current_stream();
  // nt has no operand stored along m / n: one instantiation
  if (!trans_a && trans_b) gemm_kernel<false, true, false><<<grid, kThreads, 0, stream>>>(p);
  else if (vec && !trans_a) gemm_kernel<false, false, true><<<grid, kThreads, 0, stream>>>(p);
  else if (vec && !trans_b) gemm_kernel<true, false, true><<<grid, kThreads, 0, stream>>>(p);
  else if (vec) gemm_kernel<true, true, true><<<grid, kThreads, 0, stream>>>(p);
  else if (!trans_a) gemm_kernel<false, false, false><<<grid, kThreads, 0, stream>>>(p);
  else if (!trans_b) gemm_kernel<true, false, false><<<grid, kThreads, 0, stream>>>(p);
  else gemm_kernel<true, true, false><<<grid, kThreads, 0, stream>>>(p);
  CONVNET_LAUNCH_CHECK("gemm_kernel");
}

// How many K slices: 1 when the tiles fill the GPU; else the count (<= 16, each slice >= 256 deep
// so the scratch traffic stays small next to the math) whose grid fills its last wave of
// kMinBlocksPerSM blocks per SM best (fewest slices among equals). fc6 forward: 32 tiles on 132 SMs
// -> 8 slices, 256 blocks = 0.97 of one wave (9 slices would make 288: a second, 9 % full wave).
int split_count(int64_t tiles, int K, int sms) {
  const int64_t wave = static_cast<int64_t>(kMinBlocksPerSM) * sms;
  if (tiles >= wave) return 1;
  const int64_t most = std::min<int64_t>(16, std::max<int64_t>(1, K / 256));
  int best = 1;
  double best_fill = 0.0;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t blocks = tiles * s;
    const double fill = static_cast<double>(blocks) / static_cast<double>(ceil_div(blocks, wave) * wave);
    if (fill > best_fill + 1e-9) {
      best_fill = fill;
      best = static_cast<int>(s);
    }
  }
  return best;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

void gemm_bias_relu(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc, const float* bias, bool relu) {
  if (M <= 0 || N <= 0) return;
  cudaStream_t stream = current_stream();
  if (K <= 0 || alpha == 0.0f) {
    const int64_t mn = static_cast<int64_t>(M) * N;
    scale_kernel<<<grid_for(mn, kThreads), kThreads, 0, stream>>>(C, M, N, ldc, beta, bias, relu);
    CONVNET_LAUNCH_CHECK("gemm scale_kernel");
    return;
  }

  const int64_t tiles_m = ceil_div(M, BM), tiles_n = ceil_div(N, BN);
  const int64_t tiles = tiles_m * tiles_n;
  if (tiles > 0x7fffffffLL) throw std::invalid_argument("gemm: too many tiles for one grid");

  int splits = split_count(tiles, K, sm_count());
  // Slices are whole multiples of BK so a 16-byte copy never straddles two of them.
  const int k_per_split = static_cast<int>(ceil_div(ceil_div(K, splits), BK) * BK);
  splits = static_cast<int>(ceil_div(K, k_per_split));

  // The GEMV shapes stay FP32 in every precision (memory-bound; docs/architecture.md, "Precision").
  const Precision precision = M > 1 && N > 1 ? gemm_precision() : Precision::FP32;
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
  // 16-byte copies for the operands stored along m / n (A when trans_a, B when !trans_b)
  const bool vec = (!trans_a || (aligned16(A) && lda % 4 == 0 && M % 4 == 0)) &&
                   (trans_b || (aligned16(B) && ldb % 4 == 0 && N % 4 == 0));
  const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(splits));

  if (splits == 1) {
    p.C = C;
    p.ldc = ldc;
    p.alpha = alpha;
    p.beta = beta;
    p.bias = bias;
    p.relu = relu;
    p.split_stride = 0;
    p.vec_c = aligned16(C) && ldc % 4 == 0;
    launch(precision, trans_a, trans_b, vec, grid, p);
    return;
  }

  const int64_t mn = static_cast<int64_t>(M) * N;
  Scratch partial(static_cast<size_t>(splits) * mn);
  p.C = partial.ptr;
  p.ldc = N;
  p.alpha = 1.0f;
  p.beta = 0.0f;
  p.bias = nullptr;
  p.relu = false;
  p.split_stride = mn;
  // N % 4 == 0 makes every slice's offset z * M * N a multiple of 4 floats too.
  p.vec_c = aligned16(partial.ptr) && N % 4 == 0;
  launch(precision, trans_a, trans_b, vec, grid, p);
  splitk_reduce_kernel<<<grid_for(mn, kThreads), kThreads, 0, stream>>>(partial.ptr, splits, M, N, C, ldc, alpha,
                                                                         beta, bias, relu);
  CONVNET_LAUNCH_CHECK("gemm splitk_reduce_kernel");
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_bias_relu(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, false);
}

}  // namespace cuda
}  // namespace convnet
