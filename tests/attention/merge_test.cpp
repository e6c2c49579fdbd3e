// LSE merge: two partial attentions over a split of the keys merge to dense attention; empty partials
// (lse = -inf, out possibly NaN) are ignored without producing NaN; merging in place works.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attention/dense.h"
#include "attention/merge.h"
#include "attention/sparse.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

using testing_util::make_rope;
using testing_util::normal_vector;
using testing_util::TestKv;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Partials {
  std::vector<float> out, lse;
};

// Sparse attention of every query over the blocks `keep(b, query block)` selects.
template <typename Keep>
Partials partial(const PagedKv& kv, const RopeTable& rope, const std::vector<float>& q, const std::vector<int64_t>& q_index,
                 int heads, Keep keep) {
  const int64_t nq = int64_t(q_index.size());
  const int max_sel = int(kv.num_blocks);
  std::vector<int32_t> ids(nq * kv.num_kv_heads * max_sel, -1);
  for (int64_t i = 0; i < nq; ++i) {
    for (int g = 0; g < kv.num_kv_heads; ++g) {
      int s = 0;
      for (int64_t b = 0; b <= q_index[i] / kv.block_tokens; ++b) {
        if (keep(b, q_index[i] / kv.block_tokens)) ids[(i * kv.num_kv_heads + g) * max_sel + s++] = int32_t(b);
      }
    }
  }
  Partials r{std::vector<float>(q.size(), std::nanf("")), std::vector<float>(nq * heads, std::nanf(""))};
  SparseAttentionParams p;
  p.q = q.data();
  p.q_index = q_index.data();
  p.num_q = nq;
  p.num_heads = heads;
  p.kv = kv;
  p.key_rope = &rope;
  p.softmax_scale = 1.0f / std::sqrt(float(kv.head_dim));
  p.block_ids = ids.data();
  p.max_selected = max_sel;
  p.out = r.out.data();
  p.lse = r.lse.data();
  EXPECT_TRUE(sparse_attention_cpu(p).ok());
  return r;
}

TEST(AttentionMerge, TwoHalvesOfTheKeysMergeToDense) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int heads = 8, hkv = 2, d = 64;
  const int64_t kv_len = 900, nq = 30;
  TestKv tkv(hkv, d, 64, kv_len, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(d));
  rope.ensure(kv_len);
  std::vector<float> q = normal_vector(nq * heads * d, &rng, 2.0f);
  std::vector<int64_t> q_index(nq);
  for (int64_t i = 0; i < nq; ++i) q_index[i] = kv_len - 1 - 29 * i;

  std::vector<float> dense_out(q.size()), dense_lse(nq * heads);
  DenseAttentionParams dp;
  dp.q = q.data();
  dp.q_index = q_index.data();
  dp.num_q = nq;
  dp.num_heads = heads;
  dp.kv = tkv.kv();
  dp.key_rope = &rope;
  dp.softmax_scale = 1.0f / std::sqrt(float(d));
  dp.out = dense_out.data();
  dp.lse = dense_lse.data();
  ASSERT_TRUE(dense_attention_cpu(dp).ok());

  // Earlier and later half of each query's blocks; also odd/even blocks.
  using KeepFn = bool (*)(int64_t, int64_t);
  const KeepFn splits[2][2] = {{[](int64_t b, int64_t bq) { return 2 * b <= bq; },
                                [](int64_t b, int64_t bq) { return 2 * b > bq; }},
                               {[](int64_t b, int64_t) { return b % 2 == 0; }, [](int64_t b, int64_t) { return b % 2 == 1; }}};
  for (const auto& split : splits) {
    const Partials a = partial(tkv.kv(), rope, q, q_index, heads, split[0]);
    Partials b = partial(tkv.kv(), rope, q, q_index, heads, split[1]);
    std::vector<float> out(q.size(), std::nanf("")), lse(nq * heads, std::nanf(""));
    AttentionMergeParams mp{a.out.data(), a.lse.data(), b.out.data(), b.lse.data(), nq * heads, d, out.data(), lse.data()};
    ASSERT_TRUE(merge_attention_cpu(mp).ok());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], dense_out[i], 1e-5 * (1 + std::fabs(dense_out[i]))) << i;
    for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], dense_lse[i], 1e-5 * (1 + std::fabs(dense_lse[i]))) << i;
    // In place into b.
    mp.out = b.out.data();
    mp.lse = b.lse.data();
    ASSERT_TRUE(merge_attention_cpu(mp).ok());
    EXPECT_EQ(b.out, out);
    EXPECT_EQ(b.lse, lse);
  }
}

TEST(AttentionMerge, EmptyPartialIsIgnoredWithoutNaN) {
  std::mt19937 rng(11);
  const int heads = 4, hkv = 1, d = 16;
  TestKv tkv(hkv, d, 64, 300, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(d));
  rope.ensure(300);
  std::vector<float> q = normal_vector(3 * heads * d, &rng);
  const std::vector<int64_t> q_index = {299, 150, 10};
  const Partials all = partial(tkv.kv(), rope, q, q_index, heads, [](int64_t, int64_t) { return true; });
  const Partials none = partial(tkv.kv(), rope, q, q_index, heads, [](int64_t, int64_t) { return false; });
  for (float x : none.lse) ASSERT_EQ(x, kNegInf);  // stage 2 with no block is an empty partial
  for (float x : none.out) ASSERT_EQ(x, 0.0f);
  const int64_t rows = 3 * heads;
  std::vector<float> garbage(none.out.size(), std::nanf(""));  // an empty side's out is never read
  for (int order = 0; order < 2; ++order) {
    std::vector<float> out(all.out.size(), std::nanf("")), lse(rows, std::nanf(""));
    AttentionMergeParams mp{all.out.data(), all.lse.data(), garbage.data(), none.lse.data(), rows, d, out.data(), lse.data()};
    if (order == 1) {
      std::swap(mp.out_a, mp.out_b);
      std::swap(mp.lse_a, mp.lse_b);
    }
    ASSERT_TRUE(merge_attention_cpu(mp).ok());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], all.out[i], 1e-6 * (1 + std::fabs(all.out[i])));
    for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(lse[r], all.lse[r]);
  }
  std::vector<float> out(none.out.size(), std::nanf("")), lse(rows, std::nanf(""));
  AttentionMergeParams both{garbage.data(), none.lse.data(), garbage.data(), none.lse.data(), rows, d, out.data(), lse.data()};
  ASSERT_TRUE(merge_attention_cpu(both).ok());
  for (float x : out) ASSERT_EQ(x, 0.0f);
  for (float x : lse) ASSERT_EQ(x, kNegInf);
}

}  // namespace
}  // namespace mnemo
