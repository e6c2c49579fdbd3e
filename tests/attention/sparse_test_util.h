// Helpers shared by the InfLLM-V2 tests: a paged KV arena with shuffled slots, RoPE tables, and the
// whole pipeline (compression, stage 1, top-k, stage 2) for one sequence.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attention/compress.h"
#include "attention/paged_kv.h"
#include "attention/rope.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "attention/sparse_params.h"

namespace mnemo::testing_util {

// A sequence's KV in an arena of slots. Slots are shuffled and spare ones (and the tail of a partial last
// block) hold NaN, so a kernel that reads outside the block table or past kv_len shows it.
class TestKv {
 public:
  TestKv(int num_kv_heads, int head_dim, int block_tokens, int64_t kv_len, std::mt19937* rng) {
    const int64_t num_blocks = (kv_len + block_tokens - 1) / block_tokens;
    const int64_t num_slots = num_blocks + 3;
    table_.resize(static_cast<size_t>(num_slots));
    std::iota(table_.begin(), table_.end(), 0);
    std::shuffle(table_.begin(), table_.end(), *rng);
    table_.resize(static_cast<size_t>(num_blocks));
    kv_.num_kv_heads = num_kv_heads;
    kv_.block_tokens = block_tokens;
    kv_.head_dim = head_dim;
    arena_.assign(static_cast<size_t>(num_slots * kv_.slot_floats()), std::nanf(""));
    kv_.arena = arena_.data();
    kv_.block_table = table_.data();
    kv_.num_blocks = num_blocks;
    kv_.kv_len = kv_len;
  }
  float* k(int64_t j, int g) {
    return const_cast<float*>(kv_.k_block(j / kv_.block_tokens, g)) + (j % kv_.block_tokens) * kv_.head_dim;
  }
  float* v(int64_t j, int g) {
    return const_cast<float*>(kv_.v_block(j / kv_.block_tokens, g)) + (j % kv_.block_tokens) * kv_.head_dim;
  }
  // Every valid key and value ~ N(0, 1).
  void fill_normal(std::mt19937* rng) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t j = 0; j < kv_.kv_len; ++j) {
      for (int g = 0; g < kv_.num_kv_heads; ++g) {
        for (int e = 0; e < kv_.head_dim; ++e) k(j, g)[e] = nd(*rng);
        for (int e = 0; e < kv_.head_dim; ++e) v(j, g)[e] = nd(*rng);
      }
    }
  }
  const PagedKv& kv() const { return kv_; }

 private:
  std::vector<float> arena_;
  std::vector<int32_t> table_;
  PagedKv kv_;
};

inline Rope make_rope(int head_dim, double theta = 10000.0) {
  Rope rope;
  for (int i = 0; i < head_dim / 2; ++i) rope.inv_freq.push_back(float(std::pow(theta, -2.0 * i / head_dim)));
  return rope;
}

inline std::vector<float> normal_vector(size_t n, std::mt19937* rng, float stddev = 1.0f) {
  std::normal_distribution<float> nd(0.0f, stddev);
  std::vector<float> x(n);
  for (float& e : x) e = nd(*rng);
  return x;
}

// Both compression tiers of one sequence, computed over all kv_len tokens.
struct Tiers {
  CompressedKeys tier1, tier2;
};

inline Tiers compress_all(const PagedKv& kv, const SparseParams& sp, const RopeTable* rope) {
  Tiers t{CompressedKeys(kv.num_kv_heads, kv.head_dim, sp.kernel_size, sp.kernel_stride),
          CompressedKeys(kv.num_kv_heads, kv.head_dim, lse_kernel_size(sp), lse_kernel_stride(sp))};
  const RopeTable* r = sp.use_nope ? nullptr : rope;
  EXPECT_TRUE(t.tier1.append_block(kv, kv.kv_len, r).ok());
  EXPECT_TRUE(t.tier2.append_block(kv, kv.kv_len, r).ok());
  return t;
}

// Selection of every query (stage 1 with the tier-2 normaliser unless `exact`, then top-k).
struct Selection {
  std::vector<int32_t> ids;    // [num_q, num_kv_heads, max_selected]
  std::vector<int32_t> count;  // [num_q, num_kv_heads]
  int max_selected = 0;
};

inline Selection select_all(const Tiers& tiers, const SparseParams& sp, const float* q_stage1,
                            const std::vector<int64_t>& q_index, int num_heads, int64_t num_blocks, bool exact) {
  Selection s;
  s.max_selected = max_selected_blocks(sp);
  const int hkv = tiers.tier1.view().num_kv_heads;
  s.ids.assign(q_index.size() * hkv * s.max_selected, -7);
  s.count.assign(q_index.size() * hkv, -7);
  BlockSelectParams p;
  p.score.q = q_stage1;
  p.score.q_index = q_index.data();
  p.score.num_q = static_cast<int64_t>(q_index.size());
  p.score.num_heads = num_heads;
  p.score.keys = tiers.tier1.view();
  if (!exact) p.score.lse_keys = tiers.tier2.view();
  p.score.block_size = sp.block_size;
  p.score.num_blocks = num_blocks;
  p.score.softmax_scale = 1.0f / std::sqrt(float(tiers.tier1.view().head_dim));
  p.sparse = sp;
  p.max_selected = s.max_selected;
  p.block_ids = s.ids.data();
  p.num_selected = s.count.data();
  const Status st = select_blocks_cpu(p);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return s;
}

}  // namespace mnemo::testing_util
