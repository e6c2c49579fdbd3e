// Dense causal attention over a paged KV cache, for a chunk of queries at arbitrary positions
// (a prefill chunk or one decode token per sequence).
//
// For query i with stream index t_i and head h (kv head g = h / (num_heads / num_kv_heads)):
//   s_j = softmax_scale * <q_i,h , rope(k_j,g, j)>   for j <= t_i (and j > t_i - W with a sliding window W)
//   out_i,h = sum_j softmax(s)_j v_j,g,   lse_i,h = log sum_j exp(s_j)
// Keys are rotated at their own index j (the `exact` position policy); queries arrive rotated.
// No N x N matrix: keys are visited block by block with an online softmax (running max and sum).
#pragma once

#include <cstdint>

#include "attention/paged_kv.h"
#include "attention/rope.h"
#include "core/status.h"

namespace mnemo {

struct DenseAttentionParams {
  const float* q = nullptr;        // [num_q, num_heads, head_dim], RoPE applied
  const int64_t* q_index = nullptr;  // [num_q] stream index of each query (causal bound, inclusive)
  int64_t num_q = 0;
  int num_heads = 0;
  PagedKv kv;                      // num_kv_heads must divide num_heads
  const RopeTable* key_rope = nullptr;  // rotates keys as loaded (size >= kv_len); null: as stored
  float softmax_scale = 0.0f;
  int64_t sliding_window = 0;      // > 0: query t sees only keys j > t - sliding_window (Mistral)
  // Keys are rotated at j - rope_offset (queries must then be rotated at t - rope_offset): RoPE only
  // sees relative positions, so a window far into a stream can use a small table. Every visited key
  // must have j >= rope_offset. Default: 0.
  int64_t rope_offset = 0;
  float* out = nullptr;            // [num_q, num_heads, head_dim]
  float* lse = nullptr;            // [num_q, num_heads] natural log; may be null
};

// CPU reference (fp32, OpenMP over kv heads and query rows).
Status dense_attention_cpu(const DenseAttentionParams& p);

// Shape checks shared by every backend: names the field, expected and got.
Status validate(const DenseAttentionParams& p);

}  // namespace mnemo
