// The only pybind11 file: exposes Tensor, devices, build information and every op of ops.h as
// convnet._C. Errors cross as Python exceptions: std::invalid_argument -> ValueError, OutOfMemoryError
// -> MemoryError, std::runtime_error (CUDA failures) -> RuntimeError. Ops release the GIL while they
// run, so data-loading threads keep working during a step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "backend.h"
#include "cpu/parallel.h"
#include "ops.h"
#include "streams.h"
#include "tensor.h"

namespace py = pybind11;
using namespace convnet;

namespace {

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "int32") return DType::Int32;
  throw std::invalid_argument("unknown dtype '" + name + "': convnet tensors are 'float32' or 'int32'");
}

std::vector<int64_t> to_shape(const py::iterable& shape) {
  std::vector<int64_t> out;
  for (auto d : shape) out.push_back(d.cast<int64_t>());
  return out;
}

Tensor from_numpy(const py::array& array, const std::string& device) {
  DType dtype;
  if (array.dtype().is(py::dtype::of<float>()))
    dtype = DType::Float32;
  else if (array.dtype().is(py::dtype::of<int32_t>()))
    dtype = DType::Int32;
  else
    throw std::invalid_argument("Tensor.from_numpy: expected a float32 or int32 array, got " +
                                std::string(py::str(array.dtype())) +
                                " with shape " + std::string(py::str(array.attr("shape"))) +
                                " (convert it first, e.g. x.astype(numpy.float32))");
  std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
  const Device dev = Device::parse(device);
  // A C-contiguous host copy when the array is strided or not aligned the way we read it.
  py::array contiguous = py::array::ensure(array, py::array::c_style);
  Tensor host = Tensor::empty(shape, dtype, Device::cpu());
  if (host.nbytes()) std::memcpy(host.raw(), contiguous.data(), host.nbytes());
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
#ifdef CONVNET_WITH_CUDA
  for (int i = 0; i < cuda::device_count(); ++i)
    names.append(cuda::device_name(i) + " (sm_" + cuda::device_capability(i) + ")");
#endif
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

int cuda_index(const std::string& device, const char* what) {
  const Device d = Device::parse(device);
  if (!d.is_cuda()) throw std::invalid_argument(std::string(what) + ": '" + device + "' is not a CUDA device");
  return d.index;
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
            return Tensor::empty(to_shape(shape), parse_dtype(dtype), Device::parse(device));
          },
          py::arg("shape"), py::arg("device") = "cpu", py::arg("dtype") = "float32",
          "Uninitialised tensor of `shape` on `device`.")
      .def_static(
          "zeros",
          [](py::iterable shape, const std::string& device, const std::string& dtype) {
            Tensor t = Tensor::empty(to_shape(shape), parse_dtype(dtype), Device::parse(device));
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
      .def("reshape", [](const Tensor& t, py::iterable shape) { return t.reshape(to_shape(shape)); },
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

  m.def("devices", &devices, "Devices this build can run on here: 'cpu', then 'cuda:0', 'cuda:1', ...");
  m.def("build_info", &build_info, "How this module was built and what it found: CUDA, architectures, threads.");
  m.def("synchronize", [](const std::string& device) {
#ifdef CONVNET_WITH_CUDA
    const Device d = Device::parse(device);
    if (d.is_cuda()) { py::gil_scoped_release r; cuda::synchronize(d.index); }
#else
    Device::parse(device);
#endif
  }, py::arg("device"), "Wait until all work queued on `device` has finished.");
  m.def("memory_stats", [](const std::string& device) {
    py::dict out;
    const int index = cuda_index(device, "memory_stats");
#ifdef CONVNET_WITH_CUDA
    out["allocated_bytes"] = cuda::allocated_bytes(index);
    out["cached_bytes"] = cuda::cached_bytes(index);
#else
    (void)index;
#endif
    return out;
  }, py::arg("device"), "Bytes held by tensors and by the caching allocator on a CUDA device.");
  m.def("empty_cache", [](const std::string& device) {
    const int index = cuda_index(device, "empty_cache");
#ifdef CONVNET_WITH_CUDA
    cuda::empty_cache(index);
#else
    (void)index;
#endif
  }, py::arg("device"), "Return the caching allocator's free blocks on a CUDA device to the driver.");
  m.def("can_access_peer", [](const std::string& a, const std::string& b) {
    const int ia = cuda_index(a, "can_access_peer"), ib = cuda_index(b, "can_access_peer");
#ifdef CONVNET_WITH_CUDA
    return cuda::can_access_peer(ia, ib);
#else
    return ia == ib;
#endif
  }, py::arg("device"), py::arg("peer"));
  // ---- streams and copies for model parallelism (csrc/streams.h, cuda/device.cu) ----------------
  m.attr("stream_slots") = cuda::kStreamSlots;  // towers a device can run concurrently
  m.def("set_stream", [](const std::string& device, int slot) {
    const Device d = Device::parse(device);
    if (slot < 0 || slot >= cuda::kStreamSlots)
      throw std::invalid_argument("set_stream: slot " + std::to_string(slot) + " outside [0, " +
                                  std::to_string(cuda::kStreamSlots) + ")");
#ifdef CONVNET_WITH_CUDA
    if (d.is_cuda()) cuda::set_stream_slot(d.index, slot);
#else
    (void)d;
#endif
  }, py::arg("device"), py::arg("slot"),
     "This thread's launches on `device` go to its compute stream number `slot` (a tower); no-op on cpu.");
  m.def("stream_barrier", [](const std::vector<std::string>& devices) {
#ifdef CONVNET_WITH_CUDA
    std::vector<int> idx;
    for (const auto& name : devices) {
      const Device d = Device::parse(name);
      if (d.is_cuda()) idx.push_back(d.index);
    }
    py::gil_scoped_release r;
    cuda::stream_barrier(idx);
#else
    for (const auto& name : devices) Device::parse(name);
#endif
  }, py::arg("devices"), "Every stream of these devices waits for everything queued on all of them.");
  m.def("copy_between", [](const Tensor& dst, int dst_slot, const Tensor& src, int src_slot) {
    const char* op = "copy_between";
    if (!dst.defined() || !src.defined()) throw std::invalid_argument(std::string(op) + ": undefined tensor");
    if (dst.dtype() != src.dtype() || dst.shape() != src.shape())
      throw std::invalid_argument(std::string(op) + ": dst is " + dst.describe() + ", src is " + src.describe());
    if (dst_slot < 0 || dst_slot >= cuda::kStreamSlots || src_slot < 0 || src_slot >= cuda::kStreamSlots)
      throw std::invalid_argument(std::string(op) + ": stream slot outside [0, " + std::to_string(cuda::kStreamSlots) + ")");
    if (dst.same_storage(src))
      throw std::invalid_argument(std::string(op) + ": dst and src share storage");
    py::gil_scoped_release r;
#ifdef CONVNET_WITH_CUDA
    const Device dd = dst.device(), sd = src.device();
    if (dd.is_cuda() && sd.is_cuda()) {
      cuda::copy_between(dd.index, dst_slot, dst.raw(), sd.index, src_slot, src.raw(), src.nbytes(), false);
      return;
    }
    // host <-> device: synchronous, on the CUDA side's slot
    const int dev = dd.is_cuda() ? dd.index : (sd.is_cuda() ? sd.index : -1);
    if (dev >= 0) {
      const int previous = cuda::stream_slot(dev);
      cuda::set_stream_slot(dev, dd.is_cuda() ? dst_slot : src_slot);
      try {
        ops::copy_(dst, src);
      } catch (...) {
        cuda::set_stream_slot(dev, previous);
        throw;
      }
      cuda::set_stream_slot(dev, previous);
      return;
    }
#endif
    ops::copy_(dst, src);
  }, py::arg("dst"), py::arg("dst_slot"), py::arg("src"), py::arg("src_slot"),
     "dst <- src from the producer's stream (src's device, src_slot) to the consumer's (dst's device, "
     "dst_slot) through the pair's copy stream, ordered by events; keep src alive and unwritten until "
     "the next stream_barrier. Any devices; a plain copy on the CPU.");
  m.def("conv_output_shape", [](py::iterable x_shape, py::iterable w_shape, Pair stride, Pair pad, int groups) {
    const ConvShape s = ops::conv_shape(to_shape(x_shape), to_shape(w_shape), stride, pad, groups, "conv_output_shape");
    return py::make_tuple(s.N, s.P, s.Q, s.K);
  }, py::arg("x_shape"), py::arg("w_shape"), py::arg("stride") = Pair{1, 1}, py::arg("pad") = Pair{0, 0}, py::arg("groups") = 1,
     "(N, P, Q, K) of conv_forward for x (N, H, W, C) and w (K, R, S, C/groups); ValueError when invalid.");
  m.def("pool_output_shape", [](py::iterable x_shape, Pair window, Pair stride, Pair pad) {
    const PoolShape s = ops::pool_shape(to_shape(x_shape), window, stride, pad, "pool_output_shape");
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
  m.def("set_cpu_threads", [](int threads) {
    if (threads < 1) throw std::invalid_argument("set_cpu_threads: threads must be >= 1, got " + std::to_string(threads));
    cpu::set_num_threads(threads);
  }, py::arg("threads"), "Threads of the CPU kernels from now on (OpenMP); build_info()['cpu_threads'] reads it.");
  m.def("cpu_threads", &cpu::num_threads);

  // ---- ops (contracts in csrc/ops.h) ---------------------------------------------------------
  py::module_ o = m.def_submodule("ops", "Every op of convnet; outputs are passed in and written.");
  o.def("copy_", &ops::copy_, py::arg("dst"), py::arg("src"), GIL(), "dst <- src, across any two devices.");
  o.def("fill_", &ops::fill_, py::arg("t"), py::arg("value"), GIL());
  o.def("add_", &ops::add_, py::arg("dst"), py::arg("src"), py::arg("alpha") = 1.0f, GIL(), "dst += alpha * src");
  o.def("gemm", &ops::gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0f, py::arg("beta") = 0.0f, GIL(),
        "c (M, N) = alpha op(a) op(b) + beta c");
  o.def("fc_forward", &ops::fc_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"),
        py::arg("accumulate") = false, py::arg("relu") = false, GIL(),
        "y (N, out) (=|+=) x (N, in) w (out, in)^T + b (out,); relu: then y = max(0, y)");
  o.def("fc_backward_data", &ops::fc_backward_data, py::arg("dy"), py::arg("w"), py::arg("dx"),
        py::arg("accumulate") = false, GIL(), "dx (N, in) (=|+=) dy (N, out) w (out, in)");
  o.def("fc_backward_weights", &ops::fc_backward_weights, py::arg("dy"), py::arg("x"), py::arg("dw"),
        py::arg("db"), GIL(), "dw (out, in) = dy^T x; db (out,) = dy summed over N");
  o.def("relu_forward", &ops::relu_forward, py::arg("x"), py::arg("y"), GIL());
  o.def("relu_backward", &ops::relu_backward, py::arg("y"), py::arg("dy"), py::arg("dx"), GIL());
  o.def("dropout_forward", &ops::dropout_forward, py::arg("x"), py::arg("y"), py::arg("p"), py::arg("seed"),
        py::arg("counter"), py::arg("offset") = 0, GIL(),
        "Inverted dropout; element i's mask is element offset + i of the Philox4x32-10 draw (seed, counter).");
  o.def("dropout_backward", &ops::dropout_backward, py::arg("dy"), py::arg("dx"), py::arg("p"), py::arg("seed"),
        py::arg("counter"), py::arg("offset") = 0, GIL());
  o.def("softmax_cross_entropy", &ops::softmax_cross_entropy, py::arg("logits"), py::arg("labels"),
        py::arg("dlogits"), py::arg("stats"), GIL(),
        "stats (3,) <- [mean loss, top-1 hits, top-5 hits]; dlogits <- (softmax - onehot) / N unless None.");
  o.def("sgd_update", &ops::sgd_update, py::arg("params"), py::arg("grads"), py::arg("velocities"),
        py::arg("lrs"), py::arg("weight_decays"), py::arg("momentum"), GIL(),
        "v <- m v - wd lr w - lr g; w <- w + v, for every parameter in one call.");
  o.def("conv_forward", &ops::conv_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"),
        py::arg("stride") = Pair{1, 1}, py::arg("pad") = Pair{0, 0}, py::arg("groups") = 1,
        py::arg("accumulate") = false, py::arg("relu") = false, py::arg("algorithm") = "auto", GIL(),
        "y (N, P, Q, K) (=|+=) conv(x (N, H, W, C), w (K, R, S, C/g)) + b; relu: then y = max(0, y). "
        "algorithm: 'auto' (per shape and pass), 'direct' or 'winograd' (stride-1 3x3/5x5, CPU).");
  o.def("conv_backward_data", &ops::conv_backward_data, py::arg("dy"), py::arg("w"), py::arg("dx"),
        py::arg("stride") = Pair{1, 1}, py::arg("pad") = Pair{0, 0}, py::arg("groups") = 1,
        py::arg("accumulate") = false, py::arg("algorithm") = "auto", GIL());
  o.def("conv_backward_filter", &ops::conv_backward_filter, py::arg("dy"), py::arg("x"), py::arg("dw"),
        py::arg("db"), py::arg("stride") = Pair{1, 1}, py::arg("pad") = Pair{0, 0}, py::arg("groups") = 1,
        py::arg("accumulate") = false, py::arg("algorithm") = "auto", GIL());
  o.def("lrn_forward", &ops::lrn_forward, py::arg("x"), py::arg("y"), py::arg("size") = 5,
        py::arg("alpha") = 1e-4f, py::arg("beta") = 0.75f, py::arg("k") = 2.0f, py::arg("alpha_over_size") = false,
        GIL(), "y = x / (k + alpha sum_window x^2)^beta across channels (alpha / size if alpha_over_size)");
  o.def("lrn_backward", &ops::lrn_backward, py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("dx"),
        py::arg("size") = 5, py::arg("alpha") = 1e-4f, py::arg("beta") = 0.75f, py::arg("k") = 2.0f,
        py::arg("alpha_over_size") = false, GIL());
  o.def("max_pool_forward", &ops::max_pool_forward, py::arg("x"), py::arg("y"), py::arg("argmax"),
        py::arg("window") = Pair{3, 3}, py::arg("stride") = Pair{2, 2}, py::arg("pad") = Pair{0, 0}, GIL());
  o.def("max_pool_backward", &ops::max_pool_backward, py::arg("dy"), py::arg("argmax"), py::arg("dx"),
        py::arg("window") = Pair{3, 3}, py::arg("stride") = Pair{2, 2}, py::arg("pad") = Pair{0, 0}, GIL());
  o.def("avg_pool_forward", &ops::avg_pool_forward, py::arg("x"), py::arg("y"), py::arg("window") = Pair{3, 3},
        py::arg("stride") = Pair{2, 2}, py::arg("pad") = Pair{0, 0}, GIL());
  o.def("avg_pool_backward", &ops::avg_pool_backward, py::arg("dy"), py::arg("dx"), py::arg("window") = Pair{3, 3},
        py::arg("stride") = Pair{2, 2}, py::arg("pad") = Pair{0, 0}, GIL());
}
