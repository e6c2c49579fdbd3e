// InfLLM-V2 at model level against an independent PyTorch oracle: a MiniCPM4-style checkpoint with
// sparse_config (dense_len 256, topk 4, window 128, block 64) and the logits of every position of a
// 700- and a 1000-token sequence, made by tools/oracle/minicpm_sparse_model.py from
// tools/oracle/infllmv2_oracle.py (float64). Past dense_len the logits depend on which blocks stage 1
// and top-k select; the fixture records that a dense forward, or one slightly wrong selection per row,
// moves them by far more than the tolerance here (cases.json: "sensitivity").
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/file.h"
#include "model/llama.h"

namespace mnemo {
namespace {

namespace fs = std::filesystem;
const char* kRoot = "tests/data/fixtures_sparse";

struct OracleCase {
  std::vector<int32_t> tokens;
  Tensor logits;  // [T, vocab]
  double dense_margin = 0;
};

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (!fs::is_directory(kRoot)) return names;
  for (const auto& e : fs::directory_iterator(kRoot)) {
    if (fs::exists(e.path() / "cases.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<OracleCase> load_cases(const std::string& dir) {
  std::vector<OracleCase> out;
  Result<std::string> text = read_text_file(dir + "/cases.json");
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  if (!text.ok()) return out;
  boost::json::value root = boost::json::parse(*text);
  for (const auto& c : root.at("cases").as_array()) {
    OracleCase oc;
    for (const auto& t : c.at("tokens").as_array()) oc.tokens.push_back(static_cast<int32_t>(t.to_number<int64_t>()));
    Result<Tensor> logits = read_npy(dir + "/" + std::string(c.at("logits").as_string()));
    EXPECT_TRUE(logits.ok()) << logits.status().to_string();
    if (!logits.ok()) continue;
    oc.logits = std::move(*logits);
    oc.dense_margin = c.at("dense_margin").to_number<double>();
    out.push_back(std::move(oc));
  }
  return out;
}

// max |got - want| over a row, relative to the row's largest |want|.
double row_rel_error(const float* got, const float* want, int64_t n) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    err = std::max(err, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(double(want[i])));
  }
  return err / scale;
}

// Largest row error over rows [from, T); fails at the first row above `tol` when tol > 0.
double max_row_error(const Tensor& got, const Tensor& want, int64_t from, double tol, const std::string& what) {
  EXPECT_EQ(got.shape(), want.shape()) << what;
  if (got.shape() != want.shape()) return INFINITY;
  const int64_t vocab = want.dim(1);
  double worst = 0;
  for (int64_t t = from; t < want.dim(0); ++t) {
    const double e = row_rel_error(got.data<float>() + t * vocab, want.data<float>() + t * vocab, vocab);
    if (tol > 0 && e > tol) {
      ADD_FAILURE() << what << ": position " << t << " of " << want.dim(0) << ": row-relative error " << e
                    << " > " << tol;
      return e;
    }
    worst = std::max(worst, e);
  }
  return worst;
}

Tensor run_all(LlamaModel& model, const std::vector<int32_t>& tokens) {
  auto seq = model.new_sequence();
  EXPECT_TRUE(seq.ok()) << seq.status().to_string();
  Tensor logits;
  if (!seq.ok()) return logits;
  Status s = model.forward(**seq, tokens, &logits, /*all_logits=*/true);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return logits;
}

class SparseOracle : public testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return std::string(kRoot) + "/" + GetParam(); }
};

TEST_P(SparseOracle, CheckpointCarriesTheSparseConfig) {
  auto model = LlamaModel::load(dir());
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  ASSERT_TRUE((*model)->sparse().has_value()) << "config.json's sparse_config was not picked up";
  const SparseConfig& s = *(*model)->sparse();
  EXPECT_EQ(s.dense_len, 256);
  EXPECT_EQ(s.topk, 4);
  EXPECT_EQ(s.window_size, 128);
  EXPECT_EQ(s.use_nope, GetParam().find("nope") != std::string::npos);
  const auto cases = load_cases(dir());
  ASSERT_EQ(cases.size(), 2u);
  for (const OracleCase& c : cases) {
    EXPECT_GT(static_cast<int64_t>(c.tokens.size()), 2 * s.dense_len) << "cases must reach well past dense_len";
    EXPECT_GT(c.dense_margin, 1e-2) << "sparse and dense logits must differ, or the fixture proves nothing";
  }
}

TEST_P(SparseOracle, LogitsMatchTheOracleInOneCall) {
  auto model = LlamaModel::load(dir());
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  for (const OracleCase& c : load_cases(dir())) {
    const std::string what = GetParam() + " T=" + std::to_string(c.tokens.size());
    const double e = max_row_error(run_all(**model, c.tokens), c.logits, 0, 1e-4, what);
    std::cout << "[ oracle   ] " << what << " one call: max row-relative error " << e << "\n";
  }
}

TEST_P(SparseOracle, ChunkedPrefillMatchesTheSameOracle) {
  ModelOptions options;
  options.chunk_tokens = 97;  // chunks straddle dense_len (256) and block boundaries
  auto model = LlamaModel::load(dir(), options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  for (const OracleCase& c : load_cases(dir())) {
    const std::string what = GetParam() + " T=" + std::to_string(c.tokens.size()) + " chunk 97";
    const double e = max_row_error(run_all(**model, c.tokens), c.logits, 0, 1e-4, what);
    std::cout << "[ oracle   ] " << what << ": max row-relative error " << e << "\n";
  }
}

TEST_P(SparseOracle, DecodeTailMatchesTheOracle) {
  auto model = LlamaModel::load(dir());
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const auto cases = load_cases(dir());
  ASSERT_FALSE(cases.empty());
  const OracleCase& c = cases.back();
  const int64_t T = static_cast<int64_t>(c.tokens.size()), split = T - 40, vocab = c.logits.dim(1);
  auto seq = model.value()->new_sequence();
  ASSERT_TRUE(seq.ok());
  Tensor part;
  ASSERT_TRUE((*model)->forward(**seq, std::span(c.tokens).first(split), &part, false).ok());
  for (int64_t t = split; t < T; ++t) {
    Tensor one;
    ASSERT_TRUE((*model)->forward(**seq, std::span(c.tokens).subspan(t, 1), &one, false).ok());
    ASSERT_LE(row_rel_error(one.data<float>(), c.logits.data<float>() + t * vocab, vocab), 1e-4)
        << GetParam() << " decode at position " << t;
  }
}

// The fixture is not vacuous on mnemo's side either: run dense (the switch beyond the sequence) and
// the logits past dense_len leave the oracle's by far more than the tolerance.
TEST_P(SparseOracle, DenseAttentionWouldFail) {
  auto sparse = LlamaModel::load(dir());
  ASSERT_TRUE(sparse.ok()) << sparse.status().to_string();
  ModelOptions options;
  options.sparse = *(*sparse)->sparse();
  options.sparse->dense_len = 1 << 20;
  auto dense = LlamaModel::load(dir(), options);
  ASSERT_TRUE(dense.ok()) << dense.status().to_string();
  for (const OracleCase& c : load_cases(dir())) {
    const double e = max_row_error(run_all(**dense, c.tokens), c.logits, 256, 0, GetParam());
    EXPECT_GT(e, 1e-2) << GetParam() << " T=" << c.tokens.size();
  }
}

// A subtler difference is caught too: the tier-2 approximate stage-1 normaliser changes the selection
// of a few dozen rows only (cases.json: sensitivity.approx), and those rows leave the tolerance.
TEST_P(SparseOracle, ApproximateNormaliserWouldFail) {
  ModelOptions options;
  options.approximate_selection_lse = true;
  auto model = LlamaModel::load(dir(), options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  for (const OracleCase& c : load_cases(dir())) {
    const double e = max_row_error(run_all(**model, c.tokens), c.logits, 256, 0, GetParam());
    EXPECT_GT(e, 1e-3) << GetParam() << " T=" << c.tokens.size();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SparseOracle, testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(SparseOracle);

TEST(SparseOracleFixtures, ArePresent) {
  const auto names = fixture_names();
  EXPECT_EQ(names, (std::vector<std::string>{"minicpm4_sparse", "minicpm4_sparse_nope"}))
      << "expected the fixtures of tools/oracle/minicpm_sparse_model.py under " << fs::absolute(kRoot);
}

}  // namespace
}  // namespace mnemo
