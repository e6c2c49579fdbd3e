// The key-compression kernel (attention/cuda/compress.h), in a header so the CPU warp simulator
// (tests/cuda/sim) runs the same source in CI. One CTA per (window, kv head), one thread per head
// dimension (the CTA is whole warps; threads past head_dim idle).
#pragma once

#include "attention/cuda/compress.h"

namespace mnemo::cuda {

// Internal linkage: the simulator test links the library that holds the device build of this source.
static __global__ void compress_keys_kernel(const CompressKeysCudaParams p) {
  const int e = static_cast<int>(threadIdx.x);
  const int d = p.kv.head_dim;
  if (e >= d) return;
  const int half = d / 2;
  const int g = static_cast<int>(blockIdx.y);
  const int64_t j = p.first_window + blockIdx.x;
  const int64_t t0 = j * p.kernel_stride;
  const int64_t head_elems = int64_t{p.kv.block_tokens} * d;
  const int i = e < half ? e : e - half;  // rotation pair index
  float sum = 0.0f;
  for (int64_t t = t0; t < t0 + p.kernel_size; ++t) {
    const int64_t block = t / p.kv.block_tokens, offset = t % p.kv.block_tokens;
    const bf16* k = p.kv.arena + int64_t{p.kv.block_tables[block]} * p.kv.slot_elems() + g * head_elems + offset * d;
    float x;
    if (p.key_rope.cos != nullptr) {
      const float c = p.key_rope.cos[t * half + i], s = p.key_rope.sin[t * half + i];
      const float x0 = __bfloat162float(k[i]), x1 = __bfloat162float(k[i + half]);
      x = e < half ? x0 * c - x1 * s : x1 * c + x0 * s;
    } else {
      x = __bfloat162float(k[e]);
    }
    sum += x;
  }
  p.out[g * p.head_stride + j * d + e] = __float2bfloat16_rn(sum * (1.0f / static_cast<float>(p.kernel_size)));
}

}  // namespace mnemo::cuda
