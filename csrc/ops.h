// Every op of convnet, declared once with its contract. dispatch.cpp implements each one: it checks
// the arguments (raising std::invalid_argument -> ValueError naming the op and the shapes), then runs
// the cpu:: or cuda:: kernel of backend.h on the tensors' device. tests/reference.py is the
// executable spec of each.
//
// Ops write into output tensors the caller allocated; an output is overwritten unless `accumulate`
// is true, in which case the result is added to it (how a layer with several inputs sums them, and
// how a tensor read by several layers sums its gradients). All tensors of one call must live on one
// device (copy_ is the exception). Layout: activations (N, H, W, C), conv filters (K, R, S, C/groups),
// fully-connected weights (out, in).
#pragma once

#include <string>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "backend.h"
#include "tensor.h"

namespace convnet {
namespace ops {

using Pair = std::pair<int, int>;  // (height, width) of a window, stride or padding
using OptTensor = std::optional<Tensor>;

// dst <- src. Same shape and dtype; any two devices (host <-> GPU, GPU <-> GPU peer to peer or staged
// through the host, or within one device).
void copy_(const Tensor& dst, const Tensor& src);
void fill_(const Tensor& t, float value);
// dst += alpha * src
void add_(const Tensor& dst, const Tensor& src, float alpha);

// c (M, N) = alpha op(a) op(b) + beta c, all 2-D float32; op transposes when asked.
void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta);

// Fully connected. x (N, in) [any trailing shape flattened], w (out, in), b (out,), y (N, out):
//   y (=|+=) x w^T + b;  relu: then y = max(0, y) (the final value, after accumulating)
void fc_forward(const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& y, bool accumulate,
                bool relu = false);
// dx (N, in) (=|+=) dy (N, out) w (out, in)
void fc_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate);
// dw (out, in) = dy^T x;  db (out,) = sum over N of dy
void fc_backward_weights(const Tensor& dy, const Tensor& x, const Tensor& dw, const OptTensor& db);

// y = max(x, 0);  dx = dy where y > 0 (y is the forward output). Any shape; may run in place.
void relu_forward(const Tensor& x, const Tensor& y);
void relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);

// Inverted dropout with probability p of dropping, mask from Philox4x32-10 keyed by (seed, counter):
// the backward pass regenerates the same mask, so nothing is stored between the two. Element i of x
// takes element offset + i of the draw: a slice of a larger batch (a micro-batch, one rank's share of
// a data-parallel step) passes its first element's index in the whole batch and draws the mask the
// whole batch would have.
void dropout_forward(const Tensor& x, const Tensor& y, float p, uint64_t seed, uint64_t counter,
                     uint64_t offset = 0);
void dropout_backward(const Tensor& dy, const Tensor& dx, float p, uint64_t seed, uint64_t counter,
                      uint64_t offset = 0);

// logits (N, C) float32, labels (N,) int32 in [0, C), stats (3,) float32 <- [mean cross-entropy,
// top-1 hits, top-5 hits]; dlogits (N, C) <- (softmax - onehot) / N unless None. Stays on the device.
void softmax_cross_entropy(const Tensor& logits, const Tensor& labels, const OptTensor& dlogits,
                           const Tensor& stats);

// For every i: v_i <- momentum v_i - wd_i lr_i w_i - lr_i g_i;  w_i <- w_i + v_i   (the paper's rule).
void sgd_update(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                const std::vector<Tensor>& velocities, const std::vector<float>& lrs,
                const std::vector<float>& weight_decays, float momentum);

// Convolution. x (N, H, W, C), w (K, R, S, C/groups), b (K,), y (N, P, Q, K) with
// P = (H + 2 pad_h - R) / stride_h + 1 (floor), Q likewise. relu: y = max(0, y) on the final value
// (after bias and accumulation), fused into the kernel's epilogue.
// algorithm: "auto" (the backend's selector per shape and pass), "direct" or "winograd" (stride-1 3x3 and
// 5x5 filters with pad < R, CPU only for now: ValueError otherwise).
void conv_forward(const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& y, Pair stride,
                  Pair pad, int groups, bool accumulate, bool relu = false, const std::string& algorithm = "auto");
void conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, Pair stride, Pair pad,
                        int groups, bool accumulate, const std::string& algorithm = "auto");
void conv_backward_filter(const Tensor& dy, const Tensor& x, const Tensor& dw, const OptTensor& db,
                          Pair stride, Pair pad, int groups, bool accumulate, const std::string& algorithm = "auto");

// Local response normalisation across channels of x (..., C): b = a / (k + alpha' sum_window a^2)^beta
// with alpha' = alpha (the paper) or alpha / size (cuda-convnet, PyTorch) when alpha_over_size.
void lrn_forward(const Tensor& x, const Tensor& y, int size, float alpha, float beta, float k,
                 bool alpha_over_size);
void lrn_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx, int size,
                  float alpha, float beta, float k, bool alpha_over_size);

// Pooling over x (N, H, W, C) -> y (N, P, Q, C). Max-pool records argmax (N, P, Q, C) int32 (flat
// h*W + w of the first maximum in row-major window order) for its backward pass.
void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax, Pair window, Pair stride,
                      Pair pad);
void max_pool_backward(const Tensor& dy, const Tensor& argmax, const Tensor& dx, Pair window,
                       Pair stride, Pair pad);
void avg_pool_forward(const Tensor& x, const Tensor& y, Pair window, Pair stride, Pair pad);
void avg_pool_backward(const Tensor& dy, const Tensor& dx, Pair window, Pair stride, Pair pad);

// Geometry helpers (also used by Python through the bindings): they raise ValueError for a window
// larger than the padded input, a non-positive stride, negative padding or bad groups.
ConvShape conv_shape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                     Pair stride, Pair pad, int groups, const char* op);
PoolShape pool_shape(const std::vector<int64_t>& x_shape, Pair window, Pair stride, Pair pad,
                     const char* op);

}  // namespace ops
}  // namespace convnet
