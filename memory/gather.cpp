#include "memory/gather.h"

#include <cstring>

namespace mnemo {

Status gather_blocks_cpu(const GatherParams& p) {
  if (p.count < 0 || p.block_bytes <= 0) return invalid_argument("gather: count and block_bytes must be positive");
  if (p.count > 0 && (!p.src || !p.dst || !p.src_slots || !p.dst_slots)) {
    return invalid_argument("gather: src, dst, src_slots and dst_slots must be set");
  }
  for (int64_t i = 0; i < p.count; ++i) {
    std::memcpy(static_cast<char*>(p.dst) + int64_t{p.dst_slots[i]} * p.block_bytes,
                static_cast<const char*>(p.src) + int64_t{p.src_slots[i]} * p.block_bytes,
                static_cast<size_t>(p.block_bytes));
  }
  return Status::Ok();
}

#ifndef MNEMO_WITH_CUDA
Status gather_blocks_cuda(const GatherParams&, void*) {
  return unimplemented("gather_blocks_cuda: this build has no CUDA support");
}
#endif

}  // namespace mnemo
