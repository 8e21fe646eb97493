// CUDA Winograd convolution (Lavin & Gray 2016): the stride-1 3x3 and 5x5 convolutions of every pass
// with 6x6 transform tiles and the interpolation points of the CPU path (csrc/cpu/winograd.h: 0, +-1,
// +-2 and infinity; the same B^T, G and A^T, as floats of the same doubles):
//   3x3: forward and backward-data F(4x4,3x3), backward-filter F(3x3,4x4);
//   5x5: forward and backward-data F(2x2,5x5), backward-filter F(5x5,2x2).
// Same contract as cuda/conv.cu (backend.h): x (N, H, W, C), w (K, R, S, C/g), y (N, P, Q, K), any
// padding below R, any groups and H/W (edge tiles are cut; reads outside the image are zeros).
//
// Kernels (192 threads: warp w holds points 6w..6w+5 of the block tile, each thread a 4 x 4 register
// tile of each, 96 accumulators; deterministic: every sum runs in a fixed order, no atomics):
//   filter_transform  U (36, g, Cg, Kg) = G w G^T per (filter, channel), once per call (U is small:
//                     conv3 36 x 256 x 384 x 4 B = 14 MB). Backward-data transforms the turned filters
//                     (180 degrees, K <-> C per group) into the same layout.
//   forward           block = 16 tiles of m x m outputs x 32 output channels of one group. Per step of 4
//                     input channels: the block gathers the 64 (tile, channel) 6x6 input windows and
//                     transforms them, V = B^T d B, in two passes through shared memory (columns, then
//                     rows: transform_columns / transform_rows) into Vs (36, 4, 16), and stages U's
//                     (36, 4, 32) slice; then each thread does, for its 6 points,
//                     acc (4 tiles x 4 channels) += V (4) x U (4) per channel: the 36 batched GEMMs
//                     M_xi (tiles, Kg) = V_xi (tiles, Cg) U_xi (Cg, Kg) with tiles and K in the block.
//                     The input transform lives only in shared memory: no transformed input tensor is
//                     ever written to global memory. Epilogue: M goes through shared memory (two halves
//                     of 16 channels), a thread per (tile, channel) in turn, Y = A^T M A, and stores
//                     its m x m outputs with bias, accumulate and ReLU fused.
//   backward-data     the forward kernel on dy with the turned filters, padding R-1-pad (stride 1: the
//                     transposed conv is a conv). No bias, no ReLU.
//   backward-filter   block = 16 output channels x 32 input channels of one group x one split of the
//                     tiles. Per step of 4 tiles: the block transforms 128 (tile, channel) x windows,
//                     V = B^T d B, and 64 (tile, filter) dy tiles, E = G' e G'^T (m x m -> 6x6, G' (6, m)),
//                     in the same two passes into shared memory; each thread then does acc (4 k x 4 c) += E x V
//                     for its 6 points: Mw_xi (Kg, Cg) = sum over the split's tiles of E_xi^T V_xi,
//                     the tiles in order. Each split writes its Mw (36, K, Cg) to scratch; output_
//                     transform sums the splits in split order and writes dW = A'^T Mw A' (A'^T (R, 6)).
//                     db: cuda::bias_grad. Tiles past (P, Q) of dy read zeros.
// No K loop divides: tile origins are computed once per block (forward) or carried by compares
// (backward-filter); the staging indices are shifts of power-of-two constants.
//
// Napkin math, AlexNet-2012 conv3 (13x13x256 -> 13x13x384, 3x3 pad 1) at batch 128, H100:
//   direct: 2 x 21632 x 384 x 2304 = 38.3 GFLOP per pass.
//   Winograd: 2048 tiles (4x4 over 16x16: 1.51x the outputs), 2 x 36 x 2048 x 256 x 384 = 14.5 GFLOP
//   of transform-domain FMAs (2.6x fewer), plus the input transforms: each (tile, channel) is transformed
//   once per 32-channel block of K (12x for conv3), ~130 adds each: 0.8 GFLOP.
//   Per forward step a thread issues 384 FFMA against 48 shared loads (LDS.128), its share of the
//   staging and the transforms: ~51 % of its loop's instructions are FFMA (sm_90); the block's bytes from L2
//   are U's slice (36 x Cg x 32 x 4 B = 1.2 MB per block; 128 x 12 blocks: 1.8 GB per pass) and x's
//   windows (2.25x the input per block column: 12 x 2.25 x 22 MB = 0.6 GB): at ~5-7 TB/s of L2 (an
//   estimate) as long as the FMAs (0.45 ms modelled), so the forward may be L2-bound; 32-tile blocks
//   would halve the U traffic.
//   Modelled against cuDNN in benchmarks/RESULTS.md ("CUDA Winograd: kernel report and model").
// Accuracy: the CPU path's figures (csrc/cpu/winograd.h): F(4x4,3x3) 2-3e-6, F(2x2,5x5) ~1.6e-6
// relative error in float32; tests/test_winograd.py checks every pass on the cuda devices.
#include <algorithm>

#include "common.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kN = 6;  // transform tile side
constexpr int kNN = kN * kN;
constexpr int kThreads = 192;
constexpr int kPointGroups = 6;                 // the block's warps, 6 points each
constexpr int kPoints = kNN / kPointGroups;     // points per thread
constexpr int kRows = 16;                       // GEMM rows per block: tiles (forward), filters (bwd-filter)
constexpr int kCols = 32;                       // GEMM columns per block: filters (forward), channels (bwd-filter)
constexpr int kDepth = 4;                       // reduction step: channels (forward), tiles (bwd-filter)
static_assert(kPointGroups * 32 == kThreads, "a warp is a 4 x 8 grid of 4 x 4 accumulators");
static_assert(kRows == 4 * 4 && kCols == 8 * 4, "each thread holds 4 rows x 4 columns per point");

// The transforms (csrc/cpu/winograd.cpp derives them from the points 0, 1, -1, 2, -2, infinity):
//   B^T (6, 6);
//   A^T (m, 6) of F(m, .): entry (i, j) = p_j^i at the finite points, the last column (infinity) 1 in the
//   last row only;
//   G (6, r) of F(., r): entry (j, k) = p_j^k / prod_{l != j} (p_j - p_l) at the finite points, the last
//   row (infinity) 1 in the last column only.
// The values are the floats of the CPU path's doubles.
__host__ __device__ constexpr float bt_coef(int i, int j) {
  constexpr float t[kNN] = {4, 0, -5, 0,  1, 0, 0, -4, -4, 1,  1, 0, 0, 4, -4, -1, 1, 0,
                            0, -2, -1, 2, 1, 0, 0, 2,  -1, -2, 1, 0, 0, 4, 0,  -5, 0, 1};
  return t[i * kN + j];
}
__host__ __device__ constexpr float at_coef(int m, int i, int j) {
  constexpr float pw[5][5] = {{1, 1, 1, 1, 1}, {0, 1, -1, 2, -2}, {0, 1, 1, 4, 4}, {0, 1, -1, 8, -8},
                              {0, 1, 1, 16, 16}};  // pw[i][j] = p_j^i
  return j == kN - 1 ? (i == m - 1 ? 1.0f : 0.0f) : pw[i][j];
}
__host__ __device__ constexpr float g_coef(int r, int j, int k) {
  constexpr float f[5][5] = {
      {0.25f, 0, 0, 0, 0},
      {-0.166666672f, -0.166666672f, -0.166666672f, -0.166666672f, -0.166666672f},
      {-0.166666672f, 0.166666672f, -0.166666672f, 0.166666672f, -0.166666672f},
      {0.0416666679f, 0.0833333358f, 0.166666672f, 0.333333343f, 0.666666687f},
      {0.0416666679f, -0.0833333358f, 0.166666672f, -0.333333343f, 0.666666687f}};
  return j == kN - 1 ? (k == r - 1 ? 1.0f : 0.0f) : f[j][k];
}

// The matrices as functors of (row, column), so that one transform serves each.
struct BT {
  __host__ __device__ constexpr float operator()(int i, int j) const { return bt_coef(i, j); }
};
template <int kM>
struct AT {
  __host__ __device__ constexpr float operator()(int i, int j) const { return at_coef(kM, i, j); }
};
template <int kR>
struct G {
  __host__ __device__ constexpr float operator()(int j, int k) const { return g_coef(kR, j, k); }
};

// out (b, b) = T in T^T with T (b, a), in registers; zero coefficients are skipped at compile time
// (the loops unroll, so T(i, u) is a constant).
template <int b, int a, class T>
__device__ __forceinline__ void transform(const float (&in)[a][a], float (&out)[b][b], T t) {
  float tmp[b][a];
#pragma unroll
  for (int i = 0; i < b; ++i)
#pragma unroll
    for (int v = 0; v < a; ++v) {
      float acc = 0.0f;
#pragma unroll
      for (int u = 0; u < a; ++u)
        if (t(i, u) != 0.0f) acc = fmaf(t(i, u), in[u][v], acc);
      tmp[i][v] = acc;
    }
#pragma unroll
  for (int i = 0; i < b; ++i)
#pragma unroll
    for (int j = 0; j < b; ++j) {
      float acc = 0.0f;
#pragma unroll
      for (int v = 0; v < a; ++v)
        if (t(j, v) != 0.0f) acc = fmaf(t(j, v), tmp[i][v], acc);
      out[i][j] = acc;
    }
}

// The same transform for n inputs at once, by the whole block through shared memory, in two passes
// of one column or one row of one input per task (a few registers each: the block's accumulators
// stay in registers meanwhile). tmp: (b, a, n).
//   pass 1: tmp[(i * a + v) * n + q] = sum_u T(i, u) load(q, u, v)        (i < b, v < a)
//   pass 2: store(q, i * b + j, sum_v T(j, v) tmp[(i * a + v) * n + q])   (i, j < b)
// A barrier must separate the passes.
template <int n, int b, int a, class T, class Load>
__device__ __forceinline__ void transform_columns(float* tmp, T t, Load load) {
#pragma unroll 1
  for (int task = threadIdx.x; task < n * a; task += kThreads) {
    const int v = task / n, q = task % n;
    float col[a];
#pragma unroll
    for (int u = 0; u < a; ++u) col[u] = load(q, u, v);
#pragma unroll
    for (int i = 0; i < b; ++i) {
      float acc = 0.0f;
#pragma unroll
      for (int u = 0; u < a; ++u)
        if (t(i, u) != 0.0f) acc = fmaf(t(i, u), col[u], acc);
      tmp[(i * a + v) * n + q] = acc;
    }
  }
}
template <int n, int b, int a, class T, class Store>
__device__ __forceinline__ void transform_rows(const float* tmp, T t, Store store) {
#pragma unroll 1
  for (int task = threadIdx.x; task < n * b; task += kThreads) {
    const int i = task / n, q = task % n;
    float row[a];
#pragma unroll
    for (int v = 0; v < a; ++v) row[v] = tmp[(i * a + v) * n + q];
#pragma unroll
    for (int j = 0; j < b; ++j) {
      float acc = 0.0f;
#pragma unroll
      for (int v = 0; v < a; ++v)
        if (t(j, v) != 0.0f) acc = fmaf(t(j, v), row[v], acc);
      store(q, i * b + j, acc);
    }
  }
}

// acc[p] (4 x 4) += a[xi] (4) x b[xi] (4) for the thread's points xi = xg * 6 + p, from shared rows
// a = A + xi * a_stride + 4 * row4 and b = B + xi * b_stride + 4 * col4.
__device__ __forceinline__ void multiply_points(const float* A, int a_stride, const float* B, int b_stride,
                                                float (&acc)[kPoints][4][4]) {
#pragma unroll
  for (int p = 0; p < kPoints; ++p) {
    const float4 a = *reinterpret_cast<const float4*>(A + p * a_stride);
    const float4 b = *reinterpret_cast<const float4*>(B + p * b_stride);
    const float av[4] = {a.x, a.y, a.z, a.w};
    const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[p][i][j] = fmaf(av[i], bv[j], acc[p][i][j]);
  }
}

// ---------------------------------------------------------------------------------------------
// U (36, g, Cg, Kg) = G f G^T of every (group, input channel ci, filter co) of the forward-form conv
// (Cg = its channels per group, Kg its filters per group). turned: the backward-data conv's filters,
// f[r][q] = w[g * Cg + ci][R-1-r][R-1-q][co] of the original w (groups * Cg filters of Kg channels);
// else f[r][q] = w[g * Kg + co][r][q][ci].
template <int kR>
__global__ void winograd_filter_transform_kernel(int groups, int Cg, int Kg, const float* __restrict__ w,
                                                 bool turned, float* __restrict__ U) {
  const int64_t n = (int64_t)groups * Cg * Kg;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int co = (int)(i % Kg);
    const int64_t rest = i / Kg;
    const int ci = (int)(rest % Cg);
    const int g = (int)(rest / Cg);
    float f[kR][kR];
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int q = 0; q < kR; ++q)
        f[r][q] = turned ? w[(((int64_t)g * Cg + ci) * kR + (kR - 1 - r)) * kR * Kg + (int64_t)(kR - 1 - q) * Kg + co]
                         : w[(((int64_t)g * Kg + co) * kR + r) * kR * Cg + (int64_t)q * Cg + ci];
    float u[kN][kN];
    transform<kN, kR>(f, u, G<kR>());
    const int64_t plane = (int64_t)groups * Cg * Kg;
#pragma unroll
    for (int a = 0; a < kN; ++a)
#pragma unroll
      for (int b = 0; b < kN; ++b) U[(a * kN + b) * plane + i] = u[a][b];
  }
}

// ---------------------------------------------------------------------------------------------
// forward: y tiles [blockIdx.x * 16, +16) x filters g * Kg + [blockIdx.y * 32, +32), g = blockIdx.z

// 2 blocks (12 warps) per SM: at most 168 registers (tools/kernel_report.py).
template <int kR>
__global__ void __launch_bounds__(kThreads, 2)
    winograd_conv_forward_kernel(ConvShape s, const float* __restrict__ x, const float* __restrict__ U,
                                 const float* __restrict__ b, float* __restrict__ y, bool accumulate, bool relu) {
  constexpr int m = kN - kR + 1;  // output tile side
  constexpr int kV = kNN * kDepth * kRows, kU = kNN * kDepth * kCols, kM = kNN * kRows * (kCols / 2);
  constexpr int kPairs = kRows * kDepth;  // (tile, channel) inputs per step
  static_assert(2 * kV + kU <= kM, "the staging fits in the epilogue's buffer");
  __shared__ __align__(16) float smem[kM];
  float* Vs = smem;           // (36, kDepth, kRows): V of the step's channels
  float* Us = smem + kV;      // (36, kDepth, kCols): U of the step's channels
  float* Ts = smem + kV + kU; // (6, 6, kPairs): the input transform's first pass
  __shared__ int64_t tile_x[kRows];  // x offset of the tile's 6x6 window corner, channel g * Cg
  __shared__ int tile_n[kRows], tile_h[kRows], tile_w[kRows];  // image; window corner (h, w): -1 << 30 for none

  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups;
  const int g = blockIdx.z, k0 = blockIdx.y * kCols;
  const int tid = threadIdx.x;
  const int th = (s.P + m - 1) / m, tw = (s.Q + m - 1) / m;
  const int64_t tiles = (int64_t)s.N * th * tw;
  const int64_t WC = (int64_t)s.W * s.C;
  if (tid < kRows) {
    const int64_t t = (int64_t)blockIdx.x * kRows + tid;
    int n = 0, h0 = -0x40000000, w0 = 0;
    int64_t off = 0;
    if (t < tiles) {
      const int64_t per_image = (int64_t)th * tw;
      n = (int)(t / per_image);
      const int rem = (int)(t - n * per_image);
      h0 = (rem / tw) * m - s.pad_h;
      w0 = (rem % tw) * m - s.pad_w;
      off = (int64_t)n * s.H * WC + (int64_t)h0 * WC + (int64_t)w0 * s.C + (int64_t)g * Cg;
    }
    tile_x[tid] = off;
    tile_n[tid] = n;
    tile_h[tid] = h0;
    tile_w[tid] = w0;
  }
  __syncthreads();

  // multiply role: points xg * 6.., tiles 4 * tr.., filters 4 * kq..
  const int xg = tid / 32, tr = tid / 8 % 4, kq = tid % 8;
  const float* Uk = U + (int64_t)g * Cg * Kg;  // U[xi][g][c][k] = Uk[xi * C * Kg + c * Kg + k]
  const int64_t u_plane = (int64_t)s.C * Kg;

  float acc[kPoints][4][4] = {};
  for (int c0 = 0; c0 < Cg; c0 += kDepth) {
    // input (tile q / kDepth, channel c0 + q % kDepth): 6x6 of x, zero outside the image
    transform_columns<kPairs, kN, kN>(Ts, BT(), [&](int q, int a, int e) {
      const int gt = q / kDepth, c = c0 + q % kDepth, h = tile_h[gt] + a, w = tile_w[gt] + e;
      const bool in = c < Cg && (unsigned)h < (unsigned)s.H && (unsigned)w < (unsigned)s.W;
      return in ? __ldg(x + (tile_x[gt] + c0 + q % kDepth + a * WC + (int64_t)e * s.C)) : 0.0f;
    });
#pragma unroll 2
    for (int j = 0; j < kU / kThreads; ++j) {  // Us[xi][cc][kk], kk fastest: coalesced along k
      const int i = j * kThreads + tid;
      const int kk = i % kCols, cc = i / kCols % kDepth, xi = i / (kCols * kDepth);
      const int c = c0 + cc, k = k0 + kk;
      Us[i] = (c < Cg && k < Kg) ? __ldg(Uk + (xi * u_plane + (int64_t)c * Kg + k)) : 0.0f;
    }
    __syncthreads();
    transform_rows<kPairs, kN, kN>(Ts, BT(), [&](int q, int xi, float v) {
      Vs[(xi * kDepth + q % kDepth) * kRows + q / kDepth] = v;
    });
    __syncthreads();
#pragma unroll
    for (int cc = 0; cc < kDepth; ++cc)
      multiply_points(Vs + (xg * kPoints * kDepth + cc) * kRows + 4 * tr, kDepth * kRows,
                      Us + (xg * kPoints * kDepth + cc) * kCols + 4 * kq, kDepth * kCols, acc);
    __syncthreads();
  }

  // Epilogue, two halves of 16 filters: M (36, 16 tiles, 16 filters) through shared memory, then each
  // (tile, filter) of the half by one thread: Y = A^T M A (m x m), cut to (P, Q), + b, + old y, ReLU.
#pragma unroll 1
  for (int half = 0; half < 2; ++half) {
    if (kq / 4 == half) {
#pragma unroll
      for (int p = 0; p < kPoints; ++p)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            smem[((xg * kPoints + p) * kRows + 4 * tr + i) * 16 + 4 * (kq % 4) + j] = acc[p][i][j];
    }
    __syncthreads();
#pragma unroll 1
    for (int entry = tid; entry < kRows * 16; entry += kThreads) {
      const int et = entry / 16, ek = entry % 16;
      const int k = k0 + 16 * half + ek;
      const int h0 = tile_h[et];
      if (h0 == -0x40000000 || k >= Kg) continue;
      float M[kN][kN];
#pragma unroll
      for (int a = 0; a < kN; ++a)
#pragma unroll
        for (int e = 0; e < kN; ++e) M[a][e] = smem[((a * kN + e) * kRows + et) * 16 + ek];
      float out[m][m];
      transform<m, kN>(M, out, AT<m>());
      const int p0 = h0 + s.pad_h, q0 = tile_w[et] + s.pad_w;
      const float bias = b ? b[g * Kg + k] : 0.0f;
      float* yk = y + (int64_t)g * Kg + k;
#pragma unroll
      for (int r = 0; r < m; ++r)
#pragma unroll
        for (int q = 0; q < m; ++q) {
          if (p0 + r >= s.P || q0 + q >= s.Q) continue;
          float* dst = yk + (((int64_t)tile_n[et] * s.P + p0 + r) * s.Q + q0 + q) * s.K;
          float v = out[r][q] + bias;
          if (accumulate) v += *dst;
          *dst = relu ? relu_value(v) : v;
        }
    }
    __syncthreads();  // the next half overwrites smem
  }
}

// ---------------------------------------------------------------------------------------------
// backward filter: Mw partial (36, K, Cg) of split blockIdx.z / groups: filters g * Kg + [blockIdx.y *
// 16, +16) x channels [blockIdx.x * 32, +32), over tiles [split * chunk, +chunk)

// 2 blocks (12 warps) per SM: at most 168 registers (tools/kernel_report.py).
template <int kR>
__global__ void __launch_bounds__(kThreads, 2)
    winograd_conv_backward_filter_kernel(ConvShape s, const float* __restrict__ dy, const float* __restrict__ x,
                                         float* __restrict__ partial, int64_t chunk) {
  constexpr int m = kN - kR + 1;  // dy tile side: F(R x R, m x m)
  constexpr int kXPairs = kDepth * kCols, kDyPairs = kDepth * kRows;  // (tile, channel), (tile, filter)
  static_assert(kN * m * kDyPairs <= kNN * kXPairs, "dy's first pass fits in Vs");
  __shared__ __align__(16) float Es[kNN * kDepth * kRows];  // (36, 4 tiles, 16 filters)
  __shared__ __align__(16) float Vs[kNN * kXPairs];         // (36, 4 tiles, 32 channels); dy's first pass
  __shared__ __align__(16) float Ts[kNN * kXPairs];         // x's first pass
  __shared__ int step_n[kDepth], step_p[kDepth], step_q[kDepth];  // the step's tiles: image, first output
  __shared__ bool step_in[kDepth];
  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups;
  const int g = blockIdx.z % groups, split = blockIdx.z / groups;
  const int c0 = blockIdx.x * kCols, k0 = blockIdx.y * kRows;
  const int tid = threadIdx.x;
  const int th = (s.P + m - 1) / m, tw = (s.Q + m - 1) / m;
  const int64_t tiles = (int64_t)s.N * th * tw;
  const int64_t t_begin = (int64_t)split * chunk, t_end = min(tiles, t_begin + chunk);

  // Thread tid < kDepth keeps tile t0 + tid's (n, tile row, tile column), moved on by kDepth tiles per
  // step with compares, and publishes it in step_*.
  int n = 0, tr = 0, tc = 0;
  if (tid < kDepth && t_begin < t_end) {
    const int64_t t = t_begin + tid, per_image = (int64_t)th * tw;
    n = (int)(t / per_image);
    const int rem = (int)(t - n * per_image);
    tr = rem / tw;
    tc = rem - tr * tw;
  }
  auto publish = [&](int64_t t0) {
    if (tid < kDepth) {
      step_n[tid] = n;
      step_p[tid] = tr * m;
      step_q[tid] = tc * m;
      step_in[tid] = t0 + tid < t_end;
    }
  };
  publish(t_begin);
  __syncthreads();
  const int64_t WC = (int64_t)s.W * s.C, QK = (int64_t)s.Q * s.K;
  const int64_t x_off = (int64_t)g * Cg + c0, dy_off = (int64_t)g * Kg + k0;
  // multiply role: points xg * 6.., filters 4 * kp.., channels 4 * cq..
  const int xg = tid / 32, kp = tid / 8 % 4, cq = tid % 8;

  float acc[kPoints][4][4] = {};
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kDepth) {
    // x input (tile q / 32, channel c0 + q % 32): 6x6 at (p - pad, q - pad), zero outside the image
    transform_columns<kXPairs, kN, kN>(Ts, BT(), [&](int q, int a, int e) {
      const int tt = q / kCols, c = q % kCols;
      const int h = step_p[tt] - s.pad_h + a, w = step_q[tt] - s.pad_w + e;
      const bool in = step_in[tt] && c0 + c < Cg && (unsigned)h < (unsigned)s.H && (unsigned)w < (unsigned)s.W;
      return in ? __ldg(x + (x_off + c + ((int64_t)step_n[tt] * s.H + h) * WC + (int64_t)w * s.C)) : 0.0f;
    });
    // dy input (tile q / 16, filter k0 + q % 16): m x m, zero past (P, Q)
    transform_columns<kDyPairs, kN, m>(Vs, G<m>(), [&](int q, int a, int e) {
      const int tt = q / kRows, k = q % kRows, p = step_p[tt] + a, w = step_q[tt] + e;
      const bool in = step_in[tt] && k0 + k < Kg && p < s.P && w < s.Q;
      return in ? __ldg(dy + (dy_off + k + ((int64_t)step_n[tt] * s.P + p) * QK + (int64_t)w * s.K)) : 0.0f;
    });
    __syncthreads();
    // the next step's tiles (step_* is next read after two more barriers)
    tc += kDepth;
    while (tc >= tw) {
      tc -= tw;
      if (++tr == th) {
        tr = 0;
        ++n;
      }
    }
    publish(t0 + kDepth);
    transform_rows<kDyPairs, kN, m>(Vs, G<m>(), [&](int q, int xi, float v) {
      Es[(xi * kDepth + q / kRows) * kRows + q % kRows] = v;
    });
    __syncthreads();
    transform_rows<kXPairs, kN, kN>(Ts, BT(), [&](int q, int xi, float v) {
      Vs[(xi * kDepth + q / kCols) * kCols + q % kCols] = v;
    });
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kDepth; ++tt)
      multiply_points(Es + (xg * kPoints * kDepth + tt) * kRows + 4 * kp, kDepth * kRows,
                      Vs + (xg * kPoints * kDepth + tt) * kCols + 4 * cq, kDepth * kCols, acc);
    __syncthreads();
  }

  float* out = partial + (int64_t)split * kNN * s.K * Cg;  // (36, K, Cg)
#pragma unroll
  for (int p = 0; p < kPoints; ++p)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int kk = k0 + 4 * kp + i;
      if (kk >= Kg) continue;
      float* row = out + ((int64_t)(xg * kPoints + p) * s.K + (int64_t)g * Kg + kk) * Cg;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int cc = c0 + 4 * cq + j;
        if (cc < Cg) row[cc] = acc[p][i][j];
      }
    }
}

// dw[k][:, :][c] (=|+=) A'^T (sum over splits of partial[split][:][k][c], in split order) A'
template <int kR>
__global__ void __launch_bounds__(128) winograd_filter_output_kernel(const float* __restrict__ partial, int splits, int K, int Cg,
                                              float* __restrict__ dw, bool accumulate) {
  const int64_t n = (int64_t)K * Cg, plane = n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float M[kN][kN] = {};
#pragma unroll 1
    for (int j = 0; j < splits; ++j)
#pragma unroll
      for (int a = 0; a < kN; ++a)
#pragma unroll
        for (int e = 0; e < kN; ++e) M[a][e] += partial[((int64_t)j * kNN + a * kN + e) * plane + i];
    float out[kR][kR];
    transform<kR, kN>(M, out, AT<kR>());
    const int c = (int)(i % Cg);
    const int64_t k = i / Cg;
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int q = 0; q < kR; ++q) {
        float* dst = dw + ((k * kR + r) * kR + q) * Cg + c;
        *dst = accumulate ? *dst + out[r][q] : out[r][q];
      }
  }
}


// The forward of s with w, or (turned) the backward-data conv whose forward form s is (turned_forward_shape()),
// with the original filters w, then (s.C, R, R, s.K / groups).
template <int kR>
void run_forward(const ConvShape& s, const float* x, const float* w, bool turned, const float* b, float* y,
                 bool accumulate, bool relu) {
  constexpr int m = kN - kR + 1;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups;
  const int64_t tiles = (int64_t)s.N * ((s.P + m - 1) / m) * ((s.Q + m - 1) / m);
  if (tiles == 0) return;
  cudaStream_t stream = current_stream();
  const int64_t u_size = (int64_t)kNN * s.groups * Cg * Kg;
  Scratch U(static_cast<size_t>(u_size));
  if (u_size > 0) {
    winograd_filter_transform_kernel<kR><<<grid_for(u_size / kNN, 128), 128, 0, stream>>>(s.groups, Cg, Kg, w, turned,
                                                                                           U.ptr);
    CONVNET_LAUNCH_CHECK("winograd_filter_transform_kernel");
  }
  const dim3 grid((unsigned)ceil_div(tiles, kRows), (unsigned)ceil_div(Kg, kCols), (unsigned)s.groups);
  if (ceil_div(tiles, kRows) > 0x7fffffffLL) throw std::invalid_argument("conv (winograd): too many tiles");
  check_grid(grid, "conv (winograd)");
  winograd_conv_forward_kernel<kR><<<grid, kThreads, 0, stream>>>(s, x, U.ptr, b, y, accumulate, relu);
  CONVNET_LAUNCH_CHECK("winograd_conv_forward_kernel");
}

template <int kR>
void run_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  constexpr int m = kN - kR + 1;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups;
  const int64_t tiles = (int64_t)s.N * ((s.P + m - 1) / m) * ((s.Q + m - 1) / m);
  const int64_t dw_size = (int64_t)s.K * kR * kR * Cg;
  if (dw_size == 0) return;
  cudaStream_t stream = current_stream();
  // Split the tiles so that the grid covers the GPU about 4 times over, keeping at least 32 tiles
  // (8 steps) per split; the splits are summed in order by the output transform.
  const int64_t blocks = ceil_div(Cg, kCols) * ceil_div(Kg, kRows) * s.groups;
  const int64_t want = ceil_div(4LL * sm_count(), blocks);
  const int64_t max_splits = std::max<int64_t>(1, ceil_div(tiles, 32));
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, max_splits, 65535 / s.groups}));
  const int64_t chunk = std::max<int64_t>(kDepth, ceil_div(ceil_div(tiles, splits), kDepth) * kDepth);
  splits = std::max<int64_t>(1, ceil_div(tiles, chunk));
  Scratch partial(static_cast<size_t>(splits * kNN * s.K * Cg));
  const dim3 grid((unsigned)ceil_div(Cg, kCols), (unsigned)ceil_div(Kg, kRows), (unsigned)(splits * s.groups));
  check_grid(grid, "conv_backward_filter (winograd)");
  winograd_conv_backward_filter_kernel<kR><<<grid, kThreads, 0, stream>>>(s, dy, x, partial.ptr, chunk);
  CONVNET_LAUNCH_CHECK("winograd_conv_backward_filter_kernel");
  winograd_filter_output_kernel<kR><<<grid_for((int64_t)s.K * Cg, 128), 128, 0, stream>>>(
      partial.ptr, (int)splits, s.K, Cg, dw, accumulate);
  CONVNET_LAUNCH_CHECK("winograd_filter_output_kernel");
}


}  // namespace

// The auto rule: MODELLED, not measured (no GPU has run these kernels; benchmarks/RESULTS.md, "CUDA
// Winograd: kernel report and model"). Each kernel's time is modelled as the FMAs it actually issues
// (its block tiles' padding included) at the issue rate its main loop allows: FP32 peak x the loop's
// FFMA share (tools/kernel_report.py, sm_90, static: every other instruction of the loop -- staging,
// transforms, addresses -- takes an issue slot), plus kLaunchSeconds per launch Winograd adds (the
// filter transform, the output transform). Stalls, occupancy and waves are not modelled; both sides
// are compute-bound at AlexNet's sizes (cuda/conv.cu's napkin math), so memory time is left out.
// Winograd where it is modelled faster, under fp32 only: under tf32 / bf16 auto stays direct (the
// transforms' extra rounding error is not in those modes' contracts; the CPU does the same).
namespace {
// FFMA shares of the main loops (kernel_report, sm_90, 2026-12-03): cuda/conv.cu's direct kernels
// (forward, backward-data stride 1 -- the forward kernel over turned filters --, backward-filter;
// their 16-byte-gather instantiations, as on every 3x3 / 5x5 AlexNet layer) and this file's
// (backward-data runs the forward).
constexpr double kDirectShare[3] = {0.83, 0.83, 0.83};
constexpr double kWinogradShare[3] = {0.51, 0.51, 0.41};
constexpr double kPeakFlops = 66.9e12;   // H100 SXM5 FP32 non-tensor (the scale cancels but for launches)
constexpr double kLaunchSeconds = 3e-6;  // an ESTIMATE of one kernel launch and its tail

double padded(int64_t n, int64_t tile) { return (double)(ceil_div(n, tile) * tile); }
}  // namespace

bool winograd_chosen(const ConvShape& s, ConvPass pass) {
  if (s.algorithm == ConvAlgorithm::Direct) return false;
  if (s.algorithm == ConvAlgorithm::Winograd) return true;
  if (gemm_precision() != Precision::FP32) return false;
  if (s.stride_h != 1 || s.stride_w != 1 || s.R != s.S || (s.R != 3 && s.R != 5) || s.pad_h >= s.R ||
      s.pad_w >= s.R)
    return false;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, m = kN - s.R + 1;
  const int64_t RS = (int64_t)s.R * s.S;
  const int idx = static_cast<int>(pass);
  // FMAs each kernel issues, per group: direct tiles 128 x 128 x 8 (cuda/conv.cu), Winograd 16 x 32 x 4 (forward,
  // backward-data) and 16 x 32 x 4 (backward-filter: filters x channels x tiles) per point.
  double direct = 0, winograd = 0;
  if (pass == ConvPass::Forward) {
    direct = padded((int64_t)s.N * s.P * s.Q, 128) * padded(Kg, 128) * padded(RS * Cg, 8);
    winograd = kNN * padded((int64_t)s.N * ceil_div(s.P, m) * ceil_div(s.Q, m), kRows) * padded(Kg, kCols) *
               padded(Cg, kDepth);
  } else if (pass == ConvPass::BackwardData) {
    direct = padded((int64_t)s.N * s.H * s.W, 128) * padded(Cg, 128) * padded(RS * Kg, 8);
    winograd = kNN * padded((int64_t)s.N * ceil_div(s.H, m) * ceil_div(s.W, m), kRows) * padded(Cg, kCols) *
               padded(Kg, kDepth);
  } else {
    direct = padded(Kg, 128) * padded(RS * Cg, 128) * padded((int64_t)s.N * s.P * s.Q, 8);
    winograd = kNN * padded(Kg, kRows) * padded(Cg, kCols) *
               padded((int64_t)s.N * ceil_div(s.P, m) * ceil_div(s.Q, m), kDepth);
  }
  const double t_direct = 2.0 * s.groups * direct / (kPeakFlops * kDirectShare[idx]);
  const double t_winograd =
      2.0 * s.groups * winograd / (kPeakFlops * kWinogradShare[idx]) + kLaunchSeconds;
  return t_winograd < t_direct;
}

void winograd_conv_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                           bool accumulate, bool relu) {
  if (s.R == 3)
    run_forward<3>(s, x, w, false, b, y, accumulate, relu);
  else
    run_forward<5>(s, x, w, false, b, y, accumulate, relu);
}

void winograd_conv_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  const ConvShape t = turned_forward_shape(s);  // backend.h
  if (s.R == 3)
    run_forward<3>(t, dy, w, true, nullptr, dx, accumulate, false);
  else
    run_forward<5>(t, dy, w, true, nullptr, dx, accumulate, false);
}

void winograd_conv_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db,
                                   bool accumulate) {
  if (db) bias_grad(dy, (int64_t)s.N * s.P * s.Q, s.K, db, accumulate);
  if (s.R == 3)
    run_backward_filter<3>(s, dy, x, dw, accumulate);
  else
    run_backward_filter<5>(s, dy, x, dw, accumulate);
}

}  // namespace cuda
}  // namespace convnet
