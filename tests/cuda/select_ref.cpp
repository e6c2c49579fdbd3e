#include "tests/cuda/select_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "attention/select.h"
#include "core/dtype.h"

namespace mnemo::test {

SelectData make_select_data(const SelectCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const SparseParams& sp = c.sparse;
  SelectData d;
  d.kv_len = *std::max_element(c.q_index.begin(), c.q_index.end()) + 1;
  d.num_blocks = (d.kv_len + sp.block_size - 1) / sp.block_size;
  d.n1 = num_windows(d.kv_len, sp.kernel_size, sp.kernel_stride);
  d.n2 = num_windows(d.kv_len, lse_kernel_size(sp), lse_kernel_stride(sp));
  const int64_t num_q = static_cast<int64_t>(c.q_index.size());
  auto fill = [&](std::vector<uint16_t>* bits, std::vector<float>* f, int64_t n, float stddev) {
    bits->resize(size_t(n));
    f->resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      (*bits)[i] = float_to_bf16(stddev * normal(rng));
      (*f)[i] = bf16_to_float((*bits)[i]);
    }
  };
  fill(&d.q, &d.q_f, num_q * c.num_heads * c.head_dim, 1.5f);
  fill(&d.ck1, &d.ck1_f, int64_t{c.num_kv_heads} * d.n1 * c.head_dim, 1.0f);
  fill(&d.ck2, &d.ck2_f, int64_t{c.num_kv_heads} * d.n2 * c.head_dim, 1.0f);
  d.q_index32.assign(c.q_index.begin(), c.q_index.end());
  d.q_index64.assign(c.q_index.begin(), c.q_index.end());
  d.softmax_scale = 1.0f / std::sqrt(float(c.head_dim));
  return d;
}

std::vector<float> cpu_block_scores(const SelectCase& c, const SelectData& d) {
  const SparseParams& sp = c.sparse;
  BlockScoreParams p;
  p.q = d.q_f.data();
  p.q_index = d.q_index64.data();
  p.num_q = static_cast<int64_t>(c.q_index.size());
  p.num_heads = c.num_heads;
  p.keys = {d.ck1_f.data(), d.n1 * c.head_dim, d.n1, c.num_kv_heads, c.head_dim, sp.kernel_size, sp.kernel_stride};
  if (c.approx) {
    p.lse_keys = {d.ck2_f.data(), d.n2 * c.head_dim, d.n2, c.num_kv_heads, c.head_dim, lse_kernel_size(sp),
                  lse_kernel_stride(sp)};
  }
  p.block_size = sp.block_size;
  p.num_blocks = d.num_blocks;
  p.softmax_scale = d.softmax_scale;
  std::vector<float> scores(size_t(p.num_q * c.num_kv_heads * d.num_blocks), NAN);
  p.block_scores = scores.data();
  const Status s = block_scores_cpu(p);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return scores;
}

void cpu_topk(const SelectCase& c, const SelectData& d, const std::vector<float>& scores, std::vector<int32_t>* ids,
              std::vector<int32_t>* counts) {
  const int64_t num_q = static_cast<int64_t>(c.q_index.size());
  const int max_sel = max_selected_blocks(c.sparse);
  ids->assign(size_t(num_q * c.num_kv_heads * max_sel), 7777);
  counts->assign(size_t(num_q * c.num_kv_heads), 7777);
  BlockTopkParams p;
  p.block_scores = scores.data();
  p.q_index = d.q_index64.data();
  p.num_q = num_q;
  p.num_kv_heads = c.num_kv_heads;
  p.num_blocks = d.num_blocks;
  p.sparse = c.sparse;
  p.max_selected = max_sel;
  p.block_ids = ids->data();
  p.num_selected = counts->data();
  const Status s = select_topk_cpu(p);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

void plant_ties(std::vector<float>* scores, uint32_t seed) {
  std::mt19937 rng(seed ^ 0x71e5u);
  std::uniform_int_distribution<int> pick(0, 15);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  for (float& s : *scores) {
    const int r = pick(rng);
    if (r < 5) s = specials[r];
    else if (r < 11) s = std::round(s * 8.0f) / 8.0f;  // coarse values: many exact ties
  }
}

::testing::AssertionResult check_scores(const SelectCase& c, const std::vector<float>& got,
                                        const std::vector<float>& want, double* max_rel_err) {
  *max_rel_err = 0;
  if (got.size() != want.size()) return ::testing::AssertionFailure() << c.name << ": size " << got.size() << " vs " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - want[i]);
    const double tol = 1e-4 * std::fabs(want[i]) + 1e-6;
    if (!(err <= tol)) {  // NaN fails
      return ::testing::AssertionFailure() << c.name << ": block_scores[" << i << "]: expected " << want[i]
                                           << ", got " << got[i] << " (tolerance " << tol << ")";
    }
    if (want[i] != 0) *max_rel_err = std::max(*max_rel_err, err / std::fabs(want[i]));
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult check_ids_equal(const SelectCase& c, const std::vector<int32_t>& got,
                                           const std::vector<int32_t>& want, const std::vector<int32_t>& got_n,
                                           const std::vector<int32_t>& want_n) {
  const int max_sel = max_selected_blocks(c.sparse);
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i]) {
      return ::testing::AssertionFailure() << c.name << ": block_ids[row " << i / max_sel << ", " << i % max_sel
                                           << "]: expected " << want[i] << ", got " << got[i];
    }
  }
  for (size_t i = 0; i < want_n.size(); ++i) {
    if (got_n[i] != want_n[i]) {
      return ::testing::AssertionFailure() << c.name << ": num_selected[" << i << "]: expected " << want_n[i]
                                           << ", got " << got_n[i];
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult check_ids_near(const SelectCase& c, const SelectData& d, const std::vector<float>& cpu_scores,
                                          const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                                          int64_t* excused) {
  const int max_sel = max_selected_blocks(c.sparse);
  const int64_t rows = static_cast<int64_t>(c.q_index.size()) * c.num_kv_heads;
  *excused = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* g = got.data() + r * max_sel;
    const int32_t* w = want.data() + r * max_sel;
    const float* s = cpu_scores.data() + r * d.num_blocks;
    const int64_t t = c.q_index[r / c.num_kv_heads];
    const int64_t bq = t / c.sparse.block_size;
    const int64_t local_begin = std::max<int64_t>(std::min<int64_t>(c.sparse.init_blocks, bq + 1), bq - local_blocks(c.sparse));
    std::vector<int32_t> gs, ws;
    for (int i = 0; i < max_sel; ++i) {
      if (g[i] >= 0) gs.push_back(g[i]);
      if (w[i] >= 0) ws.push_back(w[i]);
    }
    if (gs.size() != ws.size() || !std::is_sorted(gs.begin(), gs.end())) {
      return ::testing::AssertionFailure() << c.name << ": row " << r << ": expected " << ws.size()
                                           << " ascending ids, got " << gs.size();
    }
    if (gs == ws) continue;
    // Boundary: the lowest CPU score among the CPU's chosen (non-forced) blocks.
    float boundary = std::numeric_limits<float>::infinity();
    for (int32_t b : ws) {
      if (b >= c.sparse.init_blocks && b < local_begin) boundary = std::min(boundary, s[b]);
    }
    std::vector<int32_t> diff;
    std::set_symmetric_difference(gs.begin(), gs.end(), ws.begin(), ws.end(), std::back_inserter(diff));
    for (int32_t b : diff) {
      const double tol = 1e-4 * std::fabs(boundary) + 1e-6;
      if (!(std::fabs(double(s[b]) - boundary) <= tol)) {
        return ::testing::AssertionFailure() << c.name << ": row " << r << ": block " << b
                                             << " differs between GPU and CPU selections with CPU score " << s[b]
                                             << ", not a tie with the boundary score " << boundary;
      }
      ++*excused;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace mnemo::test
