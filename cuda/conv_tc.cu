// CUDA convolutions on tensor cores: forward (+ bias, ReLU), backward to data, backward to filters,
// as implicit GEMMs under precision tf32 (mma.sync m16n8k8 TF32) or bf16 (m16n8k16 BF16), with
// the contracts of the FP32 kernels of cuda/conv.cu, whose launchers call these at their top when
// the process-wide precision (backend.h) is not fp32.
//
// What it rounds: x, w, dy stay FP32 in global memory; each element of a GEMM operand is rounded
// once, while it is staged into shared memory (TF32 by cvt.rna: nearest, ties away, 10-bit mantissa;
// BF16 by cvt.rn: nearest even, 8-bit mantissa, subnormals kept). Products are exact and sums FP32
// (the mma's .f32 accumulators); the epilogue (bias, old y / dx / dw when accumulating, ReLU) and
// the split-K sum of backward filter are FP32.
//
// Layouts as conv.cu: x (N, H, W, C), w (K, R, S, Cg), y (N, P, Q, K); Cg = C / groups,
// Kg = K / groups; one group per blockIdx.z (backward filter: z = split * groups + group).
//
// The block GEMM is gemm_tc.cu's (cuda/tc_tile.cuh): 256 threads, a 128 x 128 tile of C, slices of
// 64 bytes per staged row (16 TF32 / 32 BF16 k), both operands staged k-contiguous, fragments by
// ldmatrix, two stages with the next slice prefetched into registers and converted there. Only
// the loaders differ from the FC GEMM's: each gathers its share of a slice straight from NHWC
// memory (the patch matrix is never stored), bounds-checked (padding, partial tiles: zeros), with
// int64 offsets, and keeps its k as counters moved on by a slice's BK with compares, so no K loop
// divides (except the strided backward-data gather, below).
//
//   forward          M = N*P*Q pixels, N = Kg, K = R*S*Cg (r, s, c; c fastest)
//                    A (pixel, (r,s,c)) = x[n, p*sh-ph+r, q*sw-pw+s, g*Cg+c]; a loader group is
//                    G = 4 (TF32) / 8 (BF16) consecutive k of one pixel: with Cg % G == 0 one tap's
//                    G contiguous channels (float4 loads), else element by element (conv1, C = 3).
//                    B (k, (r,s,c)) = w[g*Kg+k, r, s, c]: the filter rows, a plain (Kg, RSC) matrix.
//                    epilogue: y = relu?(acc + b (+ old y)).
//   backward data    M = N*H*W pixels, N = Cg, K = R*S*Kg (r, s, k; k fastest)
//                    A (pixel, (r,s,k)) = dy[n, p, q, g*Kg+k] with p = (h+ph-r)/sh, q = (w+pw-s)/sw,
//                    zero unless both divide exactly and land inside: the transposed-conv gather,
//                    so every dx element is written once, by one block (no atomics). A group is G
//                    consecutive k of one tap when Kg % G == 0. Stride 1 is an instantiation without
//                    the divisions; other strides divide per group and slice (conv1 only in AlexNet,
//                    whose dx no net needs).
//                    B ((r,s,k), c) = w[g*Kg+k, r, s, c], regrouped first by a small kernel into
//                    wt (groups, Cg, R*S*Kg) so that it is a plain k-contiguous matrix (w is ~1 MB).
//   backward filter  M = Kg, N = R*S*Cg, K = N*P*Q pixels, split across blocks (split-K)
//                    A (k, pixel) = dy[pixel, g*Kg+k]: a plain matrix stored (pixels, K).
//                    B ((r,s,c), pixel) = the forward's patch entry: a group is 4 consecutive
//                    columns (r,s,c) of 1 (TF32) or 2 (BF16) pixels, one float4 per pixel when
//                    Cg % 4 == 0; the block's 128 columns' (r, s, c) sit in a shared table, the
//                    thread's pixels are (n, p, q) counters moved on by BK with two carries.
//                    Each split writes its own partial dW into scratch and a second kernel sums them
//                    in split order (deterministic, no atomics); one split writes dw directly.
//                    db: cuda::bias_grad on dy viewed as (N*P*Q, K), FP32 in every precision.
//
// Napkin math, AlexNet-2012 conv2 forward on an H100 SXM (N = 128, 57.3 GFLOP per pass): 0.12 ms at
// the dense TF32 peak (495 TFLOP/s), 0.06 ms at BF16 (989), against 0.13 GB of compulsory FP32
// traffic, 0.04 ms at 3.35 TB/s: still compute-bound (~440 FLOP/B against a ridge of ~150 TF32 /
// ~300 BF16). A block's K loop per 64-byte slice: 2 k-steps x (6 ldmatrix.x4 + 16 mma) per warp,
// against its loaders' 2 groups per operand and thread; kernel_report.py counts the mix.
// Per block: 40 KB of shared memory (+ 2 KB of column table in backward filter); 2 blocks per SM.
#include <algorithm>

#include "conv_tc.cuh"
#include "tc_tile.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kTile = kGemmTile;  // 128 x 128 of C per block
constexpr int kFar = -0x40000000;  // a window corner that no tap brings inside the image: reads zero

__device__ __forceinline__ bool inside(int v, int n) { return (unsigned)v < (unsigned)n; }

// One group of a KCONTIG loader, converted into 4 words (TF32: one per element; BF16: pairs).
template <Precision P>
__device__ __forceinline__ void convert_kcontig(const float* v, uint32_t (&w)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) w[j] = P == Precision::TF32 ? f32_to_tf32(v[j]) : pack_bf16x2(v[2 * j], v[2 * j + 1]);
}
__device__ __forceinline__ void store_kcontig(uint32_t* d, const uint32_t (&w)[4]) {
  *reinterpret_cast<int4*>(d) = make_int4(static_cast<int>(w[0]), static_cast<int>(w[1]), static_cast<int>(w[2]),
                                          static_cast<int>(w[3]));
}
__device__ __forceinline__ void load_floats(const float* __restrict__ src, float* v, int n) {
#pragma unroll
  for (int j = 0; j < n; j += 4) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(src + j));
    v[j] = f.x;
    v[j + 1] = f.y;
    v[j + 2] = f.z;
    v[j + 3] = f.w;
  }
}

// ---------------------------------------------------------------------------------------------
// the epilogue: C (M, N) at c + m * ldc + n, from the accumulator layout of mma (c0, c1 at
// (g, 2t), (g, 2t+1); c2, c3 at (g+8, ...)), in bounds only: v = acc (+ bias[n]) (+ old C); ReLU.

struct TcOut {
  float* c;
  int64_t M;
  int N;
  int64_t ldc;
  const float* bias;  // (N) or null
  bool accumulate, relu;
};

__device__ __forceinline__ void tc_epilogue(const TcOut& o, int64_t m0, int n0, const float (&acc)[4][4][4]) {
  const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int wm0 = tc_warp_m0(), wn0 = tc_warp_n0();
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = n0 + wn0 + nt * 8 + 2 * t;
    float bias[2] = {0.0f, 0.0f};
    if (o.bias) {
      bias[0] = n < o.N ? o.bias[n] : 0.0f;
      bias[1] = n + 1 < o.N ? o.bias[n + 1] : 0.0f;
    }
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm0 + mt * 16 + g + 8 * h;
        if (m >= o.M) continue;
        float* row = o.c + m * o.ldc;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (n + j >= o.N) continue;
          float v = acc[mt][nt][2 * h + j];
          if (o.bias) v += bias[j];
          if (o.accumulate) v += row[n + j];
          row[n + j] = o.relu ? relu_value(v) : v;
        }
      }
  }
}

// ---------------------------------------------------------------------------------------------
// forward: y (N*P*Q, K) block (m0.., g*Kg + n0..)

// A: the patch matrix (pixel m, k = (r, s, c)), KCONTIG: thread t owns the groups q = t, t + 256,
// rows q / 4 and q / 4 + 64 of the tile, k (q % 4) * G .. + G - 1 of each slice (TcLoader's map).
// kTap: Cg % G == 0 and x 16-byte aligned, so a group is G contiguous channels of one tap.
template <Precision P, bool kTap>
struct FwdPatchLoader {
  static constexpr int G = Tc<P>::kGroup, BK = Tc<P>::kBK;
  const float* __restrict__ x;
  int H, W, C, S, Cg, RSC;
  int h0[2], w0[2];   // each row's window corner (kFar past the last pixel)
  int64_t xb[2];      // x offset of (n, h0, w0, g*Cg)
  int k, kr, ks, kc;  // the group start k of the next slice, and its (r, s, c)
  uint32_t* dst[2];
  uint32_t w[2][4];

  __device__ __forceinline__ FwdPatchLoader(const ConvShape& s, const float* __restrict__ x_, int g, int64_t m0,
                                            uint32_t* S0)
      : x(x_), H(s.H), W(s.W), C(s.C), S(s.S), Cg(s.C / s.groups), RSC(s.R * s.S * (s.C / s.groups)) {
    const int64_t PQ = (int64_t)s.P * s.Q, M = s.N * PQ;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int q = threadIdx.x + i * kGemmThreads, row = q / 4;
      const int64_t m = m0 + row;
      if (m < M) {
        const int64_t n = m / PQ;
        const int pq = (int)(m - n * PQ);
        const int p = pq / s.Q, qq = pq - p * s.Q;
        h0[i] = p * s.stride_h - s.pad_h;
        w0[i] = qq * s.stride_w - s.pad_w;
        xb[i] = n * s.H * s.W * s.C + (int64_t)g * Cg + ((int64_t)h0[i] * s.W + w0[i]) * s.C;
      } else {
        h0[i] = kFar;
        w0[i] = 0;
        xb[i] = 0;
      }
      dst[i] = S0 + row * kTcRowWords + (q % 4) * 4;
    }
    k = (threadIdx.x % 4) * G;
    kc = k % Cg;
    ks = (k / Cg) % S;
    kr = k / Cg / S;
  }

  __device__ __forceinline__ void load() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float v[G];
      if (kTap) {
        const int h = h0[i] + kr, wc = w0[i] + ks;
        if (k < RSC && inside(h, H) && inside(wc, W)) {
          load_floats(x + xb[i] + ((int64_t)kr * W + ks) * C + kc, v, G);
        } else {
#pragma unroll
          for (int j = 0; j < G; ++j) v[j] = 0.0f;
        }
      } else {  // element by element, each with its own tap
        int r = kr, t = ks, c = kc;
#pragma unroll
        for (int j = 0; j < G; ++j) {
          const int h = h0[i] + r, wc = w0[i] + t;
          v[j] = (k + j < RSC && inside(h, H) && inside(wc, W)) ? __ldg(x + xb[i] + ((int64_t)r * W + t) * C + c)
                                                                 : 0.0f;
          if (++c == Cg) {
            c = 0;
            if (++t == S) {
              t = 0;
              ++r;
            }
          }
        }
      }
      convert_kcontig<P>(v, w[i]);
    }
    k += BK;
    kc += BK;
    while (kc >= Cg) {
      kc -= Cg;
      if (++ks == S) {
        ks = 0;
        ++kr;
      }
    }
  }

  __device__ __forceinline__ void store(int stage) {
#pragma unroll
    for (int i = 0; i < 2; ++i) store_kcontig(dst[i] + stage * kTcStageWords, w[i]);
  }
};

template <Precision P, bool kTap>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocksPerSM)
    conv_forward_tc_kernel(ConvShape s, const float* __restrict__ x, const float* __restrict__ w,
                           const float* __restrict__ b, float* __restrict__ y, bool accumulate, bool relu, bool vec_w) {
  __shared__ __align__(16) uint32_t As[2 * kTcStageWords];
  __shared__ __align__(16) uint32_t Bs[2 * kTcStageWords];
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int g = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * kTile;
  const int n0 = blockIdx.y * kTile;

  FwdPatchLoader<P, kTap> load_a(s, x, g, m0, As);
  TcLoader<P, true> load_b(w + (int64_t)g * Kg * RSC, RSC, Kg, n0, 0, RSC, vec_w, Bs);
  float acc[4][4][4];
  tc_block_mma<P>(load_a, load_b, (RSC + Tc<P>::kBK - 1) / Tc<P>::kBK, As, Bs, acc);

  const TcOut out = {y + (int64_t)g * Kg, (int64_t)s.N * s.P * s.Q, Kg, s.K, b ? b + (int64_t)g * Kg : nullptr,
                     accumulate, relu};
  tc_epilogue(out, m0, n0, acc);
}

template <Precision P>
void launch_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, bool accumulate,
                    bool relu) {
  const int64_t M = (int64_t)s.N * s.P * s.Q;
  if (M == 0) return;
  const int Cg = s.C / s.groups, RSC = s.R * s.S * Cg;
  const dim3 grid((unsigned)ceil_div(M, kTile), (unsigned)ceil_div(s.K / s.groups, kTile), (unsigned)s.groups);
  check_grid(grid, "conv_forward");
  const bool vec_w = aligned16(w) && RSC % 4 == 0;
  cudaStream_t stream = current_stream();
  if (Cg % Tc<P>::kGroup == 0 && aligned16(x))
    conv_forward_tc_kernel<P, true><<<grid, kGemmThreads, 0, stream>>>(s, x, w, b, y, accumulate, relu, vec_w);
  else
    conv_forward_tc_kernel<P, false><<<grid, kGemmThreads, 0, stream>>>(s, x, w, b, y, accumulate, relu, vec_w);
  CONVNET_LAUNCH_CHECK("conv_forward_tc_kernel");
}

// ---------------------------------------------------------------------------------------------
// backward data: dx (N*H*W, C) block (m0.., g*Cg + n0..)

// wt[(g*Cg + c) * RSK + (r*S + s)*Kg + kk] = w[g*Kg + kk][r][s][c]: the filters as (groups, Cg, R*S*Kg),
// so that backward data's B is a plain k-contiguous (Cg, RSK) matrix per group.
__global__ void regroup_filters_tc_kernel(ConvShape s, const float* __restrict__ w, float* __restrict__ wt) {
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t n = (int64_t)s.K * RS * Cg;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int kk = (int)(i % Kg);
    int64_t rest = i / Kg;
    const int rs = (int)(rest % RS);
    rest /= RS;
    const int c = (int)(rest % Cg);
    const int64_t g = rest / Cg;
    wt[i] = w[((g * Kg + kk) * RS + rs) * Cg + c];
  }
}

// Output pixel o of input offset t (= h + ph - r) along an axis of stride st and extent n: whether
// the tap reads one (t divides exactly and lands inside), and which. kUnit: stride 1, no division.
template <bool kUnit>
__device__ __forceinline__ bool tap_hits(int t, int st, int n, int& o) {
  if (kUnit) {
    o = t;
    return inside(t, n);
  }
  if (t < 0) return false;
  o = t / st;
  return o * st == t && o < n;
}

// A: dy gathered as (input pixel m, k = (r, s, kk)), KCONTIG, TcLoader's thread map.
// kTap: Kg % G == 0 and dy 16-byte aligned, so a group is G contiguous channels of one tap.
template <Precision P, bool kTap, bool kUnit>
struct BwdDataGradLoader {
  static constexpr int G = Tc<P>::kGroup, BK = Tc<P>::kBK;
  const float* __restrict__ dy;
  int P_, Q, K, S, Kg, RSK, sh, sw;
  int hh[2], ww[2];   // each row's h + ph, w + pw (kFar past the last pixel)
  int64_t db[2];      // dy offset of (n, 0, 0, g*Kg)
  int k, kr, ks, kk;  // the group start k of the next slice, and its (r, s, kk)
  uint32_t* dst[2];
  uint32_t w[2][4];

  __device__ __forceinline__ BwdDataGradLoader(const ConvShape& s, const float* __restrict__ dy_, int g, int64_t m0,
                                               uint32_t* S0)
      : dy(dy_), P_(s.P), Q(s.Q), K(s.K), S(s.S), Kg(s.K / s.groups), RSK(s.R * s.S * (s.K / s.groups)),
        sh(s.stride_h), sw(s.stride_w) {
    const int64_t HW = (int64_t)s.H * s.W, M = s.N * HW;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int q = threadIdx.x + i * kGemmThreads, row = q / 4;
      const int64_t m = m0 + row;
      if (m < M) {
        const int64_t n = m / HW;
        const int hw = (int)(m - n * HW);
        const int h = hw / s.W;
        hh[i] = h + s.pad_h;
        ww[i] = hw - h * s.W + s.pad_w;
        db[i] = n * s.P * s.Q * s.K + (int64_t)g * Kg;
      } else {
        hh[i] = kFar;
        ww[i] = 0;
        db[i] = 0;
      }
      dst[i] = S0 + row * kTcRowWords + (q % 4) * 4;
    }
    k = (threadIdx.x % 4) * G;
    kk = k % Kg;
    ks = (k / Kg) % S;
    kr = k / Kg / S;
  }

  __device__ __forceinline__ void load() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float v[G];
      if (kTap) {
        int p, q;
        if (k < RSK && tap_hits<kUnit>(hh[i] - kr, sh, P_, p) && tap_hits<kUnit>(ww[i] - ks, sw, Q, q)) {
          load_floats(dy + db[i] + ((int64_t)p * Q + q) * K + kk, v, G);
        } else {
#pragma unroll
          for (int j = 0; j < G; ++j) v[j] = 0.0f;
        }
      } else {  // element by element, each with its own tap
        int r = kr, t = ks, c = kk;
#pragma unroll
        for (int j = 0; j < G; ++j) {
          int p, q;
          v[j] = (k + j < RSK && tap_hits<kUnit>(hh[i] - r, sh, P_, p) && tap_hits<kUnit>(ww[i] - t, sw, Q, q))
                     ? __ldg(dy + db[i] + ((int64_t)p * Q + q) * K + c)
                     : 0.0f;
          if (++c == Kg) {
            c = 0;
            if (++t == S) {
              t = 0;
              ++r;
            }
          }
        }
      }
      convert_kcontig<P>(v, w[i]);
    }
    k += BK;
    kk += BK;
    while (kk >= Kg) {
      kk -= Kg;
      if (++ks == S) {
        ks = 0;
        ++kr;
      }
    }
  }

  __device__ __forceinline__ void store(int stage) {
#pragma unroll
    for (int i = 0; i < 2; ++i) store_kcontig(dst[i] + stage * kTcStageWords, w[i]);
  }
};

template <Precision P, bool kTap, bool kUnit>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocksPerSM)
    conv_backward_data_tc_kernel(ConvShape s, const float* __restrict__ dy, const float* __restrict__ wt,
                                 float* __restrict__ dx, bool accumulate, bool vec_wt) {
  __shared__ __align__(16) uint32_t As[2 * kTcStageWords];
  __shared__ __align__(16) uint32_t Bs[2 * kTcStageWords];
  const int Cg = s.C / s.groups, RSK = s.R * s.S * (s.K / s.groups);
  const int g = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * kTile;
  const int n0 = blockIdx.y * kTile;

  BwdDataGradLoader<P, kTap, kUnit> load_a(s, dy, g, m0, As);
  TcLoader<P, true> load_b(wt + (int64_t)g * Cg * RSK, RSK, Cg, n0, 0, RSK, vec_wt, Bs);
  float acc[4][4][4];
  tc_block_mma<P>(load_a, load_b, (RSK + Tc<P>::kBK - 1) / Tc<P>::kBK, As, Bs, acc);

  const TcOut out = {dx + (int64_t)g * Cg, (int64_t)s.N * s.H * s.W, Cg, s.C, nullptr, accumulate, false};
  tc_epilogue(out, m0, n0, acc);
}

template <Precision P, bool kTap>
void launch_backward_data_kernel(const dim3& grid, const ConvShape& s, const float* dy, const float* wt, float* dx,
                                 bool accumulate, bool vec_wt) {
  cudaStream_t stream = current_stream();
  if (s.stride_h == 1 && s.stride_w == 1)
    conv_backward_data_tc_kernel<P, kTap, true><<<grid, kGemmThreads, 0, stream>>>(s, dy, wt, dx, accumulate, vec_wt);
  else
    conv_backward_data_tc_kernel<P, kTap, false><<<grid, kGemmThreads, 0, stream>>>(s, dy, wt, dx, accumulate, vec_wt);
  CONVNET_LAUNCH_CHECK("conv_backward_data_tc_kernel");
}

template <Precision P>
void launch_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  const int64_t M = (int64_t)s.N * s.H * s.W;
  if (M == 0) return;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSK = s.R * s.S * Kg;
  const dim3 grid((unsigned)ceil_div(M, kTile), (unsigned)ceil_div(Cg, kTile), (unsigned)s.groups);
  check_grid(grid, "conv_backward_data");
  const int64_t w_size = (int64_t)s.K * s.R * s.S * Cg;
  Scratch wt(static_cast<size_t>(w_size));
  regroup_filters_tc_kernel<<<grid_for(w_size, kGemmThreads), kGemmThreads, 0, current_stream()>>>(s, w, wt.ptr);
  CONVNET_LAUNCH_CHECK("regroup_filters_tc_kernel");
  const bool vec_wt = aligned16(wt.ptr) && RSK % 4 == 0;
  if (Kg % Tc<P>::kGroup == 0 && aligned16(dy)) launch_backward_data_kernel<P, true>(grid, s, dy, wt.ptr, dx, accumulate, vec_wt);
  else launch_backward_data_kernel<P, false>(grid, s, dy, wt.ptr, dx, accumulate, vec_wt);
}

// ---------------------------------------------------------------------------------------------
// backward filter: dW_g (Kg, RSC) over output pixels [split * chunk, ...), into out (its own
// (K, RSC) slab of scratch, or dw itself when there is one split)

// One column (r, s, c) of the block's B tile: x at pixel (n, p, q) is
// x[((n*H + p*sh + hoff) * W + q*sw + woff) * C + coff] when inside; hoff = kFar past RSC.
struct PatchColumn {
  int hoff, woff, coff, unused;
};

// B: the patch matrix as ((r,s,c) column, pixel k), non-KCONTIG (TcLoader's map: group q is the 4
// columns 4 (4 (q / 64) + q % 4) .. + 3 at the KROWS pixels k = u KROWS .., u = (q / 4) % 16). The
// thread's pixels (the same k for both groups) are (n, p, q) counters, one set per k row.
// kTap: Cg % 4 == 0 and x 16-byte aligned, so a group's 4 columns are 4 contiguous channels of one tap.
template <Precision P, bool kTap>
struct BwdFilterPatchLoader {
  static constexpr int G = Tc<P>::kGroup, BK = Tc<P>::kBK, KROWS = G / 4;
  const float* __restrict__ x;
  const PatchColumn* cols;  // the block's 128 columns (shared memory)
  int H, W, C, P_, Q, sh, sw;
  int dn, dp, dq;           // BK pixels as images, rows, columns (dq < Q, dp < P)
  int k, k_end;             // the thread's first pixel of the next slice
  int pn[KROWS], pp[KROWS], pq[KROWS];
  int col[2];               // each group's first column in the tile
  uint32_t* dst[2];
  uint32_t w[2][4];

  __device__ __forceinline__ BwdFilterPatchLoader(const ConvShape& s, const float* __restrict__ x_,
                                                  const PatchColumn* cols_, int k_begin, int k_end_, uint32_t* S0)
      : x(x_), cols(cols_), H(s.H), W(s.W), C(s.C), P_(s.P), Q(s.Q), sh(s.stride_h), sw(s.stride_w), k_end(k_end_) {
    const int P1 = s.P > 0 ? s.P : 1, Q1 = s.Q > 0 ? s.Q : 1;  // P*Q = 0: nothing is ever loaded
    dn = BK / (P1 * Q1);
    dp = (BK / Q1) % P1;
    dq = BK % Q1;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int q = threadIdx.x + i * kGemmThreads;
      col[i] = 4 * (4 * (q / 64) + q % 4);
      dst[i] = S0 + col[i] * kTcRowWords + (q / 4) % 16;
    }
    k = k_begin + ((threadIdx.x / 4) % 16) * KROWS;
#pragma unroll
    for (int h = 0; h < KROWS; ++h) {
      const int pix = k + h;
      pn[h] = pix / (P1 * Q1);
      const int pq_ = pix - pn[h] * P1 * Q1;
      pp[h] = pq_ / Q1;
      pq[h] = pq_ - pp[h] * Q1;
    }
  }

  __device__ __forceinline__ void load() {
    float v[2][G];
#pragma unroll
    for (int h = 0; h < KROWS; ++h) {
      const bool pix_in = k + h < k_end;
      const int hb = pp[h] * sh, wb = pq[h] * sw;
      const int64_t nb = (int64_t)pn[h] * H;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (kTap) {
          const PatchColumn c = cols[col[i]];
          const int hx = hb + c.hoff, wx = wb + c.woff;
          if (pix_in && inside(hx, H) && inside(wx, W)) {
            load_floats(x + ((nb + hx) * W + wx) * C + c.coff, &v[i][4 * h], 4);
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[i][4 * h + j] = 0.0f;
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const PatchColumn c = cols[col[i] + j];
            const int hx = hb + c.hoff, wx = wb + c.woff;
            v[i][4 * h + j] = (pix_in && inside(hx, H) && inside(wx, W)) ? __ldg(x + ((nb + hx) * W + wx) * C + c.coff)
                                                                         : 0.0f;
          }
        }
      }
      // the next slice's pixel: BK on, with one carry from q into p and one from p into n
      pq[h] += dq;
      pp[h] += dp;
      pn[h] += dn;
      if (pq[h] >= Q) {
        pq[h] -= Q;
        ++pp[h];
      }
      if (pp[h] >= P_) {
        pp[h] -= P_;
        ++pn[h];
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[i][j] = P == Precision::TF32 ? f32_to_tf32(v[i][j]) : pack_bf16x2(v[i][j], v[i][4 + j]);
    k += BK;
  }

  __device__ __forceinline__ void store(int stage) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      uint32_t* d = dst[i] + stage * kTcStageWords;
#pragma unroll
      for (int j = 0; j < 4; ++j) d[j * kTcRowWords] = w[i][j];
    }
  }
};

template <Precision P, bool kTap>
__global__ void __launch_bounds__(kGemmThreads, kGemmMinBlocksPerSM)
    conv_backward_filter_tc_kernel(ConvShape s, const float* __restrict__ dy, const float* __restrict__ x,
                                   float* __restrict__ out, int chunk, bool accumulate, bool vec_dy) {
  __shared__ __align__(16) uint32_t As[2 * kTcStageWords];
  __shared__ __align__(16) uint32_t Bs[2 * kTcStageWords];
  __shared__ __align__(16) PatchColumn cols[kTile];
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int NPQ = s.N * s.P * s.Q;  // int: dispatch bounds N*P*Q (the forward's pixels)
  const int g = blockIdx.z % s.groups, split = blockIdx.z / s.groups;
  const int k_begin = split * chunk, k_end = min(NPQ, k_begin + chunk);
  const int m0 = blockIdx.y * kTile;  // output channel within the group
  const int n0 = blockIdx.x * kTile;  // (r, s, c) column

  if (threadIdx.x < kTile) {
    const int n = n0 + threadIdx.x;
    PatchColumn c = {kFar, 0, 0, 0};
    if (n < RSC) {
      const int rs = n / Cg, r = rs / s.S;
      c.hoff = r - s.pad_h;
      c.woff = rs - r * s.S - s.pad_w;
      c.coff = g * Cg + (n - rs * Cg);
    }
    cols[threadIdx.x] = c;
  }
  __syncthreads();  // cols is read by the first load

  TcLoader<P, false> load_a(dy + (int64_t)g * Kg, s.K, Kg, m0, k_begin, k_end, vec_dy, As);
  BwdFilterPatchLoader<P, kTap> load_b(s, x, cols, k_begin, k_end, Bs);
  float acc[4][4][4];
  tc_block_mma<P>(load_a, load_b, (max(0, k_end - k_begin) + Tc<P>::kBK - 1) / Tc<P>::kBK, As, Bs, acc);

  const TcOut o = {out + (int64_t)split * s.K * RSC + (int64_t)g * Kg * RSC, Kg, RSC, RSC, nullptr, accumulate, false};
  tc_epilogue(o, m0, n0, acc);
}

template <Precision P, bool kTap>
void launch_backward_filter_kernel(const dim3& grid, const ConvShape& s, const float* dy, const float* x, float* out,
                                   int chunk, bool accumulate, bool vec_dy) {
  conv_backward_filter_tc_kernel<P, kTap><<<grid, kGemmThreads, 0, current_stream()>>>(s, dy, x, out, chunk, accumulate,
                                                                                     vec_dy);
  CONVNET_LAUNCH_CHECK("conv_backward_filter_tc_kernel");
}

template <Precision P>
void launch_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db, bool accumulate) {
  const int Cg = s.C / s.groups, Kg = s.K / s.groups, RSC = s.R * s.S * Cg;
  const int64_t NPQ = (int64_t)s.N * s.P * s.Q;
  const int64_t dw_size = (int64_t)s.K * RSC;
  if (db) bias_grad(dy, NPQ, s.K, db, accumulate);
  if (dw_size == 0) return;

  // Split the N*P*Q reduction so that the grid covers the GPU (2 blocks per SM) about twice, but
  // keep at least 1024 pixels per split so each block amortises its epilogue; chunks are whole
  // BF16 slices (32 pixels).
  const int64_t tiles = ceil_div(RSC, kTile) * ceil_div(Kg, kTile) * s.groups;
  const int64_t want = ceil_div(2LL * kGemmMinBlocksPerSM * sm_count(), tiles);
  const int64_t max_splits = std::max<int64_t>(1, ceil_div(NPQ, 1024));
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, max_splits, 65535 / s.groups}));
  const int64_t chunk = std::max<int64_t>(32, ceil_div(ceil_div(NPQ, splits), 32) * 32);
  splits = std::max<int64_t>(1, ceil_div(NPQ, chunk));

  const dim3 grid((unsigned)ceil_div(RSC, kTile), (unsigned)ceil_div(Kg, kTile), (unsigned)(splits * s.groups));
  check_grid(grid, "conv_backward_filter");
  const bool vec_dy = aligned16(dy) && s.K % 4 == 0 && Kg % 4 == 0;
  const bool tap = Cg % 4 == 0 && aligned16(x);
  auto run = [&](float* out, bool acc) {
    if (tap) launch_backward_filter_kernel<P, true>(grid, s, dy, x, out, (int)chunk, acc, vec_dy);
    else launch_backward_filter_kernel<P, false>(grid, s, dy, x, out, (int)chunk, acc, vec_dy);
  };
  if (splits == 1) {  // also NPQ == 0: the kernel writes zeros, or leaves dw + 0 when accumulating
    run(dw, accumulate);
    return;
  }
  Scratch partial(static_cast<size_t>(splits * dw_size));
  run(partial.ptr, false);
  sum_splits(partial.ptr, (int)splits, dw_size, dw, accumulate);  // cuda/conv.cu
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// entry points (cuda/conv_tc.cuh)

bool conv_tc_supported(const ConvShape& s) { return s.C / s.groups > 0; }

void conv_forward_tc(Precision precision, const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                     bool accumulate, bool relu) {
  if (precision == Precision::TF32) launch_forward<Precision::TF32>(s, x, w, b, y, accumulate, relu);
  else if (precision == Precision::BF16) launch_forward<Precision::BF16>(s, x, w, b, y, accumulate, relu);
  else throw std::invalid_argument("conv_forward_tc: precision must be tf32 or bf16");
}

void conv_backward_data_tc(Precision precision, const ConvShape& s, const float* dy, const float* w, float* dx,
                           bool accumulate) {
  if (precision == Precision::TF32) launch_backward_data<Precision::TF32>(s, dy, w, dx, accumulate);
  else if (precision == Precision::BF16) launch_backward_data<Precision::BF16>(s, dy, w, dx, accumulate);
  else throw std::invalid_argument("conv_backward_data_tc: precision must be tf32 or bf16");
}

void conv_backward_filter_tc(Precision precision, const ConvShape& s, const float* dy, const float* x, float* dw,
                             float* db, bool accumulate) {
  if (precision == Precision::TF32) launch_backward_filter<Precision::TF32>(s, dy, x, dw, db, accumulate);
  else if (precision == Precision::BF16) launch_backward_filter<Precision::BF16>(s, dy, x, dw, db, accumulate);
  else throw std::invalid_argument("conv_backward_filter_tc: precision must be tf32 or bf16");
}

}  // namespace cuda
}  // namespace convnet
