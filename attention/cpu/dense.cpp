// CPU reference of dense causal attention over paged KV (see attention/dense.h).
//
// Per kv head: keys of the visible range are rotated once into a scratch buffer, then query rows are
// processed in parallel, each visiting blocks in order with an online softmax. The visiting order is
// fixed (block 0 upward), so results do not depend on where blocks live or how many threads run.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/cpu/online_softmax.h"
#include "attention/dense.h"

namespace mnemo {

Status validate(const DenseAttentionParams& p) {
  const PagedKv& kv = p.kv;
  if (!p.q || !p.q_index || !p.out) return invalid_argument("dense attention: q, q_index and out must be set");
  if (!kv.arena || !kv.block_table) return invalid_argument("dense attention: kv.arena and kv.block_table must be set");
  if (p.num_heads <= 0 || kv.num_kv_heads <= 0 || p.num_heads % kv.num_kv_heads != 0) {
    return invalid_argument("dense attention: num_heads (", p.num_heads,
                            ") must be a positive multiple of num_kv_heads (", kv.num_kv_heads, ")");
  }
  if (kv.head_dim <= 0 || kv.head_dim % 2 != 0) {
    return invalid_argument("dense attention: head_dim must be positive and even, got ", kv.head_dim);
  }
  if (kv.kv_len > kv.num_blocks * kv.block_tokens) {
    return invalid_argument("dense attention: kv_len ", kv.kv_len, " exceeds num_blocks ", kv.num_blocks,
                            " x block_tokens ", kv.block_tokens);
  }
  if (p.key_rope) {
    if (p.key_rope->rope().head_dim() != kv.head_dim) {
      return invalid_argument("dense attention: key_rope head_dim: expected ", kv.head_dim, ", got ",
                              p.key_rope->rope().head_dim());
    }
    if (p.key_rope->size() < kv.kv_len - p.rope_offset) {
      return invalid_argument("dense attention: key_rope table covers ", p.key_rope->size(),
                              " positions, kv_len is ", kv.kv_len);
    }
  }
  for (int64_t i = 0; i < p.num_q; ++i) {
    if (p.q_index[i] < 0 || p.q_index[i] >= kv.kv_len) {
      return invalid_argument("dense attention: q_index[", i, "] = ", p.q_index[i],
                              ": expected in [0, kv_len = ", kv.kv_len, ")");
    }
  }
  return Status::Ok();
}

Status dense_attention_cpu(const DenseAttentionParams& p) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const PagedKv& kv = p.kv;
  const int64_t d = kv.head_dim;
  const int64_t bt = kv.block_tokens;
  const int group = p.num_heads / kv.num_kv_heads;
  int64_t max_index = 0, min_index = INT64_MAX;
  for (int64_t i = 0; i < p.num_q; ++i) {
    max_index = std::max(max_index, p.q_index[i]);
    min_index = std::min(min_index, p.q_index[i]);
  }
  const int64_t visible = max_index + 1;  // keys any query of the chunk can see
  // With a sliding window, blocks before every query's window are never read (and may be absent).
  const int64_t first_block = p.sliding_window > 0 ? std::max<int64_t>(0, min_index - p.sliding_window + 1) / bt : 0;
  if (p.key_rope && first_block * bt < p.rope_offset) {
    return invalid_argument("dense attention: rope_offset ", p.rope_offset, " is past the first visited key ",
                            first_block * bt);
  }
  std::vector<float> keys(static_cast<size_t>(visible * d));

  for (int g = 0; g < kv.num_kv_heads; ++g) {
    // Gather (and rotate) keys [0, visible) of kv head g.
#pragma omp parallel for schedule(static)
    for (int64_t b = first_block; b < (visible + bt - 1) / bt; ++b) {
      const float* src = kv.k_block(b, g);
      const int64_t n = std::min(bt, visible - b * bt);
      for (int64_t t = 0; t < n; ++t) {
        float* dst = keys.data() + (b * bt + t) * d;
        std::copy(src + t * d, src + (t + 1) * d, dst);
        if (p.key_rope) p.key_rope->apply(b * bt + t - p.rope_offset, dst);
      }
    }
#pragma omp parallel
    {
      std::vector<float> scores(static_cast<size_t>(bt));
#pragma omp for collapse(2) schedule(dynamic, 4)
      for (int64_t i = 0; i < p.num_q; ++i) {
        for (int hh = 0; hh < group; ++hh) {
          const int h = g * group + hh;
          const float* q = p.q + (i * p.num_heads + h) * d;
          float* out = p.out + (i * p.num_heads + h) * d;
          std::fill(out, out + d, 0.0f);
          cpu::OnlineSoftmax acc;
          const int64_t len = p.q_index[i] + 1;
          const int64_t first = p.sliding_window > 0 ? std::max<int64_t>(0, len - p.sliding_window) : 0;
          for (int64_t b = first / bt; b * bt < len; ++b) {
            const int64_t n = std::min(bt, len - b * bt);
            const int64_t t0 = std::max<int64_t>(0, first - b * bt);  // keys before the window
            acc.add_block(q, keys.data() + b * bt * d, kv.v_block(b, g), t0, n, d, p.softmax_scale, scores.data(),
                          out);
          }
          const float lse = acc.finish(out, d);
          if (p.lse) p.lse[i * p.num_heads + h] = lse;
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace mnemo
