// CUDA stage-1 block scores and top-k selection against attention/select.h's CPU references on fresh
// random queries and bf16 compressed keys (tests/cuda/select_ref.h for the rules: scores within fp32
// rounding; top-k on identical, tie-planted scores identical; the pipeline identical except near-ties
// of the CPU's own scores at the boundary, which are counted and printed).
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "attention/cuda/select.h"
#include "core/device.h"
#include "tests/cuda/device_buffer.h"
#include "tests/cuda/select_ref.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

std::vector<int> chunk(int first, int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

class SelectCuda : public testing::TestWithParam<SelectCase> {};

TEST_P(SelectCuda, ScoresMatchCpuAndTopkIsIdentical) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const SelectCase& c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const SelectData d = make_select_data(c, seed);
  const std::vector<float> want = cpu_block_scores(c, d);

  DeviceBuffer<uint16_t> q(d.q), ck1(d.ck1), ck2(d.ck2.empty() ? std::vector<uint16_t>(8) : d.ck2);
  DeviceBuffer<int32_t> q_index(d.q_index32);
  DeviceBuffer<float> scores(want.size());
  scores.poison();
  cuda::BlockScoreCudaParams p;
  p.q = reinterpret_cast<const bf16*>(q.get());
  p.q_index = q_index.get();
  p.num_q = static_cast<int>(c.q_index.size());
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.keys = {reinterpret_cast<const bf16*>(ck1.get()), d.n1 * c.head_dim, d.n1, c.sparse.kernel_size,
            c.sparse.kernel_stride};
  if (c.approx) {
    p.lse_keys = {reinterpret_cast<const bf16*>(ck2.get()), d.n2 * c.head_dim, d.n2, lse_kernel_size(c.sparse),
                  lse_kernel_stride(c.sparse)};
  }
  p.block_size = c.sparse.block_size;
  p.num_blocks = d.num_blocks;
  p.softmax_scale = d.softmax_scale;
  p.block_scores = scores.get();
  int num_sms = 0;
  cuda_check(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0), "sm count");
  const cuda::BlockScorePlan plan = cuda::plan_block_scores(p.num_q, c.num_heads, c.num_kv_heads, d.n1, num_sms);
  Status s;
  std::vector<float> got;
  for (int splits : {plan.num_splits, 1, 5}) {
    p.num_splits = splits;
    DeviceBuffer<char> work(cuda::block_scores_workspace_bytes(p));
    work.poison();
    scores.poison();
    s = cuda::block_scores_launch(p, {work.get(), work.size()}, nullptr);
    ASSERT_TRUE(s.ok()) << s.to_string();
    got = scores.download();
    double max_rel = 0;
    EXPECT_TRUE(check_scores(c, got, want, &max_rel)) << "splits " << splits;
    std::printf("[ stats    ] %s (splits %d): block scores max rel err %.3g over %zu\n", c.name.c_str(), splits,
                max_rel, want.size());
  }

  std::vector<float> tied = want;
  plant_ties(&tied, seed);
  std::vector<int32_t> want_ids, want_n;
  cpu_topk(c, d, tied, &want_ids, &want_n);
  DeviceBuffer<float> tied_dev(tied);
  DeviceBuffer<int32_t> ids(want_ids.size()), n(want_n.size());
  ids.poison();
  n.poison();
  cuda::BlockTopkCudaParams tp;
  tp.block_scores = tied_dev.get();
  tp.q_index = q_index.get();
  tp.num_q = p.num_q;
  tp.num_kv_heads = c.num_kv_heads;
  tp.num_blocks = d.num_blocks;
  tp.sparse = c.sparse;
  tp.max_selected = max_selected_blocks(c.sparse);
  tp.block_ids = ids.get();
  tp.num_selected = n.get();
  s = cuda::select_topk_launch(tp, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(check_ids_equal(c, ids.download(), want_ids, n.download(), want_n));

  cpu_topk(c, d, want, &want_ids, &want_n);
  tp.block_scores = scores.get();
  ids.poison();
  ASSERT_TRUE(cuda::select_topk_launch(tp, nullptr).ok());
  int64_t excused = 0;
  EXPECT_TRUE(check_ids_near(c, d, want, ids.download(), want_ids, &excused));
  std::printf("[ stats    ] %s: pipeline selections, %lld blocks excused as near-ties\n", c.name.c_str(),
              static_cast<long long>(excused));
}

SparseParams minicpm4() { return SparseParams{}; }
SparseParams small(int kernel, int stride, int block, int init, int window, int topk) {
  SparseParams sp;
  sp.kernel_size = kernel;
  sp.kernel_stride = stride;
  sp.block_size = block;
  sp.init_blocks = init;
  sp.window_size = window;
  sp.topk = topk;
  return sp;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SelectCuda,
    testing::Values(SelectCase{"minicpm4_decode_16k", 32, 2, 128, {16383}, true, minicpm4()},
                    SelectCase{"minicpm4_chunk_at_12k", 32, 2, 128, chunk(12000, 70), true, minicpm4()},
                    SelectCase{"minicpm4_exact", 32, 2, 128, {0, 31, 127, 128, 2000, 9000, 9001}, false, minicpm4()},
                    SelectCase{"small_awkward", 32, 2, 128, {0, 30, 31, 100, 127, 128, 600, 1300, 1301}, true,
                               small(32, 16, 64, 1, 256, 3)},
                    SelectCase{"exact_g3_d64", 6, 2, 64, {5, 63, 64, 500, 900, 4000}, false, small(32, 16, 64, 2, 128, 4)},
                    SelectCase{"halo3_block32_g1", 4, 4, 64, {70, 400, 777, 3000}, true, small(64, 16, 32, 1, 64, 5)}),
    [](const testing::TestParamInfo<SelectCase>& info) { return info.param.name; });

}  // namespace
}  // namespace mnemo::test
