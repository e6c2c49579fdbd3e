// Dense attention over paged KV against a naive double-precision reference on fresh random data.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attention/dense.h"

namespace mnemo {
namespace {

struct Case {
  int num_heads, num_kv_heads, head_dim, block_tokens;
  int64_t kv_len, num_q;
  int64_t window = 0;  // sliding window; 0 = none
};

// Reference: rotate keys at their index, scores in double, full softmax.
void reference(const DenseAttentionParams& p, const std::vector<float>& k_flat, const std::vector<float>& v_flat,
               std::vector<double>* out, std::vector<double>* lse) {
  const int64_t d = p.kv.head_dim;
  const int group = p.num_heads / p.kv.num_kv_heads;
  const Rope& rope = p.key_rope->rope();
  out->assign(p.num_q * p.num_heads * d, 0.0);
  lse->assign(p.num_q * p.num_heads, 0.0);
  for (int64_t i = 0; i < p.num_q; ++i) {
    for (int h = 0; h < p.num_heads; ++h) {
      const int g = h / group;
      const float* q = p.q + (i * p.num_heads + h) * d;
      std::vector<double> s(p.q_index[i] + 1, -INFINITY);
      double mx = -1e300;
      const int64_t first = p.sliding_window > 0 ? std::max<int64_t>(0, p.q_index[i] - p.sliding_window + 1) : 0;
      for (int64_t j = first; j <= p.q_index[i]; ++j) {
        std::vector<float> k(k_flat.begin() + (j * p.kv.num_kv_heads + g) * d,
                             k_flat.begin() + (j * p.kv.num_kv_heads + g + 1) * d);
        rope_apply(rope, j, k.data());
        double dot = 0;
        for (int64_t e = 0; e < d; ++e) dot += double(q[e]) * k[e];
        s[j] = dot * p.softmax_scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t j = first; j <= p.q_index[i]; ++j) {
        for (int64_t e = 0; e < d; ++e) {
          (*out)[(i * p.num_heads + h) * d + e] += s[j] / sum * v_flat[(j * p.kv.num_kv_heads + g) * d + e];
        }
      }
      (*lse)[i * p.num_heads + h] = mx + std::log(sum);
    }
  }
}

class DenseAttention : public testing::TestWithParam<Case> {};

TEST_P(DenseAttention, MatchesDoubleReferenceOnShuffledSlots) {
  const Case c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t d = c.head_dim;
  const int64_t num_blocks = (c.kv_len + c.block_tokens - 1) / c.block_tokens;
  // Slots in shuffled order with spare slots, so the block table really indirects.
  const int64_t num_slots = num_blocks + 3;
  std::vector<int32_t> table(num_slots);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  table.resize(num_blocks);
  PagedKv kv;
  kv.num_kv_heads = c.num_kv_heads;
  kv.block_tokens = c.block_tokens;
  kv.head_dim = c.head_dim;
  std::vector<float> arena(num_slots * kv.slot_floats(), std::nanf(""));
  std::vector<float> k_flat(c.kv_len * c.num_kv_heads * d), v_flat(k_flat.size());
  for (float& x : k_flat) x = nd(rng);
  for (float& x : v_flat) x = nd(rng);
  kv.arena = arena.data();
  kv.block_table = table.data();
  kv.num_blocks = num_blocks;
  kv.kv_len = c.kv_len;
  for (int64_t j = 0; j < c.kv_len; ++j) {
    for (int g = 0; g < c.num_kv_heads; ++g) {
      float* kd = const_cast<float*>(kv.k_block(j / c.block_tokens, g)) + (j % c.block_tokens) * d;
      float* vd = const_cast<float*>(kv.v_block(j / c.block_tokens, g)) + (j % c.block_tokens) * d;
      std::copy_n(k_flat.begin() + (j * c.num_kv_heads + g) * d, d, kd);
      std::copy_n(v_flat.begin() + (j * c.num_kv_heads + g) * d, d, vd);
    }
  }
  Rope rope;
  for (int64_t i = 0; i < d / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
  RopeTable table_rope(rope);
  table_rope.ensure(c.kv_len);
  std::vector<float> q(c.num_q * c.num_heads * d);
  for (float& x : q) x = nd(rng);
  std::vector<int64_t> q_index(c.num_q);
  for (int64_t i = 0; i < c.num_q; ++i) q_index[i] = c.kv_len - c.num_q + i;  // a causal chunk at the end
  std::vector<float> out(q.size(), std::nanf("")), lse(c.num_q * c.num_heads, std::nanf(""));
  DenseAttentionParams p;
  p.q = q.data();
  p.q_index = q_index.data();
  p.num_q = c.num_q;
  p.num_heads = c.num_heads;
  p.kv = kv;
  p.key_rope = &table_rope;
  p.softmax_scale = 1.0f / std::sqrt(float(d));
  p.sliding_window = c.window;
  p.out = out.data();
  p.lse = lse.data();
  ASSERT_TRUE(dense_attention_cpu(p).ok());
  std::vector<double> ref_out, ref_lse;
  reference(p, k_flat, v_flat, &ref_out, &ref_lse);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_FALSE(std::isnan(out[i])) << i;
    ASSERT_NEAR(out[i], ref_out[i], 2e-5 * (1 + std::fabs(ref_out[i]))) << "element " << i;
  }
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], ref_lse[i], 2e-5 * (1 + std::fabs(ref_lse[i])));
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, DenseAttention,
                         testing::Values(Case{4, 2, 16, 64, 1, 1}, Case{4, 2, 16, 64, 63, 63},
                                         Case{8, 2, 64, 64, 64, 5}, Case{8, 8, 32, 64, 65, 65},
                                         Case{6, 3, 128, 64, 129, 1}, Case{16, 1, 64, 16, 257, 40},
                                         Case{4, 4, 64, 64, 300, 300}, Case{4, 2, 32, 64, 300, 70, 100},
                                         Case{4, 2, 32, 16, 200, 3, 1}));

TEST(DenseAttentionValidate, RejectsHeadsNotAMultipleOfKvHeads) {
  float dummy = 0;
  int32_t table = 0;
  int64_t idx = 0;
  DenseAttentionParams p;
  p.q = &dummy;
  p.q_index = &idx;
  p.out = &dummy;
  p.num_q = 1;
  p.num_heads = 6;
  p.kv.arena = &dummy;
  p.kv.block_table = &table;
  p.kv.num_kv_heads = 4;
  p.kv.head_dim = 2;
  p.kv.block_tokens = 1;
  p.kv.num_blocks = 1;
  p.kv.kv_len = 1;
  Status s = dense_attention_cpu(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("num_heads (6)"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mnemo
