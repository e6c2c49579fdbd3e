// Top-k block selection kernel (see attention/cuda/select.h): one CTA of 128 threads per (query, kv head).
//
// Forced: blocks [0, init_end) and [local_begin, b_q]; candidates [init_end, local_begin); `chosen` =
// count − forced of them are taken (select_topk_cpu's counts). Scores map to order-preserving 32-bit
// keys (NaN → 0, the lowest; −0 → +0); an MSB-first radix select (4 passes of 8 bits, shared-memory
// histogram) finds the chosen-th largest key K* and how many keys equal to K* to take. Then bit masks
// in shared memory mark the forced blocks and the candidates above K* (parallel) and the lowest-index
// candidates equal to K* (thread 0, ascending), and thread 0 writes the ids in ascending order.
#pragma once

#include <cstdint>

#include "attention/cuda/select.h"
#include "attention/cuda/warp_mma.cuh"

namespace mnemo::cuda {

constexpr int kTopkThreads = 128;

// Shared-memory add/or: the simulator runs lanes one at a time, so a plain update is atomic there.
__device__ __forceinline__ void smem_add(uint32_t* p, uint32_t v) {
#ifdef MNEMO_WARP_SIM
  *p += v;
#else
  atomicAdd(p, v);
#endif
}
__device__ __forceinline__ void smem_or(uint32_t* p, uint32_t v) {
#ifdef MNEMO_WARP_SIM
  *p |= v;
#else
  atomicOr(p, v);
#endif
}

// Larger key = ranks first; NaN lowest, −0 and +0 equal (select_topk_cpu's ranks_before).
__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0u;
  if (f == 0.0f) return 0x80000000u;
  uint32_t b;
#ifdef MNEMO_WARP_SIM
  std::memcpy(&b, &f, 4);
#else
  b = __float_as_uint(f);
#endif
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Dynamic shared memory: 256 + 2 histogram/result words, then two masks of ceil(num_blocks / 32) words.
inline size_t topk_smem_bytes(int64_t num_blocks) {
  return (256 + 2 + 2 * ((num_blocks + 31) / 32)) * sizeof(uint32_t);
}

__global__ void __launch_bounds__(kTopkThreads) topk_kernel(const BlockTopkCudaParams p) {
  MNEMO_DYNAMIC_SMEM(smem);
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem);  // [256]
  uint32_t* result = hist + 256;                       // [digit, remaining]
  const int64_t words = (p.num_blocks + 31) / 32;
  uint32_t* sel = result + 2;    // [words] selected blocks
  uint32_t* eq = sel + words;    // [words] candidates whose key equals K*
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.x;  // query * num_kv_heads + kv head
  const int64_t qi = row / p.num_kv_heads;
  const float* scores = p.block_scores + row * p.num_blocks;
  int32_t* ids = p.block_ids + row * p.max_selected;

  const SparseParams& sp = p.sparse;
  const int64_t bq = p.q_index[qi] / sp.block_size;
  const int64_t available = bq + 1;
  const int64_t init_end = sp.init_blocks < available ? sp.init_blocks : available;
  const int64_t local_first = bq - sp.window_size / sp.block_size;
  const int64_t local_begin = local_first > init_end ? local_first : init_end;
  const int64_t forced = init_end + (available - local_begin);
  const int64_t budget = int64_t{sp.topk} + sp.window_size / sp.block_size;
  const int64_t want = budget > forced ? budget : forced;
  const int64_t count = want < available ? want : available;
  const int64_t chosen = count - forced;  // candidates to take, <= local_begin - init_end

  const int64_t used_words = (available + 31) / 32;
  for (int64_t w = tid; w < used_words; w += kTopkThreads) sel[w] = eq[w] = 0u;

  // Radix select of the chosen-th largest candidate key. take_all: every candidate is taken.
  const bool take_all = chosen >= local_begin - init_end;
  uint32_t prefix = 0u, prefix_mask = 0u, remaining = static_cast<uint32_t>(chosen);
  if (chosen > 0 && !take_all) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int d = tid; d < 256; d += kTopkThreads) hist[d] = 0u;
      cta_sync();
      for (int64_t b = init_end + tid; b < local_begin; b += kTopkThreads) {
        const uint32_t k = order_key(scores[b]);
        if ((k & prefix_mask) == prefix) smem_add(&hist[(k >> shift) & 255u], 1u);
      }
      cta_sync();
      if (tid == 0) {
        uint32_t cum = 0;
        int d = 255;
        for (; d > 0; --d) {
          if (cum + hist[d] >= remaining) break;
          cum += hist[d];
        }
        result[0] = static_cast<uint32_t>(d);
        result[1] = remaining - cum;
      }
      cta_sync();
      prefix |= result[0] << shift;
      prefix_mask |= 255u << shift;
      remaining = result[1];
      cta_sync();  // result is rewritten by the next pass
    }
  }
  cta_sync();  // masks cleared
  for (int64_t b = tid; b < available; b += kTopkThreads) {
    bool take = b < init_end || b >= local_begin;
    if (!take && chosen > 0) {
      if (take_all) {
        take = true;
      } else {
        const uint32_t k = order_key(scores[b]);
        take = k > prefix;
        if (k == prefix) smem_or(&eq[b / 32], 1u << (b % 32));
      }
    }
    if (take) smem_or(&sel[b / 32], 1u << (b % 32));
  }
  cta_sync();
  if (tid == 0) {
    // Equal keys: the lowest indices first (ties to the lower block index).
    for (int64_t w = 0; w < used_words && remaining > 0 && chosen > 0 && !take_all; ++w) {
      uint32_t bits = eq[w];
      while (bits != 0u && remaining > 0) {
        const uint32_t low = bits & (~bits + 1u);
        sel[w] |= low;
        bits ^= low;
        --remaining;
      }
    }
    int32_t n = 0;
    for (int64_t w = 0; w < used_words; ++w) {
      uint32_t bits = sel[w];
      while (bits != 0u) {
        const uint32_t low = bits & (~bits + 1u);
        int bit = 0;
        while ((low >> bit) != 1u) ++bit;
        if (n < count) ids[n] = static_cast<int32_t>(w * 32 + bit);
        ++n;
        bits ^= low;
      }
    }
    if (p.num_selected != nullptr) p.num_selected[row] = n;
  }
  for (int64_t i = count + tid; i < p.max_selected; i += kTopkThreads) ids[i] = -1;
}

}  // namespace mnemo::cuda
