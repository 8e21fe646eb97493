// Every op of convnet, declared from the op table csrc/ops.def (its header has the contracts: what each
// op computes, its shapes and layout). dispatch.cpp implements each one: it checks the arguments
// (raising std::invalid_argument -> ValueError naming the op and the shapes), then runs the cpu:: or
// cuda:: kernel of backend.h on the tensors' device. tests/reference.py is the executable spec of each.
#pragma once

#include <string>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "tensor.h"

namespace convnet {
namespace ops {

using Pair = std::pair<int, int>;  // (height, width) of a window, stride or padding
using OptTensor = std::optional<Tensor>;

// ---- what the types of ops.def are in C++ ---------------------------------------------------------
#define CONVNET_CPP_TYPE_Tensor const Tensor&
#define CONVNET_CPP_TYPE_IntTensor const Tensor&
#define CONVNET_CPP_TYPE_AnyTensor const Tensor&
#define CONVNET_CPP_TYPE_OptTensor const OptTensor&
#define CONVNET_CPP_TYPE_TensorList const std::vector<Tensor>&
#define CONVNET_CPP_TYPE_FloatList const std::vector<float>&
#define CONVNET_CPP_TYPE_float float
#define CONVNET_CPP_TYPE_int int
#define CONVNET_CPP_TYPE_bool bool
#define CONVNET_CPP_TYPE_uint64_t uint64_t
#define CONVNET_CPP_TYPE_Pair Pair
#define CONVNET_CPP_TYPE_String const std::string&

// CONVNET_DROP_FIRST(~ , a, b) -> a, b: each argument expands with a leading comma, the first is dropped.
#define CONVNET_DROP_FIRST_(first, ...) __VA_ARGS__
#define CONVNET_DROP_FIRST(...) CONVNET_DROP_FIRST_(__VA_ARGS__)

// The paper's LRN and pooling settings: the defaults of these ops (ops.def) and of the Python layers
// (layers.py reads them as convnet._C.lrn_defaults / pool_defaults), stated here once. Doubles, so
// Python sees 1e-4, not its float32 rounding.
struct LrnDefaults {
  static constexpr int size = 5;
  static constexpr double alpha = 1e-4, beta = 0.75, k = 2.0;
};
struct PoolDefaults {
  static constexpr int window = 3, stride = 2, pad = 0;  // overlapping max-pool 3/2
};
// The same in the types of the ops' arguments: the defaults of the LRN and pool entries of ops.def.
inline constexpr int kLrnSize = LrnDefaults::size;
inline constexpr float kLrnAlpha = float(LrnDefaults::alpha), kLrnBeta = float(LrnDefaults::beta),
                       kLrnK = float(LrnDefaults::k);
inline constexpr Pair kPoolWindow{PoolDefaults::window, PoolDefaults::window};
inline constexpr Pair kPoolStride{PoolDefaults::stride, PoolDefaults::stride};
inline constexpr Pair kPoolPad{PoolDefaults::pad, PoolDefaults::pad};

// ---- the declarations: void name(params) for every entry of ops.def -------------------------------
#define CONVNET_OP(name, shape_rule, doc, args) void name(CONVNET_DROP_FIRST(~ args));
#define IN(type, name) , CONVNET_CPP_TYPE_##type name
#define OUT(type, name) , CONVNET_CPP_TYPE_##type name
#define ACC(type, name) , CONVNET_CPP_TYPE_##type name
#define ATTR(type, name) , CONVNET_CPP_TYPE_##type name
#define ATTR_D(type, name, default_value) , CONVNET_CPP_TYPE_##type name = default_value
#include "ops.def"

// Geometry helpers (also used by Python through the bindings): they raise ValueError for a window
// larger than the padded input, a non-positive stride, negative padding or bad groups.
ConvShape conv_shape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                     Pair stride, Pair pad, int groups, const char* op);
PoolShape pool_shape(const std::vector<int64_t>& x_shape, Pair window, Pair stride, Pair pad,
                     const char* op);

}  // namespace ops
}  // namespace convnet
