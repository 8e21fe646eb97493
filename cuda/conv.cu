// CUDA convolution: forward (+ bias), backward to data, backward to filters (+ bias), as implicit
// GEMMs -- the patch matrix is never stored; each block gathers its tile of it from NHWC memory.
//
// Layouts (backend.h): x (N, H, W, C), w (K, R, S, Cg), y (N, P, Q, K); g = groups, Cg = C/g,
// Kg = K/g, RSC = R*S*Cg. One group per blockIdx.z (backward filter: z = split * groups + group).
//
// The block GEMM (CUTLASS's SIMT plan, as cuda/gemm.cu): 256 threads, a 128 x 128 block tile, BK = 8;
// each thread an 8 x 8 register tile, rows {ty*4 .. +3, 64 + ty*4 .. +3}, columns {tx*4 .. +3,
// 64 + tx*4 .. +3} (two 4-wide halves: a warp's float4 shared loads are conflict-free broadcasts).
// Operands reach shared memory through a STAGES-deep cp.async pipeline (__pipeline_memcpy_async,
// zero-filled with src-size 0 for padding and out-of-range elements, so the math has no branch);
// slices i+1 .. i+STAGES-1 are in flight while slice i is multiplied, one __syncthreads per slice.
// A shared tile is k-major ([BK][128 + 4]: 16-byte copies of 4 consecutive columns) or, for an
// operand gathered along k, m-major ([128][BK + 4]: 16-byte copies of 4 consecutive k = 4 channels;
// the math then reads 2-4 k of a row per LDS). Either way 8 k cost 512 FFMA for 32 LDS.128 (16 FFMA
// per shared load). A gathered operand moves in 16-byte copies when its channel counts are % 4 == 0
// and the tensor is 16-byte aligned, else one 4-byte copy per element (conv1: C = 3). The filters
// are first copied (a small kernel, ~1 MB) into the layout the GEMM wants, rows padded with zeros to
// a multiple of 4 columns, so they always move in 16-byte copies. The per-row (per-column) part of
// each gather offset sits in a shared table made once per block, read per slice.
// Every gather offset is a counter advanced by a constant per slice (with one compare-and-carry
// per index), made from divisions once before the K loop: no division, no multiply in any K loop.
// Offsets into x, y, dy, dx are int64.
//
//   forward          M = N*P*Q (output pixels), N = Kg, K = R*S*Cg (r, s, c; c fastest)
//                    A (pixel, (r,s,c)) = x[n, p*sh-ph+r, q*sw-pw+s, g*Cg+c], m-major in shared
//                    memory; B ((r,s,c), k) = wt[g, (r,s,c), k] = w[g*Kg+k, r, s, c] (w transposed by
//                    a small kernel first, ~1 MB): contiguous along k. Epilogue, float4 where K % 4 ==
//                    0: y (=|+=) acc + b, fused ReLU.
//   backward data    dx[h, w] = sum over taps r = (h+ph) % sh + sh*j (only those: a tap of any other
//                    residue lands between output pixels, a zero). So the input pixels split into
//                    sh*sw stride phases (h+ph, w+pw) mod (sh, sw), and each phase is a stride-1
//                    forward convolution of dy with its own flipped sub-filter of ceil((R-rho)/sh) x
//                    ceil((S-sigma)/sw) taps, run by the forward kernel with a strided output row
//                    map (dx rows h = h0 + sh*i). Stride 1 is the one phase of the whole turned
//                    filter. The phases partition dx: every element is written once (no atomics),
//                    and no zero tap is multiplied (conv1: 16 phases of 2x2 .. 3x3 taps, 121 in all,
//                    where the gather over all 121 taps of every pixel finds 1 in 16 nonzero).
//   backward filter  M = Kg, N = R*S*Cg, K = N*P*Q (output pixels), split across blocks (split-K),
//                    both tiles k-major: A (k, pixel) = dy[pixel, g*Kg+k] (contiguous along k);
//                    B (pixel, (r,s,c)) = the forward's patch entry (contiguous along c). A thread
//                    walks one pixel's (h, w) and x offset by BK pixels per slice (q carried into p,
//                    p into n with compares). Each split writes its own partial dW into scratch; a
//                    second kernel sums the splits in split order (deterministic, no atomics). The
//                    split count fills whole waves of 2 blocks per SM best. db: cuda::bias_grad.
//
// Napkin math, AlexNet-2012 conv2 (N=128, 27x27x96 -> 27x27x256, 5x5, pad 2, stride 1, groups 2):
//   FLOPs per pass: 2 * N*P*Q * K * R*S*Cg = 2 * 93312 * 256 * 1200 = 57.3 GFLOP.
//   Bytes (compulsory): x 35.8 MB, y 95.6 MB, w 1.2 MB: ~0.13 GB -> ~0.04 ms at 3.35 TB/s against
//   0.86 ms of math at 66.9 TFLOP/s: compute-bound, so the goal is FFMA issue rate.
//   Per thread per slice: 512 FFMA and 32 LDS.128; the rest (the loader's counters, predicates and
//   2-8 cp.async, one barrier, the loop) is what keeps the FFMA share under 100 %. The K loop is
//   unrolled by STAGES so every stage's shared address is a constant.
//   Per block: STAGES x (128 x 12 + 8 x 132) floats = 41.5 KB shared at STAGES = 4 (forward) and
//   33.8 KB (backward filter); <= 128 registers (__launch_bounds__(256, 2)): 2 blocks (16 warps)
//   per SM. Grid, forward: 729 x 1 x 2 = 1458 blocks (5.5 waves of 264).
#include <cuda_pipeline_primitives.h>

#include <algorithm>

#include "common.cuh"
#include "conv_tc.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMinBlocksPerSM = 2;  // 256 threads x 128 registers x 2 = the SM's 64K
constexpr int BM = 128, BN = 128, BK = 8, STAGES = 4;
constexpr int kLdK = BM + 4;  // a k-major tile row: 128 floats + 4 (float4 alignment, no store conflicts)
constexpr int kLdM = BK + 4;  // an m-major tile row: 8 floats + 4 (rows 4 apart fall 16 banks apart)
static_assert(BM == BN, "the thread tile assumes square block tiles");

// One copy of 4 or 16 bytes into shared memory, or as many zeros when !ok (src-size 0: nothing read).
template <int BYTES>
__device__ __forceinline__ void cp_async(float* dst, const float* src, bool ok) {
  __pipeline_memcpy_async(dst, src, BYTES, ok ? 0 : BYTES);
}

// Row i (0..7) of a thread's register tile within the block tile.
__device__ __forceinline__ int tile_row(int i, int ty) { return (i < 4 ? 0 : 64) + ty * 4 + (i & 3); }

// acc += one BK slice, A k-major (as[k][m]) and B k-major (bs[k][n]): 64 FFMA per 4 LDS.128.
__device__ __forceinline__ void multiply_kmajor(const float (*as)[kLdK], const float (*bs)[kLdK], float (&acc)[8][8],
                                                int tx, int ty) {
#pragma unroll
  for (int k = 0; k < BK; ++k) {
    const float4 a0 = *reinterpret_cast<const float4*>(&as[k][ty * 4]);
    const float4 a1 = *reinterpret_cast<const float4*>(&as[k][64 + ty * 4]);
    const float4 b0 = *reinterpret_cast<const float4*>(&bs[k][tx * 4]);
    const float4 b1 = *reinterpret_cast<const float4*>(&bs[k][64 + tx * 4]);
    const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// acc += one BK slice, A m-major (as[m][k]) and B k-major: per 2 k, 8 LDS.64 of A (2 k of a row
// each) and 4 LDS.128 of B, 128 FFMA.
__device__ __forceinline__ void multiply_mmajor(const float (*as)[kLdM], const float (*bs)[kLdK], float (&acc)[8][8],
                                                int tx, int ty) {
#pragma unroll
  for (int k2 = 0; k2 < BK; k2 += 2) {
    float a[8][2];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 v = *reinterpret_cast<const float2*>(&as[tile_row(i, ty)][k2]);
      a[i][0] = v.x;
      a[i][1] = v.y;
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[k2 + k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[k2 + k][64 + tx * 4]);
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i][k], b[j], acc[i][j]);
    }
  }
}

// The K loop of every pass: `load(stage)` issues this thread's copies of the next slice into
// `stage` and moves its counters on by BK; `multiply(stage)` consumes one. Every thread commits one
// batch per slice, empty or not, so "wait for all but the newest STAGES-2 batches" always means
// "slice i has landed"; the barrier after it publishes slice i and frees the stage of slice i-1,
// which the same iteration refills. Unrolled by STAGES, so every stage's address is a constant.
template <typename Load, typename Multiply>
__device__ __forceinline__ void pipelined_k_loop(int slices, Load& load, Multiply& multiply) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < slices) load(s);
    __pipeline_commit();
  }
  for (int i0 = 0; i0 < slices; i0 += STAGES) {
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      const int i = i0 + st;
      if (i < slices) {  // the same for the whole block
        __pipeline_wait_prior(STAGES - 2);
        __syncthreads();
        if (i + STAGES - 1 < slices) load((st + STAGES - 1) % STAGES);
        __pipeline_commit();
        multiply(st);
      }
    }
  }
  __pipeline_wait_prior(0);  // nothing may be in flight into shared memory when the block ends
}

// ---------------------------------------------------------------------------------------------
// forward (and each stride phase of backward data): out (rows, Kg) of group g = patches x wt

// The forward kernel's problem. The image is (N, H, W, C) with the group's Cg channels at g*Cg;
// output row (n, p, q) (n < N, p < P, q < Q) gathers pixels (p*sh - ph + r, q*sw - pw + s) (ph, pw
// may be negative) and is stored at y + y0 + n*y_n + p*y_p + q*y_q, column g*Kg + k.
struct FwdParams {
  const float* x;     // image
  const float* w;     // (groups, R*S*Cg, ldb): row (r, s, c), contiguous along k, zero past Kg
  const float* bias;  // (groups * Kg) or null
  float* y;
  int N, H, W, C, Cg;
  int R, S, sh, sw, ph, pw;
  int P, Q, Kg;
  int ldb;            // Kg rounded up to a multiple of 4 (16-byte copies of B whatever Kg is)
  int64_t y_n, y_p, y_q, y0;
  bool accumulate, relu;
  bool vec_y;  // y0, y_n, y_p, y_q, Kg multiples of 4 and y 16-byte aligned: float4 epilogue
  // derived by the launcher (plan_forward), so that the kernel holds none of them in registers
  int RSC, slices;       // K extent R*S*Cg, BK slices
  int64_t PQ, M;         // rows: N*P*Q
  int dc, ds, dr;        // BK = dr*S*Cg + ds*Cg + dc
  int64_t dkoff;         // x offset of that step, (dr*W + ds)*C + dc
  int64_t carry_c;       // c = Cg -> c = 0 of s + 1: C - Cg
  int64_t carry_s;       // s = S -> s = 0 of r + 1: (W - S)*C
  int64_t b_step;        // BK rows of w: BK*ldb
};

// One output row's gather: window corner (h0, w0) and x offset of (n, h0, w0, g*Cg).
struct __align__(16) RowGather {
  int h0, w0;
  int64_t x;
};

// VEC_A: Cg % 4 == 0, C % 4 == 0, x 16-byte aligned: one 16-byte copy of 4 channels per thread and
// slice (thread t: row t/2, k (t%2)*4 .. +3). Else thread t copies k = t%8 of rows t/8 + 32*i, 4 bytes each.
// B: 16-byte copies of 4 columns (w is the launcher's padded copy).
template <bool VEC_A>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) conv_forward_kernel(FwdParams p) {
  __shared__ __align__(16) float As[STAGES][BM][kLdM];
  __shared__ __align__(16) float Bs[STAGES][BK][kLdK];
  __shared__ RowGather rows[BM];  // the block's rows (computed once; read per slice)
  __shared__ int64_t y_row[BM];   // output offset of each row of the block, -1 past the end
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int g = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;

  if (tid < BM) {
    const int64_t m = m0 + tid;
    RowGather row = {-0x40000000, 0, 0};  // past the end: never inside the image, the copy zero-fills
    int64_t off = -1;
    if (m < p.M) {
      const int64_t n = m / p.PQ;
      const int pq = (int)(m - n * p.PQ);
      const int pp = pq / p.Q, q = pq - pp * p.Q;
      row.h0 = pp * p.sh - p.ph;
      row.w0 = q * p.sw - p.pw;
      row.x = ((n * p.H + row.h0) * p.W + row.w0) * p.C + (int64_t)g * p.Cg;
      off = p.y0 + n * p.y_n + pp * p.y_p + q * p.y_q;
    }
    rows[tid] = row;
    y_row[tid] = off;
  }

  // A: this thread's k = (r, s, c) as counters and koff = (r*W + s)*C + c; a slice adds
  // (dr, ds, dc), then carries c into s and s into r once each
  constexpr int NA = VEC_A ? 1 : 4;
  const int ka = VEC_A ? (tid % 2) * 4 : tid % 8;  // its first k inside a slice
  const int a_row0 = VEC_A ? tid / 2 : tid / 8;    // its rows: a_row0 + 32*i
  int kc = 0, ks = 0, kr = 0;
  int64_t koff = 0;
  if (p.RSC > 0) {
    kc = ka % p.Cg;
    ks = (ka / p.Cg) % p.S;
    kr = ka / p.Cg / p.S;
    koff = ((int64_t)kr * p.W + ks) * p.C + kc;
  }
  int a_left = p.RSC - ka;  // > 0: this slice's k is in range

  // B: k = t/32 of the slice, columns n0 + (t%32)*4 .. +3
  const int bk = tid / 32, bn = (tid % 32) * 4;
  const bool b_col_in = n0 + bn < p.Kg;  // then all 4 are inside the padded row
  int64_t boff = ((int64_t)g * p.RSC + bk) * p.ldb + n0 + bn;
  int b_left = p.RSC - bk;

  auto load = [&](int stage) {
    const bool a_in = a_left > 0;
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      const RowGather row = rows[a_row0 + 32 * i];
      const bool ok = a_in & ((unsigned)(row.h0 + kr) < (unsigned)p.H) & ((unsigned)(row.w0 + ks) < (unsigned)p.W);
      const float* src = ok ? p.x + (row.x + koff) : p.x;
      cp_async<VEC_A ? 16 : 4>(&As[stage][a_row0 + 32 * i][ka], src, ok);
    }
    a_left -= BK;
    kc += p.dc;
    ks += p.ds;
    kr += p.dr;
    koff += p.dkoff;
    if (kc >= p.Cg) {
      kc -= p.Cg;
      ++ks;
      koff += p.carry_c;
    }
    if (ks >= p.S) {
      ks -= p.S;
      ++kr;
      koff += p.carry_s;
    }

    const bool b_ok = (b_left > 0) & b_col_in;
    cp_async<16>(&Bs[stage][bk][bn], b_ok ? p.w + boff : p.w, b_ok);
    boff += p.b_step;
    b_left -= BK;
  };
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  auto multiply = [&](int stage) { multiply_mmajor(As[stage], Bs[stage], acc, tx, ty); };
  __syncthreads();  // rows and y_row are complete
  pipelined_k_loop(p.slices, load, multiply);

  // epilogue: y (=|+=) acc + b, ReLU; float4 where the row allows
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int col = n0 + h * 64 + tx * 4;
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (p.bias) {
#pragma unroll
      for (int j = 0; j < 4; ++j) bias[j] = col + j < p.Kg ? p.bias[g * p.Kg + col + j] : 0.0f;
    }
    const bool vec = p.vec_y && col + 3 < p.Kg;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t off = y_row[tile_row(i, ty)];
      if (off < 0) continue;
      float* yp = p.y + off + (int64_t)g * p.Kg + col;
      float old[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (p.accumulate) {
        if (vec) {
          const float4 o = *reinterpret_cast<const float4*>(yp);
          old[0] = o.x; old[1] = o.y; old[2] = o.z; old[3] = o.w;
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) old[j] = col + j < p.Kg ? yp[j] : 0.0f;
        }
      }
      float r[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        r[j] = acc[i][h * 4 + j] + bias[j] + old[j];
        if (p.relu) r[j] = relu_value(r[j]);  // fused ReLU: no second pass over y
      }
      if (vec) {
        *reinterpret_cast<float4*>(yp) = make_float4(r[0], r[1], r[2], r[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (col + j < p.Kg) yp[j] = r[j];
      }
    }
  }
}

// wt[g][rsc][k] = w[g*Kg + k][rsc] (k < Kg; 0 for Kg <= k < ldb): the forward's B, contiguous along k.
__global__ void transpose_filters_kernel(int groups, int Kg, int ldb, int RSC, const float* __restrict__ w,
                                         float* __restrict__ wt) {
  const int64_t n = (int64_t)groups * RSC * ldb;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int k = (int)(i % ldb);
    const int64_t rest = i / ldb;
    const int rsc = (int)(rest % RSC);
    const int64_t g = rest / RSC;
    wt[i] = k < Kg ? w[(g * Kg + k) * RSC + rsc] : 0.0f;
  }
}

// The sub-filter of backward data's stride phase (rho, sig), as the forward kernel's B:
// out[g][(r', s', k)][c] = w[g*Kg + k][rho + sh*(Rp-1-r')][sig + sw*(Sp-1-s')][c] (flipped taps of
// that residue; Rp x Sp of them), rows ldc >= Cg long (zero past Cg).
__global__ void phase_filters_kernel(ConvShape s, int rho, int sig, int Rp, int Sp, int ldc,
                                     const float* __restrict__ w, float* __restrict__ out) {
  const int Cg = s.C / s.groups, Kg = s.K / s.groups;
  const int64_t n = (int64_t)s.groups * Rp * Sp * Kg * ldc;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % ldc);
    if (c >= Cg) {
      out[i] = 0.0f;
      continue;
    }
    int64_t rest = i / ldc;
    const int k = (int)(rest % Kg);
    rest /= Kg;
    const int sp = (int)(rest % Sp);
    rest /= Sp;
    const int rp = (int)(rest % Rp);
    const int64_t g = rest / Rp;
    const int r = rho + s.stride_h * (Rp - 1 - rp), t = sig + s.stride_w * (Sp - 1 - sp);
    out[i] = w[(((g * Kg + k) * s.R + r) * s.S + t) * Cg + c];
  }
}

// ---------------------------------------------------------------------------------------------
// backward filter: dW_g (Kg, RSC) over output pixels [split * chunk, ...), into out (its own
// (K, RSC) slab of scratch, or dw itself when there is one split)

struct FilterParams {
  const float* dy;  // (N, P, Q, K)
  const float* x;   // (N, H, W, C)
  float* out;       // (splits, K, RSC)
  int H, W, C, Cg, K, Kg, S, groups;
  int64_t chunk;    // pixels per split, a multiple of BK
  bool accumulate;
  bool vec_out;     // RSC % 4 == 0 and out 16-byte aligned: float4 epilogue
  // derived by the launcher, so that the kernel holds none of them in registers
  int RSC;
  int64_t NPQ, PQ;
  int P, Q, sh, sw, ph, pw;
  int hp_step, wp_step;        // a slice (BK pixels = dn*P*Q + dp*Q + dq) moves hp by dp*sh, wp by dq*sw
  int hp_wrap, wp_wrap;        // P*sh, Q*sw
  int hp_end, wp_end;          // hp at p = P, wp at q = Q
  int64_t a_step;              // BK pixels of dy: BK*K
  int64_t x_step;              // x offset of BK pixels
  int64_t carry_q, carry_p;    // q = Q -> q = 0 of p + 1; p = P -> p = 0 of n + 1
};

// One column (r, s, c) of backward filter's B: its tap, and its x offset within a pixel's window.
struct __align__(16) ColGather {
  int r, s;
  int64_t x;
};

// VEC_A: Kg % 4 == 0, K % 4 == 0, dy 16-byte aligned; VEC_B: Cg % 4 == 0, C % 4 == 0, x aligned.
// Thread t copies pixel t/32 of the slice, 4 columns (t%32)*4 .. +3 of each operand.
template <bool VEC_A, bool VEC_B>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) conv_backward_filter_kernel(FilterParams p) {
  __shared__ __align__(16) float As[STAGES][BK][kLdK];
  __shared__ __align__(16) float Bs[STAGES][BK][kLdK];
  __shared__ ColGather cols[BN];
  const int g = blockIdx.z % p.groups;
  const int split = blockIdx.z / p.groups;
  const int64_t k_begin = (int64_t)split * p.chunk;
  const int64_t k_end = min(p.NPQ, k_begin + p.chunk);
  const int slices = k_end > k_begin ? (int)((k_end - k_begin + BK - 1) / BK) : 0;
  const int m0 = blockIdx.y * BM;  // output channel within the group
  const int n0 = blockIdx.x * BN;  // (r, s, c) column
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int lk = tid / 32, lc = (tid % 32) * 4;

  if (tid < BN) {
    const int col = n0 + tid;
    ColGather cg = {-0x40000000, 0, 0};  // past the end: never inside the image, the copy zero-fills
    if (col < p.RSC) {
      const int c = col % p.Cg, rs = col / p.Cg;
      cg.r = rs / p.S;
      cg.s = rs - cg.r * p.S;
      cg.x = ((int64_t)cg.r * p.W + cg.s) * p.C + (int64_t)g * p.Cg + c;
    }
    cols[tid] = cg;
  }

  // A: dy at (pixel, g*Kg + m0 + lc .. +3)
  const int a_cols = min(4, max(0, p.Kg - (m0 + lc)));
  int64_t aoff = (k_begin + lk) * p.K + (int64_t)g * p.Kg + m0 + lc;
  int64_t pix_left = k_end - k_begin - lk;  // > 0: this slice's pixel is in the split

  // The slice's pixel (n, p, q) as its window corner (hp, wp) and x offset of (n, hp, wp, 0). A
  // slice moves it on by BK pixels: add, then carry q into p and p into n once each. Pixels past
  // k_end keep counting but are never read.
  int hp, wp;
  int64_t xpix;
  {
    const int64_t PQ1 = p.PQ > 0 ? p.PQ : 1;
    const int Q1 = p.Q > 0 ? p.Q : 1;
    const int64_t pix = k_begin + lk;
    const int64_t n = pix / PQ1;
    const int pq = (int)(pix - n * PQ1);
    const int pp = pq / Q1, q = pq - pp * Q1;
    hp = pp * p.sh - p.ph;
    wp = q * p.sw - p.pw;
    xpix = ((n * p.H + hp) * p.W + wp) * p.C;
  }

  constexpr int NB = VEC_B ? 1 : 4;
  auto load = [&](int stage) {
    const bool in = pix_left > 0;
    if (VEC_A) {
      const bool ok = in & (a_cols > 0);
      cp_async<16>(&As[stage][lk][lc], ok ? p.dy + aoff : p.dy, ok);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = in & (j < a_cols);
        cp_async<4>(&As[stage][lk][lc + j], ok ? p.dy + aoff + j : p.dy, ok);
      }
    }
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const ColGather cg = cols[lc + j];
      const bool ok = in & ((unsigned)(hp + cg.r) < (unsigned)p.H) & ((unsigned)(wp + cg.s) < (unsigned)p.W);
      const float* src = ok ? p.x + (xpix + cg.x) : p.x;
      cp_async<VEC_B ? 16 : 4>(&Bs[stage][lk][lc + j], src, ok);
    }
    aoff += p.a_step;
    pix_left -= BK;
    hp += p.hp_step;
    wp += p.wp_step;
    xpix += p.x_step;
    if (wp >= p.wp_end) {
      wp -= p.wp_wrap;
      hp += p.sh;
      xpix += p.carry_q;
    }
    if (hp >= p.hp_end) {
      hp -= p.hp_wrap;
      xpix += p.carry_p;
    }
  };
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  auto multiply = [&](int stage) { multiply_kmajor(As[stage], Bs[stage], acc, tx, ty); };
  __syncthreads();  // cols is complete
  pipelined_k_loop(slices, load, multiply);

  const int RSC = p.RSC;
  float* out = p.out + (int64_t)split * p.K * RSC;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int col = n0 + h * 64 + tx * 4;
    const bool vec = p.vec_out && col + 3 < RSC;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int m = m0 + tile_row(i, ty);
      if (m >= p.Kg) continue;
      float* row = out + ((int64_t)g * p.Kg + m) * RSC + col;
      float r[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) r[j] = acc[i][h * 4 + j];
      if (vec) {
        if (p.accumulate) {
          const float4 o = *reinterpret_cast<const float4*>(row);
          r[0] += o.x; r[1] += o.y; r[2] += o.z; r[3] += o.w;
        }
        *reinterpret_cast<float4*>(row) = make_float4(r[0], r[1], r[2], r[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (col + j < RSC) row[j] = p.accumulate ? row[j] + r[j] : r[j];
      }
    }
  }
}


// The forward kernel over `groups` groups, the copy widths chosen from the shape and alignment.
void launch_forward(FwdParams p, int groups, const char* what) {
  p.PQ = (int64_t)p.P * p.Q;
  p.M = p.N * p.PQ;
  const int64_t M = p.M;
  if (M == 0 || p.Kg == 0) return;
  p.RSC = p.R * p.S * p.Cg;
  p.slices = (int)ceil_div(p.RSC, BK);
  if (p.RSC > 0) {
    p.dc = BK % p.Cg;
    p.ds = (BK / p.Cg) % p.S;
    p.dr = BK / p.Cg / p.S;
  }
  p.dkoff = ((int64_t)p.dr * p.W + p.ds) * p.C + p.dc;
  p.carry_c = p.C - p.Cg;
  p.carry_s = (int64_t)(p.W - p.S) * p.C;
  p.b_step = (int64_t)BK * p.ldb;
  const dim3 grid((unsigned)ceil_div(M, BM), (unsigned)ceil_div(p.Kg, BN), (unsigned)groups);
  check_grid(grid, what);
  if (!aligned16(p.w)) throw std::logic_error(std::string(what) + ": filter scratch not 16-byte aligned");
  const bool vec_a = p.Cg % 4 == 0 && p.C % 4 == 0 && aligned16(p.x);
  cudaStream_t stream = current_stream();
  if (vec_a) conv_forward_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  else conv_forward_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  CONVNET_LAUNCH_CHECK("conv_forward_kernel");
}

// floor(a / b) and ceil(a / b) for b > 0 and any sign of a
int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int ceil_div_signed(int a, int b) { return -floor_div(-a, b); }

// Split count of backward filter: the count (<= 32, each split >= 512 pixels) whose grid fills its
// last wave of kMinBlocksPerSM blocks per SM best (fewest splits among equals). Returns the chunk.
int64_t filter_chunk(int64_t tiles, int64_t NPQ, int groups) {
  const int64_t wave = (int64_t)kMinBlocksPerSM * sm_count();
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>({32, NPQ / 512, 65535 / groups}));
  int64_t best_chunk = std::max<int64_t>(BK, ceil_div(NPQ, BK) * BK);
  double best_fill = 0.0;
  for (int64_t want = 1; want <= most; ++want) {
    const int64_t chunk = std::max<int64_t>(BK, ceil_div(ceil_div(NPQ, want), BK) * BK);
    const int64_t blocks = tiles * std::max<int64_t>(1, ceil_div(NPQ, chunk));
    const double fill = (double)blocks / (double)(ceil_div(blocks, wave) * wave);
    if (fill > best_fill + 1e-9) {
      best_fill = fill;
      best_chunk = chunk;
    }
  }
  return best_chunk;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

void conv_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, bool accumulate,
                  bool relu) {
  if (gemm_precision() != Precision::FP32 && conv_tc_supported(s)) {  // tf32 / bf16: cuda/conv_tc.cu
    conv_forward_tc(gemm_precision(), s, x, w, b, y, accumulate, relu);
    return;
  }
  const int64_t M = (int64_t)s.N * s.P * s.Q;
  if (M == 0) return;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  cudaStream_t stream = current_stream();
  const int ldb = (int)ceil_div(Kg, 4) * 4;
  const int64_t w_size = (int64_t)s.groups * RSC * ldb;
  Scratch wt(static_cast<size_t>(std::max<int64_t>(1, w_size)));
  if (w_size > 0) {
    transpose_filters_kernel<<<grid_for(w_size, kThreads), kThreads, 0, stream>>>(s.groups, Kg, ldb, RSC, w, wt.ptr);
    CONVNET_LAUNCH_CHECK("transpose_filters_kernel");
  }
  FwdParams p{};
  p.x = x;
  p.w = wt.ptr;
  p.bias = b;
  p.y = y;
  p.N = s.N, p.H = s.H, p.W = s.W, p.C = s.C, p.Cg = Cg;
  p.R = s.R, p.S = s.S, p.sh = s.stride_h, p.sw = s.stride_w, p.ph = s.pad_h, p.pw = s.pad_w;
  p.P = s.P, p.Q = s.Q, p.Kg = Kg, p.ldb = ldb;
  p.y_q = s.K;
  p.y_p = (int64_t)s.Q * s.K;
  p.y_n = (int64_t)s.P * s.Q * s.K;
  p.y0 = 0;
  p.accumulate = accumulate;
  p.relu = relu;
  p.vec_y = s.K % 4 == 0 && Kg % 4 == 0 && aligned16(y);
  launch_forward(p, s.groups, "conv_forward");
}

void conv_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  if (gemm_precision() != Precision::FP32 && conv_tc_supported(s)) {  // tf32 / bf16: cuda/conv_tc.cu
    conv_backward_data_tc(gemm_precision(), s, dy, w, dx, accumulate);
    return;
  }
  const int64_t M = (int64_t)s.N * s.H * s.W;
  if (M == 0) return;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups;
  const int sh = s.stride_h, sw = s.stride_w;
  cudaStream_t stream = current_stream();
  // every phase's sub-filters, one after another (together exactly the taps of w)
  const int ldc = (int)ceil_div(Cg, 4) * 4;
  Scratch wp(static_cast<size_t>(std::max<int64_t>(1, (int64_t)s.K * s.R * s.S * ldc)));
  int64_t w_offset = 0;
  for (int rho = 0; rho < sh; ++rho) {
    for (int sig = 0; sig < sw; ++sig) {
      // input pixels h = rho - ph + sh*hq, hq in [hq_lo, hq_hi], take taps r = rho + sh*j
      const int Rp = rho < s.R ? (s.R - rho + sh - 1) / sh : 0, Sp = sig < s.S ? (s.S - sig + sw - 1) / sw : 0;
      const int hq_lo = ceil_div_signed(s.pad_h - rho, sh), hq_hi = floor_div(s.H - 1 + s.pad_h - rho, sh);
      const int wq_lo = ceil_div_signed(s.pad_w - sig, sw), wq_hi = floor_div(s.W - 1 + s.pad_w - sig, sw);
      const int Pp = std::max(0, hq_hi - hq_lo + 1), Qp = std::max(0, wq_hi - wq_lo + 1);
      if (Pp == 0 || Qp == 0) continue;
      const int64_t sub = (int64_t)s.K * Rp * Sp * ldc;
      float* wsub = wp.ptr + w_offset;
      w_offset += sub;
      if (sub > 0) {
        phase_filters_kernel<<<grid_for(sub, kThreads), kThreads, 0, stream>>>(s, rho, sig, Rp, Sp, ldc, w, wsub);
        CONVNET_LAUNCH_CHECK("phase_filters_kernel");
      }
      const int h_first = rho - s.pad_h + sh * hq_lo, w_first = sig - s.pad_w + sw * wq_lo;
      FwdParams p{};
      p.x = dy;
      p.w = wsub;
      p.bias = nullptr;
      p.y = dx;
      p.N = s.N, p.H = s.P, p.W = s.Q, p.C = s.K, p.Cg = Kg;
      p.R = Rp, p.S = Sp, p.sh = 1, p.sw = 1, p.ph = Rp - 1 - hq_lo, p.pw = Sp - 1 - wq_lo;
      p.P = Pp, p.Q = Qp, p.Kg = Cg, p.ldb = ldc;
      p.y_q = (int64_t)sw * s.C;
      p.y_p = (int64_t)sh * s.W * s.C;
      p.y_n = (int64_t)s.H * s.W * s.C;
      p.y0 = ((int64_t)h_first * s.W + w_first) * s.C;
      p.accumulate = accumulate;
      p.relu = false;
      p.vec_y = s.C % 4 == 0 && Cg % 4 == 0 && aligned16(dx);
      launch_forward(p, s.groups, "conv_backward_data");
    }
  }
}

void conv_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db, bool accumulate) {
  if (gemm_precision() != Precision::FP32 && conv_tc_supported(s)) {  // tf32 / bf16: cuda/conv_tc.cu
    conv_backward_filter_tc(gemm_precision(), s, dy, x, dw, db, accumulate);
    return;
  }
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int64_t NPQ = (int64_t)s.N * s.P * s.Q;
  const int64_t dw_size = (int64_t)s.K * RSC;
  cudaStream_t stream = current_stream();
  if (db) bias_grad(dy, NPQ, s.K, db, accumulate);
  if (dw_size == 0) return;

  const int64_t tiles = ceil_div(RSC, BN) * ceil_div(Kg, BM) * s.groups;
  const int64_t chunk = filter_chunk(tiles, NPQ, s.groups);
  const int64_t splits = std::max<int64_t>(1, ceil_div(NPQ, chunk));
  const dim3 grid((unsigned)ceil_div(RSC, BN), (unsigned)ceil_div(Kg, BM), (unsigned)(splits * s.groups));
  check_grid(grid, "conv_backward_filter");

  // One split (also NPQ == 0: the kernel writes zeros, or leaves dw + 0 when accumulating) writes dw.
  Scratch partial(static_cast<size_t>(splits > 1 ? splits * dw_size : 1));
  FilterParams fp{};
  fp.dy = dy;
  fp.x = x;
  fp.out = splits > 1 ? partial.ptr : dw;
  fp.H = s.H, fp.W = s.W, fp.C = s.C, fp.Cg = Cg, fp.K = s.K, fp.Kg = Kg, fp.S = s.S, fp.groups = s.groups;
  fp.chunk = chunk;
  fp.accumulate = splits > 1 ? false : accumulate;
  fp.vec_out = RSC % 4 == 0 && aligned16(fp.out);
  fp.RSC = RSC;
  fp.NPQ = NPQ;
  fp.PQ = (int64_t)s.P * s.Q;
  fp.P = s.P, fp.Q = s.Q, fp.sh = s.stride_h, fp.sw = s.stride_w, fp.ph = s.pad_h, fp.pw = s.pad_w;
  {
    const int64_t PQ1 = fp.PQ > 0 ? fp.PQ : 1;
    const int Q1 = s.Q > 0 ? s.Q : 1;
    const int dn = (int)(BK / PQ1), dp = (int)(BK % PQ1) / Q1, dq = BK % Q1;
    const int64_t C = s.C, WC = (int64_t)s.W * C;
    fp.hp_step = dp * s.stride_h;
    fp.wp_step = dq * s.stride_w;
    fp.hp_wrap = s.P * s.stride_h;
    fp.wp_wrap = s.Q * s.stride_w;
    fp.hp_end = s.P * s.stride_h - s.pad_h;
    fp.wp_end = s.Q * s.stride_w - s.pad_w;
    fp.a_step = (int64_t)BK * s.K;
    fp.x_step = dn * s.H * WC + dp * s.stride_h * WC + (int64_t)dq * s.stride_w * C;
    fp.carry_q = s.stride_h * WC - (int64_t)s.Q * s.stride_w * C;
    fp.carry_p = s.H * WC - (int64_t)s.P * s.stride_h * WC;
  }
  const bool vec_a = Kg % 4 == 0 && s.K % 4 == 0 && aligned16(dy);
  const bool vec_b = Cg % 4 == 0 && s.C % 4 == 0 && aligned16(x);
  if (vec_a && vec_b) conv_backward_filter_kernel<true, true><<<grid, kThreads, 0, stream>>>(fp);
  else if (vec_a) conv_backward_filter_kernel<true, false><<<grid, kThreads, 0, stream>>>(fp);
  else if (vec_b) conv_backward_filter_kernel<false, true><<<grid, kThreads, 0, stream>>>(fp);
  else conv_backward_filter_kernel<false, false><<<grid, kThreads, 0, stream>>>(fp);
  CONVNET_LAUNCH_CHECK("conv_backward_filter_kernel");
  if (splits == 1) return;
  sum_splits(partial.ptr, (int)splits, dw_size, dw, accumulate);
}

// dw[i] (=|+=) sum over splits of partial[split][i], in split order: the deterministic second half of
// every split-K backward filter (this file's, cuda/conv_tc.cu's).
__global__ void sum_splits_kernel(const float* __restrict__ partial, int splits, int64_t n, float* __restrict__ dw,
                                  bool accumulate) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float total = 0.0f;
    for (int j = 0; j < splits; ++j) total += partial[(int64_t)j * n + i];
    dw[i] = accumulate ? dw[i] + total : total;
  }
}

void sum_splits(const float* partial, int splits, int64_t n, float* dw, bool accumulate) {
  sum_splits_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(partial, splits, n, dw, accumulate);
  CONVNET_LAUNCH_CHECK("sum_splits_kernel");
}

}  // namespace cuda
}  // namespace convnet
