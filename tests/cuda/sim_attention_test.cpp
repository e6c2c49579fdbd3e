// The CUDA dense attention kernels' own source, run on the CPU through tests/cuda/sim/warp_sim.h and
// checked against the float64 reference. Needs the CUDA headers but no GPU or driver, so CI runs the
// kernel logic (fragment layouts, masks, online softmax, split merge) on every build. The GPU suite
// (dense_attention_test.cpp) checks the same cases on a device.
#include "tests/cuda/sim/warp_sim.h"  // first: defines MNEMO_WARP_SIM for the kernel headers

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <random>

#include "attention/cuda/dense_decode_kernel.cuh"
#include "attention/cuda/dense_prefill_kernel.cuh"
#include "tests/cuda/attention_ref.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

cuda::PagedKvBf16 kv_view(const AttnCase& c, const AttnData& d) {
  cuda::PagedKvBf16 kv;
  kv.arena = reinterpret_cast<const bf16*>(d.arena.data());
  kv.num_kv_heads = c.num_kv_heads;
  kv.block_tokens = c.block_tokens;
  kv.head_dim = c.head_dim;
  kv.block_tables = d.block_tables.data();
  kv.block_table_stride = d.table_stride;
  kv.kv_lens = d.kv_lens.data();
  kv.max_kv_len = d.max_kv_len;
  return kv;
}

cuda::RopeTableView rope_view(const AttnCase& c, const AttnData& d) {
  cuda::RopeTableView r;
  if (c.use_rope) {
    r.cos = d.rope_cos.data();
    r.sin = d.rope_sin.data();
    r.len = d.rope_len;
  }
  return r;
}

// Same grids as attention/cuda/dense_decode.cu and dense_prefill.cu.
template <int kHeadDim>
void sim_decode(const cuda::DenseDecodeParams& p, const cuda::DecodePartials& part) {
  using Cfg = cuda::DecodeConfig<kHeadDim>;
  const int chunks = (p.num_heads / p.kv.num_kv_heads + Cfg::kRows - 1) / Cfg::kRows;
  sim::launch(dim3(p.kv.num_kv_heads * chunks, p.num_splits, p.batch), dim3(Cfg::kThreads), Cfg::kSmemBytes,
              [&] { cuda::dense_decode_split_kernel<kHeadDim>(p, part); });
  if (p.num_splits > 1) {
    sim::launch(dim3(p.num_heads, p.batch), dim3(cuda::kMergeThreads<kHeadDim>), sizeof(float) * p.num_splits,
                [&] { cuda::dense_decode_merge_kernel<kHeadDim>(p, part); });
  }
}

template <int kHeadDim>
void sim_prefill(const cuda::DensePrefillParams& p) {
  using Cfg = cuda::PrefillConfig<kHeadDim>;
  const int64_t rows = int64_t{p.max_q_per_seq} * (p.num_heads / p.kv.num_kv_heads);
  sim::launch(dim3(unsigned((rows + Cfg::kRows - 1) / Cfg::kRows), p.kv.num_kv_heads, p.batch),
              dim3(Cfg::kThreads), Cfg::kSmemBytes, [&] { cuda::dense_prefill_kernel<kHeadDim>(p); });
}

class SimDenseDecode : public testing::TestWithParam<AttnCase> {};

TEST_P(SimDenseDecode, MatchesFloat64ReferenceWithinTwiceNaiveBf16) {
  const AttnCase& c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/true, seed);
  const AttnRef ref = attention_reference(c, d);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  cuda::DenseDecodeParams p;
  p.q = reinterpret_cast<const bf16*>(d.q.data());
  p.batch = d.batch;
  p.num_heads = c.num_heads;
  p.kv = kv_view(c, d);
  p.key_rope = rope_view(c, d);
  p.softmax_scale = d.softmax_scale;
  p.sliding_window = c.window;
  const cuda::DenseDecodePlan plan = cuda::plan_dense_decode(d.batch, c.num_heads, c.num_kv_heads, c.head_dim,
                                                             c.block_tokens, d.max_kv_len, /*num_sms=*/8);
  p.num_splits = c.num_splits > 0 ? c.num_splits : plan.num_splits;
  std::vector<uint16_t> out(d.q.size(), 0xffff);  // NaN
  std::vector<float> lse(size_t(d.batch) * c.num_heads, NAN);
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  ASSERT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
  std::vector<float> work(cuda::dense_decode_workspace_bytes(p) / sizeof(float) + 1, NAN);
  cuda::DecodePartials part;
  if (p.num_splits > 1) {
    const size_t rows = size_t(p.batch) * p.num_heads * p.num_splits;
    part.o = work.data();
    part.lse = work.data() + (rows * c.head_dim * sizeof(float) + 255) / 256 * 256 / sizeof(float);
  }
  switch (c.head_dim) {
    case 16: sim_decode<16>(p, part); break;
    case 32: sim_decode<32>(p, part); break;
    case 64: sim_decode<64>(p, part); break;
    default: sim_decode<128>(p, part);
  }

  CheckStats stats;
  EXPECT_TRUE(check_attention(c, d, ref, out, lse, &stats));
  std::printf("[ stats    ] %s (splits %d): %s\n", c.name.c_str(), p.num_splits, stats.to_string().c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SimDenseDecode,
    testing::Values(AttnCase{"minicpm4_g16_d128", 32, 2, 128, 64, {1, 63, 64, 65, 129, 257}, {}, 0, 1.0f, true, 3},
                    AttnCase{"g16_d128_one_split", 16, 1, 128, 64, {257, 5}, {}, 0, 1.0f, true, 1},
                    AttnCase{"g4_d64_bt16_window", 8, 2, 64, 16, {1, 63, 64, 65, 129, 257}, {}, 100, 1.0f, true, 5},
                    AttnCase{"g20_two_chunks", 20, 1, 64, 64, {65, 200}, {}, 0, 1.3f, true, 2},
                    AttnCase{"mha_no_rope", 4, 4, 128, 64, {33, 130}, {}, 0, 1.0f, false, 0},
                    AttnCase{"g2_d16_bt16", 4, 2, 16, 16, {1, 17, 50}, {}, 0, 1.0f, true, 2},
                    AttnCase{"g4_d32_window", 8, 2, 32, 64, {70, 129}, {}, 40, 1.0f, true, 0}),
    [](const testing::TestParamInfo<AttnCase>& info) { return info.param.name; });

class SimDensePrefill : public testing::TestWithParam<AttnCase> {};

TEST_P(SimDensePrefill, MatchesFloat64ReferenceWithinTwiceNaiveBf16) {
  const AttnCase& c = GetParam();
  // MNEMO_SIM_SEED=<n> replays a failure's printed seed.
  const char* replay = std::getenv("MNEMO_SIM_SEED");
  const uint32_t seed = replay ? uint32_t(std::strtoul(replay, nullptr, 10)) : std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/false, seed);
  const AttnRef ref = attention_reference(c, d);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  cuda::DensePrefillParams p;
  p.q = reinterpret_cast<const bf16*>(d.q.data());
  p.q_indptr = d.q_indptr.data();
  p.q_index = d.q_index.data();
  p.batch = d.batch;
  p.max_q_per_seq = d.max_q_per_seq;
  p.num_heads = c.num_heads;
  p.kv = kv_view(c, d);
  p.key_rope = rope_view(c, d);
  p.softmax_scale = d.softmax_scale;
  p.sliding_window = c.window;
  std::vector<uint16_t> out(d.q.size(), 0xffff);
  std::vector<float> lse(size_t(d.total_q) * c.num_heads, NAN);
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  ASSERT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
  switch (c.head_dim) {
    case 16: sim_prefill<16>(p); break;
    case 32: sim_prefill<32>(p); break;
    case 64: sim_prefill<64>(p); break;
    default: sim_prefill<128>(p);
  }

  CheckStats stats;
  EXPECT_TRUE(check_attention(c, d, ref, out, lse, &stats));
  std::printf("[ stats    ] %s: %s\n", c.name.c_str(), stats.to_string().c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SimDensePrefill,
    testing::Values(AttnCase{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 64, 65, 129}, {1, 63, 64, 65, 129}},
                    AttnCase{"minicpm4_g16_d128", 32, 2, 128, 64, {65, 129}, {65, 17}},
                    AttnCase{"g3_scattered_window", 6, 2, 128, 64, {257}, {40}, 50, 1.0f, true, 0, true},
                    AttnCase{"mha_no_rope", 2, 2, 64, 64, {100}, {100}, 0, 1.0f, false},
                    AttnCase{"g2_d16_bt16", 4, 2, 16, 16, {1, 40}, {1, 40}},
                    AttnCase{"g4_d32_window", 8, 2, 32, 64, {130}, {70}, 40},
                    AttnCase{"g4_d64_rope_scale", 8, 2, 64, 64, {130}, {33}, 0, 1.3f}),
    [](const testing::TestParamInfo<AttnCase>& info) { return info.param.name; });

TEST(DenseCudaValidate, NamesTheFieldExpectedAndGot) {
  alignas(16) uint16_t dummy[8] = {};
  int32_t table = 0, len = 1;
  cuda::DenseDecodeParams p;
  p.q = reinterpret_cast<const bf16*>(dummy);
  p.out = reinterpret_cast<bf16*>(dummy);
  p.batch = 1;
  p.num_heads = 4;
  p.kv.arena = p.q;
  p.kv.num_kv_heads = 2;
  p.kv.block_tokens = 64;
  p.kv.head_dim = 96;
  p.kv.block_tables = &table;
  p.kv.block_table_stride = 1;
  p.kv.kv_lens = &len;
  p.kv.max_kv_len = 1;
  p.softmax_scale = 0.1f;
  Status s = cuda::validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("kv.head_dim: expected 16, 32, 64 or 128, got 96"), std::string::npos) << s.message();
  p.kv.head_dim = 64;
  p.kv.max_kv_len = 65;
  s = cuda::validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("kv.block_table_stride: expected >= 2"), std::string::npos) << s.message();
  p.kv.max_kv_len = 1;
  p.num_heads = 3;
  s = cuda::validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("num_heads (3)"), std::string::npos) << s.message();
  p.num_heads = 4;
  EXPECT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
}

TEST(DenseCudaPlan, SplitsFillTheGpuAndKeepWholeTiles) {
  // MiniCPM4-8B at 128K on 132 SMs: 2 kv heads x splits ~ 2 waves of CTAs.
  const cuda::DenseDecodePlan plan = cuda::plan_dense_decode(1, 32, 2, 128, 64, 131072, 132);
  EXPECT_GE(plan.num_splits, 100);
  EXPECT_LE(plan.num_splits, 132);
  EXPECT_GT(plan.workspace_bytes, size_t(32) * plan.num_splits * 128 * 4);
  // A short sequence is never split below 128 keys per split.
  EXPECT_EQ(cuda::plan_dense_decode(1, 32, 2, 128, 64, 100, 132).num_splits, 1);
  EXPECT_EQ(cuda::plan_dense_decode(1, 32, 2, 128, 64, 100, 132).workspace_bytes, 0u);
  EXPECT_EQ(cuda::plan_dense_decode(64, 32, 8, 128, 64, 4096, 132).num_splits, 1);
}

}  // namespace
}  // namespace mnemo::test
