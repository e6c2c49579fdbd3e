#include "core/tensor.h"

#include <cstring>
#include <sstream>

namespace mnemo {

std::string shape_to_string(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Result<Tensor> Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape) {
    if (d < 0) return invalid_argument("tensor shape ", shape_to_string(shape), " has a negative dim");
  }
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  MNEMO_ASSIGN_OR_RETURN(void* p, device_alloc(device, t.nbytes()));
  t.data_ = p;
  t.owner_ = std::shared_ptr<void>(p, [device](void* q) { device_free(device, q); });
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  const size_t bytes = t.nbytes();
  auto storage = std::shared_ptr<uint8_t[]>(new uint8_t[bytes == 0 ? 1 : bytes]());
  t.data_ = storage.get();
  t.owner_ = std::shared_ptr<const void>(storage, storage.get());
  return t;
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, Device device,
                    std::shared_ptr<const void> keepalive) {
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.owner_ = std::move(keepalive);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  Tensor t = *this;
  const size_t row_bytes = ndim() == 0 ? 0 : nbytes() / static_cast<size_t>(shape_[0] ? shape_[0] : 1);
  t.shape_[0] = end - begin;
  t.data_ = static_cast<uint8_t*>(data_) + static_cast<size_t>(begin) * row_bytes;
  return t;
}

Result<Tensor> Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    return invalid_argument("cannot reshape ", describe(), " to ", shape_to_string(shape));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Result<Tensor> Tensor::to(Device device) const {
  MNEMO_ASSIGN_OR_RETURN(Tensor out, Tensor::empty(shape_, dtype_, device));
  MNEMO_RETURN_IF_ERROR(device_copy(out.data_, device, data_, device_, nbytes()));
  return out;
}

Result<Tensor> Tensor::to_dtype(DType dtype) const {
  if (!device_.is_cpu()) return unimplemented("to_dtype on ", describe(), ": CPU tensors only");
  auto is_float = [](DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; };
  if (!is_float(dtype_) || !is_float(dtype)) {
    return invalid_argument("to_dtype: cannot convert ", dtype_name(dtype_), " to ", dtype_name(dtype));
  }
  Tensor out = Tensor::zeros(shape_, dtype);
  if (dtype_ == dtype) {
    std::memcpy(out.data_, data_, nbytes());
  } else if (dtype == DType::kF32) {
    convert_to_f32(data_, dtype_, out.data<float>(), static_cast<size_t>(numel()));
  } else {
    Tensor f32 = Tensor::zeros(shape_, DType::kF32);
    convert_to_f32(data_, dtype_, f32.data<float>(), static_cast<size_t>(numel()));
    convert_from_f32(f32.data<float>(), out.data_, dtype, static_cast<size_t>(numel()));
  }
  return out;
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_to_string(shape_) + " on " + device_.to_string();
}

Status check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (t.shape() != expected) {
    return invalid_argument(what, ": expected shape ", shape_to_string(expected), ", got ",
                            shape_to_string(t.shape()));
  }
  return Status::Ok();
}

}  // namespace mnemo
