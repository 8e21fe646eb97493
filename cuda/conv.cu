// CUDA convolution: forward (+ bias), backward to data, backward to filters (+ bias), as implicit
// GEMMs -- the patch matrix is never stored; each block gathers its tile of it from NHWC memory.
//
// Layouts (backend.h): x (N, H, W, C), w (K, R, S, Cg), y (N, P, Q, K); g = groups, Cg = C/g,
// Kg = K/g, RSC = R*S*Cg. One group per blockIdx.z (backward filter: z = split * groups + group).
//
// All three passes use the same block GEMM: 256 threads, block tile 64 x 64, BK = 16, each thread
// a 4 x 4 register tile (rows ty*4.., cols tx*4.., read from shared memory as float4), operands
// staged in shared memory as As[BK][64 + 4] and Bs[BK][64 + 4] (the +4 keeps float4 alignment and
// makes the transposing stores at most 2-way bank-conflicted). Global loads for tile t+1 go into
// registers while tile t is multiplied (register prefetch), so the latency of the gathers overlaps
// the FMAs. The gathers keep each thread's k as counters advanced by BK per slice ((r, s, c) in the
// forward; (r, s, k) with r and s as quotient and remainder by the stride in backward data; the
// pixel's (h, w) and x offset in backward filter) and the k-independent part of every row's offset
// precomputed, so no K loop has an integer division. Every gathered element is bounds-checked
// (zero padding, partial tiles); offsets into x, y, dy, dx are int64.
//
//   forward          M = N*P*Q (output pixels), N = Kg, K = R*S*Cg (r, s, c; c fastest)
//                    A (pixel, (r,s,c)) = x[n, p*sh-ph+r, q*sw-pw+s, g*Cg+c]: 16 threads take 16
//                    consecutive k, i.e. consecutive channels: coalesced along C.
//                    B ((r,s,c), k) = w[g*Kg+k, r, s, c]: a filter row, contiguous along k.
//                    epilogue: y (=|+=) acc + b.
//   backward data    M = N*H*W (input pixels), N = Cg, K = R*S*Kg (r, s, k; k fastest)
//                    A (pixel, (r,s,k)) = dy[n, p, q, g*Kg+k] with p = (h+ph-r)/sh, q = (w+pw-s)/sw,
//                    zero unless both divide exactly and land inside the output: the transposed-conv
//                    gather, so stride > 1 is exact and every dx element is written once (no atomics).
//                    Exactness is a compare of stride phases (h+ph) % sh == r % sh, kept per row and
//                    per thread, not a division (stride 1: an instantiation without phases).
//                    B ((r,s,k), c) = wt[g, (r,s,k), c] = w[g*Kg+k, r, s, c], with wt = w regrouped
//                    by a first small kernel (w is ~1 MB): contiguous along c and along k.
//   backward filter  M = Kg, N = R*S*Cg, K = N*P*Q (output pixels), split across blocks (split-K):
//                    A (k, pixel) = dy[pixel, g*Kg+k]: contiguous along k.
//                    B (pixel, (r,s,c)) = the forward's patch entry: contiguous along c. Each
//                    thread walks its pixels' (h, w) and x offset by BK pixels per slice, carrying
//                    q into p and p into n with compares.
//                    Each split writes its own partial dW into scratch; a second kernel sums the
//                    splits in split order (deterministic, no atomics). One split writes dw directly.
//                    db: cuda::bias_grad on dy viewed as (N*P*Q, K).
//
// Napkin math, AlexNet-2012 conv2 (N=128, 27x27x96 -> 27x27x256, 5x5, pad 2, stride 1, groups 2):
//   FLOPs per pass: 2 * N*P*Q * K * R*S*Cg = 2 * 93312 * 256 * 1200 = 57.3 GFLOP.
//   Bytes (compulsory): x 128*27*27*96*4 = 35.8 MB, y 95.6 MB, w 1.2 MB: ~0.13 GB forward.
//   Floor on an H100 (~51 TFLOP/s fp32 non-tensor, ~3 TB/s): 57.3 / 51e3 = 1.12 ms of math versus
//   0.13 / 3e3 = 0.04 ms of memory -> compute-bound (arithmetic intensity ~430 FLOP/B), so the
//   goal is FMA throughput: per BK step a thread does 4x4 = 16 FMAs per 2 float4 shared loads.
//   Grid: forward 1458 x 2 x 2 = 5832 blocks (~44 per SM), backward data 1458 x 1 x 2 (Cg = 48 <
//   64: a quarter of each tile is padding), backward filter 19 x 2 x 2 tiles x ~7 splits of ~13k
//   pixels (532 blocks, 4 per SM); the reduce sums 7 partials of 307 k floats (8.6 MB written,
//   then read: ~6 us).
//   Realistic target for this simple kernel: 40-60% of the fp32 peak, i.e. 2-3 ms per pass.
#include <algorithm>

#include "common.cuh"
#include "conv_tc.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int BM = 64, BN = 64, BK = 16;
constexpr int kPad = 4;  // shared row padding (floats); keeps float4 alignment
constexpr int kLd = BM + kPad;
static_assert(BM == BN, "the loaders assume square block tiles");


// ---------------------------------------------------------------------------------------------
// the shared block GEMM step: acc (4 x 4) += As[:, ty*4..] x Bs[:, tx*4..] over one BK slice

__device__ __forceinline__ void multiply_tile(const float (*As)[kLd], const float (*Bs)[kLd], float (&acc)[4][4],
                                              int tx, int ty) {
#pragma unroll
  for (int k = 0; k < BK; ++k) {
    const float4 a = *reinterpret_cast<const float4*>(&As[k][ty * 4]);
    const float4 b = *reinterpret_cast<const float4*>(&Bs[k][tx * 4]);
    const float av[4] = {a.x, a.y, a.z, a.w};
    const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// The pipelined K loop of all three passes: while the block multiplies slice kt from shared memory,
// each thread already holds slice kt + BK in registers (`load`), and writes it to shared memory
// (`store`) once every thread is done reading. Two barriers per slice; an empty range does nothing.
template <typename Index, typename Load, typename Store>
__device__ __forceinline__ void pipelined_k_loop(Index k_begin, Index k_end, Load& load, Store& store,
                                                 const float (*As)[kLd], const float (*Bs)[kLd],
                                                 float (&acc)[4][4], int tx, int ty) {
  if (k_begin >= k_end) return;
  load(k_begin);
  store();
  __syncthreads();
  for (Index kt = k_begin; kt < k_end; kt += BK) {
    const bool more = kt + BK < k_end;
    if (more) load(kt + BK);
    multiply_tile(As, Bs, acc, tx, ty);
    __syncthreads();
    if (more) {
      store();
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// forward: y (N*P*Q, K) block (m0.., g*Kg + n0..)

// 3 blocks (24 warps) per SM: at most 80 registers (tools/kernel_report.py).
__global__ void __launch_bounds__(kThreads, 3) conv_forward_kernel(ConvShape s, const float* __restrict__ x,
                                                                const float* __restrict__ w,
                                                                const float* __restrict__ b, float* __restrict__ y,
                                                                bool accumulate, bool relu) {
  __shared__ __align__(16) float As[BK][kLd];
  __shared__ __align__(16) float Bs[BK][kLd];
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int64_t PQ = (int64_t)s.P * s.Q;
  const int64_t M = (int64_t)s.N * PQ;
  const int g = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  // Loader roles: this thread loads k = kt + lk of rows / filters lrow + 16*i, i < 4.
  // Per row, the part of the x offset that does not depend on k: xbase = the pixel's image and
  // group plus its window corner (h0, w0), so a gather is xbase + (r*W + t)*C + c.
  const int lk = tid % 16, lrow = tid / 16;
  int h0[4], w0[4];
  int64_t xbase[4];
  // filters kout = n0 + lrow + 16*i: row i at wrow + i * 16*RSC, used where bit i of w_ok is set
  const float* wrow = w + ((int64_t)g * Kg + n0 + lrow) * RSC;
  const int64_t w_rows_apart = 16 * (int64_t)RSC;
  unsigned w_ok = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + lrow + 16 * i;
    if (m < M) {
      const int64_t n = m / PQ;
      const int pq = (int)(m - n * PQ);
      const int p = pq / s.Q, q = pq - p * s.Q;
      h0[i] = p * s.stride_h - s.pad_h;
      w0[i] = q * s.stride_w - s.pad_w;
      xbase[i] = n * s.H * s.W * s.C + (int64_t)g * Cg + ((int64_t)h0[i] * s.W + w0[i]) * s.C;
    } else {
      h0[i] = -0x40000000;  // never inside the image: the gather reads zero
      w0[i] = 0;
      xbase[i] = 0;
    }
    if (n0 + lrow + 16 * i < Kg) w_ok |= 1u << i;
  }

  // This thread's k = (r, t, c) (c fastest), divided out once here; each slice then moves it on by
  // BK with compares and subtractions only, so the K loop has no division.
  int kc = lk % Cg, kt_ = (lk / Cg) % s.S, kr = lk / Cg / s.S;
  int next_k = 0;  // the k-tile start the state (kr, kt_, kc) is for
  float a_reg[4], b_reg[4];
  auto load = [&](int kt) {
    for (; next_k < kt; next_k += BK) {  // k-tiles come in order, one BK apart
      kc += BK;
      while (kc >= Cg) {
        kc -= Cg;
        if (++kt_ == s.S) {
          kt_ = 0;
          ++kr;
        }
      }
    }
    const int k = kt + lk;
    const bool kin = k < RSC;
    const int r = kin ? kr : 0, t = kin ? kt_ : 0;
    const int64_t koff = ((int64_t)r * s.W + t) * s.C + kc;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = h0[i] + r, wc = w0[i] + t;
      a_reg[i] = (kin && h >= 0 && h < s.H && wc >= 0 && wc < s.W) ? __ldg(x + xbase[i] + koff) : 0.0f;
      b_reg[i] = (kin && (w_ok >> i & 1u)) ? __ldg(wrow + i * w_rows_apart + k) : 0.0f;
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[lk][lrow + 16 * i] = a_reg[i];
      Bs[lk][lrow + 16 * i] = b_reg[i];
    }
  };

  float acc[4][4] = {};
  pipelined_k_loop(0, RSC, load, store, As, Bs, acc, tx, ty);

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
    float* yrow = y + m * s.K + (int64_t)g * Kg;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = n0 + tx * 4 + j;
      if (k >= Kg) continue;
      float v = acc[i][j];
      if (b) v += b[g * Kg + k];
      if (accumulate) v += yrow[k];
      yrow[k] = relu ? relu_value(v) : v;  // fused ReLU: no second pass over y
    }
  }
}

// ---------------------------------------------------------------------------------------------
// backward data: dx (N*H*W, C) block (m0.., g*Cg + n0..)

// wt[g][(r*S + t)*Kg + kk][c] = w[g*Kg + kk][r][t][c]: the filters regrouped as (groups, R*S*Kg, Cg),
// so that backward data's B row k = (r, s, kk) is one contiguous run of Cg floats, read with no
// division. w is small (1.2 MB for conv2), so this costs a few microseconds per call.
__global__ void regroup_filters_kernel(ConvShape s, const float* __restrict__ w, float* __restrict__ wt) {
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t n = (int64_t)s.K * RS * Cg;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % Cg);
    int64_t rest = i / Cg;
    const int kk = (int)(rest % Kg);
    rest /= Kg;
    const int rs = (int)(rest % RS);
    const int64_t g = rest / RS;
    wt[i] = w[((g * Kg + kk) * RS + rs) * Cg + c];
  }
}

// One row of backward data's A tile: dy at the row's output pixel (hq, wq), and its stride phase.
struct GatherRow {
  const float* dy;
  int phase, unused;
};

// 3 blocks (24 warps) per SM: at most 80 registers (tools/kernel_report.py). kUnitStride: stride 1
// x 1, where every phase is 0 and the quotients are r and t themselves (the compiler drops them).
template <bool kUnitStride>
__global__ void __launch_bounds__(kThreads, 3) conv_backward_data_kernel(ConvShape s, const float* __restrict__ dy,
                                                                         const float* __restrict__ wt,
                                                                         float* __restrict__ dx, bool accumulate) {
  __shared__ __align__(16) float As[BK][kLd];
  __shared__ __align__(16) float Bs[BK][kLd];
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSK = s.R * s.S * Kg;
  const int sh = kUnitStride ? 1 : s.stride_h, sw = kUnitStride ? 1 : s.stride_w;
  const int64_t HW = (int64_t)s.H * s.W;
  const int64_t M = (int64_t)s.N * HW;
  const int g = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  // A loader: k = kt + (tid % 16) over rows (tid / 16) + 16*i. Tap (r, t) of input pixel (h, w) reads
  // output pixel p = (h + ph - r) / sh when that divides exactly. With h + ph = hq*sh + hr and
  // r = r_div*sh + r_mod, it does iff hr == r_mod, and then p = hq - r_div (same for w, t). So each
  // row keeps (hq, wq), its phase hr*sw + wr and dy at output pixel (hq, wq), and the thread keeps r
  // and t as quotient and remainder counters: no division per slice. The phase and dy pointer of
  // the block's 64 rows sit in shared memory (computed once; 16 threads read each entry, a broadcast),
  // which keeps the kernel within 80 registers.
  __shared__ __align__(16) GatherRow rows[BM];
  const int lk = tid % 16, lrow = tid / 16;
  if (tid < BM) {
    const int64_t m = m0 + tid;
    GatherRow row = {dy, 0, 0};
    if (m < M) {
      const int64_t n = m / HW;
      const int hw = (int)(m - n * HW);
      const int h = hw / s.W, wc = hw - h * s.W;
      const int hq = (h + s.pad_h) / sh, wq = (wc + s.pad_w) / sw;
      row.dy = dy + ((n * s.P + hq) * s.Q + wq) * s.K + (int64_t)g * Kg;
      row.phase = (h + s.pad_h - hq * sh) * sw + (wc + s.pad_w - wq * sw);
    }
    rows[tid] = row;
  }
  int hq[4], wq[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + lrow + 16 * i;
    if (m < M) {
      const int hw = (int)(m % HW);
      const int h = hw / s.W;
      hq[i] = (h + s.pad_h) / sh;
      wq[i] = (hw - h * s.W + s.pad_w) / sw;
    } else {
      hq[i] = -0x40000000;  // every tap lands outside the output: reads zero
      wq[i] = 0;
    }
  }
  __syncthreads();  // rows[] is read by the first load
  // this thread's k = (r, t, kk) (kk fastest), with r = r_div*sh + r_mod and t = t_div*sw + t_mod
  const int Kg1 = Kg > 0 ? Kg : 1;  // Kg = 0: no k at all, the counters are never read
  int kk = lk % Kg1, t = (lk / Kg1) % s.S;
  const int r = lk / Kg1 / s.S;
  int r_div = r / sh, r_mod = r % sh, t_div = t / sw, t_mod = t % sw;
  int next_k = 0;  // the k-tile start the counters are for

  // B loader: column c = n0 + tid % 64, k = kt + tid / 64 + 4*i, from wt (one group's (RSK, Cg) slab)
  const int bc = tid % 64, bk = tid / 64;
  const int c_col = n0 + bc;
  const bool c_in = c_col < Cg;
  const float* wcol = wt + (int64_t)g * RSK * Cg + c_col;

  float a_reg[4], b_reg[4];
  auto load = [&](int kt) {
    for (; next_k < kt; next_k += BK) {  // k-tiles come in order, one BK apart
      kk += BK;
      while (kk >= Kg) {
        kk -= Kg;
        if (++t == s.S) {
          t = t_div = t_mod = 0;
          if (++r_mod == sh) {
            r_mod = 0;
            ++r_div;
          }
        } else if (++t_mod == sw) {
          t_mod = 0;
          ++t_div;
        }
      }
    }
    {
      const bool kin = kt + lk < RSK;
      const int tap_phase = r_mod * sw + t_mod;
      const int64_t koff = kk - ((int64_t)r_div * s.Q + t_div) * s.K;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int p = hq[i] - r_div, q = wq[i] - t_div;
        const GatherRow row = rows[lrow + 16 * i];
        const bool ok = kin && row.phase == tap_phase && (unsigned)p < (unsigned)s.P && (unsigned)q < (unsigned)s.Q;
        a_reg[i] = ok ? __ldg(row.dy + koff) : 0.0f;
      }
    }
    const float* wk = wcol + (int64_t)(kt + bk) * Cg;  // row k = kt + bk; rows 4*i further on
#pragma unroll
    for (int i = 0; i < 4; ++i) b_reg[i] = (c_in && kt + bk + 4 * i < RSK) ? __ldg(wk + 4 * i * Cg) : 0.0f;
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[lk][lrow + 16 * i] = a_reg[i];
      Bs[bk + 4 * i][bc] = b_reg[i];
    }
  };

  float acc[4][4] = {};
  pipelined_k_loop(0, RSK, load, store, As, Bs, acc, tx, ty);

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
    float* row = dx + m * s.C + (int64_t)g * Cg;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = n0 + tx * 4 + j;
      if (c >= Cg) continue;
      row[c] = accumulate ? row[c] + acc[i][j] : acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// backward filter: dW_g (Kg, RSC) over output pixels [split * chunk, ...), into out (its own
// (K, RSC) slab of scratch, or dw itself when there is one split)

// 3 blocks (24 warps) per SM: at most 80 registers (tools/kernel_report.py).
__global__ void __launch_bounds__(kThreads, 3) conv_backward_filter_kernel(ConvShape s, const float* __restrict__ dy,
                                                                        const float* __restrict__ x,
                                                                        float* __restrict__ out, int64_t chunk,
                                                                        bool accumulate) {
  __shared__ __align__(16) float As[BK][kLd];
  __shared__ __align__(16) float Bs[BK][kLd];
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int64_t PQ = (int64_t)s.P * s.Q;
  const int64_t NPQ = (int64_t)s.N * PQ;
  const int g = blockIdx.z % s.groups;
  const int split = blockIdx.z / s.groups;
  const int64_t k_begin = (int64_t)split * chunk;
  const int64_t k_end = min(NPQ, k_begin + chunk);
  const int m0 = blockIdx.y * BM;  // output channel within the group
  const int n0 = blockIdx.x * BN;  // (r, s, c) column
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  // Both loaders: column tid % 64 (A: output channel, B: (r, s, c)), pixel k + tid / 64 + 4*i.
  const int lc = tid % 64, lk = tid / 64;
  const int kout = m0 + lc;
  const bool kout_in = kout < Kg;
  const int col = n0 + lc;
  const bool col_in = col < RSC;
  int r = 0, t = 0, c = 0;
  if (col_in) {
    c = col % Cg;
    const int rs = col / Cg;
    r = rs / s.S;
    t = rs - r * s.S;
  }
  const float* dyk = dy + (int64_t)g * Kg + kout;
  out += (int64_t)split * s.K * RSC;

  // B gather: pixel i of this thread, (n, p, q), reads x at (h, w) = (p*sh - ph + r, q*sw - pw + t).
  // Each of the 4 pixels keeps h, w and its x offset as counters. A slice moves a pixel on by
  // BK = dn*P*Q + dp*Q + dq pixels (dn, dp, dq fixed per shape): add the step, then carry q into p
  // and p into n once each, with compares and constant offsets only, so the K loop has no division.
  // Pixels past k_end keep counting but are never read.
  const int sh = s.stride_h, sw = s.stride_w;
  const int64_t PQ1 = PQ > 0 ? PQ : 1;  // NPQ = 0: nothing is ever loaded
  const int Q1 = s.Q > 0 ? s.Q : 1;
  const int dn = (int)(BK / PQ1), dp = (int)(BK % PQ1) / Q1, dq = BK % Q1;
  const int h_end = s.P * sh - s.pad_h + r, w_end = s.Q * sw - s.pad_w + t;  // h at p = P, w at q = Q
  const int64_t C = s.C, WC = (int64_t)s.W * C;
  const int64_t step_x = dn * s.H * WC + dp * sh * WC + (int64_t)dq * sw * C;  // x offset of BK pixels
  const int64_t carry_q = sh * WC - (int64_t)s.Q * sw * C;                   // q = Q -> q = 0 of p + 1
  const int64_t carry_p = s.H * WC - (int64_t)s.P * sh * WC;                 // p = P -> p = 0 of n + 1
  int hb[4], wb[4];
  int64_t xoff[4];  // x offset of (n, h, w, g*Cg + c)
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t pix = k_begin + lk + 4 * i;
    const int64_t n = pix / PQ1;
    const int pq = (int)(pix - n * PQ1);
    const int p = pq / Q1, q = pq - p * Q1;
    hb[i] = p * sh - s.pad_h + r;
    wb[i] = q * sw - s.pad_w + t;
    xoff[i] = ((n * s.H + hb[i]) * s.W + wb[i]) * C + (int64_t)g * Cg + c;
  }
  const float* dyp = dyk + (k_begin + lk) * s.K;  // dy at this thread's first pixel of the slice
  int64_t next_k = k_begin;                       // the k-tile start the counters are for

  float a_reg[4], b_reg[4];
  auto load = [&](int64_t kt) {
#pragma unroll 1
    for (; next_k < kt; next_k += BK) {  // k-tiles come in order, one BK apart: one step per call
      dyp += (int64_t)BK * s.K;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        hb[i] += dp * sh;
        wb[i] += dq * sw;
        xoff[i] += step_x;
        if (wb[i] >= w_end) {
          wb[i] -= s.Q * sw;
          hb[i] += sh;
          xoff[i] += carry_q;
        }
        if (hb[i] >= h_end) {
          hb[i] -= s.P * sh;
          xoff[i] += carry_p;
        }
      }
    }
    const int64_t left64 = k_end - kt - lk;  // this thread's pixels 4*i < left are in
    const int left = left64 < BK ? (int)left64 : BK;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool in = 4 * i < left;
      a_reg[i] = (in && kout_in) ? __ldg(dyp + 4 * i * s.K) : 0.0f;
      const bool inside = (unsigned)hb[i] < (unsigned)s.H && (unsigned)wb[i] < (unsigned)s.W;
      b_reg[i] = (in && col_in && inside) ? __ldg(x + xoff[i]) : 0.0f;
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[lk + 4 * i][lc] = a_reg[i];
      Bs[lk + 4 * i][lc] = b_reg[i];
    }
  };

  float acc[4][4] = {};
  pipelined_k_loop(k_begin, k_end, load, store, As, Bs, acc, tx, ty);

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty * 4 + i;
    if (m >= Kg) continue;
    float* row = out + ((int64_t)g * Kg + m) * RSC;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx * 4 + j;
      if (n >= RSC) continue;
      row[n] = accumulate ? row[n] + acc[i][j] : acc[i][j];
    }
  }
}

// dw[i] (=|+=) sum over splits of partial[split][i], in split order.
__global__ void sum_splits_kernel(const float* __restrict__ partial, int splits, int64_t n, float* __restrict__ dw,
                                  bool accumulate) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float total = 0.0f;
    for (int j = 0; j < splits; ++j) total += partial[(int64_t)j * n + i];
    dw[i] = accumulate ? dw[i] + total : total;
  }
}

int sm_count() {
  int device = 0, sms = 0;
  CONVNET_CUDA_CHECK(cudaGetDevice(&device));
  CONVNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

// Grids must fit: y and z are at most 65535.
void check_grid(const dim3& grid, const char* kernel) {
  if (grid.y > 65535u || grid.z > 65535u)
    throw std::invalid_argument(std::string(kernel) + ": shape too large for the grid (" + std::to_string(grid.y) +
                                " x " + std::to_string(grid.z) + " blocks in y x z)");
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
  const dim3 grid((unsigned)ceil_div(M, BM), (unsigned)ceil_div(s.K / s.groups, BN), (unsigned)s.groups);
  check_grid(grid, "conv_forward");
  conv_forward_kernel<<<grid, kThreads, 0, current_stream()>>>(s, x, w, b, y, accumulate, relu);
  CONVNET_LAUNCH_CHECK("conv_forward_kernel");
}

void conv_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  if (gemm_precision() != Precision::FP32 && conv_tc_supported(s)) {  // tf32 / bf16: cuda/conv_tc.cu
    conv_backward_data_tc(gemm_precision(), s, dy, w, dx, accumulate);
    return;
  }
  const int64_t M = (int64_t)s.N * s.H * s.W;
  if (M == 0) return;
  const dim3 grid((unsigned)ceil_div(M, BM), (unsigned)ceil_div(s.C / s.groups, BN), (unsigned)s.groups);
  check_grid(grid, "conv_backward_data");
  cudaStream_t stream = current_stream();
  const int64_t w_size = (int64_t)s.K * s.R * s.S * (s.C / s.groups);
  Scratch wt(static_cast<size_t>(w_size));
  if (w_size > 0) {
    regroup_filters_kernel<<<grid_for(w_size, kThreads), kThreads, 0, stream>>>(s, w, wt.ptr);
    CONVNET_LAUNCH_CHECK("regroup_filters_kernel");
  }
  if (s.stride_h == 1 && s.stride_w == 1)
    conv_backward_data_kernel<true><<<grid, kThreads, 0, stream>>>(s, dy, wt.ptr, dx, accumulate);
  else
    conv_backward_data_kernel<false><<<grid, kThreads, 0, stream>>>(s, dy, wt.ptr, dx, accumulate);
  CONVNET_LAUNCH_CHECK("conv_backward_data_kernel");
}

void conv_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db, bool accumulate) {
  if (gemm_precision() != Precision::FP32 && conv_tc_supported(s)) {  // tf32 / bf16: cuda/conv_tc.cu
    conv_backward_filter_tc(gemm_precision(), s, dy, x, dw, db, accumulate);
    return;
  }
  const int Kg = s.K / s.groups, RSC = s.R * s.S * (s.C / s.groups);
  const int64_t NPQ = (int64_t)s.N * s.P * s.Q;
  const int64_t dw_size = (int64_t)s.K * RSC;
  cudaStream_t stream = current_stream();
  if (db) bias_grad(dy, NPQ, s.K, db, accumulate);
  if (dw_size == 0) return;

  // Split the N*P*Q reduction so that the grid covers the GPU about 4 times over, but keep at
  // least 1024 pixels (64 BK steps) per split so each block amortises its epilogue.
  const int64_t tiles = ceil_div(RSC, BN) * ceil_div(Kg, BM) * s.groups;
  const int64_t want = ceil_div(4LL * sm_count(), tiles);
  const int64_t max_splits = std::max<int64_t>(1, ceil_div(NPQ, 1024));
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, max_splits, 65535 / s.groups}));
  const int64_t chunk = std::max<int64_t>(BK, ceil_div(ceil_div(NPQ, splits), BK) * BK);
  splits = std::max<int64_t>(1, ceil_div(NPQ, chunk));

  const dim3 grid((unsigned)ceil_div(RSC, BN), (unsigned)ceil_div(Kg, BM), (unsigned)(splits * s.groups));
  check_grid(grid, "conv_backward_filter");
  if (splits == 1) {
    // One split (also NPQ == 0: the kernel writes zeros, or leaves dw + 0 when accumulating).
    conv_backward_filter_kernel<<<grid, kThreads, 0, stream>>>(s, dy, x, dw, chunk, accumulate);
    CONVNET_LAUNCH_CHECK("conv_backward_filter_kernel");
    return;
  }
  Scratch partial(static_cast<size_t>(splits * dw_size));
  conv_backward_filter_kernel<<<grid, kThreads, 0, stream>>>(s, dy, x, partial.ptr, chunk, false);
  CONVNET_LAUNCH_CHECK("conv_backward_filter_kernel");
  sum_splits_kernel<<<grid_for(dw_size, kThreads), kThreads, 0, stream>>>(partial.ptr, (int)splits, dw_size, dw,
                                                                         accumulate);
  CONVNET_LAUNCH_CHECK("sum_splits_kernel");
}

}  // namespace cuda
}  // namespace convnet
