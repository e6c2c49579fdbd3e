// The CUDA stage-1 block-score and top-k kernels' own source, run on the CPU through
// tests/cuda/sim/warp_sim.h, against attention/select.h's CPU references (tests/cuda/select_ref.h).
#include "tests/cuda/sim/warp_sim.h"  // first: defines MNEMO_WARP_SIM for the kernel headers

#include <gtest/gtest.h>

#include <random>

#include "attention/cuda/block_score_kernel.cuh"
#include "attention/cuda/topk_kernel.cuh"
#include "tests/cuda/select_ref.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

SparseParams small_sparse(int kernel, int stride, int block, int init, int window, int topk) {
  SparseParams sp;
  sp.kernel_size = kernel;
  sp.kernel_stride = stride;
  sp.block_size = block;
  sp.init_blocks = init;
  sp.window_size = window;
  sp.topk = topk;
  return sp;
}

cuda::BlockScoreCudaParams score_params(const SelectCase& c, const SelectData& d) {
  cuda::BlockScoreCudaParams p;
  p.q = reinterpret_cast<const bf16*>(d.q.data());
  p.q_index = d.q_index32.data();
  p.num_q = static_cast<int>(c.q_index.size());
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.keys = {reinterpret_cast<const bf16*>(d.ck1.data()), d.n1 * c.head_dim, d.n1, c.sparse.kernel_size,
            c.sparse.kernel_stride};
  if (c.approx) {
    p.lse_keys = {reinterpret_cast<const bf16*>(d.ck2.data()), d.n2 * c.head_dim, d.n2, lse_kernel_size(c.sparse),
                  lse_kernel_stride(c.sparse)};
  }
  p.block_size = c.sparse.block_size;
  p.num_blocks = d.num_blocks;
  p.softmax_scale = d.softmax_scale;
  return p;
}

// Same grids as attention/cuda/select.cu.
template <int kHeadDim>
void sim_scores(const cuda::BlockScoreCudaParams& p) {
  using Cfg = cuda::BlockScoreConfig<kHeadDim>;
  const int queries = Cfg::kRows / (p.num_heads / p.num_kv_heads);
  const int halo = p.keys.kernel_size / p.keys.kernel_stride - 1;
  const dim3 grid((p.num_q + queries - 1) / queries, p.num_kv_heads, p.num_splits);
  const size_t smem = Cfg::smem_bytes(queries, halo);
  if (p.num_splits == 1) {
    sim::launch(grid, dim3(Cfg::kThreads), smem,
                [&] { cuda::block_score_kernel<kHeadDim, cuda::kFused>(p, queries, halo, nullptr); });
    return;
  }
  std::vector<float2> partials(cuda::block_scores_workspace_bytes(p) / sizeof(float2), make_float2(NAN, NAN));
  sim::launch(grid, dim3(Cfg::kThreads), smem,
              [&] { cuda::block_score_kernel<kHeadDim, cuda::kLsePartial>(p, queries, halo, partials.data()); });
  sim::launch(grid, dim3(Cfg::kThreads), smem,
              [&] { cuda::block_score_kernel<kHeadDim, cuda::kScoreFromPartials>(p, queries, halo, partials.data()); });
}

void sim_topk(const cuda::BlockTopkCudaParams& p) {
  sim::launch(dim3(p.num_q * p.num_kv_heads), dim3(cuda::kTopkThreads), cuda::topk_smem_bytes(p.num_blocks),
              [&] { cuda::topk_kernel(p); });
}

class SimSelect : public testing::TestWithParam<SelectCase> {};

TEST_P(SimSelect, ScoresMatchCpuAndTopkIsIdentical) {
  const SelectCase& c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const SelectData d = make_select_data(c, seed);
  const std::vector<float> want = cpu_block_scores(c, d);

  cuda::BlockScoreCudaParams sp = score_params(c, d);
  std::vector<float> got;
  for (int splits : {3, 1}) {  // window splits + partial normalisers, then the fused kernel
    got.assign(want.size(), NAN);
    sp.block_scores = got.data();
    sp.num_splits = splits;
    ASSERT_TRUE(cuda::validate(sp).ok()) << cuda::validate(sp).to_string();
    if (c.head_dim == 64) sim_scores<64>(sp);
    else sim_scores<128>(sp);
    double max_rel = 0;
    EXPECT_TRUE(check_scores(c, got, want, &max_rel)) << "splits " << splits;
    std::printf("[ stats    ] %s (splits %d): block scores max rel err %.3g over %zu\n", c.name.c_str(), splits,
                max_rel, want.size());
  }

  // Top-k on identical (tie-planted) scores: identical ids.
  std::vector<float> tied = want;
  plant_ties(&tied, seed);
  std::vector<int32_t> want_ids, want_n;
  cpu_topk(c, d, tied, &want_ids, &want_n);
  std::vector<int32_t> ids(want_ids.size(), 12345), n(want_n.size(), 12345);
  cuda::BlockTopkCudaParams tp;
  tp.block_scores = tied.data();
  tp.q_index = d.q_index32.data();
  tp.num_q = static_cast<int>(c.q_index.size());
  tp.num_kv_heads = c.num_kv_heads;
  tp.num_blocks = d.num_blocks;
  tp.sparse = c.sparse;
  tp.max_selected = max_selected_blocks(c.sparse);
  tp.block_ids = ids.data();
  tp.num_selected = n.data();
  ASSERT_TRUE(cuda::validate(tp).ok()) << cuda::validate(tp).to_string();
  sim_topk(tp);
  EXPECT_TRUE(check_ids_equal(c, ids, want_ids, n, want_n));

  // Pipeline: kernel scores -> kernel top-k vs the CPU's, equal up to near-ties at the boundary.
  cpu_topk(c, d, want, &want_ids, &want_n);
  tp.block_scores = got.data();
  sim_topk(tp);
  int64_t excused = 0;
  EXPECT_TRUE(check_ids_near(c, d, want, ids, want_ids, &excused));
  std::printf("[ stats    ] %s: pipeline selections, %lld blocks excused as near-ties\n", c.name.c_str(),
              static_cast<long long>(excused));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SimSelect,
    testing::Values(
        // MiniCPM4 numbers, scaled down: window 256 (4 local blocks), topk 3; queries before and after
        // the first tier-1 (t = 31) and tier-2 (t = 127) windows, in and past the first 32-window tile.
        SelectCase{"minicpm4_g16_d128", 32, 2, 128, {0, 30, 31, 100, 127, 128, 600, 1300, 1301}, true,
                   small_sparse(32, 16, 64, 1, 256, 3)},
        SelectCase{"exact_g3_d64", 6, 2, 64, {5, 63, 64, 500, 900}, false, small_sparse(32, 16, 64, 2, 128, 4)},
        SelectCase{"halo3_block32_g1", 4, 4, 64, {70, 400, 777}, true, small_sparse(64, 16, 32, 1, 64, 5)}),
    [](const testing::TestParamInfo<SelectCase>& info) { return info.param.name; });

TEST(SelectCudaValidate, NamesTheFieldExpectedAndGot) {
  int32_t idx = 0;
  float out = 0;
  cuda::BlockTopkCudaParams tp;
  tp.block_scores = &out;
  tp.q_index = &idx;
  tp.block_ids = &idx;
  tp.num_q = 1;
  tp.num_kv_heads = 1;
  tp.num_blocks = 1;
  tp.max_selected = 10;
  Status s = cuda::validate(tp);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("max_selected: expected >= 96, got 10"), std::string::npos) << s.message();
  cuda::BlockScoreCudaParams p;
  alignas(16) uint16_t dummy[8] = {};
  p.q = reinterpret_cast<const bf16*>(dummy);
  p.q_index = &idx;
  p.block_scores = &out;
  p.num_q = 1;
  p.num_heads = 4;
  p.num_kv_heads = 2;
  p.head_dim = 96;
  s = cuda::validate(p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("head_dim: expected 64 or 128, got 96"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mnemo::test
