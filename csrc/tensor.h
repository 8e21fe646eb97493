// Tensor: a dense, contiguous (row-major) array of float32 or int32 that lives on one device.
//
// Shapes are written (N, H, W, C) for activations (NHWC) and (K, R, S, C) for conv filters; the
// Tensor itself knows only its shape, dtype and device. Memory comes from the device's allocator:
// 64-byte aligned host memory on the CPU, the caching allocator of cuda/runtime/device_runtime.cu on a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace convnet {

// Device out-of-memory. bindings.cpp turns it into Python's MemoryError; the process goes on.
struct OutOfMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { Float32, Int32 };
const char* dtype_name(DType dtype);
inline size_t dtype_size(DType) { return 4; }

struct Device {
  enum class Kind { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = 0;  // the CUDA ordinal; always 0 for the CPU

  static Device cpu() { return Device{}; }
  static Device cuda(int index) { return Device{Kind::CUDA, index}; }
  // "cpu", "cuda" (= "cuda:0") or "cuda:N". Raises std::invalid_argument (ValueError) otherwise, and
  // for a CUDA ordinal this build or machine does not have.
  static Device parse(const std::string& text);
  bool is_cuda() const { return kind == Kind::CUDA; }
  std::string str() const;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

// One allocation on one device. Returned to the device's allocator when the last Tensor drops it.
struct Storage {
  Storage(Device device, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  Device device;
  size_t bytes;
  void* data = nullptr;
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory (callers that poison or fill it decide what it holds).
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device);

  bool defined() const { return storage_ != nullptr; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device{}; }
  void* raw() const { return storage_ ? storage_->data : nullptr; }
  float* f32() const;    // throws if the dtype is not float32
  int32_t* i32() const;  // throws if the dtype is not int32
  std::string shape_str() const;  // "(2, 3, 4)"
  std::string describe() const;   // "float32 (2, 3, 4) on cuda:0"
  // Same storage, another shape with the same element count (no copy).
  Tensor reshape(const std::vector<int64_t>& shape) const;
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }
  long use_count() const { return storage_.use_count(); }  // Tensors sharing this storage (0 if none)

 private:
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::Float32;
  std::shared_ptr<Storage> storage_;
};

std::string shape_str(const std::vector<int64_t>& shape);

// Elements of `shape`, checked: ValueError (std::invalid_argument, starting with `what`) for a
// negative dimension or a product over 2^63 - 1.
int64_t checked_numel(const std::vector<int64_t>& shape, const char* what);
// numel * element_size, checked: ValueError beyond 2^62 bytes (no machine has that much memory).
size_t checked_nbytes(int64_t numel, size_t element_size, const std::vector<int64_t>& shape, const char* what);

}  // namespace convnet
