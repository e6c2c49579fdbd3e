// The C++ InfLLM-V2 pipeline against fixtures from tools/oracle/infllmv2_oracle.py, an independent
// PyTorch float64 implementation (masked matrices, max_pool1d, stable sort). Per case: stage-1 block
// scores (exact and tier-2 normaliser), top-k selections (identical except where the oracle's own scores
// tie to within rounding), and stage-2 outputs and LSE over the oracle's selection, to 1e-5 relative.
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "attention/sparse.h"
#include "core/file.h"
#include "sparse_test_util.h"

namespace mnemo {
namespace {

namespace fs = std::filesystem;
const char* kRoot = "tests/data/infllmv2";

std::vector<std::string> case_dirs() {
  std::vector<std::string> dirs;
  if (!fs::is_directory(kRoot)) return dirs;
  for (const auto& e : fs::directory_iterator(kRoot)) {
    if (fs::exists(e.path() / "meta.json")) dirs.push_back(e.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

Tensor load(const std::string& dir, const std::string& name) {
  Result<Tensor> t = read_npy(dir + "/" + name + ".npy");
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(*t) : Tensor();
}

// Largest |got - want| over a row of n, relative to the row's largest |want|.
double row_rel_error(const float* got, const float* want, int64_t n) {
  double err = 0, scale = 1e-30;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(got[i])) return INFINITY;
    err = std::max(err, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(double(want[i])));
  }
  return err / scale;
}

void check_case(const std::string& dir) {
  const boost::json::object meta = boost::json::parse(*read_text_file(dir + "/meta.json")).as_object();
  auto num = [&](const char* k) { return meta.at(k).to_number<int64_t>(); };
  const int heads = int(num("heads")), hkv = int(num("kv_heads")), d = int(num("head_dim"));
  const int64_t kv_len = num("kv_len");
  SparseParams sp;
  sp.kernel_size = int(num("kernel_size"));
  sp.kernel_stride = int(num("kernel_stride"));
  sp.block_size = int(num("block_size"));
  sp.init_blocks = int(num("init_blocks"));
  sp.window_size = int(num("window_size"));
  sp.topk = int(num("topk"));
  sp.use_nope = meta.at("use_nope").as_bool();
  const Tensor k = load(dir, "k"), v = load(dir, "v"), q = load(dir, "q"), q_nope = load(dir, "q_nope");
  const Tensor qi = load(dir, "q_index"), out_want = load(dir, "out"), lse_want = load(dir, "lse");
  ASSERT_FALSE(testing::Test::HasFailure());
  ASSERT_EQ(k.shape(), (Shape{kv_len, hkv, d}));
  const int64_t nq = qi.dim(0);
  std::vector<int64_t> q_index(qi.data<int64_t>(), qi.data<int64_t>() + nq);

  std::mt19937 rng(1);
  testing_util::TestKv tkv(hkv, d, sp.block_size, kv_len, &rng);
  for (int64_t j = 0; j < kv_len; ++j) {
    for (int g = 0; g < hkv; ++g) {
      std::copy_n(k.data<float>() + (j * hkv + g) * d, d, tkv.k(j, g));
      std::copy_n(v.data<float>() + (j * hkv + g) * d, d, tkv.v(j, g));
    }
  }
  RopeTable rope(testing_util::make_rope(d, meta.at("rope_theta").to_number<double>()));
  rope.ensure(kv_len);
  const testing_util::Tiers tiers = testing_util::compress_all(tkv.kv(), sp, &rope);
  const int64_t nb = tkv.kv().num_blocks;
  const float* q_s1 = sp.use_nope ? q_nope.data<float>() : q.data<float>();

  std::vector<int32_t> approx_ids;
  for (const std::string mode : {"exact", "approx"}) {
    SCOPED_TRACE(mode);
    const Tensor scores_want = load(dir, "scores_" + mode), ids_want = load(dir, "ids_" + mode);
    ASSERT_EQ(scores_want.shape(), (Shape{nq, hkv, nb}));
    std::vector<float> scores(nq * hkv * nb, std::nanf(""));
    BlockScoreParams s;
    s.q = q_s1;
    s.q_index = q_index.data();
    s.num_q = nq;
    s.num_heads = heads;
    s.keys = tiers.tier1.view();
    if (mode == "approx") s.lse_keys = tiers.tier2.view();
    s.block_size = sp.block_size;
    s.num_blocks = nb;
    s.softmax_scale = float(meta.at("softmax_scale").to_number<double>());
    s.block_scores = scores.data();
    ASSERT_TRUE(block_scores_cpu(s).ok());
    for (int64_t r = 0; r < nq * hkv; ++r) {
      ASSERT_LE(row_rel_error(scores.data() + r * nb, scores_want.data<float>() + r * nb, nb), 1e-5)
          << "block scores of query " << r / hkv << " (t " << q_index[r / hkv] << "), kv head " << r % hkv;
    }
    const int max_sel = int(ids_want.dim(2));
    ASSERT_EQ(max_sel, max_selected_blocks(sp));
    std::vector<int32_t> ids(nq * hkv * max_sel);
    BlockTopkParams t;
    t.block_scores = scores.data();
    t.q_index = q_index.data();
    t.num_q = nq;
    t.num_kv_heads = hkv;
    t.num_blocks = nb;
    t.sparse = sp;
    t.max_selected = max_sel;
    t.block_ids = ids.data();
    ASSERT_TRUE(select_topk_cpu(t).ok());
    int64_t differing = 0;
    for (int64_t r = 0; r < nq * hkv; ++r) {
      const int32_t* want = ids_want.data<int32_t>() + r * max_sel;
      const int32_t* got = ids.data() + r * max_sel;
      if (std::equal(got, got + max_sel, want)) continue;
      ++differing;  // allowed only between blocks whose oracle scores tie to within rounding
      std::set<int32_t> a(got, got + max_sel), b(want, want + max_sel);
      ASSERT_EQ(a.size(), b.size()) << "row " << r;
      const float* sw = scores_want.data<float>() + r * nb;
      for (int32_t x : a) {
        if (b.count(x)) continue;
        for (int32_t y : b) {
          if (a.count(y)) continue;
          ASSERT_NEAR(sw[x], sw[y], 1e-5 * std::fabs(sw[y])) << "row " << r << ": chose " << x << ", oracle " << y;
        }
      }
    }
    std::cout << "[ oracle ] " << dir << " " << mode << ": " << nq * hkv << " selection rows, " << differing
              << " differ by near-ties\n";
    if (mode == "approx") approx_ids.assign(ids_want.data<int32_t>(), ids_want.data<int32_t>() + nq * hkv * max_sel);
  }

  std::vector<float> out(nq * heads * d, std::nanf("")), lse(nq * heads, std::nanf(""));
  SparseAttentionParams p;
  p.q = q.data<float>();
  p.q_index = q_index.data();
  p.num_q = nq;
  p.num_heads = heads;
  p.kv = tkv.kv();
  p.key_rope = &rope;
  p.softmax_scale = float(meta.at("softmax_scale").to_number<double>());
  p.block_ids = approx_ids.data();
  p.max_selected = max_selected_blocks(sp);
  p.out = out.data();
  p.lse = lse.data();
  ASSERT_TRUE(sparse_attention_cpu(p).ok());
  for (int64_t r = 0; r < nq * heads; ++r) {
    ASSERT_LE(row_rel_error(out.data() + r * d, out_want.data<float>() + r * d, d), 1e-5) << "output row " << r;
    ASSERT_NEAR(lse[r], lse_want.data<float>()[r], 1e-5 * std::max(1.0f, std::fabs(lse_want.data<float>()[r])));
  }
}

TEST(InfllmV2Oracle, ReproducesSelectionsAndOutputs) {
  const std::vector<std::string> dirs = case_dirs();
  if (dirs.empty()) {
    GTEST_SKIP() << "no fixtures under " << kRoot
                 << ": generate them with tools/oracle/infllmv2_oracle.py (PyTorch) and unpack the tar.gz there";
  }
  for (const std::string& dir : dirs) {
    SCOPED_TRACE(dir);
    check_case(dir);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace mnemo
