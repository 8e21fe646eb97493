// CUDA kernels for max and average pooling, forward and backward.
//
// Layout: x / dx (N, H, W, C), y / dy / argmax (N, P, Q, C), NHWC. Forward runs one thread per
// output element (n, p, q, c) with c fastest, so a warp reads 32 consecutive channels of one input
// pixel per window tap (coalesced) and writes 32 consecutive outputs. Backward is a GATHER with one
// thread per input element (n, h, w, c): it visits the outputs whose windows contain (h, w),
//   p in [ceil((h + pad_h - R + 1) / stride_h), floor((h + pad_h) / stride_h)] ∩ [0, P), q likewise,
// and sums their contributions in (p, q) order from 0 into a register, written once. No atomics, so
// the result does not depend on scheduling and equals csrc/cpu/pool.cpp bit for bit: the same
// comparisons (a later tap wins only if strictly greater: ties go to the first maximum in (r, s)
// order), the same additions in the same order, true divisions for the average on both sides.
// Padded positions are never part of a window. Index arithmetic is 32-bit when every tensor has at
// most 2^30 elements (so a grid-stride step cannot overflow), 64-bit otherwise.
//
// Napkin math, AlexNet's first max-pool (3x3 stride 2) at N = 128: x is 128 x 55 x 55 x 96 = 37.2 M
// floats = 149 MB, y and argmax 128 x 27 x 27 x 96 = 9.0 M elements = 36 MB each. Forward: 149 MB in
// + 72 MB out = 220 MB, ~0.07 ms floor at ~3 TB/s on an H100 (each input is read by up to 4
// overlapping windows; the re-reads are L2 hits). Backward: dy + argmax in (72 MB, re-reads cached)
// + dx out (149 MB): ~0.07 ms. Average pooling: 185 MB each way, ~0.06 ms.
#include <climits>

#include "common.cuh"

namespace convnet {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// device helpers

// Valid input range [begin, end) along one axis for output position o.
struct Span {
  int begin, end;
};
__device__ __forceinline__ Span window_span(int o, int stride, int pad, int window, int extent) {
  const int start = o * stride - pad;
  return Span{max(start, 0), min(start + window, extent)};
}

// Outputs [begin, end) along one axis whose windows contain input position i.
__device__ __forceinline__ Span output_span(int i, int stride, int pad, int window, int out) {
  const int a = i + pad - window + 1;  // o * stride >= a
  const int begin = a <= 0 ? 0 : (a + stride - 1) / stride;
  return Span{begin, min((i + pad) / stride + 1, out)};
}

// Splits a flat NHWC index into (n, a, b, c) for a tensor (N, A, B, C).
template <typename Index>
struct Coord {
  Index n;
  int a, b, c;
};
template <typename Index>
__device__ __forceinline__ Coord<Index> split(Index i, int A, int B, int C) {
  Coord<Index> k;
  k.c = static_cast<int>(i % C);
  Index t = i / C;
  k.b = static_cast<int>(t % B);
  t /= B;
  k.a = static_cast<int>(t % A);
  k.n = t / A;
  return k;
}

// ---------------------------------------------------------------------------------------------
// kernels

template <typename Index>
__global__ void max_pool_forward_kernel(PoolShape s, const float* __restrict__ x, float* __restrict__ y,
                                        int32_t* __restrict__ argmax, Index total) {
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < total; i += (Index)gridDim.x * blockDim.x) {
    const Coord<Index> o = split<Index>(i, s.P, s.Q, s.C);
    const Span hs = window_span(o.a, s.stride_h, s.pad_h, s.R, s.H);
    const Span ws = window_span(o.b, s.stride_w, s.pad_w, s.S, s.W);
    float best = 0.0f;  // an empty window (dispatch rules it out) writes 0 / -1
    int32_t arg = -1;
    for (int h = hs.begin; h < hs.end; ++h) {
      const float* xr = x + ((o.n * s.H + h) * s.W) * s.C + o.c;
      for (int w = ws.begin; w < ws.end; ++w) {
        const float v = __ldg(xr + static_cast<Index>(w) * s.C);
        // strict: ties keep the earlier tap; NaN propagates (the first NaN wins), as on the CPU
        if (arg < 0 || (best == best && (v > best || v != v))) {
          best = v;
          arg = h * s.W + w;
        }
      }
    }
    y[i] = best;
    argmax[i] = arg;
  }
}

template <typename Index>
__global__ void max_pool_backward_kernel(PoolShape s, const float* __restrict__ dy,
                                         const int32_t* __restrict__ argmax, float* __restrict__ dx, Index total) {
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < total; i += (Index)gridDim.x * blockDim.x) {
    const Coord<Index> in = split<Index>(i, s.H, s.W, s.C);
    const Span ps = output_span(in.a, s.stride_h, s.pad_h, s.R, s.P);
    const Span qs = output_span(in.b, s.stride_w, s.pad_w, s.S, s.Q);
    const int32_t idx = in.a * s.W + in.b;
    float sum = 0.0f;
    for (int p = ps.begin; p < ps.end; ++p) {
      const Index row = ((in.n * s.P + p) * s.Q) * s.C + in.c;
      for (int q = qs.begin; q < qs.end; ++q) {
        const Index o = row + static_cast<Index>(q) * s.C;
        sum += __ldg(argmax + o) == idx ? __ldg(dy + o) : 0.0f;
      }
    }
    dx[i] = sum;
  }
}

template <typename Index>
__global__ void avg_pool_forward_kernel(PoolShape s, const float* __restrict__ x, float* __restrict__ y,
                                        Index total) {
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < total; i += (Index)gridDim.x * blockDim.x) {
    const Coord<Index> o = split<Index>(i, s.P, s.Q, s.C);
    const Span hs = window_span(o.a, s.stride_h, s.pad_h, s.R, s.H);
    const Span ws = window_span(o.b, s.stride_w, s.pad_w, s.S, s.W);
    float sum = 0.0f;
    for (int h = hs.begin; h < hs.end; ++h) {
      const float* xr = x + ((o.n * s.H + h) * s.W) * s.C + o.c;
      for (int w = ws.begin; w < ws.end; ++w) sum += __ldg(xr + static_cast<Index>(w) * s.C);
    }
    const int count = max(hs.end - hs.begin, 0) * max(ws.end - ws.begin, 0);
    y[i] = sum / static_cast<float>(max(count, 1));
  }
}

template <typename Index>
__global__ void avg_pool_backward_kernel(PoolShape s, const float* __restrict__ dy, float* __restrict__ dx,
                                         Index total) {
  for (Index i = blockIdx.x * (Index)blockDim.x + threadIdx.x; i < total; i += (Index)gridDim.x * blockDim.x) {
    const Coord<Index> in = split<Index>(i, s.H, s.W, s.C);
    const Span ps = output_span(in.a, s.stride_h, s.pad_h, s.R, s.P);
    const Span qs = output_span(in.b, s.stride_w, s.pad_w, s.S, s.Q);
    float sum = 0.0f;
    for (int p = ps.begin; p < ps.end; ++p) {
      const Span hs = window_span(p, s.stride_h, s.pad_h, s.R, s.H);
      const Index row = ((in.n * s.P + p) * s.Q) * s.C + in.c;
      for (int q = qs.begin; q < qs.end; ++q) {
        const Span ws = window_span(q, s.stride_w, s.pad_w, s.S, s.W);
        // (p, q) contains (h, w), so its count is at least 1.
        const float denom = static_cast<float>((hs.end - hs.begin) * (ws.end - ws.begin));
        sum += __ldg(dy + row + static_cast<Index>(q) * s.C) / denom;
      }
    }
    dx[i] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// launch helpers

int64_t input_elems(const PoolShape& s) { return static_cast<int64_t>(s.N) * s.H * s.W * s.C; }
int64_t output_elems(const PoolShape& s) { return static_cast<int64_t>(s.N) * s.P * s.Q * s.C; }

// 32-bit indexing is safe when every index, and every index plus one grid-stride step
// (< 65535 * 16 * 256 < 2^28), stays below 2^31.
bool small_indices(const PoolShape& s) {
  const int64_t limit = int64_t{1} << 30;
  return input_elems(s) <= limit && output_elems(s) <= limit;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

void max_pool_forward(const PoolShape& s, const float* x, float* y, int32_t* argmax) {
  const int64_t n = output_elems(s);
  if (n == 0) return;
  const unsigned blocks = grid_for(n, kThreads);
  if (small_indices(s))
    max_pool_forward_kernel<int><<<blocks, kThreads, 0, current_stream()>>>(s, x, y, argmax, static_cast<int>(n));
  else
    max_pool_forward_kernel<int64_t><<<blocks, kThreads, 0, current_stream()>>>(s, x, y, argmax, n);
  CONVNET_LAUNCH_CHECK("max_pool_forward_kernel");
}

void max_pool_backward(const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) {
  const int64_t n = input_elems(s);
  if (n == 0) return;
  const unsigned blocks = grid_for(n, kThreads);
  if (small_indices(s))
    max_pool_backward_kernel<int><<<blocks, kThreads, 0, current_stream()>>>(s, dy, argmax, dx, static_cast<int>(n));
  else
    max_pool_backward_kernel<int64_t><<<blocks, kThreads, 0, current_stream()>>>(s, dy, argmax, dx, n);
  CONVNET_LAUNCH_CHECK("max_pool_backward_kernel");
}

void avg_pool_forward(const PoolShape& s, const float* x, float* y) {
  const int64_t n = output_elems(s);
  if (n == 0) return;
  const unsigned blocks = grid_for(n, kThreads);
  if (small_indices(s))
    avg_pool_forward_kernel<int><<<blocks, kThreads, 0, current_stream()>>>(s, x, y, static_cast<int>(n));
  else
    avg_pool_forward_kernel<int64_t><<<blocks, kThreads, 0, current_stream()>>>(s, x, y, n);
  CONVNET_LAUNCH_CHECK("avg_pool_forward_kernel");
}

void avg_pool_backward(const PoolShape& s, const float* dy, float* dx) {
  const int64_t n = input_elems(s);
  if (n == 0) return;
  const unsigned blocks = grid_for(n, kThreads);
  if (small_indices(s))
    avg_pool_backward_kernel<int><<<blocks, kThreads, 0, current_stream()>>>(s, dy, dx, static_cast<int>(n));
  else
    avg_pool_backward_kernel<int64_t><<<blocks, kThreads, 0, current_stream()>>>(s, dy, dx, n);
  CONVNET_LAUNCH_CHECK("avg_pool_backward_kernel");
}

}  // namespace cuda
}  // namespace convnet
