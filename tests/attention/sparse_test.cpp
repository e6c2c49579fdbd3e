// Stage-2 block-sparse attention: with a top-k that covers every block the whole pipeline (compression,
// stage 1, top-k, stage 2) equals dense attention, over awkward sizes, GQA ratios and head dims, and
// over a batch of sequences of different lengths; bad selections are rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention/dense.h"
#include "attention/sparse.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

using testing_util::make_rope;
using testing_util::normal_vector;
using testing_util::TestKv;

struct Case {
  int num_heads, num_kv_heads, head_dim;
  int64_t kv_len, num_q;
  bool chunk;  // a causal chunk at the end; otherwise random positions
};

// Runs the full pipeline on one sequence with every block selectable and compares with dense.
void expect_sparse_equals_dense(const Case& c, std::mt19937* rng) {
  SparseParams sp;
  sp.window_size = 128;  // small local window: full coverage must come from topk
  sp.topk = int((c.kv_len + 63) / 64) + 1;
  TestKv tkv(c.num_kv_heads, c.head_dim, sp.block_size, c.kv_len, rng);
  tkv.fill_normal(rng);
  RopeTable rope(make_rope(c.head_dim));
  rope.ensure(c.kv_len);
  const testing_util::Tiers tiers = testing_util::compress_all(tkv.kv(), sp, &rope);
  std::vector<float> q = normal_vector(c.num_q * c.num_heads * c.head_dim, rng);
  std::vector<int64_t> q_index(c.num_q);
  std::uniform_int_distribution<int64_t> pos(0, c.kv_len - 1);
  for (int64_t i = 0; i < c.num_q; ++i) q_index[i] = c.chunk ? c.kv_len - c.num_q + i : pos(*rng);
  const auto sel = testing_util::select_all(tiers, sp, q.data(), q_index, c.num_heads, tkv.kv().num_blocks, false);
  for (int64_t i = 0; i < c.num_q; ++i) {
    for (int g = 0; g < c.num_kv_heads; ++g) ASSERT_EQ(sel.count[i * c.num_kv_heads + g], q_index[i] / 64 + 1);
  }
  std::vector<float> out(q.size(), std::nanf("")), lse(c.num_q * c.num_heads, std::nanf(""));
  SparseAttentionParams p;
  p.q = q.data();
  p.q_index = q_index.data();
  p.num_q = c.num_q;
  p.num_heads = c.num_heads;
  p.kv = tkv.kv();
  p.key_rope = &rope;
  p.softmax_scale = 1.0f / std::sqrt(float(c.head_dim));
  p.block_ids = sel.ids.data();
  p.max_selected = sel.max_selected;
  p.out = out.data();
  p.lse = lse.data();
  const Status st = sparse_attention_cpu(p);
  ASSERT_TRUE(st.ok()) << st.to_string();

  std::vector<float> dense_out(q.size(), std::nanf("")), dense_lse(lse.size(), std::nanf(""));
  DenseAttentionParams dp;
  dp.q = q.data();
  dp.q_index = q_index.data();
  dp.num_q = c.num_q;
  dp.num_heads = c.num_heads;
  dp.kv = tkv.kv();
  dp.key_rope = &rope;
  dp.softmax_scale = p.softmax_scale;
  dp.out = dense_out.data();
  dp.lse = dense_lse.data();
  ASSERT_TRUE(dense_attention_cpu(dp).ok());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], dense_out[i], 1e-5 * (1 + std::fabs(dense_out[i]))) << "element " << i;
  }
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], dense_lse[i], 1e-5 * (1 + std::fabs(dense_lse[i])));
}

class SparseAttention : public testing::TestWithParam<Case> {};

TEST_P(SparseAttention, EqualsDenseWhenTopkCoversEveryBlock) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  expect_sparse_equals_dense(GetParam(), &rng);
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, SparseAttention,
                         testing::Values(Case{4, 2, 16, 1, 1, true}, Case{4, 2, 16, 63, 63, true},
                                         Case{8, 2, 64, 64, 5, true}, Case{8, 8, 32, 65, 65, true},
                                         Case{6, 3, 128, 129, 1, true}, Case{16, 1, 64, 257, 40, false},
                                         Case{32, 2, 128, 700, 3, false}, Case{5, 1, 16, 1000, 70, true},
                                         Case{12, 4, 64, 2049, 17, false}));

TEST(SparseAttentionBatch, SequencesOfDifferentLengthsEachEqualDense) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  // One step of a batch: a decode token, a prefill chunk, a short fresh sequence — one PagedKv each.
  for (const Case& c : {Case{8, 2, 32, 1500, 1, true}, Case{8, 2, 32, 333, 40, true}, Case{8, 2, 32, 20, 20, true}}) {
    expect_sparse_equals_dense(c, &rng);
    if (HasFatalFailure()) return;
  }
}

// Dense attention serves a chunk of queries at arbitrary positions (unsorted, repeated, far apart):
// each row equals the same query run alone.
TEST(DenseAttentionChunk, QueriesAtArbitraryPositionsEqualOneAtATime) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int heads = 6, hkv = 2, d = 32;
  const int64_t kv_len = 777;
  TestKv tkv(hkv, d, 64, kv_len, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(d));
  rope.ensure(kv_len);
  const std::vector<int64_t> q_index = {500, 3, 776, 64, 64, 0, 200};
  const int64_t nq = int64_t(q_index.size());
  std::vector<float> q = normal_vector(nq * heads * d, &rng), out(q.size(), std::nanf("")), lse(nq * heads);
  DenseAttentionParams p;
  p.q = q.data();
  p.q_index = q_index.data();
  p.num_q = nq;
  p.num_heads = heads;
  p.kv = tkv.kv();
  p.key_rope = &rope;
  p.softmax_scale = 1.0f / std::sqrt(float(d));
  p.out = out.data();
  p.lse = lse.data();
  ASSERT_TRUE(dense_attention_cpu(p).ok());
  for (int64_t i = 0; i < nq; ++i) {
    std::vector<float> one(heads * d, std::nanf("")), one_lse(heads);
    DenseAttentionParams p1 = p;
    p1.q = q.data() + i * heads * d;
    p1.q_index = &q_index[i];
    p1.num_q = 1;
    p1.out = one.data();
    p1.lse = one_lse.data();
    ASSERT_TRUE(dense_attention_cpu(p1).ok());
    for (int64_t e = 0; e < heads * d; ++e) ASSERT_EQ(out[i * heads * d + e], one[e]) << "query " << i;
    for (int h = 0; h < heads; ++h) ASSERT_EQ(lse[i * heads + h], one_lse[h]);
  }
}

TEST(SparseAttentionValidate, RejectsFutureAndUnsortedBlocks) {
  std::mt19937 rng(3);
  TestKv tkv(1, 16, 64, 200, &rng);
  tkv.fill_normal(&rng);
  std::vector<float> q(16, 1.0f), out(16);
  const int64_t t = 70;  // block 1
  int32_t ids[3] = {0, 2, -1};
  SparseAttentionParams p;
  p.q = q.data();
  p.q_index = &t;
  p.num_q = 1;
  p.num_heads = 1;
  p.kv = tkv.kv();
  p.softmax_scale = 0.25f;
  p.block_ids = ids;
  p.max_selected = 3;
  p.out = out.data();
  Status s = sparse_attention_cpu(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("block_ids[0, 0, 1] = 2"), std::string::npos) << s.message();
  ids[0] = 1;
  ids[1] = 0;
  EXPECT_FALSE(sparse_attention_cpu(p).ok());
  ids[0] = -1;
  ids[1] = 1;  // padding may come first: it is skipped
  EXPECT_TRUE(sparse_attention_cpu(p).ok());
}

}  // namespace
}  // namespace mnemo
