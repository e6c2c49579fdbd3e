// Top-k block selection on adversarial scores (quantised so ties are common, NaN, all-equal), every
// query position of a range, several configs: forced blocks present, no future block, exact counts,
// ascending ids, deterministic ties. Also the fused selection and the dense/sparse switch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "attention/select.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

// a ranks before b: higher score, NaN last, ties to the lower index (the documented order).
bool ranks_before(float sa, int64_t a, float sb, int64_t b) {
  if (std::isnan(sa) != std::isnan(sb)) return std::isnan(sb);
  if (!std::isnan(sa) && sa != sb) return sa > sb;
  return a < b;
}

void check_selection(const float* scores, int64_t t, const SparseParams& sp, const int32_t* ids, int32_t count,
                     int max_selected) {
  const int64_t bq = t / sp.block_size, available = bq + 1;
  std::vector<bool> forced(available, false), chosen(available, false);
  for (int64_t b = 0; b < available; ++b) forced[b] = b < sp.init_blocks || b >= bq - local_blocks(sp);
  const int64_t num_forced = std::count(forced.begin(), forced.end(), true);
  ASSERT_EQ(count, std::min<int64_t>(std::max<int64_t>(block_budget(sp), num_forced), available)) << "t " << t;
  for (int s = 0; s < max_selected; ++s) {
    if (s >= count) {
      ASSERT_EQ(ids[s], -1) << "padding at " << s;
      continue;
    }
    ASSERT_GE(ids[s], 0);
    ASSERT_LE(ids[s], bq) << "future block";
    if (s > 0) {
      ASSERT_LT(ids[s - 1], ids[s]) << "not strictly ascending";
    }
    chosen[ids[s]] = true;
  }
  for (int64_t b = 0; b < available; ++b) {
    if (forced[b]) {
      ASSERT_TRUE(chosen[b]) << "forced block " << b << " missing, t " << t;
    }
  }
  // Every chosen non-forced block ranks before every rejected block.
  for (int64_t a = 0; a < available; ++a) {
    if (!chosen[a] || forced[a]) continue;
    for (int64_t r = 0; r < available; ++r) {
      if (chosen[r]) continue;
      ASSERT_TRUE(ranks_before(scores[a], a, scores[r], r)) << "chose " << a << " over " << r << ", t " << t;
    }
  }
}

struct TopkCase {
  int block_size, init_blocks, window_size, topk;
};

class TopkSelection : public testing::TestWithParam<TopkCase> {};

TEST_P(TopkSelection, HoldsTheSelectionRulesAtEveryPosition) {
  const TopkCase c = GetParam();
  SparseParams sp;
  sp.block_size = c.block_size;
  sp.init_blocks = c.init_blocks;
  sp.window_size = c.window_size;
  sp.topk = c.topk;
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int hkv = 2;
  const int64_t nb = 150;
  std::vector<int64_t> q_index;
  for (int64_t t = 0; t < nb * c.block_size; t += 1 + c.block_size / 3) q_index.push_back(t);
  q_index.push_back(nb * c.block_size - 1);
  const int64_t num_q = int64_t(q_index.size());
  std::vector<float> scores(num_q * hkv * nb);
  std::uniform_int_distribution<int> level(0, 4);  // 5 levels: ties everywhere
  for (float& s : scores) s = 0.25f * level(rng);
  for (int k = 0; k < 50; ++k) scores[rng() % scores.size()] = std::nanf("");
  std::fill(scores.begin(), scores.begin() + nb, 1.0f);  // row 0: all equal
  const int max_sel = max_selected_blocks(sp) + 3;       // wider than needed: padded with -1
  std::vector<int32_t> ids(num_q * hkv * max_sel, -7), count(num_q * hkv, -7);
  BlockTopkParams p;
  p.block_scores = scores.data();
  p.q_index = q_index.data();
  p.num_q = num_q;
  p.num_kv_heads = hkv;
  p.num_blocks = nb;
  p.sparse = sp;
  p.max_selected = max_sel;
  p.block_ids = ids.data();
  p.num_selected = count.data();
  ASSERT_TRUE(select_topk_cpu(p).ok());
  for (int64_t r = 0; r < num_q * hkv; ++r) {
    check_selection(scores.data() + r * nb, q_index[r / hkv], sp, ids.data() + r * max_sel, count[r], max_sel);
    if (HasFatalFailure()) return;
  }
  std::vector<int32_t> again(ids.size());
  p.block_ids = again.data();
  ASSERT_TRUE(select_topk_cpu(p).ok());
  EXPECT_EQ(again, ids) << "not deterministic";
}

INSTANTIATE_TEST_SUITE_P(Configs, TopkSelection,
                         testing::Values(TopkCase{64, 1, 2048, 64}, TopkCase{64, 1, 256, 8}, TopkCase{16, 2, 64, 5},
                                         TopkCase{64, 0, 0, 3}, TopkCase{32, 3, 96, 0}, TopkCase{64, 1, 128, 200}));

TEST(TopkSelection, AllEqualScoresPickTheLowestBlocks) {
  SparseParams sp;
  sp.window_size = 128;  // 2 local blocks
  sp.topk = 4;           // budget 6: init 0, local 38..40, chosen 1, 2
  const int64_t nb = 41, t = 40 * 64 + 5;
  std::vector<float> scores(nb, 0.5f);
  std::vector<int32_t> ids(max_selected_blocks(sp)), count(1);
  BlockTopkParams p;
  p.block_scores = scores.data();
  p.q_index = &t;
  p.num_q = 1;
  p.num_kv_heads = 1;
  p.num_blocks = nb;
  p.sparse = sp;
  p.max_selected = max_selected_blocks(sp);
  p.block_ids = ids.data();
  p.num_selected = count.data();
  ASSERT_TRUE(select_topk_cpu(p).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2, 38, 39, 40}));
  scores[20] = 0.6f;  // a strictly better block displaces the highest-index tied one
  ASSERT_TRUE(select_topk_cpu(p).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 20, 38, 39, 40}));
}

TEST(TopkSelection, RejectsNarrowRowsAndQueriesPastTheBlocks) {
  SparseParams sp;
  float score = 0;
  int64_t t = 64;
  int32_t ids[200];
  BlockTopkParams p;
  p.block_scores = &score;
  p.q_index = &t;
  p.num_q = 1;
  p.num_kv_heads = 1;
  p.num_blocks = 1;  // t = 64 is in block 1
  p.sparse = sp;
  p.max_selected = 96;
  p.block_ids = ids;
  EXPECT_FALSE(select_topk_cpu(p).ok());
  p.num_blocks = 2;
  p.max_selected = 95;
  const Status s = select_topk_cpu(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("max_selected: expected >= 96, got 95"), std::string::npos) << s.message();
}

TEST(SparseSwitch, DenseBelowDenseLenAndForcedSparse) {
  SparseParams sp;
  EXPECT_EQ(block_budget(sp), 96);
  EXPECT_EQ(max_selected_blocks(sp), 96);
  EXPECT_FALSE(use_sparse(0, sp));
  EXPECT_FALSE(use_sparse(8191, sp));
  EXPECT_TRUE(use_sparse(8192, sp));
  EXPECT_TRUE(use_sparse(1 << 20, sp));
  sp.dense_len = -1;
  EXPECT_TRUE(use_sparse(0, sp));
  EXPECT_TRUE(use_sparse(1, sp));
}

TEST(FusedSelection, EqualsScoresThenTopk) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  SparseParams sp;
  sp.window_size = 192;
  sp.topk = 6;
  const int hkv = 2, heads = 6, d = 32;
  const int64_t kv_len = 2500, num_q = 150;  // more than one tile of 64 query rows
  testing_util::TestKv tkv(hkv, d, 64, kv_len, &rng);
  tkv.fill_normal(&rng);
  const testing_util::Tiers tiers = testing_util::compress_all(tkv.kv(), sp, nullptr);
  std::vector<float> q = testing_util::normal_vector(num_q * heads * d, &rng);
  std::vector<int64_t> q_index(num_q);
  for (int64_t i = 0; i < num_q; ++i) q_index[i] = kv_len - num_q + i;
  const int64_t nb = tkv.kv().num_blocks;
  const auto fused = testing_util::select_all(tiers, sp, q.data(), q_index, heads, nb, false);

  std::vector<float> scores(num_q * hkv * nb);
  BlockScoreParams s;
  s.q = q.data();
  s.q_index = q_index.data();
  s.num_q = num_q;
  s.num_heads = heads;
  s.keys = tiers.tier1.view();
  s.lse_keys = tiers.tier2.view();
  s.num_blocks = nb;
  s.softmax_scale = 1.0f / std::sqrt(float(d));
  s.block_scores = scores.data();
  ASSERT_TRUE(block_scores_cpu(s).ok());
  std::vector<int32_t> ids(fused.ids.size()), count(fused.count.size());
  BlockTopkParams t;
  t.block_scores = scores.data();
  t.q_index = q_index.data();
  t.num_q = num_q;
  t.num_kv_heads = hkv;
  t.num_blocks = nb;
  t.sparse = sp;
  t.max_selected = fused.max_selected;
  t.block_ids = ids.data();
  t.num_selected = count.data();
  ASSERT_TRUE(select_topk_cpu(t).ok());
  EXPECT_EQ(ids, fused.ids);
  EXPECT_EQ(count, fused.count);
}

}  // namespace
}  // namespace mnemo
