// The key-compression and LSE-merge kernels' own source run on the CPU (tests/cuda/sim), on fresh
// random data, against the CPU references — CI's check of the kernels the CUDA forward uses for
// representatives and for the bounded policy (the GPU suite, model_cuda_test, checks them on a device).
#include "tests/cuda/sim/warp_sim.h"  // first: defines MNEMO_WARP_SIM for the kernel headers

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attention/compress.h"
#include "attention/cuda/compress_kernel.cuh"
#include "attention/cuda/merge_kernel.cuh"
#include "attention/merge.h"
#include "attention/rope.h"
#include "core/dtype.h"

namespace mnemo {
namespace {

using cuda::bf16;

TEST(SimCompressKeys, MatchesCpuCompressedKeysInTwoIncrements) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int kv_heads = 2, d = 32, bt = 16, kernel = 32, stride = 16;
  const int64_t tokens = 150, mid = 70;
  const int64_t blocks = (tokens + bt - 1) / bt, slots = blocks + 2;
  const int64_t slot_elems = int64_t{2} * kv_heads * bt * d;
  std::vector<uint16_t> arena(static_cast<size_t>(slots * slot_elems));
  for (auto& x : arena) x = float_to_bf16(normal(rng));
  std::vector<float> arena_f32(arena.size());
  for (size_t i = 0; i < arena.size(); ++i) arena_f32[i] = bf16_to_float(arena[i]);
  std::vector<int32_t> perm(static_cast<size_t>(slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table(perm.begin(), perm.begin() + blocks);
  Rope rope;
  for (int i = 0; i < d / 2; ++i) rope.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / d));
  RopeTable rt(rope);
  rt.ensure(tokens);
  std::vector<float> cos_t(static_cast<size_t>(tokens * d / 2)), sin_t(cos_t.size());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < d / 2; ++i) {
      std::vector<float> x(static_cast<size_t>(d), 0.0f);
      x[i] = 1.0f;
      rt.apply(t, x.data());
      cos_t[t * d / 2 + i] = x[i];
      sin_t[t * d / 2 + i] = x[i + d / 2];
    }
  }
  for (bool rotate : {true, false}) {
    SCOPED_TRACE(rotate ? "rotated" : "nope");
    PagedKv kv{arena_f32.data(), kv_heads, bt, d, table.data(), blocks, tokens};
    CompressedKeys cpu(kv_heads, d, kernel, stride);
    ASSERT_TRUE(cpu.append_block(kv, mid, rotate ? &rt : nullptr).ok());
    ASSERT_TRUE(cpu.append_block(kv, tokens, rotate ? &rt : nullptr).ok());
    const int64_t total = num_windows(tokens, kernel, stride), first = num_windows(mid, kernel, stride);
    std::vector<uint16_t> out(static_cast<size_t>(kv_heads * total * d), 0xffff);  // NaN
    cuda::CompressKeysCudaParams p;
    p.kv.arena = reinterpret_cast<const bf16*>(arena.data());
    p.kv.num_kv_heads = kv_heads;
    p.kv.block_tokens = bt;
    p.kv.head_dim = d;
    p.kv.block_tables = table.data();
    if (rotate) {
      p.key_rope.cos = cos_t.data();
      p.key_rope.sin = sin_t.data();
      p.key_rope.len = tokens;
    }
    p.kernel_size = kernel;
    p.kernel_stride = stride;
    p.out = reinterpret_cast<bf16*>(out.data());
    p.head_stride = total * d;
    for (auto [from, count] : {std::pair<int64_t, int64_t>{0, first}, {first, total - first}}) {
      p.first_window = from;
      p.num_windows = count;
      ASSERT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
      sim::launch(dim3(unsigned(count), kv_heads), dim3(32), 0, [&] { cuda::compress_keys_kernel(p); });
    }
    for (int g = 0; g < kv_heads; ++g) {
      for (int64_t j = 0; j < total; ++j) {
        for (int e = 0; e < d; ++e) {
          const float want = cpu.key(g, j)[e];
          const float got = bf16_to_float(out[static_cast<size_t>((g * total + j) * d + e)]);
          ASSERT_FALSE(std::isnan(got)) << g << " " << j << " " << e;
          ASSERT_LE(std::fabs(got - want), std::ldexp(std::fabs(want), -8) + 1e-6)
              << "head " << g << " window " << j << " dim " << e << ": got " << got << ", want " << want;
        }
      }
    }
  }
}

TEST(SimMergeAttention, MatchesCpuMergeIncludingEmptyPartials) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 45;
  const int d = 16;
  std::vector<uint16_t> a(rows * d), b(rows * d), out(rows * d, 0xffff);
  std::vector<float> fa(rows * d), fb(rows * d), la(rows), lb(rows), lse(rows, NAN);
  for (int64_t r = 0; r < rows; ++r) {
    la[r] = r % 5 == 3 || r % 7 == 6 ? -INFINITY : normal(rng) * 4;
    lb[r] = r % 5 == 4 || r % 7 == 6 ? -INFINITY : normal(rng) * 4;
    for (int e = 0; e < d; ++e) {
      a[r * d + e] = std::isinf(la[r]) ? 0x7fc0 : float_to_bf16(normal(rng));  // empty partial: NaN, never read
      b[r * d + e] = std::isinf(lb[r]) ? 0x7fc0 : float_to_bf16(normal(rng));
      fa[r * d + e] = bf16_to_float(a[r * d + e]);
      fb[r * d + e] = bf16_to_float(b[r * d + e]);
    }
  }
  std::vector<float> want(rows * d), want_lse(rows);
  AttentionMergeParams cpu{fa.data(), la.data(), fb.data(), lb.data(), rows, d, want.data(), want_lse.data()};
  ASSERT_TRUE(merge_attention_cpu(cpu).ok());
  cuda::MergeAttentionCudaParams p;
  p.out_a = reinterpret_cast<const bf16*>(a.data());
  p.lse_a = la.data();
  p.out_b = reinterpret_cast<const bf16*>(b.data());
  p.lse_b = lb.data();
  p.num_rows = rows;
  p.head_dim = d;
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  ASSERT_TRUE(cuda::validate(p).ok());
  const int64_t items = rows * (d / 8);
  sim::launch(dim3(unsigned((items + 63) / 64)), dim3(64), 0, [&] { cuda::merge_attention_kernel(p); });
  for (int64_t r = 0; r < rows; ++r) {
    if (std::isinf(want_lse[r])) {
      EXPECT_TRUE(std::isinf(lse[r]) && lse[r] < 0) << "row " << r;
    } else {
      EXPECT_NEAR(lse[r], want_lse[r], 1e-5 * (1 + std::fabs(want_lse[r]))) << "row " << r;
    }
    for (int e = 0; e < d; ++e) {
      const float g = bf16_to_float(out[r * d + e]), w = want[r * d + e];
      ASSERT_FALSE(std::isnan(g)) << "row " << r;
      ASSERT_LE(std::fabs(g - w), std::ldexp(std::fabs(w), -8) + 1e-6) << "row " << r << " element " << e;
    }
  }
}

}  // namespace
}  // namespace mnemo
