// CUDA stage-2 block-sparse attention (decode and prefill launchers) against the float64 reference over
// exactly the selected keys and the CPU op, on fresh random paged bf16 KV and random selections
// (empty rows, -1 entries between ids, partial last blocks, NaN-poisoned slot tails and outputs).
#include <gtest/gtest.h>

#include <random>

#include "attention/cuda/dense.h"
#include "attention/cuda/sparse.h"
#include "core/device.h"
#include "tests/cuda/device_buffer.h"
#include "tests/cuda/sparse_ref.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

struct SparseCase {
  AttnCase attn;
  double density = 0.3;
  bool full = false;
  int num_splits = 0;  // decode: 0 = planned
};
void PrintTo(const SparseCase& c, std::ostream* os) { *os << c.attn.name; }

struct DeviceSparse {
  DeviceBuffer<uint16_t> arena, q;
  DeviceBuffer<int32_t> tables, kv_lens, q_indptr, q_index, ids;
  DeviceBuffer<float> cos, sin;
  DeviceSparse(const AttnData& d, const Selection& sel)
      : arena(d.arena), q(d.q), tables(d.block_tables), kv_lens(d.kv_lens), q_indptr(d.q_indptr),
        q_index(d.q_index), ids(sel.ids), cos(d.rope_cos), sin(d.rope_sin) {}

  cuda::SparseAttentionCudaParams params(const AttnCase& c, const AttnData& d, const Selection& sel) const {
    cuda::SparseAttentionCudaParams p;
    p.q = reinterpret_cast<const bf16*>(q.get());
    p.q_indptr = q_indptr.get();
    p.q_index = q_index.get();
    p.batch = d.batch;
    p.total_q = d.total_q;
    p.max_q_per_seq = d.max_q_per_seq;
    p.num_heads = c.num_heads;
    p.kv.arena = reinterpret_cast<const bf16*>(arena.get());
    p.kv.num_kv_heads = c.num_kv_heads;
    p.kv.block_tokens = c.block_tokens;
    p.kv.head_dim = c.head_dim;
    p.kv.block_tables = tables.get();
    p.kv.block_table_stride = d.table_stride;
    p.kv.kv_lens = kv_lens.get();
    p.kv.max_kv_len = d.max_kv_len;
    if (c.use_rope) p.key_rope = {cos.get(), sin.get(), d.rope_len};
    p.softmax_scale = d.softmax_scale;
    p.block_ids = ids.get();
    p.max_selected = sel.max_selected;
    return p;
  }
};

int num_sms() {
  int n = 0;
  cuda_check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0), "sm count");
  return n;
}

class SparseDecodeCuda : public testing::TestWithParam<SparseCase> {};

TEST_P(SparseDecodeCuda, MatchesFloat64ReferenceOverSelectedKeys) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const AttnCase& c = GetParam().attn;
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/true, seed);
  const Selection sel = make_selection(c, d, seed, GetParam().density, GetParam().full);
  const AttnRef ref = sparse_reference(c, d, sel);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  const DeviceSparse dev(d, sel);
  cuda::SparseAttentionCudaParams p = dev.params(c, d, sel);
  const cuda::SparseDecodePlan plan = cuda::plan_sparse_decode(d.total_q, c.num_heads, c.num_kv_heads, c.head_dim,
                                                               c.block_tokens, sel.max_selected, num_sms());
  p.num_splits = GetParam().num_splits > 0 ? GetParam().num_splits : plan.num_splits;
  DeviceBuffer<uint16_t> out(d.q.size());
  DeviceBuffer<float> lse(size_t(d.total_q) * c.num_heads);
  out.poison();
  lse.poison();
  p.out = reinterpret_cast<bf16*>(out.get());
  p.lse = lse.get();
  DeviceBuffer<char> work(cuda::sparse_decode_workspace_bytes(p));
  work.poison();
  const Status s = cuda::sparse_decode_launch(p, {work.get(), work.size()}, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const std::vector<uint16_t> got = out.download();
  CheckStats stats;
  EXPECT_TRUE(check_sparse(c, d, sel, ref, got, lse.download(), &stats));
  std::printf("[ stats    ] sparse decode %s (splits %d): %s\n", c.name.c_str(), p.num_splits,
              stats.to_string().c_str());
  out.poison();
  ASSERT_TRUE(cuda::sparse_decode_launch(p, {work.get(), work.size()}, nullptr).ok());
  EXPECT_EQ(out.download(), got) << "a second run differs: a race?";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SparseDecodeCuda,
    testing::Values(SparseCase{{"minicpm4_g16_d128", 32, 2, 128, 64, {1, 63, 64, 65, 129, 700}}, 0.3, false, 3},
                    SparseCase{{"minicpm4_8k_planned", 32, 2, 128, 64, {8192, 6000}}, 0.7, false, 0},
                    SparseCase{{"one_split", 16, 1, 128, 64, {257, 5}}, 0.5, false, 1},
                    SparseCase{{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 64, 65, 257}}, 0.4, false, 5},
                    SparseCase{{"g20_two_chunks_bt40", 20, 1, 64, 40, {65, 200}, {}, 0, 1.3f}, 0.5, false, 2},
                    SparseCase{{"mha_no_rope_full", 4, 4, 128, 64, {33, 130}, {}, 0, 1.0f, false}, 0, true, 0}),
    [](const testing::TestParamInfo<SparseCase>& info) { return info.param.attn.name; });

class SparsePrefillCuda : public testing::TestWithParam<SparseCase> {};

TEST_P(SparsePrefillCuda, MatchesFloat64ReferenceOverSelectedKeys) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const AttnCase& c = GetParam().attn;
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/false, seed);
  const Selection sel = make_selection(c, d, seed, GetParam().density, GetParam().full);
  const AttnRef ref = sparse_reference(c, d, sel);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  const DeviceSparse dev(d, sel);
  cuda::SparseAttentionCudaParams p = dev.params(c, d, sel);
  DeviceBuffer<uint16_t> out(d.q.size());
  DeviceBuffer<float> lse(size_t(d.total_q) * c.num_heads);
  out.poison();
  lse.poison();
  p.out = reinterpret_cast<bf16*>(out.get());
  p.lse = lse.get();
  const Status s = cuda::sparse_prefill_launch(p, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const std::vector<uint16_t> got = out.download();
  CheckStats stats;
  EXPECT_TRUE(check_sparse(c, d, sel, ref, got, lse.download(), &stats));
  std::printf("[ stats    ] sparse prefill %s: %s\n", c.name.c_str(), stats.to_string().c_str());
  out.poison();
  ASSERT_TRUE(cuda::sparse_prefill_launch(p, nullptr).ok());
  EXPECT_EQ(out.download(), got) << "a second run differs: a race?";

  // The decode launcher computes the same function for any number of queries.
  out.poison();
  p.num_splits = 2;
  DeviceBuffer<char> work(cuda::sparse_decode_workspace_bytes(p));
  ASSERT_TRUE(cuda::sparse_decode_launch(p, {work.get(), work.size()}, nullptr).ok());
  EXPECT_TRUE(check_sparse(c, d, sel, ref, out.download(), lse.download(), &stats)) << "decode launcher";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SparsePrefillCuda,
    testing::Values(SparseCase{{"minicpm4_awkward", 32, 2, 128, 64, {1, 63, 64, 65, 129, 257}, {1, 63, 64, 65, 129, 257}}, 0.4},
                    SparseCase{{"minicpm4_2k", 32, 2, 128, 64, {2048}, {300}}, 0.5},
                    SparseCase{{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 65, 129, 300}, {1, 63, 65, 129, 100}}, 0.4},
                    SparseCase{{"g3_scattered_bt40", 6, 2, 128, 40, {257}, {40}, 0, 1.0f, true, 0, true}, 0.5},
                    SparseCase{{"g20_bt128", 20, 1, 64, 128, {500}, {129}, 0, 1.3f}, 0.5},
                    SparseCase{{"full_equals_dense", 8, 2, 128, 64, {700}, {200}}, 0, true},
                    SparseCase{{"mha_no_rope", 2, 2, 64, 64, {150}, {150}, 0, 1.0f, false}, 0.5}),
    [](const testing::TestParamInfo<SparseCase>& info) { return info.param.attn.name; });

}  // namespace
}  // namespace mnemo::test
