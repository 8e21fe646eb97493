// CUDA kernels for the small ops: fill, add, bias, ReLU, dropout, softmax + cross-entropy, SGD.
//
// All are memory-bound: one read and one write per element, so the floor is bytes / bandwidth
// (fc6's 37.7 M weights in sgd_update: 4 arrays x 151 MB = 600 MB moved, ~0.2 ms at 3 TB/s on an
// H100). Grid-stride loops, coalesced accesses; reductions (bias gradient, loss) are two-pass with a
// fixed order, so results do not depend on scheduling and repeat bit for bit.
#include <algorithm>
#include <cfloat>

#include "common.cuh"
#include "philox.h"

namespace convnet {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// kernels

__global__ void fill_kernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = value;
}

__global__ void add_kernel(float* dst, const float* src, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] += alpha * src[i];
}

__global__ void add_bias_kernel(float* y, const float* b, int64_t n, int cols) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] += b[i % cols];
}

// y = max(0, y + b): the fc layer's bias and ReLU in one pass over y (b may be null).
__global__ void add_bias_relu_kernel(float* y, const float* b, int64_t n, int cols) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = relu_value(y[i] + (b ? b[i % cols] : 0.0f));
}

// Pass 1 of the column sums: block (32, 8) sums rows [chunk * rows_per_chunk, ...) of 32 columns.
__global__ void column_partial_kernel(const float* dy, int64_t rows, int cols, int64_t rows_per_chunk,
                                      float* partial) {
  __shared__ float tile[8][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = blockIdx.y * rows_per_chunk;
  const int64_t end = min(rows, begin + rows_per_chunk);
  float sum = 0.0f;
  if (col < cols)
    for (int64_t r = begin + threadIdx.y; r < end; r += 8) sum += dy[r * cols + col];
  tile[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int j = 0; j < 8; ++j) total += tile[j][threadIdx.x];
    partial[blockIdx.y * (int64_t)cols + col] = total;
  }
}

// Pass 2: db[c] (=|+=) sum over chunks of partial[chunk][c], in chunk order.
__global__ void column_final_kernel(const float* partial, int chunks, int cols, float* db, bool accumulate) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float total = 0.0f;
  for (int j = 0; j < chunks; ++j) total += partial[(int64_t)j * cols + col];
  db[col] = accumulate ? db[col] + total : total;
}

__global__ void relu_forward_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = relu_value(x[i]);
}

__global__ void relu_backward_kernel(const float* y, const float* dy, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];  // PyTorch's threshold_backward: NaN passes dy
}

__global__ void leaky_relu_forward_kernel(const float* x, float* y, int64_t n, float slope) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = x[i] > 0.0f ? x[i] : slope * x[i];
}

__global__ void leaky_relu_backward_kernel(const float* x, const float* dy, float* dx, int64_t n, float slope) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = x[i] > 0.0f ? dy[i] : slope * dy[i];
}

// One thread per Philox block of 4 elements: the same numbers as the CPU (csrc/philox.h).
// out[i] = in[i] * mask(offset + i); one thread per Philox block of the draw that touches
// [offset, last], last = offset + n - 1 <= 2**64 - 1 (dispatch checks it; offset + n itself may wrap),
// n >= 1 (the launcher returns on 0). The first and last may be partial when offset is not a multiple of 4.
__global__ void dropout_kernel(const float* in, float* out, int64_t n, float p, uint64_t seed, uint64_t counter,
                               uint64_t offset) {
  const float scale = 1.0f / (1.0f - p);
  const uint64_t first = offset / 4, last = offset + (uint64_t)(n - 1);
  const int64_t blocks = (int64_t)(last / 4 - first + 1);
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < blocks;
       b += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t blk = first + (uint64_t)b;
    float u[4];
    philox_uniform4(seed, counter, blk, u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint64_t e = blk * 4 + j;
      if (e >= offset && e <= last) {
        const int64_t i = (int64_t)(e - offset);
        out[i] = u[j] >= p ? in[i] * scale : 0.0f;
      }
    }
  }
}

// Block-wide reductions over kThreads threads (warp shuffles, then one value per warp in shared).
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? scratch[lane] : identity;
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

struct MaxOp { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };
struct SumOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};

// One block per row: max, sum of exponentials, the label's rank; per-row loss and hits go to
// row_stats (N, 3) and are summed in row order by softmax_reduce_kernel. The sum, its log and the
// gradient are in double, as on the CPU: for a confident row the label's gradient p - 1 is a small
// difference of numbers near 1 (p = 0.9977 leaves 0.0023), which float would get only to ~3e-5.
// The row is C <= a few thousand values, so double arithmetic costs nothing measurable here.
__global__ void softmax_xent_kernel(const float* logits, const int32_t* labels, int N, int C, float* dlogits,
                                    float* row_stats) {
  __shared__ float fscratch[kThreads / 32];
  __shared__ double dscratch[kThreads / 32];
  __shared__ int iscratch[kThreads / 32];
  const int row = blockIdx.x;
  const float* z = logits + (int64_t)row * C;
  const int label = labels[row];
  const bool valid = label >= 0 && label < C;

  float m = -FLT_MAX;
  for (int c = threadIdx.x; c < C; c += kThreads) m = fmaxf(m, z[c]);
  m = block_reduce(m, MaxOp(), -FLT_MAX, fscratch);
  double s = 0.0;
  for (int c = threadIdx.x; c < C; c += kThreads) s += exp(static_cast<double>(z[c] - m));
  s = block_reduce(s, SumOp(), 0.0, dscratch);
  const double log_sum = log(s);
  const float zl = valid ? z[label] : 0.0f;
  int rank = 0;
  // A NaN or Inf logit makes the row no hit: it counts as 5 classes ranked above the label.
  for (int c = threadIdx.x; c < C; c += kThreads) rank += (z[c] > zl) + (isfinite(z[c]) ? 0 : 5);
  rank = block_reduce(rank, SumOp(), 0, iscratch);
  if (threadIdx.x == 0) {
    row_stats[row * 3 + 0] = valid ? static_cast<float>(log_sum - static_cast<double>(zl - m)) : -logf(1e-30f);
    row_stats[row * 3 + 1] = valid && rank < 1;
    row_stats[row * 3 + 2] = valid && rank < 5;
  }
  if (dlogits) {
    const double inv_n = 1.0 / N;
    float* d = dlogits + (int64_t)row * C;
    for (int c = threadIdx.x; c < C; c += kThreads) {
      const double p = exp(static_cast<double>(z[c] - m) - log_sum);
      d[c] = static_cast<float>((p - (c == label ? 1.0 : 0.0)) * inv_n);
    }
  }
}

// One block: stats = [mean loss, top-1 hits, top-5 hits], summed in a fixed order.
__global__ void softmax_reduce_kernel(const float* row_stats, int N, float* stats) {
  __shared__ float scratch[kThreads / 32];
  float acc[3] = {0.0f, 0.0f, 0.0f};
  for (int i = threadIdx.x; i < N; i += kThreads)
    for (int j = 0; j < 3; ++j) acc[j] += row_stats[i * 3 + j];
  for (int j = 0; j < 3; ++j) {
    const float total = block_reduce(acc[j], SumOp(), 0.0f, scratch);
    if (threadIdx.x == 0) stats[j] = j == 0 ? total / N : total;
  }
}

// Up to kSgdBatch parameter tensors per launch; blockIdx.y picks the tensor.
constexpr int kSgdBatch = 32;
struct SgdBatch {
  SgdParam p[kSgdBatch];
};

__global__ void sgd_kernel(SgdBatch batch, float momentum) {
  const SgdParam q = batch.p[blockIdx.y];
  const float decay = q.wd * q.lr;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < q.n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = momentum * q.v[i] - decay * q.w[i] - q.lr * q.g[i];
    q.v[i] = v;
    q.w[i] += v;
  }
}


}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

void fill(float* x, int64_t n, float value) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, n, value);
  CONVNET_LAUNCH_CHECK("fill_kernel");
}

void add(float* dst, const float* src, int64_t n, float alpha) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(dst, src, n, alpha);
  CONVNET_LAUNCH_CHECK("add_kernel");
}

void add_bias(float* y, const float* b, int64_t rows, int cols) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  add_bias_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(y, b, n, cols);
  CONVNET_LAUNCH_CHECK("add_bias_kernel");
}

void add_bias_relu(float* y, const float* b, int64_t rows, int cols) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  add_bias_relu_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(y, b, n, cols);
  CONVNET_LAUNCH_CHECK("add_bias_relu_kernel");
}

void bias_grad(const float* dy, int64_t rows, int cols, float* db, bool accumulate) {
  if (cols == 0) return;
  // About 64 rows per thread row of a block; at most 1024 chunks so pass 2 stays short.
  const int64_t rows_per_chunk = std::max<int64_t>(512, ceil_div(rows, 1024));
  const int chunks = static_cast<int>(std::max<int64_t>(1, ceil_div(rows, rows_per_chunk)));
  Scratch partial(static_cast<size_t>(chunks) * cols);
  cudaStream_t stream = current_stream();
  column_partial_kernel<<<dim3(ceil_div(cols, 32), chunks), dim3(32, 8), 0, stream>>>(dy, rows, cols,
                                                                                    rows_per_chunk, partial.ptr);
  CONVNET_LAUNCH_CHECK("column_partial_kernel");
  column_final_kernel<<<ceil_div(cols, kThreads), kThreads, 0, stream>>>(partial.ptr, chunks, cols, db, accumulate);
  CONVNET_LAUNCH_CHECK("column_final_kernel");
}

void relu_forward(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  relu_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, y, n);
  CONVNET_LAUNCH_CHECK("relu_forward_kernel");
}

void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
  if (n == 0) return;
  relu_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(y, dy, dx, n);
  CONVNET_LAUNCH_CHECK("relu_backward_kernel");
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
  if (n == 0) return;
  leaky_relu_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, y, n, slope);
  CONVNET_LAUNCH_CHECK("leaky_relu_forward_kernel");
}

void leaky_relu_backward(const float* x, const float* dy, float* dx, int64_t n, float slope) {
  if (n == 0) return;
  leaky_relu_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(x, dy, dx, n, slope);
  CONVNET_LAUNCH_CHECK("leaky_relu_backward_kernel");
}

void dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t seed, uint64_t counter,
                     uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<grid_for(n / 4 + 2, kThreads), kThreads, 0, current_stream()>>>(x, y, n, p, seed, counter,
                                                                                    offset);
  CONVNET_LAUNCH_CHECK("dropout_kernel");
}

void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed, uint64_t counter,
                      uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<grid_for(n / 4 + 2, kThreads), kThreads, 0, current_stream()>>>(dy, dx, n, p, seed, counter,
                                                                                    offset);
  CONVNET_LAUNCH_CHECK("dropout_kernel");
}

void softmax_cross_entropy(const float* logits, const int32_t* labels, int N, int C, float* dlogits,
                           float* stats) {
  Scratch row_stats(static_cast<size_t>(N) * 3);
  cudaStream_t stream = current_stream();
  softmax_xent_kernel<<<N, kThreads, 0, stream>>>(logits, labels, N, C, dlogits, row_stats.ptr);
  CONVNET_LAUNCH_CHECK("softmax_xent_kernel");
  softmax_reduce_kernel<<<1, kThreads, 0, stream>>>(row_stats.ptr, N, stats);
  CONVNET_LAUNCH_CHECK("softmax_reduce_kernel");
}

void sgd_update(const SgdParam* params, int count, float momentum) {
  cudaStream_t stream = current_stream();
  for (int first = 0; first < count; first += kSgdBatch) {
    SgdBatch batch{};
    const int k = std::min(kSgdBatch, count - first);
    int64_t largest = 0;
    for (int j = 0; j < k; ++j) {
      batch.p[j] = params[first + j];
      largest = std::max(largest, batch.p[j].n);
    }
    if (largest == 0) continue;
    // Enough blocks per tensor for the largest one; smaller tensors' extra blocks exit at once.
    const unsigned blocks = std::min<unsigned>(grid_for(largest, kThreads), 2048u);
    sgd_kernel<<<dim3(blocks, k), kThreads, 0, stream>>>(batch, momentum);
    CONVNET_LAUNCH_CHECK("sgd_kernel");
  }
}

}  // namespace cuda
}  // namespace convnet
