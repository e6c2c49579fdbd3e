// LSE merge of two partial attentions over disjoint key sets A and B of the same query rows:
//   m   = max(lse_a, lse_b)
//   lse = m + log(exp(lse_a − m) + exp(lse_b − m))
//   out = (exp(lse_a − lse) · out_a + exp(lse_b − lse) · out_b)
// which is attention over A ∪ B. A partial with lse = −inf is empty (no keys): it weighs 0 and its out
// is never read (it may hold anything, even NaN); two empty partials merge to out = 0, lse = −inf.
// Used for split-KV decode and to join stage-2 partials (e.g. resident and fetched blocks).
#pragma once

#include <cstdint>

#include "core/status.h"

namespace mnemo {

struct AttentionMergeParams {
  const float* out_a = nullptr;  // [num_rows, head_dim]
  const float* lse_a = nullptr;  // [num_rows] natural log
  const float* out_b = nullptr;  // [num_rows, head_dim]
  const float* lse_b = nullptr;  // [num_rows]
  int64_t num_rows = 0;          // e.g. num_q · num_heads
  int head_dim = 0;
  float* out = nullptr;          // [num_rows, head_dim]; may alias out_a or out_b
  float* lse = nullptr;          // [num_rows]; may alias lse_a or lse_b; may be null
};

// CPU reference (OpenMP over rows).
Status merge_attention_cpu(const AttentionMergeParams& p);
Status validate(const AttentionMergeParams& p);

}  // namespace mnemo
