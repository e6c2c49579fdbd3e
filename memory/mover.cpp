#include "memory/mover.h"

#include <cstring>

namespace mnemo {
namespace {

class CpuMover final : public Mover {
 public:
  CpuMover(float* gpu, float* host, int64_t slot_floats) : gpu_(gpu), host_(host), slot_floats_(slot_floats) {}

  Status copy(CopyKind kind, std::span<const SlotCopy> copies) override {
    float* src = kind == CopyKind::kHostToGpu ? host_ : gpu_;
    float* dst = kind == CopyKind::kGpuToHost ? host_ : gpu_;
    const size_t bytes = static_cast<size_t>(slot_floats_) * sizeof(float);
    for (const SlotCopy& c : copies) {
      std::memcpy(dst + c.dst * slot_floats_, src + c.src * slot_floats_, bytes);
    }
    return Status::Ok();
  }

  Status wait() override { return Status::Ok(); }

 private:
  float* gpu_;
  float* host_;
  int64_t slot_floats_;
};

}  // namespace

std::unique_ptr<Mover> make_cpu_mover(float* gpu_arena, float* host_arena, int64_t slot_floats) {
  return std::make_unique<CpuMover>(gpu_arena, host_arena, slot_floats);
}

}  // namespace mnemo
