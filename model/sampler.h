// Sampler: picks the next token from one row of logits.
//
// Filters run in Hugging Face transformers' order: repetition penalty -> temperature -> top-k ->
// top-p -> min-p, then one draw from the softmax of what is left. Each sampler owns its random
// generator (std::mt19937_64 seeded with `seed`, turned into uniforms by hand rather than through
// std::uniform_real_distribution, whose output differs between standard libraries), so a seed
// gives the same tokens on every platform and sessions never share state.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "core/status.h"

namespace mnemo {

struct SamplingParams {
  // Divides the logits; 0 picks the largest logit (greedy). Must be >= 0. Default: 0.
  float temperature = 0.0f;
  // Keeps the k largest logits (ties with the k-th kept too, as transformers). 0 = off. Default: 0.
  int top_k = 0;
  // Keeps the most probable tokens until their probability reaches top_p; in (0, 1]. Default: 1.
  float top_p = 1.0f;
  // Drops tokens less probable than min_p times the most probable one; in [0, 1]. Default: 0.
  float min_p = 0.0f;
  // transformers' repetition penalty over the tokens in the history: a logit > 0 is divided by
  // it, otherwise multiplied. 1 = off; must be > 0. Default: 1.
  float repetition_penalty = 1.0f;
  // Seed of the sampler's own random generator. Default: 0.
  uint64_t seed = 0;

  // InvalidArgument naming the field and its value when a field is out of range or not finite.
  Status validate() const;
};

class Sampler {
 public:
  // Precondition: params.validate() is OK (create() checks it).
  explicit Sampler(const SamplingParams& params);
  static Result<Sampler> create(const SamplingParams& params);

  // The next token for `logits` [vocab] given the tokens so far (`history`, ids outside
  // [0, vocab) ignored). Greedy returns the lowest index among equal maxima. NaN logits are never
  // picked; -1 when no logit is a number above -inf.
  int32_t sample(const float* logits, int64_t vocab, std::span<const int32_t> history);

  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;
    int32_t id;
    float weight;  // exp((logit - max logit) / temperature): unnormalised probability, top = 1
  };
  double uniform();  // [0, 1), 53 random bits
  float kth_largest(const float* x, int64_t vocab, size_t k);
  void top_p_filter(double total_weight);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> penalised_;   // [vocab] logits after the repetition penalty
  std::vector<float> heap_;        // [top_k] min-heap of the largest logits
  std::vector<Candidate> cands_;   // tokens still in the running, ids ascending
  std::vector<Candidate> ranked_;  // top-p's copy of cands_, partially ranked
};

}  // namespace mnemo
