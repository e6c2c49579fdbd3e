// PagedKv: how attention sees a sequence's KV cache — fixed-size blocks in an arena of slots, reached
// through a block table (like vLLM/FlashInfer paged KV). Attention never knows where blocks come from
// (memory/ decides that); it only reads slots.
#pragma once

#include <cstdint>

namespace mnemo {

struct PagedKv {
  // [num_slots, 2, num_kv_heads, block_tokens, head_dim]: per slot all K heads, then all V heads.
  // Keys are stored before RoPE.
  const float* arena = nullptr;
  int num_kv_heads = 0;
  int block_tokens = 0;
  int head_dim = 0;
  const int32_t* block_table = nullptr;  // [num_blocks]: slot of logical block b
  int64_t num_blocks = 0;
  int64_t kv_len = 0;  // valid tokens; the last block may be partial

  int64_t slot_floats() const { return int64_t{2} * num_kv_heads * block_tokens * head_dim; }
  // K (or V) rows of logical block b, kv head h: [block_tokens, head_dim].
  const float* k_block(int64_t b, int h) const {
    return arena + block_table[b] * slot_floats() + int64_t{h} * block_tokens * head_dim;
  }
  const float* v_block(int64_t b, int h) const {
    return k_block(b, h) + int64_t{num_kv_heads} * block_tokens * head_dim;
  }
};

}  // namespace mnemo
