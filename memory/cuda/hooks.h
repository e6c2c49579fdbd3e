// The CUDA half of memory/mover.cpp's SlotMemory, defined in memory/cuda/cuda_mover.cu (stubs that
// return kUnimplemented on CPU builds). No CUDA types, so mover.cpp compiles everywhere.
#pragma once

#include <cstdint>

#include "core/status.h"

namespace mnemo::memory_cuda {

// device: cudaMalloc (`*device_data` = `*data`); else cudaHostAlloc(Mapped | Portable) with
// `*device_data` its device alias. kOutOfBudget naming `what` when the allocation fails.
Status slot_alloc(bool device, int64_t bytes, const char* what, void** data, void** device_data);
void slot_free(bool device, void* data);

}  // namespace mnemo::memory_cuda
