// CPU kernels for max and average pooling, forward and backward.
//
// Layout: x / dx (N, H, W, C), y / dy / argmax (N, P, Q, C), NHWC, so for a fixed pixel the C
// channels are contiguous: every inner loop runs along C and vectorises (compare-and-blend for max,
// adds for average), and OpenMP splits the (n, p) output rows (forward) or (n, h) input rows
// (backward). Window for output (p, q): rows p*stride_h - pad_h + [0, R), cols q*stride_w - pad_w +
// [0, S), with out-of-range (padded) positions skipped, never counted.
//
// Backward is a GATHER, not a scatter: each input element (h, w) visits the outputs whose windows
// contain it,
//   p in [ceil((h + pad_h - R + 1) / stride_h), floor((h + pad_h) / stride_h)] ∩ [0, P), q likewise,
// and sums their contributions in (p, q) order starting from 0. No two threads write one element, so
// no atomics, and cuda/pool.cu does the same sums in the same order: the two backends give
// bit-identical gradients.
//
// Max: ties go to the first maximum in row-major window order (r, then s), i.e. a later tap replaces
// the running best only when strictly greater. NaN propagates as in PyTorch: a window holding a NaN
// outputs NaN and its argmax is the first NaN. argmax is the flat input index h*W + w.
// Average: y = (sum of the valid taps in (r, s) order) / count, a true division (not a reciprocal
// multiply) so the CUDA kernels, which divide too, round identically.
//
// Napkin math, AlexNet-2012's first max-pool (3x3 stride 2, 55x55x96 -> 27x27x96) at batch 8:
// forward reads x (9.3 MB) and writes y + argmax (4.5 MB); backward reads dy + argmax (4.5 MB, each
// element up to 4 times through the overlapping windows, mostly from cache) and writes dx (9.3 MB).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend.h"
#include "parallel.h"

namespace convnet {
namespace cpu {

namespace {

// The valid window range [begin, end) along one axis for output position o.
struct Span {
  int begin, end;
};
inline Span window_span(int o, int stride, int pad, int window, int extent) {
  const int start = o * stride - pad;
  return Span{std::max(start, 0), std::min(start + window, extent)};
}

// Outputs [begin, end) whose windows along one axis contain input position i:
// o * stride - pad <= i < o * stride - pad + window, clipped to [0, out).
inline Span output_span(int i, int stride, int pad, int window, int out) {
  const int a = i + pad - window + 1;  // o * stride >= a
  const int begin = a <= 0 ? 0 : (a + stride - 1) / stride;
  const int end = std::min((i + pad) / stride + 1, out);
  return Span{begin, end};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// max pooling

void max_pool_forward(const PoolShape& s, const float* x, float* y, int32_t* argmax) {
  const int C = s.C;
  const int64_t out_rows = static_cast<int64_t>(s.N) * s.P;
CONVNET_OMP(parallel for schedule(static) if (select_parallel_loop(out_rows * s.Q * C)))
  for (int64_t row = 0; row < out_rows; ++row) {
    const int n = static_cast<int>(row / s.P), p = static_cast<int>(row % s.P);
    const Span hs = window_span(p, s.stride_h, s.pad_h, s.R, s.H);
    for (int q = 0; q < s.Q; ++q) {
      const Span ws = window_span(q, s.stride_w, s.pad_w, s.S, s.W);
      const int64_t o = ((row * s.Q) + q) * C;
      float* yo = y + o;
      int32_t* ao = argmax + o;
      if (hs.begin >= hs.end || ws.begin >= ws.end) {  // no valid input (dispatch rules it out)
        for (int c = 0; c < C; ++c) {
          yo[c] = 0.0f;
          ao[c] = -1;
        }
        continue;
      }
      bool first = true;
      for (int h = hs.begin; h < hs.end; ++h) {
        for (int w = ws.begin; w < ws.end; ++w) {
          const float* xi = x + ((static_cast<int64_t>(n) * s.H + h) * s.W + w) * C;
          const int32_t idx = h * s.W + w;
          if (first) {
CONVNET_OMP(simd)
            for (int c = 0; c < C; ++c) {
              yo[c] = xi[c];
              ao[c] = idx;
            }
            first = false;
          } else {
CONVNET_OMP(simd)
            for (int c = 0; c < C; ++c) {
              // strict: ties keep the earlier tap; NaN propagates (PyTorch): the first NaN wins and
              // is kept, so backward routes the gradient to it
              const bool better = yo[c] == yo[c] && (xi[c] > yo[c] || xi[c] != xi[c]);
              yo[c] = better ? xi[c] : yo[c];
              ao[c] = better ? idx : ao[c];
            }
          }
        }
      }
    }
  }
}

void max_pool_backward(const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) {
  const int C = s.C;
  const int64_t in_rows = static_cast<int64_t>(s.N) * s.H;
CONVNET_OMP(parallel for schedule(static) if (select_parallel_loop(in_rows * s.W * C)))
  for (int64_t row = 0; row < in_rows; ++row) {
    const int n = static_cast<int>(row / s.H), h = static_cast<int>(row % s.H);
    const Span ps = output_span(h, s.stride_h, s.pad_h, s.R, s.P);
    for (int w = 0; w < s.W; ++w) {
      const Span qs = output_span(w, s.stride_w, s.pad_w, s.S, s.Q);
      float* dxi = dx + ((row * s.W) + w) * C;
      const int32_t idx = h * s.W + w;
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) dxi[c] = 0.0f;
      for (int p = ps.begin; p < ps.end; ++p) {
        for (int q = qs.begin; q < qs.end; ++q) {
          const int64_t o = ((static_cast<int64_t>(n) * s.P + p) * s.Q + q) * C;
          const float* dyo = dy + o;
          const int32_t* ao = argmax + o;
CONVNET_OMP(simd)
          for (int c = 0; c < C; ++c) dxi[c] += ao[c] == idx ? dyo[c] : 0.0f;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// average pooling

void avg_pool_forward(const PoolShape& s, const float* x, float* y) {
  const int C = s.C;
  const int64_t out_rows = static_cast<int64_t>(s.N) * s.P;
CONVNET_OMP(parallel for schedule(static) if (select_parallel_loop(out_rows * s.Q * C)))
  for (int64_t row = 0; row < out_rows; ++row) {
    const int n = static_cast<int>(row / s.P), p = static_cast<int>(row % s.P);
    const Span hs = window_span(p, s.stride_h, s.pad_h, s.R, s.H);
    for (int q = 0; q < s.Q; ++q) {
      const Span ws = window_span(q, s.stride_w, s.pad_w, s.S, s.W);
      float* yo = y + ((row * s.Q) + q) * C;
      const int count = std::max(hs.end - hs.begin, 0) * std::max(ws.end - ws.begin, 0);
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) yo[c] = 0.0f;
      for (int h = hs.begin; h < hs.end; ++h) {
        for (int w = ws.begin; w < ws.end; ++w) {
          const float* xi = x + ((static_cast<int64_t>(n) * s.H + h) * s.W + w) * C;
CONVNET_OMP(simd)
          for (int c = 0; c < C; ++c) yo[c] += xi[c];
        }
      }
      const float denom = static_cast<float>(std::max(count, 1));
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) yo[c] = yo[c] / denom;
    }
  }
}

void avg_pool_backward(const PoolShape& s, const float* dy, float* dx) {
  const int C = s.C;
  // Valid-tap counts per output row and column: count(p, q) = rows(p) * cols(q).
  std::vector<int> rows_of(s.P), cols_of(s.Q);
  for (int p = 0; p < s.P; ++p) {
    const Span sp = window_span(p, s.stride_h, s.pad_h, s.R, s.H);
    rows_of[p] = std::max(sp.end - sp.begin, 0);
  }
  for (int q = 0; q < s.Q; ++q) {
    const Span sq = window_span(q, s.stride_w, s.pad_w, s.S, s.W);
    cols_of[q] = std::max(sq.end - sq.begin, 0);
  }
  const int64_t in_rows = static_cast<int64_t>(s.N) * s.H;
CONVNET_OMP(parallel for schedule(static) if (select_parallel_loop(in_rows * s.W * C)))
  for (int64_t row = 0; row < in_rows; ++row) {
    const int n = static_cast<int>(row / s.H), h = static_cast<int>(row % s.H);
    const Span ps = output_span(h, s.stride_h, s.pad_h, s.R, s.P);
    for (int w = 0; w < s.W; ++w) {
      const Span qs = output_span(w, s.stride_w, s.pad_w, s.S, s.Q);
      float* dxi = dx + ((row * s.W) + w) * C;
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) dxi[c] = 0.0f;
      for (int p = ps.begin; p < ps.end; ++p) {
        for (int q = qs.begin; q < qs.end; ++q) {
          const float* dyo = dy + ((static_cast<int64_t>(n) * s.P + p) * s.Q + q) * C;
          // (p, q) contains (h, w), so its count is at least 1.
          const float denom = static_cast<float>(rows_of[p] * cols_of[q]);
CONVNET_OMP(simd)
          for (int c = 0; c < C; ++c) dxi[c] += dyo[c] / denom;
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace convnet
