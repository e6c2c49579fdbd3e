// Mover: copies whole blocks between the GPU and host arenas, always in batches.
//
// The interface takes a list of (src slot, dst slot) pairs per call — never one call per block —
// because one batched gather is what makes tiering fast on a GPU (DESIGN.md "Mover": one kernel
// gathering 2048 blocks from pinned memory reaches 49 GB/s, one cudaMemcpyAsync per block 14 GB/s).
// CpuMover (this file) is plain memcpy between two host arenas; a CUDA mover implements the same
// interface with a gather kernel on its own stream, and wait() synchronises that stream.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "core/status.h"

namespace mnemo {

enum class CopyKind : uint8_t { kHostToGpu, kGpuToHost, kGpuToGpu };

struct SlotCopy {
  int32_t src = -1;  // slot in the source arena
  int32_t dst = -1;  // slot in the destination arena
};

class Mover {
 public:
  virtual ~Mover() = default;
  // Copies one slot per pair (slot_bytes each). Copies of one call may run in any order and
  // overlap; pairs must not share a destination. The copies are ordered after every earlier call.
  // On return they are done (CPU) or queued (CUDA); the source slots must stay unchanged and the
  // destination slots unread until wait() returns.
  virtual Status copy(CopyKind kind, std::span<const SlotCopy> copies) = 0;
  // Waits until every queued copy is done.
  virtual Status wait() = 0;
};

// Both arenas are [num_slots, slot_floats] floats, owned by the caller; they must outlive the mover.
std::unique_ptr<Mover> make_cpu_mover(float* gpu_arena, float* host_arena, int64_t slot_floats);

}  // namespace mnemo
