// Stage 1 (block scores) and top-k selection: against a double-precision reference written from the
// definitions (brute-force window/block overlap, or the published max-pool for the default sizes), the
// tier-2 approximation against the exact normaliser, and the selection rules on adversarial scores.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>
#include <set>
#include <vector>

#include "attention/select.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

using testing_util::make_rope;
using testing_util::normal_vector;
using testing_util::TestKv;

// The published mapping for kernel 32 / stride 16 / block 64: max_pool1d(kernel 5, stride 4, padding 1)
// over a row of window scores (left padding -inf, the row zero-padded on the right).
double max_pool_default(const std::vector<double>& p, int64_t b) {
  double best = -INFINITY;
  for (int64_t j = 4 * b - 1; j < 4 * b - 1 + 5; ++j) best = std::max(best, j < 0 ? -INFINITY : j < int64_t(p.size()) ? p[j] : 0.0);
  return best;
}

// Block scores in double straight from the definition in attention/select.h.
std::vector<double> reference_scores(const BlockScoreParams& p, bool use_pool) {
  const CompressedKeysView& k1 = p.keys;
  const int hkv = k1.num_kv_heads, group = p.num_heads / hkv, d = k1.head_dim;
  std::vector<double> out(p.num_q * hkv * p.num_blocks);
  for (int64_t i = 0; i < p.num_q; ++i) {
    const int64_t t = p.q_index[i];
    for (int g = 0; g < hkv; ++g) {
      std::vector<double> pj;  // visible windows only
      for (int64_t j = 0; j < k1.num_compressed && j * k1.kernel_stride + k1.kernel_size - 1 <= t; ++j) pj.push_back(0);
      for (int hh = 0; hh < group; ++hh) {
        const float* q = p.q + (i * p.num_heads + g * group + hh) * d;
        auto score = [&](const CompressedKeysView& v, int64_t j) {
          double s = 0;
          for (int e = 0; e < d; ++e) s += double(q[e]) * v.key(g, j)[e];
          return s * p.softmax_scale;
        };
        const CompressedKeysView* norm = &k1;
        int64_t n2 = 0;
        if (p.lse_keys.keys) {
          while (n2 < p.lse_keys.num_compressed && n2 * p.lse_keys.kernel_stride + p.lse_keys.kernel_size - 1 <= t) ++n2;
          if (n2 > 0) norm = &p.lse_keys;
        }
        if (norm == &k1) n2 = int64_t(pj.size());
        double sum = 0;
        for (int64_t j = 0; j < n2; ++j) sum += std::exp(score(*norm, j));
        for (size_t j = 0; j < pj.size(); ++j) pj[j] += std::exp(score(k1, j)) / sum;
      }
      for (int64_t b = 0; b < p.num_blocks; ++b) {
        double best = 0;
        if (use_pool) {
          best = std::max(0.0, max_pool_default(pj, b));
        } else {
          for (size_t j = 0; j < pj.size(); ++j) {  // brute-force interval intersection
            const int64_t lo = j * k1.kernel_stride, hi = lo + k1.kernel_size;
            if (lo < (b + 1) * p.block_size && hi > b * p.block_size) best = std::max(best, pj[j]);
          }
        }
        out[(i * hkv + g) * p.num_blocks + b] = best;
      }
    }
  }
  return out;
}

TEST(WindowBlockOverlap, MatchesIntervalIntersectionAndThePublishedPool) {
  for (int k : {5, 16, 32, 48, 128}) {
    for (int s : {1, 3, 16, 64}) {
      if (s > k) continue;
      for (int bs : {16, 64, 100}) {
        for (int64_t b = 0; b < 40; ++b) {
          const WindowRange r = windows_overlapping_block(b, bs, k, s);
          for (int64_t j = 0; j < 400; ++j) {
            const bool overlaps = j * s < (b + 1) * bs && j * s + k > b * bs;
            ASSERT_EQ(overlaps, j >= r.first && j <= r.last) << k << " " << s << " " << bs << " b" << b << " j" << j;
          }
        }
      }
    }
  }
  for (int64_t b = 0; b < 100; ++b) {  // kernel 5, stride 4, padding 1: windows [4b-1, 4b+3], clipped at 0
    const WindowRange r = windows_overlapping_block(b, 64, 32, 16);
    EXPECT_EQ(r.first, std::max<int64_t>(0, 4 * b - 1));
    EXPECT_EQ(r.last, 4 * b + 3);
  }
}

struct ScoreCase {
  int num_heads, num_kv_heads, head_dim, kernel_size, kernel_stride, block_size;
  int64_t kv_len, num_q;
  bool approx;
};

class BlockScores : public testing::TestWithParam<ScoreCase> {};

TEST_P(BlockScores, MatchDoubleReference) {
  const ScoreCase c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  TestKv tkv(c.num_kv_heads, c.head_dim, 64, c.kv_len, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(c.head_dim));
  rope.ensure(c.kv_len);
  CompressedKeys t1(c.num_kv_heads, c.head_dim, c.kernel_size, c.kernel_stride);
  CompressedKeys t2(c.num_kv_heads, c.head_dim, 4 * c.kernel_size, 4 * c.kernel_stride);
  ASSERT_TRUE(t1.append_block(tkv.kv(), c.kv_len, &rope).ok());
  ASSERT_TRUE(t2.append_block(tkv.kv(), c.kv_len, &rope).ok());
  std::vector<float> q = normal_vector(c.num_q * c.num_heads * c.head_dim, &rng, 2.0f);
  std::vector<int64_t> q_index(c.num_q);
  std::uniform_int_distribution<int64_t> pos(0, c.kv_len - 1);
  for (auto& t : q_index) t = pos(rng);
  q_index[0] = c.kv_len - 1;
  const int64_t nb = (c.kv_len + c.block_size - 1) / c.block_size;
  std::vector<float> scores(c.num_q * c.num_kv_heads * nb, std::nanf(""));
  BlockScoreParams p;
  p.q = q.data();
  p.q_index = q_index.data();
  p.num_q = c.num_q;
  p.num_heads = c.num_heads;
  p.keys = t1.view();
  if (c.approx) p.lse_keys = t2.view();
  p.block_size = c.block_size;
  p.num_blocks = nb;
  p.softmax_scale = 1.0f / std::sqrt(float(c.head_dim));
  p.block_scores = scores.data();
  ASSERT_TRUE(block_scores_cpu(p).ok());
  const bool pool = c.kernel_size == 32 && c.kernel_stride == 16 && c.block_size == 64;
  const std::vector<double> ref = reference_scores(p, pool);
  for (size_t i = 0; i < scores.size(); ++i) {
    ASSERT_NEAR(scores[i], ref[i], 2e-5 * (1 + std::fabs(ref[i]))) << "score " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, BlockScores,
                         testing::Values(ScoreCase{4, 1, 16, 32, 16, 64, 1, 1, false},
                                         ScoreCase{8, 2, 64, 32, 16, 64, 700, 9, false},
                                         ScoreCase{8, 2, 64, 32, 16, 64, 700, 9, true},
                                         ScoreCase{16, 1, 128, 32, 16, 64, 1000, 4, true},
                                         ScoreCase{6, 3, 32, 24, 8, 40, 500, 7, false},
                                         ScoreCase{4, 4, 32, 32, 16, 64, 129, 20, true}));

// Exact and approximate selections of `num_q` queries over one random sequence; returns the fraction of
// score-chosen (non-forced) blocks the two agree on. `structured` adds a per-block offset to the keys.
double approx_overlap(std::mt19937* rng, const SparseParams& sp, bool structured, bool same_tiers) {
  const int hkv = 2, heads = 8, d = 64;
  const int64_t kv_len = 6000, num_q = 24;
  TestKv tkv(hkv, d, sp.block_size, kv_len, rng);
  tkv.fill_normal(rng);
  if (structured) {
    for (int64_t b = 0; b < tkv.kv().num_blocks; ++b) {
      for (int g = 0; g < hkv; ++g) {
        const std::vector<float> offset = normal_vector(d, rng, 0.7f);
        for (int64_t j = b * sp.block_size; j < std::min(kv_len, (b + 1) * sp.block_size); ++j) {
          for (int e = 0; e < d; ++e) tkv.k(j, g)[e] += offset[e];
        }
      }
    }
  }
  testing_util::Tiers tiers = testing_util::compress_all(tkv.kv(), sp, nullptr);
  if (same_tiers) tiers.tier2 = tiers.tier1;
  std::vector<float> q = normal_vector(num_q * heads * d, rng, 1.5f);
  std::vector<int64_t> q_index(num_q);
  std::uniform_int_distribution<int64_t> pos(3000, kv_len - 1);
  for (auto& t : q_index) t = pos(*rng);
  const int64_t nb = tkv.kv().num_blocks;
  auto a = testing_util::select_all(tiers, sp, q.data(), q_index, heads, nb, /*exact=*/true);
  auto b = testing_util::select_all(tiers, sp, q.data(), q_index, heads, nb, /*exact=*/false);
  if (same_tiers) {
    EXPECT_EQ(a.ids, b.ids);
    return 1.0;
  }
  int64_t same = 0, total = 0;
  for (int64_t i = 0; i < num_q; ++i) {
    const int64_t bq = q_index[i] / sp.block_size;
    for (int g = 0; g < hkv; ++g) {
      std::set<int32_t> sa, sb;
      for (int s = 0; s < a.max_selected; ++s) {
        const int32_t x = a.ids[(i * hkv + g) * a.max_selected + s], y = b.ids[(i * hkv + g) * b.max_selected + s];
        if (x >= sp.init_blocks && x < bq - local_blocks(sp)) sa.insert(x);
        if (y >= sp.init_blocks && y < bq - local_blocks(sp)) sb.insert(y);
      }
      for (int32_t x : sa) same += sb.count(x);
      total += int64_t(sa.size());
    }
  }
  return double(same) / double(total);
}

TEST(ApproximateNormaliser, SelectsMostlyTheSameBlocksAsExact) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  SparseParams sp;
  sp.window_size = 256;
  sp.topk = 16;
  const double plain = approx_overlap(&rng, sp, false, false);
  const double structured = approx_overlap(&rng, sp, true, false);
  std::cout << "[ approx vs exact ] chosen-block overlap: i.i.d. keys " << plain << ", block-structured keys "
            << structured << "\n";
  RecordProperty("overlap_iid", std::to_string(plain));
  RecordProperty("overlap_structured", std::to_string(structured));
  EXPECT_GE(plain, 0.9);
  EXPECT_GE(structured, 0.85);
}

TEST(ApproximateNormaliser, EqualsExactWhenTiersCoincide) {
  std::mt19937 rng(std::random_device{}());
  SparseParams sp;
  sp.window_size = 128;
  sp.topk = 8;
  approx_overlap(&rng, sp, false, /*same_tiers=*/true);
}

}  // namespace
}  // namespace mnemo
