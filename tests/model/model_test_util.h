// Shared by the model tests that build small random-weight models: the tiny config, random token
// streams, all-position logits, and the row-free relative error used as the comparison metric.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "model/llama.h"

namespace mnemo::testing_util {

// 2 layers, 4 query / 2 kv heads, head_dim 16, vocab 97.
inline ModelConfig tiny_config(int64_t max_position_embeddings) {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = max_position_embeddings;
  c.rms_norm_eps = 1e-6;
  return c;
}

inline std::vector<int32_t> random_tokens(int64_t n, uint32_t seed, int32_t vocab = 97) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// Logits of every position of `tokens` on a fresh sequence.
inline Tensor all_logits(LlamaModel& m, const std::vector<int32_t>& tokens) {
  auto seq = m.new_sequence();
  Tensor out;
  const Status s = m.forward(**seq, tokens, &out, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out;
}

// max |a - b| / max |b|; infinity when either holds a NaN.
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    err = std::max(err, std::fabs(x - y));
    scale = std::max(scale, std::fabs(y));
  }
  return err / scale;
}

}  // namespace mnemo::testing_util
