// One macro turns a failing CUDA runtime call into a returned Status naming the call, file and line.
#pragma once

#include <cuda_runtime.h>

#include "core/status.h"

#define MNEMO_CUDA_RETURN_IF_ERROR(call)                                                      \
  do {                                                                                        \
    const cudaError_t mnemo_cuda_err_ = (call);                                               \
    if (mnemo_cuda_err_ != cudaSuccess) {                                                     \
      return ::mnemo::cuda_error(#call, " failed at ", __FILE__, ":", __LINE__, ": ",         \
                                 cudaGetErrorName(mnemo_cuda_err_), " (",                     \
                                 cudaGetErrorString(mnemo_cuda_err_), ")");                   \
    }                                                                                         \
  } while (0)
