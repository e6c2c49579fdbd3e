// Sliding-window attention (Mistral's `sliding_window`) through the blocked KV: a long prefill chunk
// must see, for every query, the keys of its own window — also those of blocks before the last
// query's window — so one call equals token-by-token decode.
#include <gtest/gtest.h>

#include "model/llama.h"
#include "tests/model/model_test_util.h"

namespace mnemo {
namespace {

TEST(SlidingWindow, OneLongChunkEqualsTokenByToken) {
  ModelConfig config = testing_util::tiny_config(4096);
  config.sliding_window = 20;
  ModelOptions options;
  options.block_tokens = 16;
  auto model = LlamaModel::from_weights(config, random_model_weights(config, 11), options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const std::vector<int32_t> tokens = testing_util::random_tokens(100, 5);
  const Tensor once = testing_util::all_logits(**model, tokens);
  auto seq = (*model)->new_sequence();
  ASSERT_TRUE(seq.ok());
  const int64_t vocab = config.vocab_size;
  Tensor steps = Tensor::zeros({100, vocab});
  for (int64_t t = 0; t < 100; ++t) {
    Tensor one;
    ASSERT_TRUE((*model)->forward(**seq, std::span(tokens).subspan(t, 1), &one).ok());
    std::copy_n(one.data<float>(), vocab, steps.data<float>() + t * vocab);
  }
  EXPECT_LE(testing_util::max_rel_diff(once, steps), 1e-5);
}

}  // namespace
}  // namespace mnemo
