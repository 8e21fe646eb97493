// Argument checks and backend selection for every op of ops.h.
//
// Each op checks dtypes, ranks, shapes and devices first and raises std::invalid_argument (ValueError
// in Python) with the op's name and the shapes involved, so a kernel never sees a bad argument. Then
// it calls the cpu:: or cuda:: kernel of backend.h on the tensors' device. What every op checks alike
// (defined, dtype, one device, no aliasing) is check_tensors, driven by the op table (ops.def); what
// follows it in each op is that op's own contract (ranks, shapes, attributes).
#include "ops.h"

#include "cpu/winograd.h"  // winograd_unsupported: the shapes algorithm="winograd" takes

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace convnet {
namespace ops {

namespace {

// ---------------------------------------------------------------------------------------------
// checks

[[noreturn]] void fail(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string(op) + ": " + message);
}

struct Arg {
  const char* name;
  const Tensor* t;
};

void need_defined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined()) fail(op, std::string(name) + " is an undefined tensor");
}

void need_f32(const char* op, const char* name, const Tensor& t) {
  need_defined(op, name, t);
  if (t.dtype() != DType::Float32)
    fail(op, std::string(name) + " must be float32, got " + t.describe());
}

void need_dim(const char* op, const char* name, const Tensor& t, int dim, const char* layout) {
  if (t.dim() != dim)
    fail(op, std::string(name) + " must be " + std::to_string(dim) + "-D " + layout + ", got shape " +
                 t.shape_str());
}

void need_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& shape,
                const std::string& why = "") {
  if (t.shape() != shape)
    fail(op, std::string(name) + " has shape " + t.shape_str() + " but " +
                 (why.empty() ? std::string("expected ") : why + " needs ") + shape_str(shape));
}

// All tensors on one device; returns it.
Device same_device(const char* op, const std::vector<Arg>& args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (!a.t || !a.t->defined()) continue;
    if (!first) {
      first = &a;
    } else if (a.t->device() != first->t->device()) {
      fail(op, "all tensors must be on one device, but " + std::string(first->name) + " is on " +
                   first->t->device().str() + " and " + a.name + " is on " + a.t->device().str());
    }
  }
  return first ? first->t->device() : Device::cpu();
}

void no_alias(const char* op, const char* out_name, const Tensor& out, const char* in_name,
              const Tensor& in) {
  if (in.defined() && out.same_storage(in))
    fail(op, std::string(out_name) + " must not share memory with " + in_name);
}

const Tensor* ptr(const OptTensor& t) { return t ? &*t : nullptr; }

// `out` shares memory with none of `others` (the op's other tensors; absent optional ones skipped).
// Tensors are whole storages (no offsets), so sharing memory is sharing storage.
void no_alias_any(const char* op, const char* out_name, const Tensor& out, std::initializer_list<Arg> others) {
  for (const Arg& a : others)
    if (a.t) no_alias(op, out_name, out, a.name, *a.t);
}
float* data_or_null(const OptTensor& t) { return t ? t->f32() : nullptr; }

int to_int(const char* op, const char* what, int64_t v) {
  if (v > 0x7fffffff) fail(op, std::string(what) + " = " + std::to_string(v) + " is too large (over 2^31)");
  if (v < 0) fail(op, std::string(what) + " = " + std::to_string(v) + " is negative");
  return static_cast<int>(v);
}

// a * b for sizes that the kernels index with int: ValueError naming `what` when over 2^31 - 1.
int64_t int_product(const char* op, const char* what, std::initializer_list<int64_t> factors) {
  int64_t n = 1;
  for (int64_t f : factors)
    if (__builtin_mul_overflow(n, f, &n) || n > 0x7fffffff)
      fail(op, std::string(what) + " is over 2^31 - 1, more than the kernels' 32-bit indices hold");
  return n;
}

// Output extent of a window sliding over `in` positions padded by `pad` each side, in int64 so that
// large pads cannot wrap; -1 when the window does not fit.
int64_t sliding_extent(int64_t in, int64_t pad, int64_t window, int64_t stride) {
  const int64_t padded = in + 2 * pad;
  if (window > padded) return -1;
  return (padded - window) / stride + 1;
}

std::string pair_str(Pair p) { return "(" + std::to_string(p.first) + ", " + std::to_string(p.second) + ")"; }

// ---------------------------------------------------------------------------------------------
// the shared prologue, from the op table (ops.def)

enum class Role { Input, Output, Accumulate };
enum class Kind { Float32, Int32, OptionalFloat32 };
struct TensorArg {
  const char* name;
  Role role;
  Kind kind;
};
struct OpSpec {
  const char* name;
  const char* shape_rule;
  std::vector<TensorArg> tensors;  // the Tensor / IntTensor / OptTensor arguments, in call order
};

// spec::<op>: the tensor arguments of each op of ops.def with their roles and dtypes. copy_ (any dtype,
// two devices) and sgd_update (lists) have none here and check their own.
namespace spec {
#define CONVNET_SPEC_Tensor(name, role) TensorArg{#name, role, Kind::Float32},
#define CONVNET_SPEC_IntTensor(name, role) TensorArg{#name, role, Kind::Int32},
#define CONVNET_SPEC_OptTensor(name, role) TensorArg{#name, role, Kind::OptionalFloat32},
#define CONVNET_SPEC_AnyTensor(name, role)
#define CONVNET_SPEC_TensorList(name, role)
#define CONVNET_OP(name, shape_rule, doc, args) const OpSpec name{#name, #shape_rule, {args}};
#define IN(type, name) CONVNET_SPEC_##type(name, Role::Input)
#define OUT(type, name) CONVNET_SPEC_##type(name, Role::Output)
#define ACC(type, name) CONVNET_SPEC_##type(name, Role::Accumulate)
#define ATTR(type, name)
#define ATTR_D(type, name, default_value)
#include "ops.def"
}  // namespace spec

// What every op checks first, written once: each tensor is defined (an OptTensor may be None) and of
// its dtype; all are on one device (returned); no output or accumulated tensor shares memory with an
// input, unless the op is elementwise (which may run in place). Tensors are contiguous by
// construction (tensor.h), so there is no stride to check. `tensors` are the op's tensor arguments in
// the order of spec.tensors (nullptr for an OptTensor that is None).
Device check_tensors(const OpSpec& spec, std::initializer_list<const Tensor*> tensors) {
  const char* op = spec.name;
  if (tensors.size() != spec.tensors.size())
    throw std::logic_error(std::string(op) + ": dispatch passed " + std::to_string(tensors.size()) +
                           " tensors to check_tensors, ops.def declares " + std::to_string(spec.tensors.size()));
  const TensorArg* arg = spec.tensors.data();
  for (const Tensor* t : tensors) {
    const TensorArg& a = *arg++;
    if (a.kind == Kind::OptionalFloat32 && !t) continue;
    if (a.kind == Kind::Int32) {
      need_defined(op, a.name, *t);
      if (t->dtype() != DType::Int32) fail(op, std::string(a.name) + " must be int32, got " + t->describe());
    } else {
      need_f32(op, a.name, *t);
    }
  }
  std::vector<Arg> all;
  for (size_t i = 0; i < tensors.size(); ++i) all.push_back({spec.tensors[i].name, tensors.begin()[i]});
  const Device dev = same_device(op, all);
  if (std::strcmp(spec.shape_rule, "elementwise") != 0) {
    for (size_t o = 0; o < all.size(); ++o) {
      if (spec.tensors[o].role == Role::Input || !all[o].t) continue;
      for (size_t i = 0; i < all.size(); ++i)
        if (spec.tensors[i].role == Role::Input && all[i].t)
          no_alias(op, all[o].name, *all[o].t, all[i].name, *all[i].t);
    }
  }
  return dev;
}

}  // namespace

// Run `call` (a backend.h function call without namespace) on device `dev`.
#define CONVNET_DISPATCH(dev, call) \
  do {                              \
    if ((dev).is_cuda()) {          \
      cuda::set_device((dev).index);\
      cuda::call;                   \
    } else {                        \
      cpu::call;                    \
    }                               \
  } while (0)

// ---------------------------------------------------------------------------------------------
// geometry

ConvShape conv_shape(const std::vector<int64_t>& xs, const std::vector<int64_t>& ws, Pair stride,
                     Pair pad, int groups, const char* op) {
  const std::string geo = "x " + shape_str(xs) + ", w " + shape_str(ws) + ", stride " + pair_str(stride) +
                          ", pad " + pair_str(pad) + ", groups " + std::to_string(groups);
  if (xs.size() != 4) fail(op, "x must be 4-D (N, H, W, C), got shape " + shape_str(xs));
  if (ws.size() != 4) fail(op, "w must be 4-D (K, R, S, C/groups), got shape " + shape_str(ws));
  if (stride.first <= 0 || stride.second <= 0) fail(op, "stride must be positive (" + geo + ")");
  if (pad.first < 0 || pad.second < 0) fail(op, "padding must be non-negative (" + geo + ")");
  if (groups <= 0) fail(op, "groups must be positive (" + geo + ")");
  ConvShape s{};
  s.N = to_int(op, "N", xs[0]);
  s.H = to_int(op, "H", xs[1]);
  s.W = to_int(op, "W", xs[2]);
  s.C = to_int(op, "C", xs[3]);
  s.K = to_int(op, "K", ws[0]);
  s.R = to_int(op, "R", ws[1]);
  s.S = to_int(op, "S", ws[2]);
  if (s.C % groups) fail(op, "groups must divide the input channels (" + geo + ")");
  if (s.K % groups) fail(op, "groups must divide the output channels K (" + geo + ")");
  if (ws[3] != s.C / groups)
    fail(op, "w has " + std::to_string(ws[3]) + " input channels per filter but x has " +
                 std::to_string(s.C) + " channels in " + std::to_string(groups) + " group(s), so w needs " +
                 std::to_string(s.C / groups) + " (" + geo + ")");
  if (s.R <= 0 || s.S <= 0 || s.K <= 0) fail(op, "filters must be non-empty (" + geo + ")");
  const int64_t P = sliding_extent(s.H, pad.first, s.R, stride.first);
  const int64_t Q = sliding_extent(s.W, pad.second, s.S, stride.second);
  if (P < 0 || Q < 0) fail(op, "kernel larger than the padded input (" + geo + ")");
  if (s.H + 2 * int64_t(pad.first) > 0x7fffffff || s.W + 2 * int64_t(pad.second) > 0x7fffffff)
    fail(op, "padded input over 2^31 - 1 pixels along an axis (" + geo + ")");
  s.stride_h = stride.first;
  s.stride_w = stride.second;
  s.pad_h = pad.first;
  s.pad_w = pad.second;
  s.groups = groups;
  s.P = to_int(op, "output height P", P);
  s.Q = to_int(op, "output width Q", Q);
  // The kernels index pixels, patch rows and filter rows with int.
  int_product(op, ("N*H*W (" + geo + ")").c_str(), {s.N, s.H, s.W});
  int_product(op, ("N*P*Q (" + geo + ")").c_str(), {s.N, s.P, s.Q});
  int_product(op, ("R*S*C (" + geo + ")").c_str(), {s.R, s.S, s.C});
  int_product(op, ("R*S*K (" + geo + ")").c_str(), {s.R, s.S, s.K});
  return s;
}

PoolShape pool_shape(const std::vector<int64_t>& xs, Pair window, Pair stride, Pair pad, const char* op) {
  const std::string geo = "x " + shape_str(xs) + ", window " + pair_str(window) + ", stride " +
                          pair_str(stride) + ", pad " + pair_str(pad);
  if (xs.size() != 4) fail(op, "x must be 4-D (N, H, W, C), got shape " + shape_str(xs));
  if (window.first <= 0 || window.second <= 0) fail(op, "window must be positive (" + geo + ")");
  if (stride.first <= 0 || stride.second <= 0) fail(op, "stride must be positive (" + geo + ")");
  if (pad.first < 0 || pad.second < 0) fail(op, "padding must be non-negative (" + geo + ")");
  if (pad.first >= window.first || pad.second >= window.second)
    fail(op, "padding must be smaller than the window, or a window could hold no input (" + geo + ")");
  PoolShape s{};
  s.N = to_int(op, "N", xs[0]);
  s.H = to_int(op, "H", xs[1]);
  s.W = to_int(op, "W", xs[2]);
  s.C = to_int(op, "C", xs[3]);
  s.R = window.first;
  s.S = window.second;
  const int64_t P = sliding_extent(s.H, pad.first, s.R, stride.first);
  const int64_t Q = sliding_extent(s.W, pad.second, s.S, stride.second);
  if (P < 0 || Q < 0) fail(op, "window larger than the padded input (" + geo + ")");
  if (s.H + 2 * int64_t(pad.first) > 0x7fffffff || s.W + 2 * int64_t(pad.second) > 0x7fffffff)
    fail(op, "padded input over 2^31 - 1 pixels along an axis (" + geo + ")");
  s.stride_h = stride.first;
  s.stride_w = stride.second;
  s.pad_h = pad.first;
  s.pad_w = pad.second;
  s.P = to_int(op, "output height P", P);
  s.Q = to_int(op, "output width Q", Q);
  // argmax holds the flat input index h*W + w as int32.
  int_product(op, ("H*W (" + geo + ")").c_str(), {s.H, s.W});
  return s;
}

// ---------------------------------------------------------------------------------------------
// memory

void copy_(const Tensor& dst, const Tensor& src) {
  const char* op = "copy_";
  need_defined(op, "dst", dst);
  need_defined(op, "src", src);
  if (dst.dtype() != src.dtype())
    fail(op, "dtypes differ: dst is " + dst.describe() + ", src is " + src.describe());
  need_shape(op, "dst", dst, src.shape(), "src " + src.shape_str());
  if (dst.same_storage(src) || dst.nbytes() == 0) return;
  const Device d = dst.device(), s = src.device();
  if (d.is_cuda() && s.is_cuda()) return cuda::copy_device_to_device(d.index, dst.raw(), s.index, src.raw(), src.nbytes());
  if (d.is_cuda()) return cuda::copy_host_to_device(d.index, dst.raw(), src.raw(), src.nbytes());
  if (s.is_cuda()) return cuda::copy_device_to_host(s.index, dst.raw(), src.raw(), src.nbytes());
  std::memcpy(dst.raw(), src.raw(), src.nbytes());
}

void fill_(const Tensor& t, float value) {
  const Device dev = check_tensors(spec::fill_, {&t});
  CONVNET_DISPATCH(dev, fill(t.f32(), t.numel(), value));
}

void add_(const Tensor& dst, const Tensor& src, float alpha) {
  const char* op = "add_";
  const Device dev = check_tensors(spec::add_, {&dst, &src});
  need_shape(op, "dst", dst, src.shape(), "src " + src.shape_str());
  CONVNET_DISPATCH(dev, add(dst.f32(), src.f32(), dst.numel(), alpha));
}

// ---------------------------------------------------------------------------------------------
// GEMM and fully connected

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta) {
  const char* op = "gemm";
  const Device dev = check_tensors(spec::gemm, {&a, &b, &c});
  need_dim(op, "a", a, 2, "(rows, cols)");
  need_dim(op, "b", b, 2, "(rows, cols)");
  need_dim(op, "c", c, 2, "(rows, cols)");
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t Kb = trans_b ? b.size(1) : b.size(0), N = trans_b ? b.size(0) : b.size(1);
  if (K != Kb)
    fail(op, "inner dimensions differ: op(a) is (" + std::to_string(M) + ", " + std::to_string(K) +
                 ") and op(b) is (" + std::to_string(Kb) + ", " + std::to_string(N) + ") (a " + a.shape_str() +
                 ", b " + b.shape_str() + ")");
  need_shape(op, "c", c, {M, N}, "op(a) op(b)");
  CONVNET_DISPATCH(dev, gemm(trans_a, trans_b, to_int(op, "M", M), to_int(op, "N", N), to_int(op, "K", K),
                             alpha, a.f32(), to_int(op, "lda", a.size(1)), b.f32(), to_int(op, "ldb", b.size(1)),
                             beta, c.f32(), to_int(op, "ldc", N)));
}

namespace {
// (N, in) view of an fc input: the batch dimension first, everything after it flattened.
std::pair<int64_t, int64_t> fc_rows_cols(const char* op, const char* name, const Tensor& x) {
  if (x.dim() < 2) fail(op, std::string(name) + " must be at least 2-D (N, features...), got shape " + x.shape_str());
  int64_t features = 1;  // the trailing dimensions flattened; an empty batch (N = 0) has them too
  for (int d = 1; d < x.dim(); ++d)
    if (__builtin_mul_overflow(features, x.size(d), &features))
      fail(op, std::string(name) + " " + x.shape_str() + " has more than 2^63 features");
  return {x.size(0), features};
}
}  // namespace

void fc_forward(const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& y, bool accumulate,
                bool relu) {
  const char* op = "fc_forward";
  const Device dev = check_tensors(spec::fc_forward, {&x, &w, ptr(b), &y});
  need_dim(op, "w", w, 2, "(out, in)");
  const auto [N, in] = fc_rows_cols(op, "x", x);
  if (w.size(1) != in)
    fail(op, "w " + w.shape_str() + " expects " + std::to_string(w.size(1)) + " input features but x " +
                 x.shape_str() + " has " + std::to_string(in));
  const int64_t out = w.size(0);
  need_shape(op, "y", y, {N, out}, "x " + x.shape_str() + " and w " + w.shape_str());
  if (b) need_shape(op, "b", *b, {out}, "w " + w.shape_str());
  no_alias_any(op, "y", y, {{"x", &x}, {"w", &w}, {"b", ptr(b)}});
  const int n = to_int(op, "N", N), o = to_int(op, "out", out), k = to_int(op, "in", in);
  CONVNET_DISPATCH(dev, gemm_bias_relu(false, true, n, o, k, 1.0f, x.f32(), k, w.f32(), k, accumulate ? 1.0f : 0.0f,
                                       y.f32(), o, data_or_null(b), relu));
}

void fc_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) {
  const char* op = "fc_backward_data";
  const Device dev = check_tensors(spec::fc_backward_data, {&dy, &w, &dx});
  need_dim(op, "w", w, 2, "(out, in)");
  need_dim(op, "dy", dy, 2, "(N, out)");
  const auto [N, in] = fc_rows_cols(op, "dx", dx);
  need_shape(op, "dy", dy, {N, w.size(0)}, "dx " + dx.shape_str() + " and w " + w.shape_str());
  if (in != w.size(1))
    fail(op, "dx " + dx.shape_str() + " has " + std::to_string(in) + " features but w " + w.shape_str() +
                 " expects " + std::to_string(w.size(1)));
  no_alias_any(op, "dx", dx, {{"dy", &dy}, {"w", &w}});
  const int n = to_int(op, "N", N), o = to_int(op, "out", w.size(0)), k = to_int(op, "in", in);
  CONVNET_DISPATCH(dev, gemm(false, false, n, k, o, 1.0f, dy.f32(), o, w.f32(), k, accumulate ? 1.0f : 0.0f, dx.f32(), k));
}

void fc_backward_weights(const Tensor& dy, const Tensor& x, const Tensor& dw, const OptTensor& db) {
  const char* op = "fc_backward_weights";
  const Device dev = check_tensors(spec::fc_backward_weights, {&dy, &x, &dw, ptr(db)});
  need_dim(op, "dy", dy, 2, "(N, out)");
  const auto [N, in] = fc_rows_cols(op, "x", x);
  if (dy.size(0) != N) fail(op, "dy " + dy.shape_str() + " and x " + x.shape_str() + " have different batch sizes");
  const int64_t out = dy.size(1);
  need_shape(op, "dw", dw, {out, in}, "dy " + dy.shape_str() + " and x " + x.shape_str());
  if (db) need_shape(op, "db", *db, {out}, "dy " + dy.shape_str());
  no_alias_any(op, "dw", dw, {{"dy", &dy}, {"x", &x}, {"db", ptr(db)}});
  if (db) no_alias_any(op, "db", *db, {{"dy", &dy}, {"x", &x}});
  const int n = to_int(op, "N", N), o = to_int(op, "out", out), k = to_int(op, "in", in);
  CONVNET_DISPATCH(dev, gemm(true, false, o, k, n, 1.0f, dy.f32(), o, x.f32(), k, 0.0f, dw.f32(), k));
  if (db) CONVNET_DISPATCH(dev, bias_grad(dy.f32(), N, o, db->f32(), false));
}

// ---------------------------------------------------------------------------------------------
// elementwise, dropout, loss, SGD

void relu_forward(const Tensor& x, const Tensor& y) {
  const char* op = "relu_forward";
  const Device dev = check_tensors(spec::relu_forward, {&x, &y});
  need_shape(op, "y", y, x.shape(), "x " + x.shape_str());
  CONVNET_DISPATCH(dev, relu_forward(x.f32(), y.f32(), x.numel()));
}

void relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const char* op = "relu_backward";
  const Device dev = check_tensors(spec::relu_backward, {&y, &dy, &dx});
  need_shape(op, "dy", dy, y.shape(), "y " + y.shape_str());
  need_shape(op, "dx", dx, y.shape(), "y " + y.shape_str());
  CONVNET_DISPATCH(dev, relu_backward(y.f32(), dy.f32(), dx.f32(), y.numel()));
}

namespace {
void need_finite(const char* op, const char* name, float v) {
  if (!std::isfinite(v)) fail(op, std::string(name) + " must be finite, got " + std::to_string(v));
}
}  // namespace

void leaky_relu_forward(const Tensor& x, const Tensor& y, float slope) {
  const char* op = "leaky_relu_forward";
  const Device dev = check_tensors(spec::leaky_relu_forward, {&x, &y});
  need_finite(op, "slope", slope);
  need_shape(op, "y", y, x.shape(), "x " + x.shape_str());
  CONVNET_DISPATCH(dev, leaky_relu_forward(x.f32(), y.f32(), x.numel(), slope));
}

void leaky_relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, float slope) {
  const char* op = "leaky_relu_backward";
  const Device dev = check_tensors(spec::leaky_relu_backward, {&x, &dy, &dx});
  need_finite(op, "slope", slope);
  need_shape(op, "dy", dy, x.shape(), "x " + x.shape_str());
  need_shape(op, "dx", dx, x.shape(), "x " + x.shape_str());
  CONVNET_DISPATCH(dev, leaky_relu_backward(x.f32(), dy.f32(), dx.f32(), x.numel(), slope));
}

namespace {
void need_probability(const char* op, float p) {
  if (!(p >= 0.0f && p < 1.0f)) fail(op, "p must be in [0, 1), got " + std::to_string(p));
}

// Element i takes element offset + i of the draw, which has 2**64 elements (indices up to 2**64 - 1).
void need_in_draw(const char* op, const char* name, const Tensor& t, uint64_t offset) {
  const uint64_t n = static_cast<uint64_t>(t.numel());
  if (n > 0 && offset > std::numeric_limits<uint64_t>::max() - (n - 1))
    fail(op, "offset=" + std::to_string(offset) + " plus the " + std::to_string(n) + " elements of " + name +
                 " run past the end of the Philox draw (element 2**64 - 1)");
}
}  // namespace

void dropout_forward(const Tensor& x, const Tensor& y, float p, uint64_t seed, uint64_t counter,
                     uint64_t offset) {
  const char* op = "dropout_forward";
  const Device dev = check_tensors(spec::dropout_forward, {&x, &y});
  need_probability(op, p);
  need_shape(op, "y", y, x.shape(), "x " + x.shape_str());
  need_in_draw(op, "x", x, offset);
  CONVNET_DISPATCH(dev, dropout_forward(x.f32(), y.f32(), x.numel(), p, seed, counter, offset));
}

void dropout_backward(const Tensor& dy, const Tensor& dx, float p, uint64_t seed, uint64_t counter,
                      uint64_t offset) {
  const char* op = "dropout_backward";
  const Device dev = check_tensors(spec::dropout_backward, {&dy, &dx});
  need_probability(op, p);
  need_shape(op, "dx", dx, dy.shape(), "dy " + dy.shape_str());
  need_in_draw(op, "dy", dy, offset);
  CONVNET_DISPATCH(dev, dropout_backward(dy.f32(), dx.f32(), dy.numel(), p, seed, counter, offset));
}

void softmax_cross_entropy(const Tensor& logits, const Tensor& labels, const OptTensor& dlogits,
                           const Tensor& stats) {
  const char* op = "softmax_cross_entropy";
  const Device dev = check_tensors(spec::softmax_cross_entropy, {&logits, &labels, ptr(dlogits), &stats});
  need_dim(op, "logits", logits, 2, "(N, classes)");
  need_shape(op, "labels", labels, {logits.size(0)}, "logits " + logits.shape_str());
  need_shape(op, "stats", stats, {3}, "[loss, top-1 hits, top-5 hits]");
  if (dlogits) need_shape(op, "dlogits", *dlogits, logits.shape(), "logits " + logits.shape_str());
  no_alias_any(op, "stats", stats, {{"logits", &logits}, {"dlogits", ptr(dlogits)}});
  if (logits.size(0) == 0 || logits.size(1) == 0) fail(op, "logits " + logits.shape_str() + " is empty");
  // Labels are checked on the host only when they live there; the kernels treat an out-of-range
  // label as a hit of nothing with loss -log(eps) rather than reading out of bounds.
  if (!dev.is_cuda()) {
    const int32_t* l = labels.i32();
    for (int64_t i = 0; i < labels.numel(); ++i)
      if (l[i] < 0 || l[i] >= logits.size(1))
        fail(op, "label " + std::to_string(l[i]) + " at row " + std::to_string(i) + " is outside [0, " +
                     std::to_string(logits.size(1)) + ") for logits " + logits.shape_str());
  }
  CONVNET_DISPATCH(dev, softmax_cross_entropy(logits.f32(), labels.i32(), to_int(op, "N", logits.size(0)),
                                              to_int(op, "C", logits.size(1)), data_or_null(dlogits), stats.f32()));
}

void sgd_update(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                const std::vector<Tensor>& velocities, const std::vector<float>& lrs,
                const std::vector<float>& weight_decays, float momentum) {
  const char* op = "sgd_update";
  const size_t n = params.size();
  if (grads.size() != n || velocities.size() != n || lrs.size() != n || weight_decays.size() != n)
    fail(op, "params, grads, velocities, lrs and weight_decays must have one entry per parameter (got " +
                 std::to_string(n) + ", " + std::to_string(grads.size()) + ", " + std::to_string(velocities.size()) +
                 ", " + std::to_string(lrs.size()) + ", " + std::to_string(weight_decays.size()) + ")");
  // Written so that NaN fails every test.
  if (!(momentum >= 0.0f && momentum < 1.0f))
    fail(op, "momentum must be in [0, 1), got " + std::to_string(momentum));
  for (size_t i = 0; i < lrs.size(); ++i)
    if (!(lrs[i] >= 0.0f && std::isfinite(lrs[i])) || !(weight_decays[i] >= 0.0f && std::isfinite(weight_decays[i])))
      fail(op, "entry " + std::to_string(i) + " needs a finite lr >= 0 and weight decay >= 0, got lr " +
                   std::to_string(lrs[i]) + ", weight decay " + std::to_string(weight_decays[i]));
  if (n == 0) return;
  std::vector<SgdParam> list(n);
  const Device dev = params[0].defined() ? params[0].device() : Device::cpu();
  for (size_t i = 0; i < n; ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    need_f32(op, ("params" + idx).c_str(), params[i]);
    need_f32(op, ("grads" + idx).c_str(), grads[i]);
    need_f32(op, ("velocities" + idx).c_str(), velocities[i]);
    need_shape(op, ("grads" + idx).c_str(), grads[i], params[i].shape(), "params" + idx + " " + params[i].shape_str());
    need_shape(op, ("velocities" + idx).c_str(), velocities[i], params[i].shape(), "params" + idx + " " + params[i].shape_str());
    for (const Tensor* t : {&params[i], &grads[i], &velocities[i]})
      if (t->device() != dev)
        fail(op, "all tensors must be on one device: params[0] is on " + dev.str() + " but entry " +
                     std::to_string(i) + " has a tensor on " + t->device().str());
    list[i] = SgdParam{params[i].f32(), grads[i].f32(), velocities[i].f32(), params[i].numel(), lrs[i], weight_decays[i]};
  }
  // The written tensors (params, velocities) are pairwise distinct and no gradient is one of them:
  // a parameter twice in the list would be updated twice, a velocity that is its parameter would
  // mix the two. One map of storages, O(n) for n parameters.
  std::unordered_map<const void*, std::string> written;
  for (size_t i = 0; i < n; ++i)
    for (const auto& [kind, t] : {std::pair<const char*, const Tensor*>{"params", &params[i]}, {"velocities", &velocities[i]}}) {
      const std::string name = std::string(kind) + "[" + std::to_string(i) + "]";
      const auto [it, fresh] = written.emplace(t->raw(), name);
      if (!fresh) fail(op, name + " shares memory with " + it->second + " (each is written once)");
    }
  for (size_t i = 0; i < n; ++i) {
    const auto it = written.find(grads[i].raw());
    if (it != written.end()) fail(op, "grads[" + std::to_string(i) + "] shares memory with " + it->second);
  }
  CONVNET_DISPATCH(dev, sgd_update(list.data(), static_cast<int>(n), momentum));
}

// ---------------------------------------------------------------------------------------------
// convolution

// The conv ops' algorithm= argument, checked against the shape (both backends run every Winograd shape).
ConvAlgorithm conv_algorithm(const char* op, const std::string& name, const ConvShape& s) {
  if (name == "auto") return ConvAlgorithm::Auto;
  if (name == "direct") return ConvAlgorithm::Direct;
  if (name != "winograd") fail(op, "algorithm must be 'auto', 'direct' or 'winograd', got '" + name + "'");
  const std::string why = cpu::winograd_unsupported(s);
  if (!why.empty())
    fail(op, "algorithm='winograd': " + why + " (filter " + std::to_string(s.R) + "x" + std::to_string(s.S) +
                 ", stride (" + std::to_string(s.stride_h) + ", " + std::to_string(s.stride_w) + "), pad (" +
                 std::to_string(s.pad_h) + ", " + std::to_string(s.pad_w) + ")); use 'auto' or 'direct'");
  return ConvAlgorithm::Winograd;
}

// Whether a conv pass on `dev` runs as CUDA Winograd (cuda/winograd.cu; the CPU decides inside its
// conv kernels, csrc/cpu/conv.cpp). Makes the device current when it does.
bool cuda_winograd(const Device& dev, const ConvShape& s, ConvPass pass) {
  if (!dev.is_cuda()) return false;
  cuda::set_device(dev.index);
  return cuda::winograd_chosen(s, pass);
}

void conv_forward(const Tensor& x, const Tensor& w, const OptTensor& b, const Tensor& y, Pair stride,
                  Pair pad, int groups, bool accumulate, bool relu, const std::string& algorithm) {
  const char* op = "conv_forward";
  const Device dev = check_tensors(spec::conv_forward, {&x, &w, ptr(b), &y});
  ConvShape s = conv_shape(x.shape(), w.shape(), stride, pad, groups, op);
  need_shape(op, "y", y, {s.N, s.P, s.Q, s.K}, "x " + x.shape_str() + " with w " + w.shape_str());
  if (b) need_shape(op, "b", *b, {s.K}, "w " + w.shape_str());
  no_alias_any(op, "y", y, {{"x", &x}, {"w", &w}, {"b", ptr(b)}});
  s.algorithm = conv_algorithm(op, algorithm, s);
  if (cuda_winograd(dev, s, ConvPass::Forward))
    return cuda::winograd_conv_forward(s, x.f32(), w.f32(), data_or_null(b), y.f32(), accumulate, relu);
  CONVNET_DISPATCH(dev, conv_forward(s, x.f32(), w.f32(), data_or_null(b), y.f32(), accumulate, relu));
}

void conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, Pair stride, Pair pad,
                        int groups, bool accumulate, const std::string& algorithm) {
  const char* op = "conv_backward_data";
  const Device dev = check_tensors(spec::conv_backward_data, {&dy, &w, &dx});
  ConvShape s = conv_shape(dx.shape(), w.shape(), stride, pad, groups, op);
  need_shape(op, "dy", dy, {s.N, s.P, s.Q, s.K}, "dx " + dx.shape_str() + " with w " + w.shape_str());
  no_alias_any(op, "dx", dx, {{"dy", &dy}, {"w", &w}});
  s.algorithm = conv_algorithm(op, algorithm, s);
  if (cuda_winograd(dev, s, ConvPass::BackwardData))
    return cuda::winograd_conv_backward_data(s, dy.f32(), w.f32(), dx.f32(), accumulate);
  CONVNET_DISPATCH(dev, conv_backward_data(s, dy.f32(), w.f32(), dx.f32(), accumulate));
}

void conv_backward_filter(const Tensor& dy, const Tensor& x, const Tensor& dw, const OptTensor& db,
                          Pair stride, Pair pad, int groups, bool accumulate, const std::string& algorithm) {
  const char* op = "conv_backward_filter";
  const Device dev = check_tensors(spec::conv_backward_filter, {&dy, &x, &dw, ptr(db)});
  ConvShape s = conv_shape(x.shape(), dw.shape(), stride, pad, groups, op);
  need_shape(op, "dy", dy, {s.N, s.P, s.Q, s.K}, "x " + x.shape_str() + " with dw " + dw.shape_str());
  if (db) need_shape(op, "db", *db, {s.K}, "dw " + dw.shape_str());
  no_alias_any(op, "dw", dw, {{"dy", &dy}, {"x", &x}, {"db", ptr(db)}});
  if (db) no_alias_any(op, "db", *db, {{"dy", &dy}, {"x", &x}});
  s.algorithm = conv_algorithm(op, algorithm, s);
  if (cuda_winograd(dev, s, ConvPass::BackwardFilter))
    return cuda::winograd_conv_backward_filter(s, dy.f32(), x.f32(), dw.f32(), data_or_null(db), accumulate);
  CONVNET_DISPATCH(dev, conv_backward_filter(s, dy.f32(), x.f32(), dw.f32(), data_or_null(db), accumulate));
}

// ---------------------------------------------------------------------------------------------
// LRN and pooling

namespace {
LrnParams lrn_params(const char* op, int size, float alpha, float beta, float k, bool alpha_over_size) {
  if (size <= 0) fail(op, "size must be positive, got " + std::to_string(size));
  // Written so that NaN fails every test; infinities would make every output 0 or NaN.
  if (!(k > 0.0f) || !(alpha >= 0.0f) || !(beta >= 0.0f) || !std::isfinite(k) || !std::isfinite(alpha) ||
      !std::isfinite(beta))
    fail(op, "need finite k > 0, alpha >= 0 and beta >= 0 (got k=" + std::to_string(k) + ", alpha=" +
                 std::to_string(alpha) + ", beta=" + std::to_string(beta) + ")");
  return LrnParams{size, alpha_over_size ? alpha / size : alpha, beta, k};
}
// N*H*W of an (N, H, W, C) tensor; 0 when any dimension is 0 (C = 0 too: no division by it).
int64_t pixel_rows(const Tensor& x) { return x.numel() ? x.numel() / x.size(-1) : 0; }
}  // namespace

void lrn_forward(const Tensor& x, const Tensor& y, int size, float alpha, float beta, float k,
                 bool alpha_over_size) {
  const char* op = "lrn_forward";
  const Device dev = check_tensors(spec::lrn_forward, {&x, &y});
  need_dim(op, "x", x, 4, "(N, H, W, C)");
  need_shape(op, "y", y, x.shape(), "x " + x.shape_str());
  const LrnParams p = lrn_params(op, size, alpha, beta, k, alpha_over_size);
  CONVNET_DISPATCH(dev, lrn_forward(x.f32(), y.f32(), pixel_rows(x), to_int(op, "C", x.size(-1)), p));
}

void lrn_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx, int size,
                  float alpha, float beta, float k, bool alpha_over_size) {
  const char* op = "lrn_backward";
  const Device dev = check_tensors(spec::lrn_backward, {&x, &y, &dy, &dx});
  need_dim(op, "x", x, 4, "(N, H, W, C)");
  need_shape(op, "y", y, x.shape(), "x " + x.shape_str());
  need_shape(op, "dy", dy, x.shape(), "x " + x.shape_str());
  need_shape(op, "dx", dx, x.shape(), "x " + x.shape_str());
  const LrnParams p = lrn_params(op, size, alpha, beta, k, alpha_over_size);
  no_alias_any(op, "dx", dx, {{"dy", &dy}, {"x", &x}, {"y", &y}});
  CONVNET_DISPATCH(dev, lrn_backward(x.f32(), y.f32(), dy.f32(), dx.f32(), pixel_rows(x), to_int(op, "C", x.size(-1)), p));
}

void max_pool_forward(const Tensor& x, const Tensor& y, const Tensor& argmax, Pair window, Pair stride,
                      Pair pad) {
  const char* op = "max_pool_forward";
  const Device dev = check_tensors(spec::max_pool_forward, {&x, &y, &argmax});
  const PoolShape s = pool_shape(x.shape(), window, stride, pad, op);
  need_shape(op, "y", y, {s.N, s.P, s.Q, s.C}, "x " + x.shape_str() + " pooled");
  need_shape(op, "argmax", argmax, {s.N, s.P, s.Q, s.C}, "x " + x.shape_str() + " pooled");
  CONVNET_DISPATCH(dev, max_pool_forward(s, x.f32(), y.f32(), argmax.i32()));
}

void max_pool_backward(const Tensor& dy, const Tensor& argmax, const Tensor& dx, Pair window,
                       Pair stride, Pair pad) {
  const char* op = "max_pool_backward";
  const Device dev = check_tensors(spec::max_pool_backward, {&dy, &argmax, &dx});
  const PoolShape s = pool_shape(dx.shape(), window, stride, pad, op);
  need_shape(op, "dy", dy, {s.N, s.P, s.Q, s.C}, "dx " + dx.shape_str() + " pooled");
  need_shape(op, "argmax", argmax, {s.N, s.P, s.Q, s.C}, "dx " + dx.shape_str() + " pooled");
  CONVNET_DISPATCH(dev, max_pool_backward(s, dy.f32(), argmax.i32(), dx.f32()));
}

void avg_pool_forward(const Tensor& x, const Tensor& y, Pair window, Pair stride, Pair pad) {
  const char* op = "avg_pool_forward";
  const Device dev = check_tensors(spec::avg_pool_forward, {&x, &y});
  const PoolShape s = pool_shape(x.shape(), window, stride, pad, op);
  need_shape(op, "y", y, {s.N, s.P, s.Q, s.C}, "x " + x.shape_str() + " pooled");
  CONVNET_DISPATCH(dev, avg_pool_forward(s, x.f32(), y.f32()));
}

void avg_pool_backward(const Tensor& dy, const Tensor& dx, Pair window, Pair stride, Pair pad) {
  const char* op = "avg_pool_backward";
  const Device dev = check_tensors(spec::avg_pool_backward, {&dy, &dx});
  const PoolShape s = pool_shape(dx.shape(), window, stride, pad, op);
  need_shape(op, "dy", dy, {s.N, s.P, s.Q, s.C}, "dx " + dx.shape_str() + " pooled");
  CONVNET_DISPATCH(dev, avg_pool_backward(s, dy.f32(), dx.f32()));
}

}  // namespace ops
}  // namespace convnet
