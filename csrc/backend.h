// The kernel interface: what csrc/cpu/*.cpp and cuda/*.cu implement, on raw pointers.
//
// dispatch.cpp checks every argument (shapes, dtypes, devices) and then calls the cpu:: or cuda::
// function of the same name, so kernels may assume valid, non-aliasing, contiguous arguments.
// Both namespaces declare the same functions with the same meaning; tests/reference.py is the
// executable spec of each. CUDA kernels run on the current device's stream (cuda/common.cuh) and
// return without synchronising.
//
// Conventions
//   * Row-major everywhere. Activations NHWC (N, H, W, C); conv filters KRSC (K, R, S, C/groups).
//   * An output is written, never read, unless `accumulate` is true (then out += result). A kernel
//     must therefore write every element of its output: tests poison outputs with NaN first.
//   * Sizes are int64_t where a tensor can pass 2^31 elements, int where a dimension cannot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace convnet {

// Convolution geometry. C and K are totals over all groups; each group maps C/groups input channels
// to K/groups output channels, and the filter tensor is (K, R, S, C/groups).
// Output size: P = (H + 2*pad_h - R) / stride_h + 1, Q likewise (the floor rule).
// Which algorithm a conv op runs: Auto lets the backend's selector pick per shape and pass (the CPU's
// in csrc/cpu/winograd.cpp); Winograd is only set for shapes it supports (dispatch.cpp checks).
enum class ConvAlgorithm { Auto, Direct, Winograd };
// The pass a selector decides for (cpu::winograd_chosen, cuda::winograd_chosen).
enum class ConvPass { Forward, BackwardData, BackwardFilter };

struct ConvShape {
  int N, H, W, C;        // input (N, H, W, C)
  int K, R, S;           // filters (K, R, S, C/groups)
  int P, Q;              // output (N, P, Q, K)
  int stride_h, stride_w;
  int pad_h, pad_w;
  int groups;
  ConvAlgorithm algorithm = ConvAlgorithm::Auto;
};

// A stride-1 conv's backward-data in forward form: dx = conv(dy padded by R-1-pad, w turned 180
// degrees with K <-> C per group), so the input is dy (N, P, Q, K) and the output dx (N, H, W, C).
// The CPU's turned-filter path (cpu/conv.cpp) and both Winograd backward-data paths run it.
inline ConvShape turned_forward_shape(const ConvShape& s) {
  ConvShape t = s;
  t.H = s.P;
  t.W = s.Q;
  t.C = s.K;
  t.K = s.C;
  t.P = s.H;
  t.Q = s.W;
  t.stride_h = t.stride_w = 1;
  t.pad_h = s.R - 1 - s.pad_h;
  t.pad_w = s.S - 1 - s.pad_w;
  return t;
}

// Pooling geometry: window R x S, input (N, H, W, C), output (N, P, Q, C). Padding is never part of
// a window's max or average: padded positions are skipped.
struct PoolShape {
  int N, H, W, C;
  int R, S;
  int P, Q;
  int stride_h, stride_w;
  int pad_h, pad_w;
};

// Cross-channel local response normalisation, the paper's formula:
//   b[c] = a[c] / (k + alpha * sum_{c2 = c - size/2 .. c - size/2 + size - 1, 0 <= c2 < C} a[c2]^2)^beta
// `alpha` is applied as given (the caller divides by `size` for the cuda-convnet/PyTorch variant).
struct LrnParams {
  int size;
  float alpha, beta, k;
};

// One parameter tensor for sgd_update: v <- momentum*v - wd*lr*w - lr*g;  w <- w + v.
struct SgdParam {
  float* w;
  const float* g;
  float* v;
  int64_t n;
  float lr, wd;
};

#define CONVNET_KERNELS(KERNEL)                                                                           \
  /* C (M, N) = alpha * op(A) op(B) + beta * C, row-major; op(A) is (M, K), op(B) is (K, N).         \
     lda/ldb/ldc are row strides of A, B, C as stored. beta == 0 never reads C. */                   \
  KERNEL(gemm, (bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,    \
            const float* B, int ldb, float beta, float* C, int ldc))                                 \
  /* The same, then C = max(0, C + bias) (relu) or C + bias, bias (N) broadcast over rows and        \
     null for none: fc_forward. CUDA applies both in the GEMM's epilogue. */                         \
  KERNEL(gemm_bias_relu, (bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,  \
                          int lda, const float* B, int ldb, float beta, float* C, int ldc,             \
                          const float* bias, bool relu))                                             \
  KERNEL(fill, (float* x, int64_t n, float value))                                                       \
  /* dst += alpha * src */                                                                           \
  KERNEL(add, (float* dst, const float* src, int64_t n, float alpha))                                    \
  /* y (rows, cols) += b (cols) broadcast over rows */                                               \
  KERNEL(add_bias, (float* y, const float* b, int64_t rows, int cols))                                   \
  /* y (rows, cols) = max(0, y + b) (b (cols) broadcast over rows; b may be null: y = max(0, y)) */ \
  KERNEL(add_bias_relu, (float* y, const float* b, int64_t rows, int cols))                              \
  /* db (cols) (=|+=) sum over rows of dy (rows, cols) */                                            \
  KERNEL(bias_grad, (const float* dy, int64_t rows, int cols, float* db, bool accumulate))               \
  KERNEL(relu_forward, (const float* x, float* y, int64_t n))                                            \
  /* dx = dy where y > 0, else 0 (y is the forward output) */                                       \
  KERNEL(relu_backward, (const float* y, const float* dy, float* dx, int64_t n))                         \
  /* y = x > 0 ? x : slope x;  dx = x > 0 ? dy : slope dy (x is the forward input) */                 \
  KERNEL(leaky_relu_forward, (const float* x, float* y, int64_t n, float slope))                     \
  KERNEL(leaky_relu_backward, (const float* x, const float* dy, float* dx, int64_t n, float slope))  \
  /* Inverted dropout: y = x * keep / (1 - p), keep = philox_uniform(seed, counter, offset + i) >= p */ \
  KERNEL(dropout_forward, (const float* x, float* y, int64_t n, float p, uint64_t seed, uint64_t counter,   \
                       uint64_t offset))                                                             \
  KERNEL(dropout_backward, (const float* dy, float* dx, int64_t n, float p, uint64_t seed,               \
                        uint64_t counter, uint64_t offset))                                          \
  /* logits (N, C), labels (N) in [0, C). stats[0] = mean cross-entropy, stats[1] = count of top-1  \
     hits, stats[2] = count of top-5 hits (ties: a class counts as ranked above the label only if   \
     its logit is strictly greater). dlogits (N, C) = (softmax - onehot) / N, skipped if null. */   \
  KERNEL(softmax_cross_entropy, (const float* logits, const int32_t* labels, int N, int C,               \
                             float* dlogits, float* stats))                                          \
  KERNEL(sgd_update, (const SgdParam* params, int count, float momentum))                                \
  /* relu: y = max(0, result) where result is the conv + b (+ old y when accumulate) */            \
  KERNEL(conv_forward, (const ConvShape& s, const float* x, const float* w, const float* b, float* y,    \
                    bool accumulate, bool relu))                                                     \
  KERNEL(conv_backward_data, (const ConvShape& s, const float* dy, const float* w, float* dx,            \
                          bool accumulate))                                                          \
  /* dw (K, R, S, C/groups) and db (K) (db may be null); accumulate adds into both */               \
  KERNEL(conv_backward_filter, (const ConvShape& s, const float* dy, const float* x, float* dw,          \
                            float* db, bool accumulate))                                             \
  /* rows = N*H*W pixels, C channels each */                                                         \
  KERNEL(lrn_forward, (const float* x, float* y, int64_t rows, int C, const LrnParams& p))               \
  KERNEL(lrn_backward, (const float* x, const float* y, const float* dy, float* dx, int64_t rows, int C, \
                    const LrnParams& p))                                                             \
  /* argmax (N, P, Q, C) int32: flat input index h*W + w of the window's maximum; ties go to the    \
     first in row-major window order (r, then s). A window with no valid input writes 0 / -1. */    \
  KERNEL(max_pool_forward, (const PoolShape& s, const float* x, float* y, int32_t* argmax))              \
  /* dx = for each input element, sum over windows whose argmax it is, in window order */           \
  KERNEL(max_pool_backward, (const PoolShape& s, const float* dy, const int32_t* argmax, float* dx))     \
  /* mean over the window's in-bounds inputs (padding not counted) */                                \
  KERNEL(avg_pool_forward, (const PoolShape& s, const float* x, float* y))                               \
  KERNEL(avg_pool_backward, (const PoolShape& s, const float* dy, float* dx))

// The arithmetic of the GEMMs under the FC layers and the convolutions: ONE process-wide setting that
// both backends read (docs/architecture.md, "Precision"; held in csrc/cpu/gemm_bf16.cpp, set through
// convnet._C.set_precision, which Net calls around its passes). The op contracts do not change with it.
enum class Precision { FP32, TF32, BF16 };
Precision gemm_precision();
void set_gemm_precision(Precision p);
const char* precision_name(Precision p);  // "fp32", "tf32", "bf16"

// Declares one kernel, `void name(params);`, of the list above.
#define CONVNET_DECLARE_KERNEL(name, params) void name params;

namespace cpu {
CONVNET_KERNELS(CONVNET_DECLARE_KERNEL)
int num_threads();
}  // namespace cpu

// The CUDA backend: cuda/*.cu in a CUDA build; csrc/cuda_fallback.cpp (every function raising "built
// without CUDA", which no caller reaches: no CUDA device exists there) in a CPU-only build. Either way
// every name is declared, so callers need no #ifdef.
namespace cuda {
bool compiled();        // was the CUDA backend built in?
int device_count();     // usable CUDA devices; 0 without a driver or GPU (never throws)
CONVNET_KERNELS(CONVNET_DECLARE_KERNEL)
// the runtime: devices, memory, copies (cuda/runtime/device_runtime.cu)
void set_device(int device);           // makes `device` current for this thread (its stream too)
std::string device_name(int device);
std::string device_capability(int device);  // "9.0"
void* device_alloc(int device, size_t bytes);  // caching allocator; OutOfMemoryError when full
void device_free(int device, void* ptr, size_t bytes);
size_t allocated_bytes(int device);  // in use by tensors
size_t cached_bytes(int device);     // held by the cache, free for reuse
void empty_cache(int device);
void copy_host_to_device(int device, void* dst, const void* src, size_t bytes);
void copy_device_to_host(int device, void* dst, const void* src, size_t bytes);
// Same device: cudaMemcpyAsync; two devices: peer copy (peer access enabled once) or staged
// through pinned host memory when the devices cannot reach each other.
void copy_device_to_device(int dst_device, void* dst, int src_device, const void* src, size_t bytes);
bool can_access_peer(int device, int peer);
void synchronize(int device);
// Winograd convolution (cuda/winograd.cu), called by dispatch.cpp instead of the conv kernels above
// when winograd_chosen says so (s.algorithm Winograd: dispatch.cpp checked the shape; Auto: the
// modelled rule of winograd.cu). Same arguments and contract as conv_forward / _backward_data /
// _backward_filter.
bool winograd_chosen(const ConvShape& s, ConvPass pass);
void winograd_conv_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                           bool accumulate, bool relu);
void winograd_conv_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate);
void winograd_conv_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db,
                                   bool accumulate);
}  // namespace cuda

}  // namespace convnet
