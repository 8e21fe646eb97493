// CUDA kernels for cross-channel local response normalisation (LRN), the paper's formula:
//
//   scale[c] = k + alpha * sum_{c2 in win(c)} x[c2]^2,   win(c) = [c - lo, c + hi] clipped to [0, C)
//   y[c]     = x[c] * scale[c]^-beta                     lo = size/2, hi = size - 1 - lo
//   dx[c]    = dy[c] scale[c]^-beta - 2 alpha beta x[c] sum_{j in [c - hi, c + lo]} t[j],
//   t[j]     = dy[j] x[j] scale[j]^(-beta-1)
//
// Layout: rows = N*H*W pixels of C contiguous channels (NHWC). A block takes a run of whole pixels
// (about kStageElems elements: 10 pixels of AlexNet's 96 channels), copies their x into shared
// memory with coalesced loads, and then one thread per (pixel, channel) sums its window from shared
// memory. Backward needs t of the neighbours, which needs their scales, so it is two phases with a
// __syncthreads between: phase 1 writes t and scale^-beta to shared memory, phase 2 sums t over the
// transposed window and writes dx. Blocks loop over pixel runs (grid-stride, uniform per block, so
// the barriers are safe). Pixels wider than kMaxStagedChannels (never in AlexNet, C <= 384) take the
// simple global-memory kernels at the end of the file.
//
// Same arithmetic as csrc/cpu/lrn.cpp: the window sum adds x^2 (as a separately rounded product,
// __fmul_rn, so it is never fused) tap by tap in ascending channel order from 0; scale is an explicit
// fmaf(alpha, sum, k); beta == 0.75 uses 1 / sqrt(scale * sqrt(scale)) (IEEE sqrt and division);
// dx is fmaf(dy, scale^-beta, -(2 alpha beta x) * back). For beta = 0.75 and size <= 16 the results
// should therefore match the CPU bit for bit; other betas use each side's powf. Backward recomputes
// scale from x rather than dividing y by x (undefined at x == 0), so y is never read.
//
// Napkin math, AlexNet's first LRN at N = 128: 128 x 55 x 55 x 96 = 37.2 M elements = 149 MB per
// tensor. Forward moves x in + y out = 297 MB: ~0.1 ms floor at ~3 TB/s on an H100. Backward moves
// x, dy in + dx out = 446 MB: ~0.15 ms (a fourth array, y, would cost another 0.05 ms). Arithmetic is
// ~15 flops + two sqrt + a division per element: far below the memory time.
#include <algorithm>

#include "common.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kStageElems = 1024;          // elements a block stages per pixel run (C <= 1024)
constexpr int kMaxStagedChannels = 2048;   // wider pixels use the global-memory kernels

// ---------------------------------------------------------------------------------------------
// device helpers

// sum of x[j]^2 over j in [c - before, c + after] ∩ [0, C), ascending j, starting from 0.
__device__ __forceinline__ float window_square_sum(const float* px, int c, int C, int before, int after) {
  const int j0 = max(c - before, 0), j1 = min(c + after, C - 1);
  float sum = 0.0f;
  for (int j = j0; j <= j1; ++j) sum += __fmul_rn(px[j], px[j]);
  return sum;
}

__device__ __forceinline__ float inverse_power(float scale, float beta) {
  return beta == 0.75f ? 1.0f / sqrtf(scale * sqrtf(scale)) : powf(scale, -beta);
}

// ---------------------------------------------------------------------------------------------
// staged kernels: a block per run of `pixels` pixels, shared memory holds the run

__global__ void __launch_bounds__(kThreads)
lrn_forward_staged(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int C, int pixels,
                   LrnParams p) {
  extern __shared__ float xs[];  // pixels * C
  const int lo = p.size / 2, hi = p.size - 1 - lo;
  const int64_t runs = (rows + pixels - 1) / pixels;
  for (int64_t run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t first = run * pixels;
    const int count = static_cast<int>(min(static_cast<int64_t>(pixels), rows - first)) * C;
    const float* xb = x + first * C;
    float* yb = y + first * C;
    for (int e = threadIdx.x; e < count; e += blockDim.x) xs[e] = xb[e];
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const float sum = window_square_sum(xs + (e - c), c, C, lo, hi);
      const float scale = fmaf(p.alpha, sum, p.k);
      yb[e] = xs[e] * inverse_power(scale, p.beta);
    }
    __syncthreads();  // the next run overwrites xs
  }
}

__global__ void __launch_bounds__(kThreads)
lrn_backward_staged(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                    int64_t rows, int C, int pixels, LrnParams p, float coeff) {
  extern __shared__ float smem[];
  const int stride = pixels * C;
  float* xs = smem;               // x of the run
  float* ts = smem + stride;      // t = dy x scale^(-beta-1)
  float* ps = smem + 2 * stride;  // scale^-beta
  const int lo = p.size / 2, hi = p.size - 1 - lo;
  const int64_t runs = (rows + pixels - 1) / pixels;
  for (int64_t run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t first = run * pixels;
    const int count = static_cast<int>(min(static_cast<int64_t>(pixels), rows - first)) * C;
    const float* xb = x + first * C;
    const float* dyb = dy + first * C;
    float* dxb = dx + first * C;
    for (int e = threadIdx.x; e < count; e += blockDim.x) xs[e] = xb[e];
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const float sum = window_square_sum(xs + (e - c), c, C, lo, hi);
      const float scale = fmaf(p.alpha, sum, p.k);
      const float power = inverse_power(scale, p.beta);
      ts[e] = dyb[e] * xs[e] * power / scale;
      ps[e] = power;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const float* pt = ts + (e - c);
      const int j0 = max(c - hi, 0), j1 = min(c + lo, C - 1);
      float back = 0.0f;
      for (int j = j0; j <= j1; ++j) back += pt[j];
      dxb[e] = fmaf(dyb[e], ps[e], -(coeff * xs[e] * back));  // dy re-read: an L1/L2 hit
    }
    __syncthreads();  // the next run overwrites the shared arrays
  }
}

// ---------------------------------------------------------------------------------------------
// global-memory kernels for C > kMaxStagedChannels: one thread per element, neighbours through the
// cache. Backward recomputes each neighbour's scale (size^2 reads, size powers per element): slow but
// simple, and no real network has such wide pixels.

__global__ void lrn_forward_global(const float* __restrict__ x, float* __restrict__ y, int64_t n, int C,
                                   LrnParams p) {
  const int lo = p.size / 2, hi = p.size - 1 - lo;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = static_cast<int>(i % C);
    const float sum = window_square_sum(x + (i - c), c, C, lo, hi);
    y[i] = x[i] * inverse_power(fmaf(p.alpha, sum, p.k), p.beta);
  }
}

__global__ void lrn_backward_global(const float* __restrict__ x, const float* __restrict__ dy,
                                    float* __restrict__ dx, int64_t n, int C, LrnParams p, float coeff) {
  const int lo = p.size / 2, hi = p.size - 1 - lo;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = static_cast<int>(i % C);
    const float* px = x + (i - c);
    const float* pdy = dy + (i - c);
    float back = 0.0f, own_power = 0.0f;
    const int j0 = max(c - hi, 0), j1 = min(c + lo, C - 1);
    for (int j = j0; j <= j1; ++j) {
      const float scale = fmaf(p.alpha, window_square_sum(px, j, C, lo, hi), p.k);
      const float power = inverse_power(scale, p.beta);
      if (j == c) own_power = power;
      back += pdy[j] * px[j] * power / scale;
    }
    // c is always in its own transposed window, so own_power was set.
    dx[i] = fmaf(dy[i], own_power, -(coeff * x[i] * back));
  }
}

// Pixels per block run: ~kStageElems elements, at least one pixel.
int run_pixels(int64_t rows, int C) {
  const int64_t want = std::max(1, kStageElems / C);
  return static_cast<int>(std::min(want, std::max<int64_t>(rows, 1)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

void lrn_forward(const float* x, float* y, int64_t rows, int C, const LrnParams& p) {
  const int64_t n = rows * C;
  if (n == 0) return;
  if (C > kMaxStagedChannels) {
    lrn_forward_global<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, y, n, C, p);
    CONVNET_LAUNCH_CHECK("lrn_forward_global");
    return;
  }
  const int pixels = run_pixels(rows, C);
  const size_t shared = static_cast<size_t>(pixels) * C * sizeof(float);  // <= 8 KB
  const unsigned blocks = grid_for(ceil_div(rows, pixels), 1);
  lrn_forward_staged<<<blocks, kThreads, shared, current_stream()>>>(x, y, rows, C, pixels, p);
  CONVNET_LAUNCH_CHECK("lrn_forward_staged");
}

void lrn_backward(const float* x, const float* /*y: unused, scale is recomputed from x*/, const float* dy,
                  float* dx, int64_t rows, int C, const LrnParams& p) {
  const int64_t n = rows * C;
  if (n == 0) return;
  const float coeff = 2.0f * p.alpha * p.beta;  // the same float as the CPU's
  if (C > kMaxStagedChannels) {
    lrn_backward_global<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, dy, dx, n, C, p, coeff);
    CONVNET_LAUNCH_CHECK("lrn_backward_global");
    return;
  }
  const int pixels = run_pixels(rows, C);
  const size_t shared = 3 * static_cast<size_t>(pixels) * C * sizeof(float);  // <= 24 KB
  const unsigned blocks = grid_for(ceil_div(rows, pixels), 1);
  lrn_backward_staged<<<blocks, kThreads, shared, current_stream()>>>(x, dy, dx, rows, C, pixels, p, coeff);
  CONVNET_LAUNCH_CHECK("lrn_backward_staged");
}

}  // namespace cuda
}  // namespace convnet
