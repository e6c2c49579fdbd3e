// CUDA gather of KV blocks (memory/gather.h): one CTA per block, 16-byte loads. Reading mapped
// pinned host memory this way keeps many PCIe reads in flight across the scattered blocks.
#include <cuda_runtime.h>

#include "core/cuda/check.h"
#include "memory/gather.h"

namespace mnemo {
namespace {

__global__ void gather_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, const int32_t* src_slots,
                              const int32_t* dst_slots, int64_t vecs_per_block) {
  const int64_t i = blockIdx.x;
  const uint4* s = src + int64_t{src_slots[i]} * vecs_per_block;
  uint4* d = dst + int64_t{dst_slots[i]} * vecs_per_block;
  for (int64_t v = threadIdx.x; v < vecs_per_block; v += blockDim.x) d[v] = s[v];
}

}  // namespace

Status gather_blocks_cuda(const GatherParams& p, void* stream) {
  if (p.count < 0 || p.block_bytes <= 0 || p.block_bytes % 16 != 0) {
    return invalid_argument("gather: block_bytes must be a positive multiple of 16, got ", p.block_bytes);
  }
  if (p.count == 0) return Status::Ok();
  if (!p.src || !p.dst || !p.src_slots || !p.dst_slots) {
    return invalid_argument("gather: src, dst, src_slots and dst_slots must be set");
  }
  if (p.count > int64_t{INT32_MAX}) return invalid_argument("gather: count ", p.count, " is too large");
  gather_kernel<<<static_cast<unsigned>(p.count), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(p.src), static_cast<uint4*>(p.dst), p.src_slots, p.dst_slots, p.block_bytes / 16);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo
