// Tensor, Device and Storage: parsing device names, allocating on the right device, shape helpers.
#include "tensor.h"

#include <cstdlib>
#include <sstream>

#include "backend.h"

namespace convnet {

const char* dtype_name(DType dtype) { return dtype == DType::Float32 ? "float32" : "int32"; }

Device Device::parse(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  int index = -1;
  if (text == "cuda") {
    index = 0;
  } else if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9) {
    index = 0;
    for (size_t i = 5; i < text.size(); ++i) {
      if (text[i] < '0' || text[i] > '9') { index = -1; break; }
      index = index * 10 + (text[i] - '0');
    }
  }
  if (index < 0)
    throw std::invalid_argument("unknown device '" + text + "': expected 'cpu', 'cuda' or 'cuda:N'");
  const int count = cuda::device_count();
  if (index >= count) {
    std::ostringstream msg;
    msg << "device '" << text << "' is not available: ";
    if (!cuda::compiled())
      msg << "this convnet was built without CUDA";
    else
      msg << "this machine has " << count << " CUDA device(s)";
    msg << " (convnet.devices() lists what is)";
    throw std::invalid_argument(msg.str());
  }
  return Device::cuda(index);
}

std::string Device::str() const {
  return is_cuda() ? "cuda:" + std::to_string(index) : std::string("cpu");
}

Storage::Storage(Device device_, size_t bytes_) : device(device_), bytes(bytes_) {
  const size_t asked = bytes ? bytes : 1;
  if (device.is_cuda()) {
    data = cuda::device_alloc(device.index, asked);
  } else {
    // 64-byte alignment: a cache line, and what AVX-512 loads like.
    data = std::aligned_alloc(64, (asked + 63) / 64 * 64);  // Tensor::empty keeps asked <= 2^62
    if (!data) throw OutOfMemoryError("out of host memory: asked for " + std::to_string(asked) + " bytes");
  }
}

Storage::~Storage() {
  if (!data) return;
  if (device.is_cuda())
    cuda::device_free(device.index, data, bytes ? bytes : 1);
  else
    std::free(data);
}

int64_t checked_numel(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument(std::string(what) + ": negative dimension in shape " + convnet::shape_str(shape));
  for (int64_t d : shape)
    if (d == 0) return 0;  // an empty tensor, however large its other dimensions
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n))
      throw std::invalid_argument(std::string(what) + ": shape " + convnet::shape_str(shape) +
                                  " has more than 2^63 elements");
  }
  return n;
}

size_t checked_nbytes(int64_t numel, size_t element_size, const std::vector<int64_t>& shape, const char* what) {
  size_t bytes = 0;
  // Beyond 2^62 bytes no machine can hold it, and the allocators' rounding up must not wrap.
  if (__builtin_mul_overflow(static_cast<size_t>(numel), element_size, &bytes) || bytes > (size_t(1) << 62))
    throw std::invalid_argument(std::string(what) + ": shape " + convnet::shape_str(shape) + " needs " +
                                std::to_string(numel) + " x " + std::to_string(element_size) +
                                " bytes, more than 2^62 bytes");
  return bytes;
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  const int64_t n = checked_numel(shape, "Tensor");
  const size_t bytes = checked_nbytes(n, dtype_size(dtype), shape, "Tensor");
  Tensor t;
  t.shape_ = shape;
  t.numel_ = n;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(device, bytes);
  return t;
}

int64_t Tensor::size(int d) const {
  const int nd = dim();
  if (d < 0) d += nd;
  if (d < 0 || d >= nd) throw std::out_of_range("Tensor::size: dimension out of range");
  return shape_[d];
}

float* Tensor::f32() const {
  if (dtype_ != DType::Float32) throw std::invalid_argument("expected a float32 tensor, got " + describe());
  return static_cast<float*>(raw());
}

int32_t* Tensor::i32() const {
  if (dtype_ != DType::Int32) throw std::invalid_argument("expected an int32 tensor, got " + describe());
  return static_cast<int32_t*>(raw());
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

std::string Tensor::shape_str() const { return convnet::shape_str(shape_); }

std::string Tensor::describe() const {
  if (!defined()) return "an undefined tensor";
  return std::string(dtype_name(dtype_)) + " " + shape_str() + " on " + device().str();
}

Tensor Tensor::reshape(const std::vector<int64_t>& shape) const {
  const int64_t n = checked_numel(shape, "reshape");
  if (n != numel_)
    throw std::invalid_argument("reshape: cannot view " + describe() + " as " + convnet::shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

}  // namespace convnet
