// Devices and raw memory: CPU (aligned host memory) and CUDA (when built with MNEMO_CUDA).
//
// The CPU build never links CUDA. `cuda_device_count()` is 0 there, and also 0 on a CUDA build run
// without a driver or GPU (any error from the runtime counts as "no device"), so GPU tests can skip.
#pragma once

#include <cstddef>
#include <string>

#include "core/status.h"

namespace mnemo {

enum class DeviceKind : uint8_t { kCpu, kCuda };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceKind::kCuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::kCpu; }
  bool operator==(const Device&) const = default;
  std::string to_string() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:N".
Result<Device> parse_device(const std::string& text);

// True when this binary was built with CUDA support.
bool built_with_cuda();
// Number of usable CUDA devices; 0 on CPU builds and on any CUDA runtime error (no driver, no GPU).
int cuda_device_count();
// A one-line reason why CUDA cannot be used, or "" when a device is present. For GTEST_SKIP messages.
std::string cuda_unavailable_reason();

// Allocates `bytes` on `device` (64-byte aligned on the CPU). Out of memory is an error, not a throw.
Result<void*> device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr);
// Copies between any two devices (synchronous).
Status device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

}  // namespace mnemo
