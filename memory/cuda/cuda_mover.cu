// The CUDA mover (memory/mover.h) and the CUDA kinds of SlotMemory.
//
// Every batch is one launch of the gather kernel (memory/cuda/gather.cu) on the mover's own
// non-blocking stream: host → GPU reads mapped pinned host memory, GPU → host writes it, GPU → GPU
// copies within the device arena. The (src, dst) slot lists live in mapped pinned host memory too, in
// a ring of kRing regions: a region is rewritten only after the launch that read it has finished
// (its event), which in steady state never waits (kRing launches ago). No call blocks the host except
// wait() and a full ring.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/cuda/check.h"
#include "memory/cuda/hooks.h"
#include "memory/gather.h"
#include "memory/mover.h"

namespace mnemo {
namespace {

constexpr int kRing = 8;

class CudaMover final : public Mover {
 public:
  ~CudaMover() override {
    if (stream_) cudaStreamSynchronize(stream_);
    for (cudaEvent_t e : region_done_)
      if (e) cudaEventDestroy(e);
    if (caller_event_) cudaEventDestroy(caller_event_);
    if (mover_event_) cudaEventDestroy(mover_event_);
    if (stream_) cudaStreamDestroy(stream_);
    if (slots_host_) cudaFreeHost(slots_host_);
  }

  static Result<std::unique_ptr<Mover>> create(void* gpu, void* host_device, int64_t slot_bytes, int64_t max_copies,
                                               void* caller_stream) {
    if (!gpu || !host_device) return invalid_argument("CUDA mover: gpu arena and host arena must be set");
    if (slot_bytes <= 0 || slot_bytes % 16 != 0) {
      return invalid_argument("CUDA mover: slot_bytes must be a positive multiple of 16, got ", slot_bytes);
    }
    if (max_copies <= 0 || max_copies > INT32_MAX) {
      return invalid_argument("CUDA mover: max_copies must be in [1, 2^31), got ", max_copies);
    }
    auto m = std::unique_ptr<CudaMover>(new CudaMover());
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&m->device_));
    m->gpu_ = static_cast<char*>(gpu);
    m->host_ = static_cast<char*>(host_device);
    m->slot_bytes_ = slot_bytes;
    m->max_copies_ = max_copies;
    m->caller_ = static_cast<cudaStream_t>(caller_stream);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&m->caller_event_, cudaEventDisableTiming));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&m->mover_event_, cudaEventDisableTiming));
    for (cudaEvent_t& e : m->region_done_) {
      MNEMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    const size_t bytes = sizeof(int32_t) * 2 * static_cast<size_t>(max_copies) * kRing;
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaHostAlloc(reinterpret_cast<void**>(&m->slots_host_), bytes, cudaHostAllocMapped | cudaHostAllocPortable));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(reinterpret_cast<void**>(&m->slots_device_), m->slots_host_, 0));
    return std::unique_ptr<Mover>(std::move(m));
  }

  Status copy(CopyKind kind, std::span<const SlotCopy> copies) override {
    const int64_t n = static_cast<int64_t>(copies.size());
    if (n == 0) return Status::Ok();
    if (n > max_copies_) return invalid_argument("CUDA mover: ", n, " copies in one call, at most ", max_copies_);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    const int r = next_region_;
    next_region_ = (next_region_ + 1) % kRing;
    // The launch that last read this region must be done before the host rewrites it.
    if (region_used_[r]) MNEMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(region_done_[r]));
    int32_t* src = slots_host_ + int64_t{r} * 2 * max_copies_;
    int32_t* dst = src + max_copies_;
    for (int64_t i = 0; i < n; ++i) {
      src[i] = copies[i].src;
      dst[i] = copies[i].dst;
    }
    const int32_t* src_dev = slots_device_ + int64_t{r} * 2 * max_copies_;
    GatherParams p;
    p.src = kind == CopyKind::kHostToGpu ? host_ : gpu_;
    p.dst = kind == CopyKind::kGpuToHost ? host_ : gpu_;
    p.src_slots = src_dev;
    p.dst_slots = src_dev + max_copies_;
    p.count = n;
    p.block_bytes = slot_bytes_;
    MNEMO_RETURN_IF_ERROR(gather_blocks_cuda(p, stream_));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(region_done_[r], stream_));
    region_used_[r] = true;
    return Status::Ok();
  }

  Status wait() override {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));  // per thread: the write-behind thread calls this
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  Status after_caller() override {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(caller_event_, caller_));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, caller_event_, 0));
    return Status::Ok();
  }

  Status before_caller() override {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(mover_event_, stream_));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(caller_, mover_event_, 0));
    return Status::Ok();
  }

 private:
  CudaMover() = default;

  int device_ = 0;
  char* gpu_ = nullptr;   // [num_gpu_slots, slot_bytes], device memory
  char* host_ = nullptr;  // [num_host_slots, slot_bytes], device alias of mapped pinned memory
  int64_t slot_bytes_ = 0;
  int64_t max_copies_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaStream_t caller_ = nullptr;  // not owned; nullptr = legacy default stream
  cudaEvent_t caller_event_ = nullptr, mover_event_ = nullptr;
  // [kRing][2][max_copies] int32: src then dst slots of one launch per region.
  int32_t* slots_host_ = nullptr;
  int32_t* slots_device_ = nullptr;
  cudaEvent_t region_done_[kRing] = {};
  bool region_used_[kRing] = {};
  int next_region_ = 0;
};

}  // namespace

Result<std::unique_ptr<Mover>> make_cuda_mover(void* gpu_arena, void* host_arena_device, int64_t slot_bytes,
                                               int64_t max_copies, void* caller_stream) {
  return CudaMover::create(gpu_arena, host_arena_device, slot_bytes, max_copies, caller_stream);
}

namespace memory_cuda {

Status slot_alloc(bool device, int64_t bytes, const char* what, void** data, void** device_data) {
  *data = *device_data = nullptr;
  const cudaError_t err =
      device ? cudaMalloc(data, static_cast<size_t>(bytes))
             : cudaHostAlloc(data, static_cast<size_t>(bytes), cudaHostAllocMapped | cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so later calls start clean
    *data = nullptr;
    return out_of_budget(device ? "cudaMalloc" : "cudaHostAlloc (mapped, portable)", " of ", bytes, " bytes for ",
                         what, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  }
  if (device) {
    *device_data = *data;
    return Status::Ok();
  }
  const cudaError_t map_err = cudaHostGetDevicePointer(device_data, *data, 0);
  if (map_err != cudaSuccess) {
    cudaFreeHost(*data);
    *data = nullptr;
    return cuda_error("cudaHostGetDevicePointer for ", what, " failed: ", cudaGetErrorName(map_err), " (",
                      cudaGetErrorString(map_err), ")");
  }
  return Status::Ok();
}

void slot_free(bool device, void* data) {
  if (device)
    cudaFree(data);
  else
    cudaFreeHost(data);
}

}  // namespace memory_cuda
}  // namespace mnemo
