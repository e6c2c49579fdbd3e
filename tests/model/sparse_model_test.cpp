// InfLLM-V2 sparse attention inside the model: sparse equals dense when the budget covers every
// block, the dense/sparse switch is decided per query (chunking never changes logits), and a small
// budget really changes what is attended.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "model/llama.h"
#include "tests/model/model_test_util.h"

namespace mnemo {
namespace {

using testing_util::max_rel_diff;
using testing_util::random_tokens;

ModelConfig tiny_config() { return testing_util::tiny_config(4096); }

std::unique_ptr<LlamaModel> make_model(std::optional<SparseConfig> sparse, int64_t chunk = 2048) {
  ModelOptions o;
  o.sparse = sparse;
  o.chunk_tokens = chunk;
  o.kv_budget_tokens = 8192;
  const ModelConfig c = tiny_config();
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 11, 0.2f), o);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? std::move(*m) : nullptr;
}

Tensor logits_of(LlamaModel& m, const std::vector<int32_t>& tokens) { return testing_util::all_logits(m, tokens); }

SparseConfig small_sparse(int topk) {
  SparseConfig s;
  s.kernel_size = 32;
  s.kernel_stride = 16;
  s.block_size = 64;
  s.init_blocks = 1;
  s.window_size = 128;  // 2 local blocks
  s.topk = topk;
  s.dense_len = -1;     // sparse from the first token
  return s;
}

TEST(SparseModel, EqualsDenseWhenTopkCoversEveryBlock) {
  const auto tokens = random_tokens(700, 1);
  auto dense = make_model(std::nullopt);
  auto sparse = make_model(small_sparse(64));  // 64 + 2 blocks >= 11 blocks of 700 tokens
  ASSERT_TRUE(dense && sparse);
  EXPECT_LE(max_rel_diff(logits_of(*sparse, tokens), logits_of(*dense, tokens)), 1e-5);
}

TEST(SparseModel, UseNopeSelectionAlsoEqualsDenseWithAFullBudget) {
  const auto tokens = random_tokens(300, 2);
  SparseConfig s = small_sparse(64);
  s.use_nope = true;
  auto dense = make_model(std::nullopt);
  auto sparse = make_model(s);
  EXPECT_LE(max_rel_diff(logits_of(*sparse, tokens), logits_of(*dense, tokens)), 1e-5);
}

TEST(SparseModel, SmallBudgetChangesLogitsOnlyPastWhatItCovers) {
  // topk 1 + 2 local blocks: queries in blocks 0..3 still see everything (4 blocks forced or chosen).
  const auto tokens = random_tokens(640, 3);
  auto dense = make_model(std::nullopt);
  auto sparse = make_model(small_sparse(1));
  Tensor a = logits_of(*sparse, tokens), b = logits_of(*dense, tokens);
  const int64_t vocab = 97;
  EXPECT_LE(max_rel_diff(a.rows(0, 256), b.rows(0, 256)), 1e-5);
  EXPECT_GT(max_rel_diff(a.rows(448, 640), b.rows(448, 640)), 1e-3) << "selection dropped no block";
  (void)vocab;
}

TEST(SparseModel, SwitchIsPerQuerySoChunkingDoesNotMatter) {
  SparseConfig s = small_sparse(2);
  s.dense_len = 300;  // queries at index >= 299 go sparse
  const auto tokens = random_tokens(520, 4);
  auto whole = make_model(s);
  auto chunked = make_model(s, /*chunk=*/37);
  Tensor a = logits_of(*whole, tokens), b = logits_of(*chunked, tokens);
  EXPECT_LE(max_rel_diff(a, b), 1e-6);
  auto dense = make_model(std::nullopt);
  Tensor d = logits_of(*dense, tokens);
  EXPECT_LE(max_rel_diff(a.rows(0, 299), d.rows(0, 299)), 1e-6) << "queries before dense_len must run dense";
}

TEST(SparseModel, DecodeTokenByTokenMatchesOneCall) {
  SparseConfig s = small_sparse(2);
  const auto tokens = random_tokens(400, 5);
  auto m = make_model(s);
  Tensor all = logits_of(*m, tokens);
  auto seq = m->new_sequence();
  Tensor part;
  ASSERT_TRUE(m->forward(**seq, std::span(tokens).first(350), &part, true).ok());
  for (int64_t t = 350; t < 400; ++t) {
    Tensor one;
    ASSERT_TRUE(m->forward(**seq, std::span(tokens).subspan(t, 1), &one, false).ok());
    EXPECT_LE(max_rel_diff(one, all.rows(t, t + 1)), 1e-6) << "token " << t;
  }
}

TEST(SparseModel, BlockSizeMustEqualTheKvBlock) {
  ModelOptions o;
  SparseConfig s = small_sparse(4);
  s.block_size = 32;
  o.sparse = s;
  const ModelConfig c = tiny_config();
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 1), o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("block_size 32"), std::string::npos) << m.status().message();
}

}  // namespace
}  // namespace mnemo
