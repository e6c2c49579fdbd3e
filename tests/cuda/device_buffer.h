// Device memory for the CUDA tests: upload a host vector, poison (NaN fill), download. Test-only code,
// so CUDA errors throw (GoogleTest reports them as a failure of the running test).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mnemo::test {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) { cuda_check(cudaMalloc(&p_, n == 0 ? 1 : n * sizeof(T)), "cudaMalloc"); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    cuda_check(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  ~DeviceBuffer() { if (p_) cudaFree(p_); }

  T* get() const { return p_; }
  size_t size() const { return n_; }
  // All bytes 0xff: NaN for f32, bf16 and f16; -1 for integers.
  void poison() { cuda_check(cudaMemset(p_, 0xff, n_ * sizeof(T)), "poison"); }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    cuda_check(cudaDeviceSynchronize(), "kernel");
    cuda_check(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace mnemo::test
