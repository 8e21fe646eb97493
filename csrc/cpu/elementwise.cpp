// CPU kernels for the small ops: fill, add, bias, ReLU, dropout, softmax + cross-entropy, SGD.
//
// Each is one pass over memory, so each is written as a plain loop the compiler vectorises
// (-O3 -march=native) with OpenMP across cores for the large ones. Layouts: see backend.h.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend.h"
#include "parallel.h"
#include "philox.h"

#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

int num_threads() {
#ifdef CONVNET_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ---------------------------------------------------------------------------------------------
// path selection (parallel.h)

namespace {
std::atomic<ForcedPath> g_forced_path{ForcedPath::Auto};
}  // namespace

ForcedPath forced_path() { return g_forced_path.load(std::memory_order_relaxed); }
void set_forced_path(ForcedPath path) { g_forced_path.store(path, std::memory_order_relaxed); }
const char* path_name(ForcedPath path) {
  return path == ForcedPath::Serial ? "serial" : path == ForcedPath::Parallel ? "parallel" : "auto";
}

void set_num_threads(int threads) {
#ifdef CONVNET_WITH_OPENMP
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

bool select_parallel_loop(int64_t work) {
  switch (forced_path()) {
    case ForcedPath::Serial: return false;
    case ForcedPath::Parallel: return true;
    default: return work > kParallelGrain;
  }
}

// ---------------------------------------------------------------------------------------------
// fill, add, bias

void fill(float* x, int64_t n, float value) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) x[i] = value;
}

void add(float* dst, const float* src, int64_t n, float alpha) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) dst[i] += alpha * src[i];
}

void add_bias(float* y, const float* b, int64_t rows, int cols) {
CONVNET_OMP(parallel for if (select_parallel_loop(rows * cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * cols;
CONVNET_OMP(simd)
    for (int c = 0; c < cols; ++c) row[c] += b[c];
  }
}

void add_bias_relu(float* y, const float* b, int64_t rows, int cols) {
CONVNET_OMP(parallel for if (select_parallel_loop(rows * cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * cols;
    if (b) {
CONVNET_OMP(simd)
      for (int c = 0; c < cols; ++c) row[c] = std::max(row[c] + b[c], 0.0f);
    } else {
CONVNET_OMP(simd)
      for (int c = 0; c < cols; ++c) row[c] = std::max(row[c], 0.0f);
    }
  }
}

void bias_grad(const float* dy, int64_t rows, int cols, float* db, bool accumulate) {
  // Column sums. The rows are cut into `bands` contiguous bands, their number from the size alone
  // (never the thread count); each band sums into its own partial (rows stay contiguous in memory),
  // threads take bands in any order, and the partials are added in band order: the result is the
  // same for any OMP_NUM_THREADS and any scheduling.
  constexpr int64_t kMaxBands = 16;
  const int64_t bands = std::clamp<int64_t>(rows * cols / kParallelGrain, 1, std::max<int64_t>(rows, 1));
  const int64_t nb = std::min(bands, kMaxBands);
  std::vector<double> partial(static_cast<size_t>(nb) * cols, 0.0);
CONVNET_OMP(parallel for if (nb > 1 && select_parallel_loop(rows * cols)) schedule(static))
  for (int64_t t = 0; t < nb; ++t) {
    const int64_t begin = rows * t / nb, end = rows * (t + 1) / nb;
    double* acc = partial.data() + static_cast<size_t>(t) * cols;
    for (int64_t r = begin; r < end; ++r) {
      const float* row = dy + r * cols;
      for (int c = 0; c < cols; ++c) acc[c] += row[c];
    }
  }
  for (int c = 0; c < cols; ++c) {
    double sum = 0.0;
    for (int64_t t = 0; t < nb; ++t) sum += partial[static_cast<size_t>(t) * cols + c];
    db[c] = static_cast<float>(accumulate ? db[c] + sum : sum);
  }
}

// ---------------------------------------------------------------------------------------------
// ReLU, dropout

void relu_forward(const float* x, float* y, int64_t n) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] <= 0.0f ? 0.0f : x[i];  // NaN stays NaN, as in PyTorch
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];  // PyTorch's threshold_backward
}
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : slope * x[i];  // NaN: slope * NaN = NaN
}
void leaky_relu_backward(const float* x, const float* dy, float* dx, int64_t n, float slope) {
CONVNET_OMP(parallel for simd if (select_parallel_loop(n)) schedule(static))
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : slope * dy[i];
}

namespace {
// out[i] = in[i] * mask(offset + i): draw element e comes from Philox block e / 4, word e % 4. The
// loop runs over the draw's blocks that touch [offset, last] (last = offset + n - 1, at most 2**64 - 1:
// dispatch checks it, and nothing here computes offset + n, which may be 2**64), so an offset that
// is not a multiple of 4 starts and ends inside a block.
void apply_dropout_mask(const float* in, float* out, int64_t n, float p, uint64_t seed, uint64_t counter,
                        uint64_t offset) {
  if (n == 0) return;
  const float scale = 1.0f / (1.0f - p);
  const uint64_t first = offset / 4, last = offset + static_cast<uint64_t>(n - 1);
  const int64_t blocks = static_cast<int64_t>(last / 4 - first + 1);
CONVNET_OMP(parallel for if (select_parallel_loop(4 * n)) schedule(static))
  for (int64_t b = 0; b < blocks; ++b) {
    const uint64_t blk = first + static_cast<uint64_t>(b);
    float u[4];
    philox_uniform4(seed, counter, blk, u);
    for (int j = 0; j < 4; ++j) {
      const uint64_t e = blk * 4 + j;
      if (e < offset || e > last) continue;
      const int64_t i = static_cast<int64_t>(e - offset);
      out[i] = u[j] >= p ? in[i] * scale : 0.0f;
    }
  }
}
}  // namespace

void dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t seed, uint64_t counter,
                     uint64_t offset) {
  apply_dropout_mask(x, y, n, p, seed, counter, offset);
}

void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed, uint64_t counter,
                      uint64_t offset) {
  apply_dropout_mask(dy, dx, n, p, seed, counter, offset);
}

// ---------------------------------------------------------------------------------------------
// softmax + cross-entropy

void softmax_cross_entropy(const float* logits, const int32_t* labels, int N, int C, float* dlogits,
                           float* stats) {
  double loss = 0.0;
  int64_t top1 = 0, top5 = 0;
CONVNET_OMP(parallel for reduction(+ : loss, top1, top5) if (select_parallel_loop(static_cast<int64_t>(N) * C)))
  for (int i = 0; i < N; ++i) {
    const float* z = logits + static_cast<int64_t>(i) * C;
    const int label = labels[i];
    const bool valid = label >= 0 && label < C;
    // Subtract the row maximum: exp never overflows, however large the logits.
    float zmax = z[0];
    for (int c = 1; c < C; ++c) zmax = std::max(zmax, z[c]);
    double sum = 0.0;
    bool finite = true;  // a row with a NaN or Inf logit is never a hit (its loss is NaN or Inf)
    for (int c = 0; c < C; ++c) {
      sum += std::exp(static_cast<double>(z[c] - zmax));
      finite &= std::isfinite(z[c]);
    }
    const double log_sum = std::log(sum);
    if (valid) {
      loss += log_sum - static_cast<double>(z[label] - zmax);
      int rank = 0;  // classes with a strictly larger logit than the label's
      for (int c = 0; c < C; ++c) rank += z[c] > z[label];
      top1 += finite && rank < 1;
      top5 += finite && rank < 5;
    } else {
      loss += -std::log(1e-30);  // an impossible label: the largest loss, never a read out of bounds
    }
    if (dlogits) {
      float* d = dlogits + static_cast<int64_t>(i) * C;
      const double inv_n = 1.0 / N;
      for (int c = 0; c < C; ++c) {
        const double prob = std::exp(static_cast<double>(z[c] - zmax) - log_sum);
        d[c] = static_cast<float>((prob - (c == label ? 1.0 : 0.0)) * inv_n);
      }
    }
  }
  stats[0] = static_cast<float>(loss / N);
  stats[1] = static_cast<float>(top1);
  stats[2] = static_cast<float>(top5);
}

// ---------------------------------------------------------------------------------------------
// SGD with momentum and weight decay, the paper's form

void sgd_update(const SgdParam* params, int count, float momentum) {
  for (int t = 0; t < count; ++t) {
    const SgdParam& q = params[t];
    const float lr = q.lr, decay = q.wd * q.lr;
CONVNET_OMP(parallel for simd if (select_parallel_loop(q.n)) schedule(static))
    for (int64_t i = 0; i < q.n; ++i) {
      const float v = momentum * q.v[i] - decay * q.w[i] - lr * q.g[i];
      q.v[i] = v;
      q.w[i] += v;
    }
  }
}

}  // namespace cpu
}  // namespace convnet
