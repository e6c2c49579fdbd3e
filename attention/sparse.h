// Stage 2 of InfLLM-V2: block-sparse causal attention over each query's selected blocks.
//
// For query i (stream index t_i), head h (kv head g = h / group), with S_i,g its selected blocks:
//   keys   K_i,g = { j : j / block_tokens ∈ S_i,g, j <= t_i }        (causal inside the own block)
//   s_j    = softmax_scale · <q_i,h , rope(k_j,g, j)>
//   out_i,h = Σ_{j ∈ K} softmax(s)_j v_j,g,   lse_i,h = log Σ_{j ∈ K} exp(s_j)
// Keys are rotated at their own index j (the `exact` position policy); queries arrive rotated. Blocks
// are visited in ascending order with the online softmax of attention/dense.h, so when S covers every
// block up to b_q the result equals dense attention. An empty selection gives out = 0, lse = −inf (an
// empty partial, which attention/merge.h merges away).
// All query heads of a GQA group share their kv head's selection (it was scored for the whole group).
#pragma once

#include <cstdint>

#include "attention/paged_kv.h"
#include "attention/rope.h"
#include "core/status.h"

namespace mnemo {

struct SparseAttentionParams {
  const float* q = nullptr;          // [num_q, num_heads, head_dim], RoPE applied
  const int64_t* q_index = nullptr;  // [num_q] stream index of each query (causal bound, inclusive)
  int64_t num_q = 0;
  int num_heads = 0;
  PagedKv kv;                        // logical blocks → slots; num_kv_heads must divide num_heads
  const RopeTable* key_rope = nullptr;  // rotates keys as loaded (size >= kv_len); null: as stored
  float softmax_scale = 0.0f;
  // [num_q, num_kv_heads, max_selected]: logical block ids, strictly ascending, each <= t_i / block_tokens
  // and < kv.num_blocks; −1 entries (padding) are skipped.
  const int32_t* block_ids = nullptr;
  int max_selected = 0;
  float* out = nullptr;              // [num_q, num_heads, head_dim]
  float* lse = nullptr;              // [num_q, num_heads] natural log; may be null
};

// CPU reference (fp32, OpenMP over query rows and heads).
Status sparse_attention_cpu(const SparseAttentionParams& p);

// Shape and selection checks shared by every backend: names the field, expected and got.
Status validate(const SparseAttentionParams& p);

}  // namespace mnemo
