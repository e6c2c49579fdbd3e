// The model over the tiered store: with budgets so small that every layer evicts the previous
// layer's blocks to host and host spills to disk, logits and greedy tokens equal the all-resident
// run bit for bit — dense and sparse.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "model/llama.h"

namespace mnemo {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 4096;
  return c;
}

struct RunResult {
  Tensor logits;
  std::vector<int32_t> generated;
  KvStoreMetrics metrics;
};

RunResult run(const ModelOptions& options, const std::vector<int32_t>& prompt, int n_new) {
  const ModelConfig c = tiny_config();
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 5, 0.2f), options);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  RunResult r;
  if (!m.ok()) return r;
  auto seq = (*m)->new_sequence();
  EXPECT_TRUE(seq.ok());
  Status s = (*m)->forward(**seq, prompt, &r.logits, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
  Tensor last = r.logits.rows(r.logits.dim(0) - 1, r.logits.dim(0));
  for (int i = 0; i < n_new && s.ok(); ++i) {
    const float* l = last.data<float>();
    const int32_t next = static_cast<int32_t>(std::max_element(l, l + c.vocab_size) - l);
    r.generated.push_back(next);
    const int32_t one[1] = {next};
    s = (*m)->forward(**seq, one, &last);
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
  r.metrics = (*m)->store().metrics();
  return r;
}

std::vector<int32_t> tokens(int64_t n) {
  std::mt19937 rng(9);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(rng() % 97);
  return t;
}

class TieredModel : public testing::TestWithParam<bool> {};

TEST_P(TieredModel, TinyBudgetsGiveBitIdenticalLogitsAndTokens) {
  const bool sparse = GetParam();
  const auto prompt = tokens(700);  // 11 blocks per layer
  ModelOptions resident;
  resident.chunk_tokens = 64;
  if (sparse) {
    SparseConfig s;
    s.window_size = 128;
    s.topk = 3;
    s.dense_len = 256;
    resident.sparse = s;
  }
  const std::string dir = testing::TempDir() + "/tiered_model_" + (sparse ? "sparse" : "dense");
  std::filesystem::remove_all(dir);
  ModelOptions tiny = resident;
  tiny.kv_budget_tokens = 5 * 64;                      // 5 slots per layer = 15: one layer + open blocks
  tiny.host_budget_bytes = 16 * 2 * 2 * 64 * 16 * 4;   // 16 of the 33 blocks fit the host: the rest on disk
  tiny.data_dir = dir;
  const RunResult a = run(resident, prompt, 24);
  const RunResult b = run(tiny, prompt, 24);
  ASSERT_EQ(a.logits.shape(), b.logits.shape());
  EXPECT_EQ(std::memcmp(a.logits.raw(), b.logits.raw(), a.logits.nbytes()), 0) << "logits differ";
  EXPECT_EQ(a.generated, b.generated);
  // Tiering really happened: blocks left the GPU and came back from host and from disk.
  EXPECT_GT(b.metrics.gpu_evictions, 0);
  EXPECT_GT(b.metrics.gpu_misses, 0);
  EXPECT_GT(b.metrics.disk_reads, 0);
  EXPECT_LE(b.metrics.gpu_slots_used, b.metrics.gpu_slots_total);
  EXPECT_LE(b.metrics.host_slots_used, b.metrics.host_slots_total);
  EXPECT_EQ(a.metrics.gpu_evictions, 0);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(DenseAndSparse, TieredModel, testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Sparse" : "Dense"; });

TEST(TieredModelBudget, TooSmallForOneLayerIsAClearError) {
  const ModelConfig c = tiny_config();
  ModelOptions o;
  o.kv_budget_tokens = 64;  // 3 slots in all: not even the open blocks plus one layer's history
  o.chunk_tokens = 64;
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 5, 0.2f), o);
  ASSERT_TRUE(m.ok());
  auto seq = (*m)->new_sequence();
  Tensor logits;
  Status s = (*m)->forward(**seq, tokens(300), &logits);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
}

}  // namespace
}  // namespace mnemo

namespace mnemo {
namespace {

TEST(BatchedForward, EqualsRunningEachSequenceAlone) {
  const ModelConfig c = tiny_config();
  ModelOptions o;
  o.chunk_tokens = 64;
  auto m = LlamaModel::from_weights(c, random_model_weights(c, 5, 0.2f), o);
  ASSERT_TRUE(m.ok());
  const auto all = tokens(300);
  // Three sequences at different lengths, advanced by 5, 1 and 17 tokens in one batched step.
  const int64_t lengths[3] = {0, 130, 64};
  const int64_t steps[3] = {5, 1, 17};
  std::vector<std::unique_ptr<Sequence>> batched, alone;
  for (int i = 0; i < 3; ++i) {
    batched.push_back((*m)->new_sequence().value());
    alone.push_back((*m)->new_sequence().value());
    if (lengths[i] > 0) {
      Tensor ignored;
      const auto prefix = std::span(all).first(lengths[i]);
      ASSERT_TRUE((*m)->forward(*batched[i], prefix, &ignored).ok());
      ASSERT_TRUE((*m)->forward(*alone[i], prefix, &ignored).ok());
    }
  }
  std::vector<Tensor> got(3), want(3);
  std::vector<LlamaModel::BatchItem> items;
  for (int i = 0; i < 3; ++i) {
    const auto chunk = std::span(all).subspan(lengths[i], steps[i]);
    items.push_back({batched[i].get(), chunk, &got[i]});
    ASSERT_TRUE((*m)->forward(*alone[i], chunk, &want[i]).ok());
  }
  ASSERT_TRUE((*m)->forward_batch(items).ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i].shape(), want[i].shape());
    EXPECT_EQ(std::memcmp(got[i].raw(), want[i].raw(), got[i].nbytes()), 0) << "sequence " << i;
    EXPECT_EQ(batched[i]->length(), lengths[i] + steps[i]);
  }
  // A sequence twice in one batch is refused and nothing advances.
  Tensor a, b;
  std::vector<LlamaModel::BatchItem> twice = {{batched[0].get(), std::span(all).first(1), &a},
                                              {batched[0].get(), std::span(all).first(1), &b}};
  EXPECT_FALSE((*m)->forward_batch(twice).ok());
  EXPECT_EQ(batched[0]->length(), lengths[0] + steps[0]);
}

}  // namespace
}  // namespace mnemo
