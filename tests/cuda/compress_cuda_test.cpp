// Key compression on the GPU (attention/cuda/compress.h) against the CPU's CompressedKeys on fresh
// random keys in shuffled slots, grown in two increments as the engine does. The device table is bf16:
// each element must be the CPU's f32 value rounded once (error <= 2^-8 relative, twice a bf16 half-ulp,
// for fp32 rounding-order differences in the rotation), never NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attention/compress.h"
#include "attention/cuda/compress.h"
#include "attention/rope.h"
#include "core/device.h"
#include "core/dtype.h"
#include "tests/cuda/device_buffer.h"

namespace mnemo {
namespace {

struct CompressCase {
  const char* name;
  int kv_heads, head_dim, block_tokens, kernel, stride;
  bool rotate;
};

class CompressCuda : public testing::TestWithParam<CompressCase> {};

TEST_P(CompressCuda, MatchesCpuCompressedKeysInTwoIncrements) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const CompressCase c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t tokens = 700, mid = 333;
  const int64_t blocks = (tokens + c.block_tokens - 1) / c.block_tokens;
  const int64_t slots = blocks + 3;
  const int64_t slot_elems = int64_t{2} * c.kv_heads * c.block_tokens * c.head_dim;
  std::vector<uint16_t> arena_bf16(static_cast<size_t>(slots * slot_elems));
  for (auto& x : arena_bf16) x = float_to_bf16(normal(rng) * 2.0f);
  std::vector<float> arena_f32(arena_bf16.size());
  for (size_t i = 0; i < arena_bf16.size(); ++i) arena_f32[i] = bf16_to_float(arena_bf16[i]);
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  std::vector<int32_t> perm(static_cast<size_t>(slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::copy_n(perm.begin(), blocks, table.begin());

  Rope rope;
  for (int i = 0; i < c.head_dim / 2; ++i) rope.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / c.head_dim));
  RopeTable rt(rope);
  rt.ensure(tokens);
  std::vector<float> cos_host(static_cast<size_t>(tokens * c.head_dim / 2)), sin_host(cos_host.size());
  for (int64_t t = 0; t < tokens; ++t) {
    // The table's values, read back through apply() on unit vectors (its storage is private).
    for (int i = 0; i < c.head_dim / 2; ++i) {
      std::vector<float> x(static_cast<size_t>(c.head_dim), 0.0f);
      x[i] = 1.0f;
      rt.apply(t, x.data());
      cos_host[t * c.head_dim / 2 + i] = x[i];
      sin_host[t * c.head_dim / 2 + i] = x[i + c.head_dim / 2];
    }
  }

  PagedKv kv;
  kv.arena = arena_f32.data();
  kv.num_kv_heads = c.kv_heads;
  kv.block_tokens = c.block_tokens;
  kv.head_dim = c.head_dim;
  kv.block_table = table.data();
  kv.num_blocks = blocks;
  kv.kv_len = tokens;
  CompressedKeys cpu(c.kv_heads, c.head_dim, c.kernel, c.stride);
  ASSERT_TRUE(cpu.append_block(kv, mid, c.rotate ? &rt : nullptr).ok());
  ASSERT_TRUE(cpu.append_block(kv, tokens, c.rotate ? &rt : nullptr).ok());

  test::DeviceBuffer<uint16_t> d_arena(arena_bf16);
  test::DeviceBuffer<int32_t> d_table(table);
  test::DeviceBuffer<float> d_cos(cos_host), d_sin(sin_host);
  const int64_t total = num_windows(tokens, c.kernel, c.stride);
  const int64_t capacity = total + 5;
  test::DeviceBuffer<uint16_t> d_out(static_cast<size_t>(c.kv_heads * capacity * c.head_dim));
  d_out.poison();
  cuda::CompressKeysCudaParams p;
  p.kv.arena = reinterpret_cast<const cuda::bf16*>(d_arena.get());
  p.kv.num_kv_heads = c.kv_heads;
  p.kv.block_tokens = c.block_tokens;
  p.kv.head_dim = c.head_dim;
  p.kv.block_tables = d_table.get();
  if (c.rotate) {
    p.key_rope.cos = d_cos.get();
    p.key_rope.sin = d_sin.get();
    p.key_rope.len = tokens;
  }
  p.kernel_size = c.kernel;
  p.kernel_stride = c.stride;
  p.out = reinterpret_cast<cuda::bf16*>(d_out.get());
  p.head_stride = capacity * c.head_dim;
  const int64_t first_part = num_windows(mid, c.kernel, c.stride);
  p.first_window = 0;
  p.num_windows = first_part;
  ASSERT_TRUE(cuda::compress_keys_launch(p, nullptr).ok());
  p.first_window = first_part;
  p.num_windows = total - first_part;
  ASSERT_TRUE(cuda::compress_keys_launch(p, nullptr).ok());
  const std::vector<uint16_t> got = d_out.download();

  ASSERT_EQ(cpu.num_compressed(), total);
  double worst = 0;
  for (int g = 0; g < c.kv_heads; ++g) {
    for (int64_t j = 0; j < total; ++j) {
      for (int e = 0; e < c.head_dim; ++e) {
        const float want = cpu.key(g, j)[e];
        const float have = bf16_to_float(got[static_cast<size_t>((g * capacity + j) * c.head_dim + e)]);
        ASSERT_FALSE(std::isnan(have)) << "head " << g << " window " << j << " dim " << e;
        const double err = std::fabs(double(have) - want) / (std::fabs(want) * std::ldexp(1.0, -8) + 1e-6);
        worst = std::max(worst, err);
        ASSERT_LE(err, 1.0) << "head " << g << " window " << j << " dim " << e << ": got " << have << ", want " << want;
      }
    }
  }
  std::printf("[ stats    ] %s: %lld windows, max err/tol %.3f\n", c.name, static_cast<long long>(total), worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, CompressCuda,
                         testing::Values(CompressCase{"minicpm4_rotated", 2, 128, 64, 32, 16, true},
                                         CompressCase{"minicpm4_nope", 2, 128, 64, 32, 16, false},
                                         CompressCase{"tier2_d64", 2, 64, 64, 128, 64, true},
                                         CompressCase{"d16_bt16_straddle", 3, 16, 16, 32, 16, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(CompressCudaValidate, NamesTheField) {
  cuda::CompressKeysCudaParams p;
  p.kernel_size = 16;
  p.kernel_stride = 32;
  const Status s = cuda::validate(p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("kernel_stride"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mnemo
