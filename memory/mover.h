// Mover: copies whole blocks between the GPU and host arenas, always in batches; and SlotMemory, the
// memory those arenas live in.
//
// The interface takes a list of (src slot, dst slot) pairs per call — never one call per block —
// because one batched gather is what makes tiering fast on a GPU (DESIGN.md "Mover": one kernel
// gathering 2048 blocks from pinned memory reaches 49 GB/s, one cudaMemcpyAsync per block 14 GB/s).
// CpuMover is plain memcpy between two host arenas. The CUDA mover (memory/cuda/cuda_mover.cu) runs
// the gather kernel (memory/gather.h) on its own stream and orders itself with the *caller's stream*
// (the stream the model's kernels run on) through events:
//   after_caller(): copies queued from now on start after the work queued on the caller's stream so
//                   far (they read what the model wrote, or overwrite slots it may still read);
//   before_caller(): work queued on the caller's stream from now on starts after the copies queued
//                   so far (it reads what they loaded, or writes slots they may still read).
// Neither blocks the host. On the CPU mover both are no-ops and copy() is done when it returns.
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
  // destination slots unread (by the host; by the caller's stream: see before_caller()) until they
  // are done.
  virtual Status copy(CopyKind kind, std::span<const SlotCopy> copies) = 0;
  // Blocks the calling thread until every copy queued so far is done. Thread-safe (the store's
  // write-behind thread calls it before reading host slots).
  virtual Status wait() = 0;
  virtual Status after_caller() = 0;
  virtual Status before_caller() = 0;
};

// Both arenas are [num_slots, slot_bytes] bytes, owned by the caller; they must outlive the mover.
std::unique_ptr<Mover> make_cpu_mover(void* gpu_arena, void* host_arena, int64_t slot_bytes);

// CUDA mover on the current device. `gpu_arena`: device memory; `host_arena_device`: the device
// alias of mapped pinned host memory (SlotMemory::device_data()). At most `max_copies` pairs per
// call. `caller_stream`: a cudaStream_t (nullptr = the legacy default stream), not owned.
// kUnimplemented on CPU builds.
Result<std::unique_ptr<Mover>> make_cuda_mover(void* gpu_arena, void* host_arena_device, int64_t slot_bytes,
                                               int64_t max_copies, void* caller_stream);

// Raw memory of a tier's arena, freed on destruction.
enum class SlotMemoryKind : uint8_t {
  kHost,            // plain host memory, 64-byte aligned (CPU builds, and CUDA builds' CPU stores)
  kCudaDevice,      // cudaMalloc
  kCudaMappedHost,  // cudaHostAlloc(cudaHostAllocMapped | cudaHostAllocPortable): host memory the
                    // gather kernel reads and writes directly over PCIe
};

class SlotMemory {
 public:
  // `what` names the budget in the out-of-memory message ("gpu_budget_bytes"). kOutOfBudget when
  // the allocation fails; kUnimplemented for a CUDA kind on a CPU build.
  static Result<std::unique_ptr<SlotMemory>> allocate(SlotMemoryKind kind, int64_t bytes, const char* what);
  ~SlotMemory();
  SlotMemory(const SlotMemory&) = delete;
  SlotMemory& operator=(const SlotMemory&) = delete;

  SlotMemoryKind kind() const { return kind_; }
  int64_t bytes() const { return bytes_; }
  // Host pointer (kHost, kCudaMappedHost) or device pointer (kCudaDevice).
  void* data() const { return data_; }
  // The pointer kernels use: the device pointer, the device alias of mapped host memory, or
  // nullptr for kHost.
  void* device_data() const { return device_data_; }

 private:
  SlotMemory() = default;
  SlotMemoryKind kind_ = SlotMemoryKind::kHost;
  int64_t bytes_ = 0;
  void* data_ = nullptr;
  void* device_data_ = nullptr;
};

}  // namespace mnemo
