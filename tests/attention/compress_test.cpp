// Key compression: incremental growth equals one call bit for bit, and both equal the mean of the
// (rotated) keys of each complete window, also for windows that straddle blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention/compress.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

using testing_util::make_rope;
using testing_util::TestKv;

struct Case {
  int num_kv_heads, head_dim, block_tokens, kernel_size, kernel_stride;
  int64_t kv_len;
  bool rotate;
};

class Compression : public testing::TestWithParam<Case> {};

TEST_P(Compression, IncrementalEqualsFromScratchAndNaiveMean) {
  const Case c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  TestKv tkv(c.num_kv_heads, c.head_dim, c.block_tokens, c.kv_len, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(c.head_dim));
  rope.ensure(c.kv_len);
  const RopeTable* r = c.rotate ? &rope : nullptr;

  CompressedKeys scratch(c.num_kv_heads, c.head_dim, c.kernel_size, c.kernel_stride);
  ASSERT_TRUE(scratch.append_block(tkv.kv(), c.kv_len, r).ok());
  ASSERT_EQ(scratch.num_compressed(), num_windows(c.kv_len, c.kernel_size, c.kernel_stride));

  // Block by block as the engine seals them, with a repeated and an odd-sized step thrown in.
  CompressedKeys inc(c.num_kv_heads, c.head_dim, c.kernel_size, c.kernel_stride);
  std::vector<int64_t> steps = {0, 0, 7};
  for (int64_t n = c.block_tokens; n < c.kv_len; n += c.block_tokens) steps.push_back(n);
  steps.push_back(c.kv_len);
  for (int64_t n : steps) {
    if (n < inc.num_tokens()) continue;
    ASSERT_TRUE(inc.append_block(tkv.kv(), n, r).ok()) << n;
    ASSERT_EQ(inc.num_compressed(), num_windows(n, c.kernel_size, c.kernel_stride)) << n;
  }
  for (int g = 0; g < c.num_kv_heads; ++g) {
    for (int64_t j = 0; j < scratch.num_compressed(); ++j) {
      for (int e = 0; e < c.head_dim; ++e) {
        ASSERT_EQ(inc.key(g, j)[e], scratch.key(g, j)[e]) << "head " << g << " window " << j << " dim " << e;
      }
      // Naive: rotate each key with the table-free RoPE, mean in double.
      std::vector<double> mean(c.head_dim, 0.0);
      for (int64_t t = j * c.kernel_stride; t < j * c.kernel_stride + c.kernel_size; ++t) {
        std::vector<float> k(tkv.k(t, g), tkv.k(t, g) + c.head_dim);
        if (c.rotate) rope_apply(rope.rope(), t, k.data());
        for (int e = 0; e < c.head_dim; ++e) mean[e] += k[e];
      }
      for (int e = 0; e < c.head_dim; ++e) {
        ASSERT_NEAR(scratch.key(g, j)[e], mean[e] / c.kernel_size, 2e-6 * (1 + std::fabs(mean[e])));
      }
    }
  }
}

// Block sizes that are not multiples of the stride make windows straddle two (shuffled) blocks.
INSTANTIATE_TEST_SUITE_P(Sizes, Compression,
                         testing::Values(Case{2, 64, 64, 32, 16, 1000, true}, Case{1, 16, 64, 32, 16, 31, true},
                                         Case{1, 16, 64, 32, 16, 32, false}, Case{3, 32, 24, 32, 16, 257, true},
                                         Case{2, 32, 40, 32, 16, 300, false}, Case{2, 128, 64, 128, 64, 700, true},
                                         Case{1, 16, 16, 5, 3, 101, true}));

TEST(CompressionWindows, CountsOnlyCompleteWindows) {
  EXPECT_EQ(num_windows(0, 32, 16), 0);
  EXPECT_EQ(num_windows(31, 32, 16), 0);
  EXPECT_EQ(num_windows(32, 32, 16), 1);
  EXPECT_EQ(num_windows(47, 32, 16), 1);
  EXPECT_EQ(num_windows(48, 32, 16), 2);
  EXPECT_EQ(num_windows(8192, 128, 64), 127);
}

TEST(CompressionWindows, WindowStraddlingTwoBlocksIsTheMeanOfBoth) {
  std::mt19937 rng(7);
  TestKv tkv(1, 16, 24, 48, &rng);  // window 1 = tokens [16, 48): 8 tokens of block 0, 24 of block 1
  tkv.fill_normal(&rng);
  CompressedKeys ck(1, 16, 32, 16);
  ASSERT_TRUE(ck.append_block(tkv.kv(), 48, nullptr).ok());
  ASSERT_EQ(ck.num_compressed(), 2);
  for (int e = 0; e < 16; ++e) {
    double sum = 0;
    for (int t = 16; t < 48; ++t) sum += tkv.k(t, 0)[e];
    EXPECT_NEAR(ck.key(0, 1)[e], sum / 32, 1e-6);
  }
}

TEST(CompressionWindows, RejectsSwitchingRopeAndGoingBack) {
  std::mt19937 rng(1);
  TestKv tkv(1, 16, 64, 128, &rng);
  tkv.fill_normal(&rng);
  RopeTable rope(make_rope(16));
  rope.ensure(128);
  CompressedKeys ck(1, 16, 32, 16);
  ASSERT_TRUE(ck.append_block(tkv.kv(), 64, &rope).ok());
  const Status mixed = ck.append_block(tkv.kv(), 128, nullptr);
  EXPECT_FALSE(mixed.ok());
  EXPECT_NE(mixed.message().find("rotated"), std::string::npos) << mixed.message();
  EXPECT_FALSE(ck.append_block(tkv.kv(), 32, &rope).ok());
  EXPECT_FALSE(ck.append_block(tkv.kv(), 129, &rope).ok());
  EXPECT_EQ(ck.num_compressed(), 3);  // failures changed nothing
  CompressedKeys wrong_heads(2, 16, 32, 16);
  EXPECT_FALSE(wrong_heads.append_block(tkv.kv(), 64, nullptr).ok());
}

}  // namespace
}  // namespace mnemo
