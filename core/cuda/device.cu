// CUDA side of core/device.h. Compiled only when MNEMO_CUDA is on.
#include <cuda_runtime.h>

#include "core/cuda/check.h"
#include "core/device.h"

namespace mnemo::cuda_hooks {

int device_count(std::string* reason) {
  int count = 0;  // left unwritten by the runtime on error (e.g. cudaErrorInsufficientDriver)
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    *reason = std::string("no usable CUDA device: ") + cudaGetErrorName(err) + " (" +
              cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (count == 0) *reason = "no CUDA device present";
  return count;
}

Result<void*> alloc(int index, size_t bytes) {
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes == 0 ? 256 : bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return out_of_budget("cudaMalloc of ", bytes, " bytes on cuda:", index, " failed: ",
                         cudaGetErrorString(err));
  }
  return p;
}

void free(int index, void* ptr) {
  cudaSetDevice(index);
  cudaFree(ptr);
}

Status copy(void* dst, bool, const void* src, bool, size_t bytes) {
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  return Status::Ok();
}

}  // namespace mnemo::cuda_hooks
