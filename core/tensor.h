// Tensor: a dense, row-major (contiguous) array of one dtype on one device.
//
// Storage is shared (copying a Tensor copies a handle, not the bytes); `rows()` makes a view of a
// range along dim 0 without a copy. A Tensor may also wrap memory it does not own (an mmap'd
// checkpoint, a slot of an arena) and keep that owner alive through `keepalive`.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/status.h"

namespace mnemo {

using Shape = std::vector<int64_t>;
std::string shape_to_string(const Shape& shape);  // "[2, 64, 128]"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  // Allocates uninitialised storage.
  static Result<Tensor> empty(Shape shape, DType dtype, Device device = Device::cpu());
  // CPU tensor filled with zeros (allocation failure aborts only through std::bad_alloc).
  static Tensor zeros(Shape shape, DType dtype = DType::kF32);
  // Non-owning view over `data`; `keepalive` (may be null) is held as long as the view lives.
  static Tensor wrap(void* data, Shape shape, DType dtype, Device device,
                     std::shared_ptr<const void> keepalive = nullptr);

  bool defined() const { return data_ != nullptr || !shape_.empty(); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + ndim() : i]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <typename T> T* data() { return static_cast<T*>(data_); }
  template <typename T> const T* data() const { return static_cast<const T*>(data_); }

  // View of rows [begin, end) along dim 0.
  Tensor rows(int64_t begin, int64_t end) const;
  // Same bytes, new shape with the same numel.
  Result<Tensor> reshape(Shape shape) const;
  // A deep copy on `device`, converted to `dtype` (only f32/f16/bf16 conversions; CPU only for those).
  Result<Tensor> to(Device device) const;
  Result<Tensor> to_dtype(DType dtype) const;

  // "bf16[2, 64] on cpu".
  std::string describe() const;

 private:
  std::shared_ptr<const void> owner_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_;
};

// Returns an error naming `what` when the tensor's shape differs from `expected`.
Status check_shape(const Tensor& t, const Shape& expected, const std::string& what);

}  // namespace mnemo
