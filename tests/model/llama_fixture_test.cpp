// mnemo's forward pass against logits recorded by transformers (tools/fixtures/make_model_fixtures.py)
// on tiny random-weight checkpoints of every supported family. The oracle is code we did not write.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/file.h"
#include "model/llama.h"
#include "tests/model/fixture_util.h"
#include "model/rope_scaling.h"

namespace mnemo {
namespace {

namespace fs = std::filesystem;
const char* kFixtureRoot = "tests/data/fixtures";

using testing_util::FixtureCase;
using testing_util::load_cases;

std::vector<std::string> fixture_names() { return testing_util::fixture_names(kFixtureRoot); }

// Largest |got - want| over a row, relative to the row's largest |want|.
double max_rel_error(const float* got, const float* want, int64_t n) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(got[i])) return INFINITY;
    err = std::max(err, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(double(want[i])));
  }
  return err / scale;
}

void expect_matches(const Tensor& got, const FixtureCase& c, const std::string& what) {
  ASSERT_EQ(got.shape(), c.logits.shape()) << what;
  const int64_t vocab = c.logits.dim(1);
  for (int64_t t = 0; t < c.logits.dim(0); ++t) {
    const double e = max_rel_error(got.data<float>() + t * vocab, c.logits.data<float>() + t * vocab, vocab);
    ASSERT_LE(e, 1e-4) << what << ": position " << t << " of " << c.logits.dim(0);
  }
}

class TransformersFixture : public testing::TestWithParam<std::string> {};

TEST_P(TransformersFixture, LogitsMatchTransformersInOneCall) {
  const std::string dir = std::string(kFixtureRoot) + "/" + GetParam();
  auto model = LlamaModel::load(dir);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  for (const FixtureCase& c : load_cases(dir)) {
    auto seq = (*model)->new_sequence();
    ASSERT_TRUE(seq.ok());
    Tensor logits;
    Status s = (*model)->forward(**seq, c.tokens, &logits, /*all_logits=*/true);
    ASSERT_TRUE(s.ok()) << s.to_string();
    expect_matches(logits, c, GetParam() + " T=" + std::to_string(c.tokens.size()));
  }
}

// Prefill in odd-sized chunks, then decode one token at a time: the same logits as one call. Ropes that
// depend on the stream length (dynamic NTK, longrope) legitimately differ from a one-shot forward.
TEST_P(TransformersFixture, ChunkedPrefillAndDecodeMatchTransformers) {
  const std::string dir = std::string(kFixtureRoot) + "/" + GetParam();
  ModelOptions options;
  options.chunk_tokens = 7;
  auto model = LlamaModel::load(dir, options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  if (rope_depends_on_length((*model)->config())) GTEST_SKIP() << "rope depends on the stream length";
  for (const FixtureCase& c : load_cases(dir)) {
    auto seq = (*model)->new_sequence();
    ASSERT_TRUE(seq.ok());
    const int64_t split = static_cast<int64_t>(c.tokens.size()) * 2 / 3;
    const int64_t vocab = c.logits.dim(1);
    Tensor all = Tensor::zeros(c.logits.shape());
    if (split > 0) {
      Tensor part;
      ASSERT_TRUE((*model)->forward(**seq, std::span(c.tokens).first(split), &part, true).ok());
      std::copy_n(part.data<float>(), split * vocab, all.data<float>());
    }
    for (int64_t t = split; t < static_cast<int64_t>(c.tokens.size()); ++t) {
      Tensor one;
      ASSERT_TRUE((*model)->forward(**seq, std::span(c.tokens).subspan(t, 1), &one, false).ok());
      std::copy_n(one.data<float>(), vocab, all.data<float>() + t * vocab);
    }
    expect_matches(all, c, GetParam() + " chunked T=" + std::to_string(c.tokens.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransformersFixture, testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TransformersFixture);

TEST(TransformersFixtures, ArePresent) {
  EXPECT_GE(fixture_names().size(), 7u) << "expected the fixtures of tools/fixtures/make_model_fixtures.py under "
                                        << fs::absolute(kFixtureRoot);
}

}  // namespace
}  // namespace mnemo
