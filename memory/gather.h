// The mover's batched copy: blocks of fixed size from one slot arena to another, in one call
// (DESIGN.md "Mover": one gather over a step's misses, never one memcpy per block).
//
//   for i in [0, count): dst[dst_slots[i]] = src[src_slots[i]]     (block_bytes each)
//
// On CUDA builds `src` may be mapped pinned host memory (cudaHostAlloc ... Mapped): the kernel reads
// it over PCIe directly, so a step's scattered misses move in one launch. No CUDA types here.
#pragma once

#include <cstdint>

#include "core/status.h"

namespace mnemo {

struct GatherParams {
  const void* src = nullptr;          // [num_src_slots, block_bytes]
  void* dst = nullptr;                // [num_dst_slots, block_bytes]
  const int32_t* src_slots = nullptr; // [count]
  const int32_t* dst_slots = nullptr; // [count]
  int64_t count = 0;
  int64_t block_bytes = 0;            // a multiple of 16
};

// CPU reference (and the CPU mover): memcpy per pair.
Status gather_blocks_cpu(const GatherParams& p);
// CUDA: one kernel; src/dst/slot arrays must be device-accessible. `stream` is a cudaStream_t.
Status gather_blocks_cuda(const GatherParams& p, void* stream);

}  // namespace mnemo
