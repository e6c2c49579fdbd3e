#include "core/device.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace mnemo {

// CUDA hooks, defined in core/cuda/device.cu on CUDA builds and as stubs below otherwise.
namespace cuda_hooks {
int device_count(std::string* reason);
Result<void*> alloc(int index, size_t bytes);
void free(int index, void* ptr);
Status copy(void* dst, bool dst_cuda, const void* src, bool src_cuda, size_t bytes);
}  // namespace cuda_hooks

std::string Device::to_string() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Result<Device> parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string num = text.substr(5);
    char* end = nullptr;
    const long idx = std::strtol(num.c_str(), &end, 10);
    if (!num.empty() && end && *end == '\0' && idx >= 0 && idx < 1024) return Device::cuda(int(idx));
  }
  return invalid_argument("device '", text, "': expected 'cpu', 'cuda' or 'cuda:N'");
}

int cuda_device_count() {
  std::string reason;
  return cuda_hooks::device_count(&reason);
}

std::string cuda_unavailable_reason() {
  std::string reason;
  return cuda_hooks::device_count(&reason) > 0 ? std::string() : reason;
}

Result<void*> device_alloc(Device device, size_t bytes) {
  if (device.is_cpu()) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (!p) return out_of_budget("host allocation of ", bytes, " bytes failed");
    return p;
  }
  return cuda_hooks::alloc(device.index, bytes);
}

void device_free(Device device, void* ptr) {
  if (!ptr) return;
  if (device.is_cpu()) {
    std::free(ptr);
  } else {
    cuda_hooks::free(device.index, ptr);
  }
}

Status device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  return cuda_hooks::copy(dst, !dst_device.is_cpu(), src, !src_device.is_cpu(), bytes);
}

#ifndef MNEMO_WITH_CUDA
bool built_with_cuda() { return false; }
namespace cuda_hooks {
int device_count(std::string* reason) {
  *reason = "this build of mnemo has no CUDA support (configured with MNEMO_CUDA=OFF or no nvcc)";
  return 0;
}
Result<void*> alloc(int, size_t) { return unimplemented("CUDA memory requested in a CPU-only build"); }
void free(int, void*) {}
Status copy(void*, bool, const void*, bool, size_t) {
  return unimplemented("CUDA copy requested in a CPU-only build");
}
}  // namespace cuda_hooks
#else
bool built_with_cuda() { return true; }
#endif

}  // namespace mnemo
