// LlamaModel::fill_synthetic_kv (the benchmarks' instant long context): the sequence grows by exactly
// the requested tokens, the same seed gives the same context (same logits after it), a different seed
// a different one, representatives are built (a sparse model then decodes from selection), and a
// budget error leaves the sequence unchanged.
#include <gtest/gtest.h>

#include "model/llama.h"
#include "tests/model/model_test_util.h"

namespace mnemo {
namespace {

Tensor logits_after_fill(LlamaModel& m, int64_t fill, uint64_t seed) {
  auto seq = m.new_sequence();
  EXPECT_TRUE(seq.ok());
  const Status s = m.fill_synthetic_kv(**seq, fill, seed);
  EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ((*seq)->length(), fill);
  const std::vector<int32_t> prompt = testing_util::random_tokens(5, 3);
  Tensor out;
  EXPECT_TRUE(m.forward(**seq, prompt, &out).ok());
  EXPECT_EQ((*seq)->length(), fill + 5);
  return out;
}

TEST(SyntheticKv, DeterministicPerSeedAndSparseDecodesFromIt) {
  ModelConfig config = testing_util::tiny_config(8192);
  SparseConfig sparse;
  sparse.kernel_size = 32;
  sparse.kernel_stride = 16;
  sparse.block_size = 64;
  sparse.window_size = 128;
  sparse.topk = 2;
  sparse.dense_len = 256;
  ModelOptions options;
  options.sparse = sparse;
  options.chunk_tokens = 300;  // the fill runs in several chunks
  auto model = LlamaModel::from_weights(config, random_model_weights(config, 3), options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const Tensor a = logits_after_fill(**model, 1000, 9), b = logits_after_fill(**model, 1000, 9);
  const Tensor c = logits_after_fill(**model, 1000, 10);
  EXPECT_EQ(testing_util::max_rel_diff(a, b), 0.0);
  EXPECT_GT(testing_util::max_rel_diff(a, c), 1e-3) << "another seed should give another context";
}

TEST(SyntheticKv, OutOfBudgetLeavesTheSequenceUnchanged) {
  ModelConfig config = testing_util::tiny_config(8192);
  ModelOptions options;
  options.block_tokens = 16;
  options.kv_budget_tokens = 64;  // 4 blocks of every layer
  options.host_budget_bytes = 8 * 4096;  // 8 host slots: two chunks of sealed blocks, then full
  options.chunk_tokens = 32;
  auto model = LlamaModel::from_weights(config, random_model_weights(config, 3), options);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto seq = (*model)->new_sequence();
  ASSERT_TRUE(seq.ok());
  const Status s = (*model)->fill_synthetic_kv(**seq, 500, 1);
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
  EXPECT_EQ((*seq)->length() % 32, 0) << "whole chunks only";
  EXPECT_LT((*seq)->length(), 500);
  EXPECT_EQ((*model)->store().length((*seq)->id()).value(), (*seq)->length());
}

}  // namespace
}  // namespace mnemo
