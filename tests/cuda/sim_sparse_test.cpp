// The CUDA stage-2 sparse attention kernels' own source, run on the CPU through
// tests/cuda/sim/warp_sim.h and checked against the float64 reference over exactly the selected keys
// (tests/cuda/sparse_ref.h). The GPU suite (sparse_attention_test.cpp) checks the same on a device.
#include "tests/cuda/sim/warp_sim.h"  // first: defines MNEMO_WARP_SIM for the kernel headers

#include <gtest/gtest.h>

#include <random>

#include "attention/cuda/dense_prefill_kernel.cuh"
#include "attention/cuda/sparse_decode_kernel.cuh"
#include "attention/cuda/sparse_prefill_kernel.cuh"
#include "tests/cuda/sparse_ref.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

struct SparseCase {
  AttnCase attn;
  double density = 0.3;
  bool full = false;  // every block up to the own block
  int num_splits = 0;  // decode: 0 = plan_sparse_decode's choice on 8 SMs
};
void PrintTo(const SparseCase& c, std::ostream* os) { *os << c.attn.name; }

cuda::SparseAttentionCudaParams params(const AttnCase& c, const AttnData& d, const Selection& sel) {
  cuda::SparseAttentionCudaParams p;
  p.q = reinterpret_cast<const bf16*>(d.q.data());
  p.q_indptr = d.q_indptr.data();
  p.q_index = d.q_index.data();
  p.batch = d.batch;
  p.total_q = d.total_q;
  p.max_q_per_seq = d.max_q_per_seq;
  p.num_heads = c.num_heads;
  p.kv.arena = reinterpret_cast<const bf16*>(d.arena.data());
  p.kv.num_kv_heads = c.num_kv_heads;
  p.kv.block_tokens = c.block_tokens;
  p.kv.head_dim = c.head_dim;
  p.kv.block_tables = d.block_tables.data();
  p.kv.block_table_stride = d.table_stride;
  p.kv.kv_lens = d.kv_lens.data();
  p.kv.max_kv_len = d.max_kv_len;
  if (c.use_rope) p.key_rope = {d.rope_cos.data(), d.rope_sin.data(), d.rope_len};
  p.softmax_scale = d.softmax_scale;
  p.block_ids = sel.ids.data();
  p.max_selected = sel.max_selected;
  return p;
}

// Same grids as attention/cuda/sparse_attention.cu.
template <int kHeadDim>
void sim_decode(const cuda::SparseAttentionCudaParams& p, const cuda::DecodePartials& part) {
  using Cfg = cuda::DecodeConfig<kHeadDim>;
  const int chunks = (p.num_heads / p.kv.num_kv_heads + Cfg::kRows - 1) / Cfg::kRows;
  sim::launch(dim3(p.kv.num_kv_heads * chunks, p.num_splits, p.total_q), dim3(Cfg::kThreads), Cfg::kSmemBytes,
              [&] { cuda::sparse_decode_split_kernel<kHeadDim>(p, part); });
  if (p.num_splits > 1) {
    sim::launch(dim3(p.num_heads, p.total_q), dim3(kHeadDim), sizeof(float) * p.num_splits,
                [&] { cuda::sparse_decode_merge_kernel<kHeadDim>(p, part); });
  }
}

template <int kHeadDim>
void sim_prefill(const cuda::SparseAttentionCudaParams& p) {
  using Cfg = cuda::SparsePrefillConfig<kHeadDim>;
  const int64_t rows = int64_t{p.max_q_per_seq} * (p.num_heads / p.kv.num_kv_heads);
  sim::launch(dim3(unsigned((rows + Cfg::kRows - 1) / Cfg::kRows), p.kv.num_kv_heads, p.batch),
              dim3(Cfg::kThreads), Cfg::kSmemBytes, [&] { cuda::sparse_prefill_kernel<kHeadDim>(p); });
}

class SimSparseDecode : public testing::TestWithParam<SparseCase> {};

TEST_P(SimSparseDecode, MatchesFloat64ReferenceOverSelectedKeys) {
  const AttnCase& c = GetParam().attn;
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/true, seed);
  const Selection sel = make_selection(c, d, seed, GetParam().density, GetParam().full);
  const AttnRef ref = sparse_reference(c, d, sel);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  cuda::SparseAttentionCudaParams p = params(c, d, sel);
  const cuda::SparseDecodePlan plan =
      cuda::plan_sparse_decode(d.total_q, c.num_heads, c.num_kv_heads, c.head_dim, c.block_tokens, sel.max_selected, 8);
  p.num_splits = GetParam().num_splits > 0 ? GetParam().num_splits : plan.num_splits;
  std::vector<uint16_t> out(d.q.size(), 0xffff);  // NaN
  std::vector<float> lse(size_t(d.total_q) * c.num_heads, NAN);
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  ASSERT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
  std::vector<float> work(cuda::sparse_decode_workspace_bytes(p) / sizeof(float) + 1, NAN);
  cuda::DecodePartials part;
  if (p.num_splits > 1) {
    const size_t rows = size_t(p.total_q) * p.num_heads * p.num_splits;
    part.o = work.data();
    part.lse = work.data() + (rows * c.head_dim * sizeof(float) + 255) / 256 * 256 / sizeof(float);
  }
  if (c.head_dim == 64) sim_decode<64>(p, part);
  else sim_decode<128>(p, part);
  CheckStats stats;
  EXPECT_TRUE(check_sparse(c, d, sel, ref, out, lse, &stats));
  std::printf("[ stats    ] %s (splits %d): %s\n", c.name.c_str(), p.num_splits, stats.to_string().c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SimSparseDecode,
    testing::Values(SparseCase{{"minicpm4_g16_d128", 32, 2, 128, 64, {1, 63, 65, 129, 700}}, 0.3, false, 3},
                    SparseCase{{"minicpm4_planned", 32, 2, 128, 64, {900}}, 0.5, false, 0},
                    SparseCase{{"one_split", 16, 1, 128, 64, {257, 5}}, 0.5, false, 1},
                    SparseCase{{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 64, 65, 257}}, 0.4, false, 5},
                    SparseCase{{"g20_two_chunks_bt40", 20, 1, 64, 40, {65, 200}, {}, 0, 1.3f}, 0.5, false, 2},
                    SparseCase{{"mha_no_rope_full", 4, 4, 128, 64, {33, 130}, {}, 0, 1.0f, false}, 0, true, 0}),
    [](const testing::TestParamInfo<SparseCase>& info) { return info.param.attn.name; });

class SimSparsePrefill : public testing::TestWithParam<SparseCase> {};

TEST_P(SimSparsePrefill, MatchesFloat64ReferenceOverSelectedKeys) {
  const AttnCase& c = GetParam().attn;
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/false, seed);
  const Selection sel = make_selection(c, d, seed, GetParam().density, GetParam().full);
  const AttnRef ref = sparse_reference(c, d, sel);
  ASSERT_LE(ref.cpu_op_max_err, 1e-4) << "the CPU op and the float64 reference disagree";

  cuda::SparseAttentionCudaParams p = params(c, d, sel);
  std::vector<uint16_t> out(d.q.size(), 0xffff);
  std::vector<float> lse(size_t(d.total_q) * c.num_heads, NAN);
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  ASSERT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
  if (c.head_dim == 64) sim_prefill<64>(p);
  else sim_prefill<128>(p);
  CheckStats stats;
  EXPECT_TRUE(check_sparse(c, d, sel, ref, out, lse, &stats));
  std::printf("[ stats    ] %s: %s\n", c.name.c_str(), stats.to_string().c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SimSparsePrefill,
    testing::Values(SparseCase{{"minicpm4_g16_d128", 32, 2, 128, 64, {150, 65}, {12, 6}}, 0.4},
                    SparseCase{{"g4_d64_bt16", 8, 2, 64, 16, {1, 63, 65, 129}, {1, 20, 17, 30}}, 0.4},
                    SparseCase{{"g3_scattered_bt40", 6, 2, 128, 40, {257}, {40}, 0, 1.0f, true, 0, true}, 0.5},
                    SparseCase{{"g20_bt128", 20, 1, 64, 128, {300}, {30}, 0, 1.3f}, 0.5},
                    SparseCase{{"mha_no_rope", 2, 2, 64, 64, {150}, {70}, 0, 1.0f, false}, 0.5}),
    [](const testing::TestParamInfo<SparseCase>& info) { return info.param.attn.name; });

// DESIGN.md's invariant: sparse with every block selected is dense attention. With 64-token blocks the
// union walk visits the dense kernel's tiles in the same order with the same masks: bit for bit.
TEST(SimSparsePrefill, FullSelectionEqualsDenseKernelBitForBit) {
  const AttnCase c{"full_vs_dense", 32, 2, 128, 64, {130, 64}, {9, 4}};
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const AttnData d = make_attn_data(c, /*decode=*/false, seed);
  const Selection sel = make_selection(c, d, seed, 0, /*full=*/true);
  cuda::SparseAttentionCudaParams p = params(c, d, sel);
  std::vector<uint16_t> out(d.q.size(), 0xffff), dense_out(d.q.size(), 0xffff);
  std::vector<float> lse(size_t(d.total_q) * c.num_heads, NAN), dense_lse(lse.size(), NAN);
  p.out = reinterpret_cast<bf16*>(out.data());
  p.lse = lse.data();
  sim_prefill<128>(p);
  cuda::DensePrefillParams dp;
  dp.q = p.q;
  dp.q_indptr = p.q_indptr;
  dp.q_index = p.q_index;
  dp.batch = p.batch;
  dp.max_q_per_seq = p.max_q_per_seq;
  dp.num_heads = p.num_heads;
  dp.kv = p.kv;
  dp.key_rope = p.key_rope;
  dp.softmax_scale = p.softmax_scale;
  dp.out = reinterpret_cast<bf16*>(dense_out.data());
  dp.lse = dense_lse.data();
  using Cfg = cuda::PrefillConfig<128>;
  sim::launch(dim3(unsigned((int64_t{dp.max_q_per_seq} * 16 + Cfg::kRows - 1) / Cfg::kRows), 2, dp.batch),
              dim3(Cfg::kThreads), Cfg::kSmemBytes, [&] { cuda::dense_prefill_kernel<128>(dp); });
  EXPECT_EQ(out, dense_out);
  EXPECT_EQ(lse, dense_lse);
}

TEST(SparseCudaValidate, NamesTheFieldExpectedAndGot) {
  alignas(16) uint16_t dummy[8] = {};
  int32_t table = 0, len = 1, indptr[2] = {0, 1}, index = 0, ids = 0;
  cuda::SparseAttentionCudaParams p;
  p.q = reinterpret_cast<const bf16*>(dummy);
  p.out = reinterpret_cast<bf16*>(dummy);
  p.q_indptr = indptr;
  p.q_index = &index;
  p.block_ids = &ids;
  p.max_selected = 1;
  p.batch = 1;
  p.total_q = 1;
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
  EXPECT_NE(s.message().find("kv.head_dim: expected 64 or 128, got 96"), std::string::npos) << s.message();
  p.kv.head_dim = 64;
  p.num_splits = 2;
  s = cuda::validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("num_splits: expected in [1, min(max_selected"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("got 2"), std::string::npos) << s.message();
  p.num_splits = 1;
  EXPECT_TRUE(cuda::validate(p).ok()) << cuda::validate(p).to_string();
}

TEST(SparseCudaPlan, OneQueryFillsTheGpu) {
  // MiniCPM4-8B decode: 96 selected blocks, 2 kv heads, 132 SMs -> 48 splits of 2 blocks, 96 CTAs.
  const cuda::SparseDecodePlan plan = cuda::plan_sparse_decode(1, 32, 2, 128, 64, 96, 132);
  EXPECT_EQ(plan.num_splits, 48);
  EXPECT_GT(plan.workspace_bytes, size_t(32) * 48 * 128 * 4);
  EXPECT_EQ(cuda::plan_sparse_decode(256, 32, 2, 128, 64, 96, 132).num_splits, 1);
}

}  // namespace
}  // namespace mnemo::test
