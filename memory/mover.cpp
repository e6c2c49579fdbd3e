#include "memory/mover.h"

#include <cstring>
#include <new>

#include "memory/cuda/hooks.h"

namespace mnemo {
namespace {

class CpuMover final : public Mover {
 public:
  CpuMover(void* gpu, void* host, int64_t slot_bytes)
      : gpu_(static_cast<char*>(gpu)), host_(static_cast<char*>(host)), slot_bytes_(slot_bytes) {}

  Status copy(CopyKind kind, std::span<const SlotCopy> copies) override {
    const char* src = kind == CopyKind::kHostToGpu ? host_ : gpu_;
    char* dst = kind == CopyKind::kGpuToHost ? host_ : gpu_;
    for (const SlotCopy& c : copies) {
      std::memcpy(dst + c.dst * slot_bytes_, src + c.src * slot_bytes_, static_cast<size_t>(slot_bytes_));
    }
    return Status::Ok();
  }

  Status wait() override { return Status::Ok(); }
  Status after_caller() override { return Status::Ok(); }
  Status before_caller() override { return Status::Ok(); }

 private:
  char* gpu_;
  char* host_;
  int64_t slot_bytes_;
};

constexpr std::align_val_t kHostAlign{64};

}  // namespace

std::unique_ptr<Mover> make_cpu_mover(void* gpu_arena, void* host_arena, int64_t slot_bytes) {
  return std::make_unique<CpuMover>(gpu_arena, host_arena, slot_bytes);
}

Result<std::unique_ptr<SlotMemory>> SlotMemory::allocate(SlotMemoryKind kind, int64_t bytes, const char* what) {
  if (bytes <= 0) return invalid_argument("SlotMemory: ", what, ": ", bytes, " bytes");
  auto m = std::unique_ptr<SlotMemory>(new SlotMemory());
  m->kind_ = kind;
  m->bytes_ = bytes;
  if (kind == SlotMemoryKind::kHost) {
    m->data_ = ::operator new(static_cast<size_t>(bytes), kHostAlign, std::nothrow);
    if (!m->data_) return out_of_budget("cannot allocate ", bytes, " bytes of host memory for ", what);
    return m;
  }
  MNEMO_RETURN_IF_ERROR(memory_cuda::slot_alloc(kind == SlotMemoryKind::kCudaDevice, bytes, what, &m->data_,
                                               &m->device_data_));
  return m;
}

SlotMemory::~SlotMemory() {
  if (!data_) return;
  if (kind_ == SlotMemoryKind::kHost) {
    ::operator delete(data_, kHostAlign);
  } else {
    memory_cuda::slot_free(kind_ == SlotMemoryKind::kCudaDevice, data_);
  }
}

#ifndef MNEMO_WITH_CUDA
Result<std::unique_ptr<Mover>> make_cuda_mover(void*, void*, int64_t, int64_t, void*) {
  return unimplemented("make_cuda_mover: this build has no CUDA support (MNEMO_CUDA=OFF)");
}

namespace memory_cuda {
Status slot_alloc(bool, int64_t, const char* what, void**, void**) {
  return unimplemented("CUDA memory for ", what, ": this build has no CUDA support (MNEMO_CUDA=OFF)");
}
void slot_free(bool, void*) {}
}  // namespace memory_cuda
#endif

}  // namespace mnemo
