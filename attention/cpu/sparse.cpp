// CPU reference of block-sparse attention (see attention/sparse.h).
//
// Per kv head: the union of the blocks any query of the chunk selected is rotated once into a scratch
// buffer (a decode step touches ~96 blocks, a prefill chunk about all of them); then query rows run in
// parallel, each visiting its blocks in ascending order with the same online softmax as dense.cpp, so a
// full selection reproduces dense attention's arithmetic.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/cpu/online_softmax.h"
#include "attention/sparse.h"

namespace mnemo {

Status validate(const SparseAttentionParams& p) {
  const PagedKv& kv = p.kv;
  if (!p.q || !p.q_index || !p.out || !p.block_ids) {
    return invalid_argument("sparse attention: q, q_index, block_ids and out must be set");
  }
  if (!kv.arena || !kv.block_table) return invalid_argument("sparse attention: kv.arena and kv.block_table must be set");
  if (p.num_heads <= 0 || kv.num_kv_heads <= 0 || p.num_heads % kv.num_kv_heads != 0) {
    return invalid_argument("sparse attention: num_heads (", p.num_heads,
                            ") must be a positive multiple of num_kv_heads (", kv.num_kv_heads, ")");
  }
  if (kv.head_dim <= 0 || kv.head_dim % 2 != 0 || kv.block_tokens <= 0) {
    return invalid_argument("sparse attention: head_dim must be positive and even and block_tokens positive, got ",
                            kv.head_dim, ", ", kv.block_tokens);
  }
  if (kv.kv_len > kv.num_blocks * kv.block_tokens) {
    return invalid_argument("sparse attention: kv_len ", kv.kv_len, " exceeds num_blocks ", kv.num_blocks,
                            " x block_tokens ", kv.block_tokens);
  }
  if (p.max_selected < 0) return invalid_argument("sparse attention: max_selected must be >= 0, got ", p.max_selected);
  if (p.key_rope && (p.key_rope->rope().head_dim() != kv.head_dim || p.key_rope->size() < kv.kv_len)) {
    return invalid_argument("sparse attention: key_rope must have head_dim ", kv.head_dim, " and cover kv_len ",
                            kv.kv_len, "; has head_dim ", p.key_rope->rope().head_dim(), ", ", p.key_rope->size(),
                            " positions");
  }
  for (int64_t i = 0; i < p.num_q; ++i) {
    const int64_t t = p.q_index[i];
    if (t < 0 || t >= kv.kv_len) {
      return invalid_argument("sparse attention: q_index[", i, "] = ", t, ": expected in [0, kv_len = ", kv.kv_len, ")");
    }
    for (int g = 0; g < kv.num_kv_heads; ++g) {
      const int32_t* ids = p.block_ids + (i * kv.num_kv_heads + g) * p.max_selected;
      int64_t prev = -1;
      for (int s = 0; s < p.max_selected; ++s) {
        if (ids[s] == -1) continue;
        if (ids[s] < 0 || ids[s] <= prev || ids[s] > t / kv.block_tokens) {
          return invalid_argument("sparse attention: block_ids[", i, ", ", g, ", ", s, "] = ", ids[s],
                                  ": expected ascending ids in [0, ", t / kv.block_tokens,
                                  "] (query block), previous ", prev);
        }
        prev = ids[s];
      }
    }
  }
  return Status::Ok();
}

Status sparse_attention_cpu(const SparseAttentionParams& p) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const PagedKv& kv = p.kv;
  const int64_t d = kv.head_dim;
  const int64_t bt = kv.block_tokens;
  const int group = p.num_heads / kv.num_kv_heads;
  const int64_t block_floats = bt * d;
  std::vector<int64_t> scratch_of(static_cast<size_t>(kv.num_blocks));  // block → scratch row, −1: not used
  std::vector<int64_t> used;
  std::vector<float> keys;

  for (int g = 0; g < kv.num_kv_heads; ++g) {
    // Union of the blocks selected for kv head g; rotate each once.
    std::fill(scratch_of.begin(), scratch_of.end(), -1);
    used.clear();
    for (int64_t i = 0; i < p.num_q; ++i) {
      const int32_t* ids = p.block_ids + (i * kv.num_kv_heads + g) * p.max_selected;
      for (int s = 0; s < p.max_selected; ++s) {
        if (ids[s] >= 0 && scratch_of[ids[s]] < 0) {
          scratch_of[ids[s]] = static_cast<int64_t>(used.size());
          used.push_back(ids[s]);
        }
      }
    }
    keys.resize(used.size() * static_cast<size_t>(block_floats));
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < static_cast<int64_t>(used.size()); ++u) {
      const int64_t b = used[u];
      const int64_t n = std::min(bt, kv.kv_len - b * bt);
      const float* src = kv.k_block(b, g);
      float* dst = keys.data() + u * block_floats;
      std::copy(src, src + n * d, dst);
      if (p.key_rope) {
        for (int64_t t = 0; t < n; ++t) p.key_rope->apply(b * bt + t, dst + t * d);
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
          const int32_t* ids = p.block_ids + (i * kv.num_kv_heads + g) * p.max_selected;
          for (int s = 0; s < p.max_selected; ++s) {
            if (ids[s] < 0) continue;
            const int64_t b = ids[s];
            const int64_t n = std::min(bt, len - b * bt);  // causal inside the query's own block
            acc.add_block(q, keys.data() + scratch_of[b] * block_floats, kv.v_block(b, g), 0, n, d, p.softmax_scale,
                          scores.data(), out);
          }
          // An empty selection leaves out = 0 and lse = log 0 = -inf.
          const float lse = acc.finish(out, d);
          if (p.lse) p.lse[i * p.num_heads + h] = lse;
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace mnemo
