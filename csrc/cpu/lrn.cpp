// CPU kernels for cross-channel local response normalisation (LRN), the paper's formula:
//
//   scale[c] = k + alpha * sum_{c2 in win(c)} x[c2]^2,   win(c) = [c - lo, c + hi] clipped to [0, C)
//   y[c]     = x[c] * scale[c]^-beta                     lo = size/2, hi = size - 1 - lo
//
// and its gradient
//
//   dx[c] = dy[c] * scale[c]^-beta - 2 alpha beta x[c] * sum_{j : c in win(j)} t[j],
//   t[j]  = dy[j] x[j] scale[j]^(-beta-1),             {j : c in win(j)} = [c - hi, c + lo] clipped.
//
// Layout: rows = N*H*W pixels of C contiguous channels (NHWC), so each pixel is an independent 1-D
// problem along contiguous memory. OpenMP splits the pixels; within a pixel every loop runs along C.
//
// Window sums. For the sizes people use (AlexNet: 5) the sum is taken directly from a zero-padded
// per-thread buffer of squares, one vector add per window tap: size/8 adds per element with AVX2,
// cheaper than a running add/subtract sum, whose loop-carried dependency (one add latency per
// channel) cannot be vectorised along C. The direct sum also adds the taps in window order
// starting from the first, which is exactly what cuda/lrn.cu does, so the window sums agree bit for
// bit across backends. For wide windows (size > kDirectMaxSize) the O(C*size) direct sum would
// dominate, so there it is an O(C) running sum kept in double: squares of floats are exact in
// double, and the add/subtract drift is ~C * 2^-53 of the largest sum, far below float resolution.
//
// The power. beta == 0.75 (the paper's value) has a fast exact path, scale^-0.75 =
// 1 / sqrt(scale * sqrt(scale)): sqrt and division are correctly rounded and vectorise; other betas
// use powf per element (scalar libm call, ~10x slower). scale = fma(alpha, sum, k) is written as an
// explicit fma so the CPU and CUDA backends round it identically.
//
// Backward recomputes scale from x instead of using y / x = scale^-beta: that division is undefined
// where x == 0 (ReLU outputs are often exactly 0) and loses precision for denormal x, while the
// recompute costs only the window sum and one power per element, and it leaves y unread (one array
// less of memory traffic).
//
// Napkin math, AlexNet-2012's first LRN at batch 8: 8 x 55 x 55 x 96 = 2.3 M elements; forward
// reads x and writes y (18.6 MB), backward reads x, dy and writes dx (27.9 MB): a few ms on a
// couple of cores, dominated by the arithmetic (sqrt, division) rather than memory.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "backend.h"
#include "parallel.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

namespace {

// Window sizes up to this are summed directly (vectorised); wider ones use the running sum.
constexpr int kDirectMaxSize = 16;

// scale^-beta for n values, with the fast exact path for the paper's beta = 0.75. GCC will not
// vectorise std::sqrt without -fno-math-errno (each element branches to libm for the errno case, and
// per-function optimize attributes do not lift it), so the vector sqrt is spelled out with
// intrinsics: IEEE sqrt and division, the same bits as the scalar tail and as CUDA's sqrtf.
void inverse_power(const float* scale, float* out, int n, float beta) {
  if (beta != 0.75f) {
    for (int c = 0; c < n; ++c) out[c] = std::pow(scale[c], -beta);
    return;
  }
  int c = 0;
#if defined(__AVX512F__)
  const __m512 one16 = _mm512_set1_ps(1.0f);
  for (; c + 16 <= n; c += 16) {
    const __m512 s = _mm512_loadu_ps(scale + c);
    _mm512_storeu_ps(out + c, _mm512_div_ps(one16, _mm512_sqrt_ps(_mm512_mul_ps(s, _mm512_sqrt_ps(s)))));
  }
#endif
#if defined(__AVX__)
  const __m256 one8 = _mm256_set1_ps(1.0f);
  for (; c + 8 <= n; c += 8) {
    const __m256 s = _mm256_loadu_ps(scale + c);
    _mm256_storeu_ps(out + c, _mm256_div_ps(one8, _mm256_sqrt_ps(_mm256_mul_ps(s, _mm256_sqrt_ps(s)))));
  }
#endif
#if defined(__SSE2__)
  const __m128 one4 = _mm_set1_ps(1.0f);
  for (; c + 4 <= n; c += 4) {
    const __m128 s = _mm_loadu_ps(scale + c);
    _mm_storeu_ps(out + c, _mm_div_ps(one4, _mm_sqrt_ps(_mm_mul_ps(s, _mm_sqrt_ps(s)))));
  }
#endif
  for (; c < n; ++c) out[c] = 1.0f / std::sqrt(scale[c] * std::sqrt(scale[c]));
}

// sum[c] = sum over j in [c - before, c + after] ∩ [0, C) of v[j], where padded holds v at
// padded[before + j] with `before` zeros in front and `after` zeros behind (so the direct path needs
// no bounds checks; adding +0 changes nothing). Taps are added in ascending j.
void window_sum(const float* padded, float* sum, int C, int before, int after) {
  const int size = before + after + 1;
  if (size <= kDirectMaxSize) {
CONVNET_OMP(simd)
    for (int c = 0; c < C; ++c) sum[c] = padded[c];
    for (int o = 1; o < size; ++o) {
      const float* tap = padded + o;
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) sum[c] += tap[c];
    }
    return;
  }
  // Running sum: the window of c is [c - before, c + after]; moving to c + 1 brings in c + after + 1
  // and drops c - before.
  const float* v = padded + before;
  double acc = 0.0;
  for (int j = 0; j < std::min(after, C); ++j) acc += v[j];
  for (int c = 0; c < C; ++c) {
    if (c + after < C) acc += v[c + after];
    if (c - before - 1 >= 0) acc -= v[c - before - 1];
    sum[c] = static_cast<float>(acc);
  }
}

// The window [c - lo, c + hi] of channel c, lo = size/2, hi = size - 1 - lo, with lo and hi clipped
// to C: taps further out than C - 1 channels fall outside [0, C) for every c, so clipping changes
// no sum and keeps the buffers O(C) for any size (a size of 2^31 - 1 would otherwise overflow them).
struct Window {
  int lo, hi;
};
Window window_of(int size, int C) {
  const int lo = size / 2, hi = size - 1 - lo;
  return Window{std::min(lo, C), std::min(hi, C)};
}

// Per-thread buffers for one pixel: the squares padded by lo and hi, and the backward pass's t padded
// by hi and lo.
struct Workspace {
  std::vector<float> padded, sum, scale, power, t_padded, back;
  Workspace(int C, Window win, bool backward)
      : padded(static_cast<size_t>(C) + win.lo + win.hi, 0.0f), sum(C), scale(C), power(C) {
    if (backward) {
      t_padded.assign(static_cast<size_t>(C) + win.lo + win.hi, 0.0f);
      back.resize(C);
    }
  }
};

// One Workspace per thread of the coming parallel region, allocated before it (an exception must not
// escape an OpenMP region: it would abort the process); MemoryError naming the bytes if it fails.
std::vector<Workspace> make_workspaces(int threads, int C, Window win, bool backward) {
  try {
    std::vector<Workspace> out;
    out.reserve(threads);
    for (int t = 0; t < threads; ++t) out.emplace_back(C, win, backward);
    return out;
  } catch (const std::bad_alloc&) {
    const size_t per_thread = (static_cast<size_t>(C) + win.lo + win.hi + 3 * static_cast<size_t>(C)) *
                              (backward ? 2 : 1) * sizeof(float);
    throw_workspace_oom("lrn", per_thread * threads);
  }
}

// The LRN's selector: threads for the pixel loop (one workspace each).
int select_lrn_threads(int64_t rows, int C) { return select_parallel_loop(rows * C) ? num_threads() : 1; }

int thread_index() {
#ifdef CONVNET_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// For one pixel x (C): ws.scale = k + alpha * window sum of x^2, ws.power = scale^-beta.
void scale_and_power(const float* x, int C, const LrnParams& p, Window win, Workspace& ws) {
  float* sq = ws.padded.data() + win.lo;  // padded[0 .. lo) and padded[lo + C ..) stay zero
CONVNET_OMP(simd)
  for (int c = 0; c < C; ++c) sq[c] = x[c] * x[c];
  window_sum(ws.padded.data(), ws.sum.data(), C, win.lo, win.hi);
  float* scale = ws.scale.data();
  const float* sum = ws.sum.data();
CONVNET_OMP(simd)
  for (int c = 0; c < C; ++c) scale[c] = std::fma(p.alpha, sum[c], p.k);
  inverse_power(scale, ws.power.data(), C, p.beta);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void lrn_forward(const float* x, float* y, int64_t rows, int C, const LrnParams& p) {
  if (rows == 0 || C == 0) return;
  const Window win = window_of(p.size, C);
  const int threads = select_lrn_threads(rows, C);
  std::vector<Workspace> workspaces = make_workspaces(threads, C, win, false);
CONVNET_OMP(parallel num_threads(threads) if (threads > 1))
  {
    Workspace& ws = workspaces[thread_index()];
CONVNET_OMP(for schedule(static))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      scale_and_power(xr, C, p, win, ws);
      const float* power = ws.power.data();
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) yr[c] = xr[c] * power[c];
    }
  }
}

void lrn_backward(const float* x, const float* /*y: unused, see the header*/, const float* dy, float* dx,
                  int64_t rows, int C, const LrnParams& p) {
  if (rows == 0 || C == 0) return;
  const Window win = window_of(p.size, C);
  const float coeff = 2.0f * p.alpha * p.beta;
  const int threads = select_lrn_threads(rows, C);
  std::vector<Workspace> workspaces = make_workspaces(threads, C, win, true);
CONVNET_OMP(parallel num_threads(threads) if (threads > 1))
  {
    Workspace& ws = workspaces[thread_index()];
    // t = dy x scale^(-beta-1), zero-padded with hi in front and lo behind: the transposed window of c
    // is [c - hi, c + lo].
CONVNET_OMP(for schedule(static))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * C;
      const float* dyr = dy + r * C;
      float* dxr = dx + r * C;
      scale_and_power(xr, C, p, win, ws);
      const float* scale = ws.scale.data();
      const float* power = ws.power.data();
      float* t = ws.t_padded.data() + win.hi;
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) t[c] = dyr[c] * xr[c] * power[c] / scale[c];
      window_sum(ws.t_padded.data(), ws.back.data(), C, win.hi, win.lo);
      const float* b = ws.back.data();
CONVNET_OMP(simd)
      for (int c = 0; c < C; ++c) dxr[c] = std::fma(dyr[c], power[c], -(coeff * xr[c] * b[c]));
    }
  }
}

}  // namespace cpu
}  // namespace convnet
