// Sampler tests: greedy, seeds, each filter alone and in transformers' order, and chi-square checks
// that draws follow the intended distribution (fixed seeds, so the outcome is deterministic; the
// bounds sit where a correct sampler fails with probability < 1e-5 and a 1% error in any
// probability fails for certain).
#include "model/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

namespace mnemo {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

std::vector<float> random_logits(int64_t vocab, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> l(vocab);
  for (float& x : l) x = normal(rng);
  return l;
}

// Draw counts per token over `draws` samples.
std::vector<int64_t> histogram(const SamplingParams& params, const std::vector<float>& logits,
                               int draws) {
  Sampler s(params);
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    const int32_t id = s.sample(logits.data(), static_cast<int64_t>(logits.size()), {});
    EXPECT_GE(id, 0);
    if (id >= 0) ++counts[id];
  }
  return counts;
}

// Pearson's statistic of `counts` against `expected` probabilities (zero-probability tokens must
// have zero counts).
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& expected) {
  const double n = static_cast<double>(std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  double chi2 = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double e = n * expected[i];
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

std::vector<double> normalised(std::vector<double> p) {
  const double sum = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= sum;
  return p;
}

const std::vector<double> kProbs = {0.5, 0.25, 0.15, 0.07, 0.03};
constexpr int kDraws = 200000;

TEST(Sampler, GreedyIsArgmaxWithLowestIndexOnTies) {
  SamplingParams greedy;  // temperature 0
  Sampler s(greedy);
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto l = random_logits(1000, seed);
    EXPECT_EQ(s.sample(l.data(), 1000, {}), std::max_element(l.begin(), l.end()) - l.begin());
  }
  const std::vector<float> ties = {1.0f, 3.0f, 2.0f, 3.0f, 3.0f};
  EXPECT_EQ(s.sample(ties.data(), 5, {}), 1);
  const std::vector<float> nan_first = {kNaN, 1.0f, 2.0f, kNaN};
  EXPECT_EQ(s.sample(nan_first.data(), 4, {}), 2);
}

TEST(Sampler, NoNumberAboveMinusInfinityGivesMinusOne) {
  const std::vector<float> none = {kNaN, -kInf, kNaN};
  for (float t : {0.0f, 1.0f}) {
    Sampler s({.temperature = t});
    EXPECT_EQ(s.sample(none.data(), 3, {}), -1);
    EXPECT_EQ(s.sample(none.data(), 0, {}), -1);
  }
  const std::vector<float> one = {kNaN, -kInf, -5.0f, kNaN};
  Sampler s({.temperature = 1.0f, .seed = 3});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.sample(one.data(), 4, {}), 2);
}

TEST(Sampler, PositiveInfinityLogitsShareAllTheProbability) {
  const std::vector<float> l = {1.0f, kInf, 2.0f, kInf};
  const auto counts = histogram({.temperature = 1.0f, .seed = 5}, l, 20000);
  EXPECT_LT(chi_square(counts, {0, 0.5, 0, 0.5}), 25.0);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const auto l = random_logits(500, 1, 1.0f);
  const SamplingParams params{.temperature = 1.0f, .top_k = 50, .top_p = 0.95f, .seed = 42};
  Sampler a(params), b(params);
  SamplingParams other = params;
  other.seed = 43;
  Sampler c(other);
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    const int32_t x = a.sample(l.data(), 500, {});
    EXPECT_EQ(x, b.sample(l.data(), 500, {}));
    differ += x != c.sample(l.data(), 500, {});
  }
  EXPECT_GT(differ, 500);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  for (uint32_t seed = 0; seed < 10; ++seed) {
    const auto l = random_logits(3000, seed, 1.0f);
    const int64_t argmax = std::max_element(l.begin(), l.end()) - l.begin();
    Sampler k1({.temperature = 1.5f, .top_k = 1, .seed = seed});
    Sampler p0({.temperature = 1.5f, .top_p = 1e-6f, .seed = seed});
    for (int i = 0; i < 50; ++i) {
      EXPECT_EQ(k1.sample(l.data(), 3000, {}), argmax);
      EXPECT_EQ(p0.sample(l.data(), 3000, {}), argmax);
    }
  }
}

TEST(Sampler, TemperatureOneDrawsMatchTheSoftmax) {
  auto l = log_probs(kProbs);
  l.push_back(-kInf);  // never drawn
  l.push_back(kNaN);   // never drawn
  std::vector<double> want = kProbs;
  want.push_back(0.0);
  want.push_back(0.0);
  const auto counts = histogram({.temperature = 1.0f, .seed = 11}, l, kDraws);
  EXPECT_LT(chi_square(counts, want), 30.0);  // 4 degrees of freedom: P(> 30) = 5e-6
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  const auto l = log_probs(kProbs);
  for (float t : {0.5f, 2.0f}) {
    std::vector<double> want;
    for (double p : kProbs) want.push_back(std::pow(p, 1.0 / t));
    const auto counts = histogram({.temperature = t, .seed = 12}, l, kDraws);
    EXPECT_LT(chi_square(counts, normalised(want)), 30.0) << "temperature " << t;
  }
}

TEST(Sampler, TopKTopPAndMinPRenormaliseWhatTheyKeep) {
  const auto l = log_probs(kProbs);
  struct Case {
    SamplingParams params;
    std::vector<double> want;
    double bound;  // P(chi2 > bound) < 1e-5 for the degrees of freedom left
  };
  const std::vector<Case> cases = {
      {{.temperature = 1.0f, .top_k = 2, .seed = 21}, {0.5, 0.25, 0, 0, 0}, 20.0},
      {{.temperature = 1.0f, .top_p = 0.8f, .seed = 22}, {0.5, 0.25, 0.15, 0, 0}, 25.0},
      {{.temperature = 1.0f, .top_p = 0.7f, .seed = 23}, {0.5, 0.25, 0, 0, 0}, 20.0},
      {{.temperature = 1.0f, .min_p = 0.2f, .seed = 24}, {0.5, 0.25, 0.15, 0, 0}, 25.0},
      {{.temperature = 1.0f, .top_k = 4, .min_p = 0.1f, .seed = 25},
       {0.5, 0.25, 0.15, 0.07, 0},
       28.0},
  };
  for (const auto& c : cases) {
    const auto counts = histogram(c.params, l, kDraws);
    EXPECT_LT(chi_square(counts, normalised(c.want)), c.bound)
        << "top_k " << c.params.top_k << " top_p " << c.params.top_p << " min_p " << c.params.min_p;
  }
}

// transformers' order: temperature before min-p, top-k before top-p.
TEST(Sampler, FiltersApplyInTransformersOrder) {
  // After top-k 2 the kept probabilities are 0.57 and 0.43, so top-p 0.5 keeps only the first;
  // top-p on the full distribution would have kept two.
  const auto l = log_probs({0.4, 0.3, 0.2, 0.1});
  const auto k_then_p =
      histogram({.temperature = 1.0f, .top_k = 2, .top_p = 0.5f, .seed = 31}, l, 2000);
  EXPECT_EQ(k_then_p[0], 2000);
  // At temperature 2, token 1 has 0.77 of the top probability and token 2 0.63: min_p 0.7 keeps
  // token 1 only because temperature came first (unscaled ratios are 0.6 and 0.4).
  const auto l2 = log_probs({0.5, 0.3, 0.2});
  const auto t_then_min = histogram({.temperature = 2.0f, .min_p = 0.7f, .seed = 32}, l2, 20000);
  EXPECT_GT(t_then_min[1], 5000);
  EXPECT_EQ(t_then_min[2], 0);
}

// Top-p on a large vocabulary only ever returns tokens of the nucleus computed the slow way.
TEST(Sampler, TopPOnALargeVocabularyStaysInTheNucleus) {
  const int64_t vocab = 50000;
  const auto l = random_logits(vocab, 99, 2.0f);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  double total = 0.0;
  for (float x : l) total += std::exp(static_cast<double>(x) - l[order[0]]);
  std::vector<bool> in_nucleus(vocab, false);
  double above = 0.0;
  size_t n = 0;
  for (; n < order.size() && (n == 0 || above < 0.9 * total); ++n) {
    in_nucleus[order[n]] = true;
    above += std::exp(static_cast<double>(l[order[n]]) - l[order[0]]);
  }
  ASSERT_GT(n, 10u);
  Sampler s({.temperature = 1.0f, .top_p = 0.9f, .seed = 7});
  std::vector<bool> seen(vocab, false);
  for (int i = 0; i < 1000; ++i) {
    const int32_t id = s.sample(l.data(), vocab, {});
    ASSERT_TRUE(id >= 0 && in_nucleus[id]) << id;
    seen[id] = true;
  }
  EXPECT_GT(std::count(seen.begin(), seen.end(), true), 5);
}

TEST(Sampler, RepetitionPenaltyFollowsTransformers) {
  Sampler s({.repetition_penalty = 1.5f});
  const std::vector<float> pos = {2.0f, 1.8f, -1.0f};  // 2.0 / 1.5 = 1.33 < 1.8
  const std::vector<int32_t> seen0 = {0};
  EXPECT_EQ(s.sample(pos.data(), 3, {}), 0);
  EXPECT_EQ(s.sample(pos.data(), 3, seen0), 1);
  const std::vector<float> neg = {-1.0f, -1.2f};  // -1.0 * 1.5 = -1.5 < -1.2
  EXPECT_EQ(s.sample(neg.data(), 2, seen0), 1);
  // A token seen three times is penalised once: 2.0 / 1.2 = 1.67 > 1.5 (three times: 1.16).
  Sampler once({.repetition_penalty = 1.2f});
  const std::vector<float> l = {2.0f, 1.5f};
  const std::vector<int32_t> thrice = {0, 0, 0, 7, -3};  // out-of-range ids are ignored
  EXPECT_EQ(once.sample(l.data(), 2, thrice), 0);
  // A penalty below 1 favours seen tokens.
  Sampler favour({.repetition_penalty = 0.5f});
  const std::vector<int32_t> seen1 = {1};
  EXPECT_EQ(favour.sample(pos.data(), 3, seen1), 1);
  // The caller's logits are not modified.
  EXPECT_EQ(pos[0], 2.0f);
}

TEST(Sampler, InvalidParamsNameTheFieldAndValue) {
  EXPECT_TRUE(SamplingParams{}.validate().ok());
  EXPECT_TRUE((SamplingParams{
      .temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f, .repetition_penalty = 1.1f}
                   .validate()
                   .ok()));
  const std::vector<std::pair<SamplingParams, std::string>> bad = {
      {{.temperature = -0.5f}, "temperature"},
      {{.temperature = kNaN}, "temperature"},
      {{.temperature = kInf}, "temperature"},
      {{.top_k = -1}, "top_k"},
      {{.top_p = 0.0f}, "top_p"},
      {{.top_p = 1.5f}, "top_p"},
      {{.top_p = kNaN}, "top_p"},
      {{.min_p = -0.1f}, "min_p"},
      {{.min_p = 2.0f}, "min_p"},
      {{.repetition_penalty = 0.0f}, "repetition_penalty"},
      {{.repetition_penalty = -1.0f}, "repetition_penalty"},
  };
  for (const auto& [params, field] : bad) {
    const Status st = params.validate();
    ASSERT_FALSE(st.ok()) << field;
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(field + " must"), std::string::npos) << st.message();
    auto created = Sampler::create(params);
    EXPECT_FALSE(created.ok());
  }
  const Status st = SamplingParams{.top_p = 1.5f}.validate();
  EXPECT_NE(st.message().find("got 1.5"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace mnemo
