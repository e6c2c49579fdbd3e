// The bounded position policy: equal to exact while the stream fits the window; past the model's
// max_position_embeddings it keeps running with distances capped at the window; its sparse form
// equals its dense form when the selection covers every block; chunking does not matter.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/llama.h"
#include "tests/model/model_test_util.h"

namespace mnemo {
namespace {

ModelConfig tiny_config() { return testing_util::tiny_config(256); }

std::unique_ptr<LlamaModel> make(PositionPolicy policy, int64_t window, std::optional<SparseConfig> sparse = {},
                                 int64_t chunk = 2048) {
  ModelOptions o;
  o.positions = policy;
  o.bounded_window = window;
  o.sparse = sparse;
  o.chunk_tokens = chunk;
  o.kv_budget_tokens = 4096;
  const ModelConfig c = tiny_config();
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 21, 0.2f), o);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(*m) : nullptr;
}

std::vector<int32_t> tokens(int64_t n) { return testing_util::random_tokens(n, 3); }
Tensor logits(LlamaModel& m, const std::vector<int32_t>& t) { return testing_util::all_logits(m, t); }
double max_rel(const Tensor& a, const Tensor& b) { return testing_util::max_rel_diff(a, b); }

TEST(BoundedPositions, EqualExactWhileTheStreamFitsTheWindow) {
  const auto t = tokens(200);
  EXPECT_LE(max_rel(logits(*make(PositionPolicy::kBounded, 256), t), logits(*make(PositionPolicy::kExact, 0), t)),
            1e-6);
}

TEST(BoundedPositions, DifferFromExactPastTheWindow) {
  const auto t = tokens(400);
  Tensor b = logits(*make(PositionPolicy::kBounded, 128), t), e = logits(*make(PositionPolicy::kExact, 0), t);
  EXPECT_LE(max_rel(b.rows(0, 128), e.rows(0, 128)), 1e-6);
  EXPECT_GT(max_rel(b.rows(300, 400), e.rows(300, 400)), 1e-3);
}

TEST(BoundedPositions, RunFarPastMaxPositionEmbeddingsAndChunkingDoesNotMatter) {
  const auto t = tokens(1500);  // ~6x the model's 256 positions
  Tensor whole = logits(*make(PositionPolicy::kBounded, 128), t);
  Tensor chunked = logits(*make(PositionPolicy::kBounded, 128, {}, 77), t);
  for (int64_t i = 0; i < whole.numel(); ++i) ASSERT_TRUE(std::isfinite(whole.data<float>()[i]));
  EXPECT_LE(max_rel(whole, chunked), 1e-5);  // rotation offsets differ, relative positions do not
}

TEST(BoundedPositions, SparseMemoryEqualsDenseMemoryWhenTheSelectionCoversEveryBlock) {
  SparseConfig s;
  s.window_size = 128;
  s.topk = 64;
  s.dense_len = -1;
  const auto t = tokens(900);
  EXPECT_LE(max_rel(logits(*make(PositionPolicy::kBounded, 128, s), t), logits(*make(PositionPolicy::kBounded, 128), t)),
            1e-5);
}

TEST(BoundedPositions, SparseMemoryWithASmallBudgetStillRunsAndDecodes) {
  SparseConfig s;
  s.window_size = 128;
  s.topk = 2;
  s.dense_len = 256;
  auto m = make(PositionPolicy::kBounded, 128, s, 64);
  const auto t = tokens(1200);
  auto seq = m->new_sequence();
  Tensor out;
  ASSERT_TRUE(m->forward(**seq, t, &out).ok());
  for (int i = 0; i < 20; ++i) {
    const int32_t one[1] = {int32_t(i % 97)};
    ASSERT_TRUE(m->forward(**seq, one, &out).ok());
  }
  EXPECT_EQ((*seq)->length(), 1220);
}

}  // namespace
}  // namespace mnemo
