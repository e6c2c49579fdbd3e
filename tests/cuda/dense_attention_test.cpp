// CUDA dense attention (decode and prefill launchers) against the float64 reference and the CPU op
// on fresh random paged bf16 KV: awkward lengths, partial last blocks, NaN-poisoned slot tails and
// outputs, GQA groups 1..20, head_dim 64 and 128, sliding windows, forced and planned splits.
#include <gtest/gtest.h>

#include <random>

#include "attention/cuda/dense.h"
#include "core/device.h"
#include "tests/cuda/attention_ref.h"
#include "tests/cuda/device_buffer.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

// Device copies of an AttnData.
struct DeviceAttn {
  DeviceBuffer<uint16_t> arena, q;
  DeviceBuffer<int32_t> tables, kv_lens, q_indptr, q_index;
  DeviceBuffer<float> cos, sin;
  explicit DeviceAttn(const AttnData& d)
      : arena(d.arena), q(d.q), tables(d.block_tables), kv_lens(d.kv_lens), q_indptr(d.q_indptr),
        q_index(d.q_index), cos(d.rope_cos), sin(d.rope_sin) {}

  cuda::PagedKvBf16 kv(const AttnCase& c, const AttnData& d) const {
    cuda::PagedKvBf16 kv;
    kv.arena = reinterpret_cast<const bf16*>(arena.get());
    kv.num_kv_heads = c.num_kv_heads;
    kv.block_tokens = c.block_tokens;
    kv.head_dim = c.head_dim;
    kv.block_tables = tables.get();
    kv.block_table_stride = d.table_stride;
    kv.kv_lens = kv_lens.get();
    kv.max_kv_len = d.max_kv_len;
    return kv;
  }
  cuda::RopeTableView rope(const AttnCase& c, const AttnData& d) const {
    cuda::RopeTableView r;
    if (c.use_rope) r = {cos.get(), sin.get(), d.rope_len};
    return r;
  }
};

int num_sms() {
  int n = 0;
  cuda_check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0), "sm count");
  return n;
}

class DenseDecodeCuda : public testing::TestWithParam<AttnCase> {};

TEST_P(DenseDecodeCuda, MatchesFloat64ReferenceWithinTwiceNaiveBf16) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const AttnCase& c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/true, seed);
  const AttnRef ref = attention_reference(c, d);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  const DeviceAttn dev(d);
  DeviceBuffer<uint16_t> out(d.q.size());
  DeviceBuffer<float> lse(size_t(d.batch) * c.num_heads);
  out.poison();
  lse.poison();
  cuda::DenseDecodeParams p;
  p.q = reinterpret_cast<const bf16*>(dev.q.get());
  p.batch = d.batch;
  p.num_heads = c.num_heads;
  p.kv = dev.kv(c, d);
  p.key_rope = dev.rope(c, d);
  p.softmax_scale = d.softmax_scale;
  p.sliding_window = c.window;
  const cuda::DenseDecodePlan plan = cuda::plan_dense_decode(d.batch, c.num_heads, c.num_kv_heads, c.head_dim,
                                                             c.block_tokens, d.max_kv_len, num_sms());
  p.num_splits = c.num_splits > 0 ? c.num_splits : plan.num_splits;
  p.out = reinterpret_cast<bf16*>(out.get());
  p.lse = lse.get();
  DeviceBuffer<char> work(cuda::dense_decode_workspace_bytes(p));
  work.poison();
  const Status s = cuda::dense_decode_launch(p, {work.get(), work.size()}, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const std::vector<uint16_t> got = out.download();
  CheckStats stats;
  EXPECT_TRUE(check_attention(c, d, ref, got, lse.download(), &stats));
  std::printf("[ stats    ] decode %s (splits %d): %s\n", c.name.c_str(), p.num_splits, stats.to_string().c_str());

  // Same inputs, same bits: no atomics, a fixed order of every sum.
  out.poison();
  ASSERT_TRUE(cuda::dense_decode_launch(p, {work.get(), work.size()}, nullptr).ok());
  EXPECT_EQ(out.download(), got) << "a second run differs: a race?";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DenseDecodeCuda,
    testing::Values(AttnCase{"minicpm4_g16_d128", 32, 2, 128, 64, {1, 63, 64, 65, 129, 257}, {}, 0, 1.0f, true, 3},
                    AttnCase{"minicpm4_planned", 32, 2, 128, 64, {4096, 1000, 3}, {}, 0, 1.0f, true, 0},
                    AttnCase{"g16_d128_one_split", 16, 1, 128, 64, {257, 5}, {}, 0, 1.0f, true, 1},
                    AttnCase{"g4_d64_bt16_window", 8, 2, 64, 16, {1, 63, 64, 65, 129, 257}, {}, 100, 1.0f, true, 5},
                    AttnCase{"g4_d64_planned", 16, 4, 64, 16, {2049}, {}, 0, 1.0f, true, 0},
                    AttnCase{"g20_two_chunks", 20, 1, 64, 64, {65, 200}, {}, 0, 1.3f, true, 2},
                    AttnCase{"mha_no_rope", 4, 4, 128, 64, {33, 130}, {}, 0, 1.0f, false, 0},
                    AttnCase{"g2_d16_bt16", 4, 2, 16, 16, {1, 17, 50, 700}, {}, 0, 1.0f, true, 0},
                    AttnCase{"g4_d32_window", 8, 2, 32, 64, {70, 129, 3000}, {}, 40, 1.0f, true, 0}),
    [](const testing::TestParamInfo<AttnCase>& info) { return info.param.name; });

class DensePrefillCuda : public testing::TestWithParam<AttnCase> {};

TEST_P(DensePrefillCuda, MatchesFloat64ReferenceWithinTwiceNaiveBf16) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const AttnCase& c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/false, seed);
  const AttnRef ref = attention_reference(c, d);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  const DeviceAttn dev(d);
  DeviceBuffer<uint16_t> out(d.q.size());
  DeviceBuffer<float> lse(size_t(d.total_q) * c.num_heads);
  out.poison();
  lse.poison();
  cuda::DensePrefillParams p;
  p.q = reinterpret_cast<const bf16*>(dev.q.get());
  p.q_indptr = dev.q_indptr.get();
  p.q_index = dev.q_index.get();
  p.batch = d.batch;
  p.max_q_per_seq = d.max_q_per_seq;
  p.num_heads = c.num_heads;
  p.kv = dev.kv(c, d);
  p.key_rope = dev.rope(c, d);
  p.softmax_scale = d.softmax_scale;
  p.sliding_window = c.window;
  p.out = reinterpret_cast<bf16*>(out.get());
  p.lse = lse.get();
  const Status s = cuda::dense_prefill_launch(p, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const std::vector<uint16_t> got = out.download();
  CheckStats stats;
  EXPECT_TRUE(check_attention(c, d, ref, got, lse.download(), &stats));
  std::printf("[ stats    ] prefill %s: %s\n", c.name.c_str(), stats.to_string().c_str());

  out.poison();
  ASSERT_TRUE(cuda::dense_prefill_launch(p, nullptr).ok());
  EXPECT_EQ(out.download(), got) << "a second run differs: a race?";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DensePrefillCuda,
    testing::Values(AttnCase{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 64, 65, 129, 257}, {1, 63, 64, 65, 129, 257}},
                    AttnCase{"minicpm4_awkward", 32, 2, 128, 64, {1, 63, 64, 65, 129, 257}, {1, 63, 64, 65, 129, 257}},
                    AttnCase{"minicpm4_1k", 32, 2, 128, 64, {1024}, {1024}},
                    AttnCase{"varlen_chunks", 8, 2, 128, 64, {300, 700, 64}, {70, 257, 64}},
                    AttnCase{"g3_scattered_window", 6, 2, 128, 64, {257}, {40}, 50, 1.0f, true, 0, true},
                    AttnCase{"g20_window_scaled", 20, 1, 64, 32, {500}, {129}, 100, 1.3f},
                    AttnCase{"mha_no_rope", 2, 2, 64, 64, {100}, {100}, 0, 1.0f, false},
                    AttnCase{"g2_d16_bt16", 4, 2, 16, 16, {1, 40, 300}, {1, 40, 300}},
                    AttnCase{"g4_d32_window", 8, 2, 32, 64, {130, 700}, {70, 300}, 40}),
    [](const testing::TestParamInfo<AttnCase>& info) { return info.param.name; });

}  // namespace
}  // namespace mnemo::test
