// The only pybind11 file: exposes Tensor, devices, build information, the runtime (runtime.h) and every
// op of the op table (ops.def) as convnet._C; the ops' bindings and convnet._C.op_table come from the table.
// Errors cross as Python exceptions: std::invalid_argument -> ValueError, OutOfMemoryError -> MemoryError,
// std::runtime_error (CUDA failures) -> RuntimeError. Integer arguments (the ops' int, uint64_t and Pair
// attributes, shapes) take any Python int and are range-checked here (to_int): ValueError naming the op
// and the argument when the C++ type cannot hold the value, TypeError naming them for a non-integer.
// Ops release the GIL while they run, so data-loading threads keep working during a step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>

#include "backend.h"
#include "cpu/gemm_bf16.h"
#include "cpu/parallel.h"
#include "ops.h"
#include "runtime.h"
#include "streams.h"
#include "tensor.h"
#include "upload.h"

namespace py = pybind11;
using namespace convnet;

// ---- integer arguments ---------------------------------------------------------------------------
// pybind11's own int casters refuse a Python int outside the C++ type's range (2**40 for an int, -1
// for a uint64_t) as "incompatible function arguments", a TypeError that names neither the argument
// nor the limit. So the ops' int, uint64_t and Pair attributes are bound as PyInt / PyPair: casters
// that take any Python object as it is, narrowed by to_int / to_pair below with the op's and the
// argument's names (def_op). The Python signature still reads int / tuple[int, int].
namespace {
struct PyInt {
  py::object value;
};
struct PyPair {
  py::object value;
};
}  // namespace

namespace pybind11 {
namespace detail {
template <>
struct type_caster<PyInt> {
  PYBIND11_TYPE_CASTER(PyInt, const_name("int"));
  bool load(handle src, bool) {
    value.value = reinterpret_borrow<object>(src);
    return true;
  }
};
template <>
struct type_caster<PyPair> {
  PYBIND11_TYPE_CASTER(PyPair, const_name("tuple[int, int]"));
  bool load(handle src, bool) {
    value.value = reinterpret_borrow<object>(src);
    return true;
  }
};
}  // namespace detail
}  // namespace pybind11

namespace {

std::string describe(py::handle v) {
  return std::string(py::repr(v)) + " (" + std::string(py::str(py::type::handle_of(v).attr("__name__"))) + ")";
}

// v as a Python int: an int or anything with __index__ (NumPy integers), never a bool or a float
// (TypeError "<op>: <what> must be an int, got 2.0 (float)").
py::int_ as_index(py::handle v, const char* op, const std::string& what) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    throw py::type_error(std::string(op) + ": " + what + " must be an int, got " + describe(v));
  PyObject* i = PyNumber_Index(v.ptr());
  if (!i) throw py::error_already_set();  // an __index__ that raised
  return py::reinterpret_steal<py::int_>(i);
}

template <class T>
bool fits(const py::int_& i) {
  return !(i < py::int_(std::numeric_limits<T>::min())) && !(i > py::int_(std::numeric_limits<T>::max()));
}

template <class T>
[[noreturn]] void out_of_range(const char* op, const std::string& what, py::handle shown) {
  throw py::value_error(std::string(op) + ": " + what + "=" + std::string(py::str(shown)) +
                        " is out of range [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
                        std::to_string(std::numeric_limits<T>::max()) + "]");
}

// v as a T (int, int64_t, uint64_t): ValueError "<op>: <what>=<v> is out of range [lo, hi]" when T
// cannot hold it.
template <class T>
T to_int(py::handle v, const char* op, const std::string& what) {
  const py::int_ i = as_index(v, op, what);
  if (!fits<T>(i)) out_of_range<T>(op, what, i);
  return i.cast<T>();
}

// v as a Pair: a sequence of two ints (a tuple, a list), each in int's range.
ops::Pair to_pair(py::handle v, const char* op, const std::string& what) {
  if (!PySequence_Check(v.ptr()) || PyUnicode_Check(v.ptr()) || PyBytes_Check(v.ptr()) ||
      PySequence_Size(v.ptr()) != 2) {
    PyErr_Clear();  // PySequence_Size of an object without a length
    throw py::type_error(std::string(op) + ": " + what + " must be a (height, width) pair of ints, got " +
                         describe(v));
  }
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
  const py::int_ h = as_index(seq[0], op, what + "[0]"), w = as_index(seq[1], op, what + "[1]");
  if (!fits<int>(h) || !fits<int>(w)) out_of_range<int>(op, what, py::make_tuple(h, w));
  return {h.cast<int>(), w.cast<int>()};
}

// A shape (d0, d1, ...): each dimension an int64 (its sign and size are Tensor's and the ops' to check).
std::vector<int64_t> to_shape(const py::iterable& shape, const char* op, const char* what = "shape") {
  std::vector<int64_t> out;
  for (auto d : shape)
    out.push_back(to_int<int64_t>(d, op, std::string(what) + "[" + std::to_string(out.size()) + "]"));
  return out;
}

// How each C++ parameter type of an op is taken from Python (PyArg<T>::type) and turned into the C++
// value (to_cpp): as pybind11 casts it, except the integer attributes, which are checked as above.
template <class T>
struct PyArg {
  using type = T;
  static T to_cpp(T v, const char*, const char*) { return v; }
};
template <>
struct PyArg<int> {
  using type = PyInt;
  static int to_cpp(const PyInt& v, const char* op, const char* arg) { return to_int<int>(v.value, op, arg); }
};
template <>
struct PyArg<uint64_t> {
  using type = PyInt;
  static uint64_t to_cpp(const PyInt& v, const char* op, const char* arg) {
    return to_int<uint64_t>(v.value, op, arg);
  }
};
template <>
struct PyArg<ops::Pair> {
  using type = PyPair;
  static ops::Pair to_cpp(const PyPair& v, const char* op, const char* arg) { return to_pair(v.value, op, arg); }
};

// convnet.ops.<name>: converts every argument (left to right, so the first bad one is the one
// named), then runs the op with the GIL released.
template <class... Args, class... Extra, size_t... I>
void def_op_(py::module_& m, const char* name, void (*fn)(Args...), const char* doc, std::index_sequence<I...>,
             const Extra&... extra) {
  const std::array<const char*, sizeof...(Args)> names{extra.name...};
  m.def(
      name,
      [fn, name, names](typename PyArg<Args>::type... args) {
        std::tuple<Args...> cpp{PyArg<Args>::to_cpp(args, name, names[I])...};
        py::gil_scoped_release release;
        std::apply(fn, std::move(cpp));
      },
      doc, extra...);
}
template <class... Args, class... Extra>
void def_op(py::module_& m, const char* name, void (*fn)(Args...), const char* doc, const Extra&... extra) {
  static_assert(sizeof...(Args) == sizeof...(Extra), "one py::arg per parameter");
  def_op_(m, name, fn, doc, std::index_sequence_for<Args...>{}, extra...);
}

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "int32") return DType::Int32;
  throw std::invalid_argument("unknown dtype '" + name + "': convnet tensors are 'float32' or 'int32'");
}

// float32 or int32, else ValueError naming `op`, the dtype and the shape.
DType numpy_dtype(const py::array& array, const char* op) {
  if (array.dtype().is(py::dtype::of<float>())) return DType::Float32;
  if (array.dtype().is(py::dtype::of<int32_t>())) return DType::Int32;
  throw std::invalid_argument(std::string(op) + ": expected a float32 or int32 array, got " +
                              std::string(py::str(array.dtype())) +
                              " with shape " + std::string(py::str(array.attr("shape"))) +
                              " (convert it first, e.g. x.astype(numpy.float32))");
}

Tensor from_numpy(const py::array& array, const std::string& device) {
  const DType dtype = numpy_dtype(array, "Tensor.from_numpy");
  std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
  const Device dev = Device::parse(device);
  // A C-contiguous host copy when the array is strided or not aligned the way we read it.
  py::array contiguous = py::array::ensure(array, py::array::c_style);
  Tensor host = Tensor::empty(shape, dtype, Device::cpu());
  const void* src = contiguous.data();
  py::gil_scoped_release release;  // `contiguous` stays alive; loader threads run meanwhile
  if (host.nbytes()) std::memcpy(host.raw(), src, host.nbytes());
  if (!dev.is_cuda()) return host;
  Tensor t = Tensor::empty(shape, dtype, dev);
  ops::copy_(t, host);
  return t;
}

py::array to_numpy(const Tensor& t) {
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  py::array out = t.dtype() == DType::Float32 ? py::array(py::dtype::of<float>(), shape)
                                               : py::array(py::dtype::of<int32_t>(), shape);
  if (t.nbytes() == 0) return out;
  if (t.device().is_cuda()) {
    Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::cpu());
    {
      py::gil_scoped_release release;
      ops::copy_(host, t);
    }
    std::memcpy(out.mutable_data(), host.raw(), t.nbytes());
  } else {
    std::memcpy(out.mutable_data(), t.raw(), t.nbytes());
  }
  return out;
}

Tensor to_device(const Tensor& t, const std::string& device) {
  const Device dev = Device::parse(device);
  if (dev == t.device()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), dev);
  py::gil_scoped_release release;
  ops::copy_(out, t);
  return out;
}

std::vector<std::string> devices() {
  std::vector<std::string> out{"cpu"};
  for (int i = 0; i < cuda::device_count(); ++i) out.push_back("cuda:" + std::to_string(i));
  return out;
}

py::dict build_info() {
  py::dict info;
  info["version"] = CONVNET_VERSION;
  info["cuda"] = cuda::compiled();
  py::list archs;
  std::string text = CONVNET_CUDA_ARCHS;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) archs.append(text.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_architectures"] = archs;
  info["cuda_devices"] = cuda::device_count();
  py::list names;
  for (int i = 0; i < cuda::device_count(); ++i)
    names.append(cuda::device_name(i) + " (sm_" + cuda::device_capability(i) + ")");
  info["cuda_device_names"] = names;
  info["openmp"] = std::string(CONVNET_OPENMP) == "yes";
  info["cpu_threads"] = cpu::num_threads();
#if defined(__AVX512F__)
  info["cpu_simd"] = "avx512";
#elif defined(__AVX2__)
  info["cpu_simd"] = "avx2";
#else
  info["cpu_simd"] = "baseline";
#endif
  info["compiler"] = __VERSION__;
  return info;
}

using GIL = py::call_guard<py::gil_scoped_release>;
using ops::Pair;

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "convnet's compiled core: tensors, devices and the ops of csrc/ops.h";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfMemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  py::class_<Tensor>(m, "Tensor", R"doc(
A dense float32 or int32 array on one device ("cpu", "cuda:0", ...), row-major and contiguous.

Activations are (N, H, W, C); conv filters (K, R, S, C/groups); fully-connected weights (out, in).
Make one with Tensor.from_numpy(array, device), Tensor.empty/zeros(shape, device, dtype); read it back
with .numpy(); move it with .to(device).
)doc")
      .def_static("from_numpy", &from_numpy, py::arg("array"), py::arg("device") = "cpu",
                  "Copy a float32 or int32 NumPy array onto `device`.")
      .def_static(
          "empty",
          [](py::iterable shape, const std::string& device, const std::string& dtype) {
            return Tensor::empty(to_shape(shape, "Tensor.empty"), parse_dtype(dtype), Device::parse(device));
          },
          py::arg("shape"), py::arg("device") = "cpu", py::arg("dtype") = "float32",
          "Uninitialised tensor of `shape` on `device`.")
      .def_static(
          "zeros",
          [](py::iterable shape, const std::string& device, const std::string& dtype) {
            Tensor t = Tensor::empty(to_shape(shape, "Tensor.zeros"), parse_dtype(dtype), Device::parse(device));
            if (t.dtype() == DType::Float32) {
              ops::fill_(t, 0.0f);
            } else if (t.device().is_cuda()) {
              Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::cpu());
              std::memset(host.raw(), 0, host.nbytes());
              ops::copy_(t, host);
            } else {
              std::memset(t.raw(), 0, t.nbytes());
            }
            return t;
          },
          py::arg("shape"), py::arg("device") = "cpu", py::arg("dtype") = "float32")
      .def("numpy", &to_numpy, "A NumPy copy of the data (waits for the device).")
      .def("__array__", [](const Tensor& t, py::args, py::kwargs) { return to_numpy(t); })
      .def("to", &to_device, py::arg("device"), "This tensor on `device` (itself if already there).")
      .def("reshape", [](const Tensor& t, py::iterable shape) { return t.reshape(to_shape(shape, "Tensor.reshape")); },
           "A view with another shape of the same element count (shares memory).")
      .def("copy_", [](const Tensor& self, const Tensor& src) { py::gil_scoped_release r; ops::copy_(self, src); return self; },
           py::arg("src"), "Copy `src` (same shape and dtype, any device) into this tensor.")
      .def("fill_", [](const Tensor& self, float v) { ops::fill_(self, v); return self; }, py::arg("value"))
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_property_readonly("numel", &Tensor::numel)
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def_property_readonly("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); },
                             "The address of the first element (for NCCL and other engines; convnet/nccl.py).")
      .def_property_readonly("ndim", &Tensor::dim)
      .def("__len__", [](const Tensor& t) { return t.dim() ? t.size(0) : 0; })
      .def("same_storage", &Tensor::same_storage)
      .def("__repr__", [](const Tensor& t) { return "Tensor(" + t.describe() + ")"; });

  py::class_<Uploader>(m, "Uploader", R"doc(
Uploads host arrays onto a device without stalling its compute stream (csrc/upload.h): put(array)
copies into a pinned staging buffer (GIL released) and starts the host->device copy on the device's
upload stream after the work queued so far; get() returns the oldest upload's tensor, with this
thread's stream ordered after its copy. A tensor handed out is never overwritten while held.
convnet.upload_batches drives it for the training loop.
)doc")
      .def(py::init([](const std::string& device, PyInt depth) {
             return std::make_unique<Uploader>(Device::parse(device), to_int<int>(depth.value, "Uploader", "depth"));
           }),
           py::arg("device"), py::arg("depth") = 3)
      .def("put", [](Uploader& u, const py::array& array) {
             const DType dtype = numpy_dtype(array, "Uploader.put");
             std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
             py::array contiguous = py::array::ensure(array, py::array::c_style);
             const void* src = contiguous.data();
             py::gil_scoped_release release;
             u.put(src, shape, dtype);
           }, py::arg("array"), "Start uploading a float32 or int32 array (copied before this returns).")
      .def("get", &Uploader::get, GIL(), "The oldest upload not yet taken, as a Tensor on the device.")
      .def_property_readonly("device", [](const Uploader& u) { return u.device().str(); })
      .def_property_readonly("depth", &Uploader::depth)
      .def_property_readonly("pending", &Uploader::pending, "uploads put and not yet taken")
      .def_property_readonly("allocations", &Uploader::allocations,
                             "device tensors made so far (stays at depth while handed-out tensors are dropped)");

  m.def("devices", &devices, "Devices this build can run on here: 'cpu', then 'cuda:0', 'cuda:1', ...");
  m.def("build_info", &build_info, "How this module was built and what it found: CUDA, architectures, threads.");
  // ---- the runtime: devices, streams and copies between streams (csrc/runtime.h) -----------------
  m.def("synchronize", &runtime::synchronize, py::arg("device"), GIL(),
        "Wait until all work queued on `device` has finished.");
  m.def("set_device", &runtime::set_device, py::arg("device"),
        "Make a CUDA device current for this thread (NCCL creates its communicators there).");
  m.def("memory_stats", [](const std::string& device) {
    const runtime::MemoryStats s = runtime::memory_stats(device);
    py::dict out;
    out["allocated_bytes"] = s.allocated_bytes;
    out["cached_bytes"] = s.cached_bytes;
    return out;
  }, py::arg("device"), "Bytes held by tensors and by the caching allocator on a CUDA device.");
  m.def("empty_cache", &runtime::empty_cache, py::arg("device"),
        "Return the caching allocator's free blocks on a CUDA device to the driver.");
  m.def("can_access_peer", &runtime::can_access_peer, py::arg("device"), py::arg("peer"));
  m.attr("stream_slots") = cuda::kStreamSlots;  // towers a device can run concurrently
  def_op(m, "set_stream", &runtime::set_stream,
         "This thread's launches on `device` go to its compute stream number `slot` (a tower); no-op on cpu.",
         py::arg("device"), py::arg("slot"));
  m.def("stream_barrier", &runtime::stream_barrier, py::arg("devices"), GIL(),
        "Every stream of these devices waits for everything queued on all of them.");
  def_op(m, "copy_between", &runtime::copy_between,
         "dst <- src from the producer's stream (src's device, src_slot) to the consumer's (dst's device, "
         "dst_slot) through the pair's copy stream, ordered by events; keep src alive and unwritten until "
         "the next stream_barrier. Any devices; a plain copy on the CPU.",
         py::arg("dst"), py::arg("dst_slot"), py::arg("src"), py::arg("src_slot"));
  m.def("conv_output_shape", [](py::iterable x_shape, py::iterable w_shape, PyPair stride, PyPair pad, PyInt groups) {
    const char* op = "conv_output_shape";
    const ConvShape s = ops::conv_shape(to_shape(x_shape, op, "x_shape"), to_shape(w_shape, op, "w_shape"),
                                        to_pair(stride.value, op, "stride"), to_pair(pad.value, op, "pad"),
                                        to_int<int>(groups.value, op, "groups"), op);
    return py::make_tuple(s.N, s.P, s.Q, s.K);
  }, py::arg("x_shape"), py::arg("w_shape"), py::arg("stride") = Pair{1, 1}, py::arg("pad") = Pair{0, 0}, py::arg("groups") = 1,
     "(N, P, Q, K) of conv_forward for x (N, H, W, C) and w (K, R, S, C/groups); ValueError when invalid.");
  m.def("pool_output_shape", [](py::iterable x_shape, PyPair window, PyPair stride, PyPair pad) {
    const char* op = "pool_output_shape";
    const PoolShape s = ops::pool_shape(to_shape(x_shape, op, "x_shape"), to_pair(window.value, op, "window"),
                                        to_pair(stride.value, op, "stride"), to_pair(pad.value, op, "pad"), op);
    return py::make_tuple(s.N, s.P, s.Q, s.C);
  }, py::arg("x_shape"), py::arg("window"), py::arg("stride"), py::arg("pad") = Pair{0, 0});

  // ---- CPU driver selection: test hooks (csrc/cpu/parallel.h) ---------------------------------
  m.def("set_cpu_path", [](const std::string& path) {
    if (path == "auto") cpu::set_forced_path(cpu::ForcedPath::Auto);
    else if (path == "serial") cpu::set_forced_path(cpu::ForcedPath::Serial);
    else if (path == "parallel") cpu::set_forced_path(cpu::ForcedPath::Parallel);
    else throw std::invalid_argument("set_cpu_path: expected 'auto', 'serial' or 'parallel', got '" + path + "'");
  }, py::arg("path"),
     "Force the CPU kernels' driver selectors (conv driver, GEMM threads, parallel loops): 'serial', "
     "'parallel', or 'auto' (by size and thread count, the default). For tests: every path on any machine.");
  m.def("cpu_path", []() { return std::string(cpu::path_name(cpu::forced_path())); });
  m.def("set_cpu_threads", [](PyInt value) {
    const int threads = to_int<int>(value.value, "set_cpu_threads", "threads");
    if (threads < 1) throw std::invalid_argument("set_cpu_threads: threads must be >= 1, got " + std::to_string(threads));
    cpu::set_num_threads(threads);
  }, py::arg("threads"), "Threads of the CPU kernels from now on (OpenMP); build_info()['cpu_threads'] reads it.");
  m.def("cpu_threads", &cpu::num_threads);

  // ---- precision of the CPU GEMM (csrc/cpu/gemm_bf16.h): process-wide, Net sets it per pass -----
  m.def("set_precision", [](const std::string& p) {
    if (p == "fp32") cpu::set_gemm_precision(cpu::Precision::FP32);
    else if (p == "tf32") cpu::set_gemm_precision(cpu::Precision::TF32);
    else if (p == "bf16") cpu::set_gemm_precision(cpu::Precision::BF16);
    else throw std::invalid_argument("set_precision: expected 'fp32', 'tf32' or 'bf16', got '" + p + "'");
  }, py::arg("precision"), "Precision of the CPU GEMMs (FC layers, convolutions) from now on; see docs.");
  m.def("precision", []() { return std::string(cpu::precision_name(cpu::gemm_precision())); });
  m.def("set_bf16_kernel", [](const std::string& k) {
    if (k == "auto") cpu::set_bf16_kernel(cpu::Bf16Kernel::Auto);
    else if (k == "amx") cpu::set_bf16_kernel(cpu::Bf16Kernel::Amx);
    else if (k == "avx512_bf16") cpu::set_bf16_kernel(cpu::Bf16Kernel::Avx512Bf16);
    else if (k == "portable") cpu::set_bf16_kernel(cpu::Bf16Kernel::Portable);
    else throw std::invalid_argument("set_bf16_kernel: expected 'auto', 'amx', 'avx512_bf16' or 'portable', got '" + k + "'");
  }, py::arg("kernel"), "Force the BF16 GEMM kernel (tests): 'amx' or 'avx512_bf16' (ValueError where the CPU "
     "lacks it), 'portable' (same rounding, FP32 multiply-adds), or 'auto' (by CPUID, the default).");
  m.def("bf16_kernel", []() { return std::string(cpu::bf16_kernel_name(cpu::select_bf16_kernel())); },
        "The kernel a BF16 GEMM uses now: 'amx', 'avx512_bf16' or 'portable'.");
  m.def("cpu_has_avx512_bf16", &cpu::cpu_has_avx512_bf16);
  m.def("cpu_has_amx_bf16", &cpu::cpu_has_amx_bf16);

  // ---- ops (contracts in csrc/ops.h) ---------------------------------------------------------
  py::module_ o = m.def_submodule("ops", "Every op of convnet; outputs are passed in and written.");
  // every op of the table csrc/ops.def, with its argument names and defaults (def_op: integer
  // attributes range-checked, the GIL released while the op runs)
#define CONVNET_OP(name, shape_rule, doc, args) def_op(o, #name, &ops::name, doc args);
#define IN(type, name) , py::arg(#name)
#define OUT(type, name) , py::arg(#name)
#define ACC(type, name) , py::arg(#name)
#define ATTR(type, name) , py::arg(#name)
#define ATTR_D(type, name, default_value) , py::arg(#name) = default_value
#include "ops.def"

  // The layers' defaults (layers.py LRN, MaxPool, AvgPool) are the ops' defaults (ops.h LrnDefaults,
  // PoolDefaults).
  using Lrn = ops::LrnDefaults;
  using Pool = ops::PoolDefaults;
  m.attr("lrn_defaults") = py::dict(py::arg("size") = Lrn::size, py::arg("alpha") = Lrn::alpha,
                                    py::arg("beta") = Lrn::beta, py::arg("k") = Lrn::k);
  m.attr("pool_defaults") = py::dict(py::arg("size") = Pool::window, py::arg("stride") = Pool::stride,
                                     py::arg("pad") = Pool::pad);

  // the table itself, for tests/test_op_inventory.py and the tools: one dict per op, in table order,
  // {"name", "shape_rule", "doc", "args": [(name, role, type, has_default)]}, role one of "input",
  // "output", "accumulate", "attribute"
  py::list table;
#define CONVNET_OP(name, shape_rule, doc, args) \
  {                                             \
    py::list a;                                 \
    args py::dict op;                           \
    op["name"] = #name;                         \
    op["shape_rule"] = #shape_rule;             \
    op["doc"] = doc;                            \
    op["args"] = a;                             \
    table.append(op);                           \
  }
#define IN(type, name) a.append(py::make_tuple(#name, "input", #type, false));
#define OUT(type, name) a.append(py::make_tuple(#name, "output", #type, false));
#define ACC(type, name) a.append(py::make_tuple(#name, "accumulate", #type, false));
#define ATTR(type, name) a.append(py::make_tuple(#name, "attribute", #type, false));
#define ATTR_D(type, name, default_value) a.append(py::make_tuple(#name, "attribute", #type, true));
#include "ops.def"
  m.attr("op_table") = table;
}
