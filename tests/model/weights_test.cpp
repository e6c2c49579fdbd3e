#include "model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/file.h"
#include "core/log.h"
#include "model/safetensors.h"
#include "tests/model/scratch_dir.h"

namespace mnemo {
namespace {

using ::testing::HasSubstr;
using testing_util::scratch_dir;
using Named = std::vector<std::pair<std::string, Tensor>>;

// hidden 64, 4 heads of 16, 2 KV heads, 2 layers: q_proj is [64, 64].
std::string tiny_config_json(const std::string& arch, const std::string& extra = "") {
  return R"({"architectures": [")" + arch + R"("], "vocab_size": 32, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2)" +
         extra + "}";
}

ModelConfig parse(const std::string& json) {
  Result<ModelConfig> c = parse_model_config(json, "config.json");
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return c.ok() ? *c : ModelConfig{};
}

Named converted(const Named& tensors, DType dtype) {
  Named out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, *t.to_dtype(dtype));
  return out;
}

// Writes config.json and model.safetensors (the given tensors) into a fresh directory.
std::string write_model(const std::string& config_json, const Named& tensors) {
  const std::string dir = scratch_dir();
  std::ofstream(dir + "/config.json") << config_json;
  EXPECT_TRUE(write_safetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

void replace(Named& tensors, const std::string& name, Tensor t) {
  for (auto& [n, old] : tensors) {
    if (n == name) old = std::move(t);
  }
}

void expect_same_values(const Tensor& got, const Tensor& want_f32) {
  ASSERT_EQ(got.shape(), want_f32.shape());
  ASSERT_EQ(got.dtype(), DType::kF32);
  for (int64_t i = 0; i < got.numel(); ++i)
    ASSERT_EQ(got.data<float>()[i], want_f32.data<float>()[i]) << i;
}

std::vector<std::string>* g_logs = nullptr;
void capture_log(LogLevel, const std::string& text) { g_logs->push_back(text); }

// Captures warnings for the lifetime of the object.
struct LogCapture {
  std::vector<std::string> lines;
  LogCapture() {
    g_logs = &lines;
    set_log_sink(capture_log);
  }
  ~LogCapture() {
    set_log_sink(nullptr);
    g_logs = nullptr;
  }
};

TEST(ModelWeights, LoadsTinyCheckpointsInBf16F16AndF32AsF32) {
  const ModelConfig config = parse(tiny_config_json("LlamaForCausalLM"));
  const ModelWeights ref = random_model_weights(config, 7);
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    const Named stored = converted(named_weights(config, ref), dtype);
    const std::string dir = write_model(tiny_config_json("LlamaForCausalLM"), stored);
    Result<ModelWeights> w = load_model_weights(dir, config);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    ASSERT_EQ(w->layers.size(), 2u);
    const Named loaded = named_weights(config, *w);
    ASSERT_EQ(loaded.size(), stored.size());
    for (size_t i = 0; i < loaded.size(); ++i) {
      SCOPED_TRACE(loaded[i].first + " stored as " + dtype_name(dtype));
      expect_same_values(loaded[i].second, *stored[i].second.to_dtype(DType::kF32));
    }
    EXPECT_FALSE(w->layers[0].q_bias.defined());
  }
}

TEST(ModelWeights, ConvertsToTheRequestedDtype) {
  const ModelConfig config = parse(tiny_config_json("LlamaForCausalLM"));
  const std::string dir = write_model(tiny_config_json("LlamaForCausalLM"),
                                      named_weights(config, random_model_weights(config, 1)));
  Result<ModelWeights> w = load_model_weights(dir, config, {.dtype = DType::kBF16});
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(w->layers[1].down_proj.dtype(), DType::kBF16);
  EXPECT_EQ(w->lm_head.shape(), (Shape{32, 64}));
}

TEST(ModelWeights, LoadsAShardedCheckpoint) {
  const ModelConfig config = parse(tiny_config_json("MistralForCausalLM"));
  const ModelWeights ref = random_model_weights(config, 3);
  const Named all = converted(named_weights(config, ref), DType::kBF16);
  const std::string dir = scratch_dir();
  std::ofstream(dir + "/config.json") << tiny_config_json("MistralForCausalLM");
  const size_t half = all.size() / 2;
  ASSERT_TRUE(write_safetensors(dir + "/model-00001-of-00002.safetensors",
                                Named(all.begin(), all.begin() + half))
                  .ok());
  ASSERT_TRUE(write_safetensors(dir + "/model-00002-of-00002.safetensors",
                                Named(all.begin() + half, all.end()))
                  .ok());
  std::string index = R"({"metadata": {}, "weight_map": {)";
  for (size_t i = 0; i < all.size(); ++i) {
    index += (i ? ", \"" : "\"") + all[i].first + "\": \"model-0000" + (i < half ? "1" : "2") +
             "-of-00002.safetensors\"";
  }
  std::ofstream(dir + "/model.safetensors.index.json") << index << "}}";
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  expect_same_values(w->final_norm, *all[all.size() - 2].second.to_dtype(DType::kF32));
  expect_same_values(w->embed_tokens, *all[0].second.to_dtype(DType::kF32));
}

TEST(ModelWeights, TiedEmbeddingsShareStorageAndIgnoreAStoredLmHead) {
  const std::string json = tiny_config_json("MiniCPMForCausalLM");  // MiniCPM ties by default
  const ModelConfig config = parse(json);
  ASSERT_TRUE(config.tie_word_embeddings);
  Named tensors = named_weights(config, random_model_weights(config, 5));
  for (const auto& [name, t] : tensors) ASSERT_NE(name, "lm_head.weight");
  tensors.emplace_back("lm_head.weight", Tensor::zeros({32, 64}));  // present anyway, and different
  const std::string dir = write_model(json, tensors);
  LogCapture logs;
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(w->lm_head.raw(), w->embed_tokens.raw());
  ASSERT_EQ(logs.lines.size(), 1u);
  EXPECT_THAT(logs.lines[0], HasSubstr("lm_head.weight differs from model.embed_tokens.weight"));
}

TEST(ModelWeights, Qwen2LoadsQkvBiases) {
  const std::string json = tiny_config_json("Qwen2ForCausalLM");
  const ModelConfig config = parse(json);
  const ModelWeights ref = random_model_weights(config, 11);
  ASSERT_TRUE(ref.layers[0].q_bias.defined());
  const std::string dir = write_model(json, named_weights(config, ref));
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  expect_same_values(w->layers[1].k_bias, ref.layers[1].k_bias);
  EXPECT_EQ(w->layers[0].q_bias.shape(), (Shape{64}));
  EXPECT_EQ(w->layers[0].v_bias.shape(), (Shape{32}));
  EXPECT_FALSE(w->layers[0].o_bias.defined());

  Named no_bias = named_weights(config, ref);
  std::erase_if(no_bias,
                [](const auto& p) { return p.first == "model.layers.1.self_attn.v_proj.bias"; });
  const std::string dir2 = write_model(json, no_bias);
  w = load_model_weights(dir2, config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              HasSubstr("tensor 'model.layers.1.self_attn.v_proj.bias' is missing"));
}

TEST(ModelWeights, MissingTensorNamesFileAndTensor) {
  const std::string json = tiny_config_json("LlamaForCausalLM");
  const ModelConfig config = parse(json);
  Named tensors = named_weights(config, random_model_weights(config, 2));
  std::erase_if(tensors,
                [](const auto& p) { return p.first == "model.layers.0.mlp.up_proj.weight"; });
  const std::string dir = write_model(json, tensors);
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(
      w.status().message(),
      HasSubstr(dir + "/model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight' is missing"));
}

TEST(ModelWeights, ShapeMismatchNamesTensorExpectedAndGot) {
  const std::string json = tiny_config_json("LlamaForCausalLM");
  const ModelConfig config = parse(json);
  Named tensors = named_weights(config, random_model_weights(config, 2));
  replace(tensors, "model.layers.0.self_attn.q_proj.weight", Tensor::zeros({64, 32}));
  const std::string dir = write_model(json, tensors);
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().message(),
            dir +
                "/model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight': "
                "expected shape [64, 64], got [64, 32]");
}

TEST(ModelWeights, UnsupportedDtypeNamesTensorAndDtype) {
  const std::string json = tiny_config_json("LlamaForCausalLM");
  const ModelConfig config = parse(json);
  Named tensors = named_weights(config, random_model_weights(config, 2));
  replace(tensors, "model.norm.weight", Tensor::zeros({64}, DType::kI32));
  const std::string dir = write_model(json, tensors);
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(),
              HasSubstr("model.safetensors: tensor 'model.norm.weight': unsupported dtype 'I32'"));
}

TEST(ModelWeights, UnexpectedExtraTensorWarnsOnceAndInvFreqIsSilent) {
  const std::string json = tiny_config_json("LlamaForCausalLM");
  const ModelConfig config = parse(json);
  Named tensors = named_weights(config, random_model_weights(config, 2));
  tensors.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::zeros({8}));
  tensors.emplace_back("model.extra.weight", Tensor::zeros({3}));
  const std::string dir = write_model(json, tensors);
  LogCapture logs;
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  ASSERT_EQ(logs.lines.size(), 1u);
  EXPECT_THAT(logs.lines[0],
              HasSubstr("model.safetensors: unexpected tensor 'model.extra.weight' ignored"));
}

TEST(ModelWeights, MissingModelDirectoryOrCheckpointIsNotFound) {
  const ModelConfig config = parse(tiny_config_json("LlamaForCausalLM"));
  Result<ModelWeights> w = load_model_weights("/nonexistent/mnemo-model", config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(),
              HasSubstr("model directory '/nonexistent/mnemo-model' does not exist"));
  const std::string dir = scratch_dir();
  w = load_model_weights(dir, config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

TEST(ModelWeights, TruncatedCheckpointIsCorruptionNamingTheFile) {
  const std::string json = tiny_config_json("LlamaForCausalLM");
  const ModelConfig config = parse(json);
  const std::string dir = write_model(json, named_weights(config, random_model_weights(config, 2)));
  std::filesystem::resize_file(dir + "/model.safetensors",
                               std::filesystem::file_size(dir + "/model.safetensors") - 4);
  Result<ModelWeights> w = load_model_weights(dir, config);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(w.status().message(), HasSubstr(dir + "/model.safetensors: tensor 'lm_head.weight'"));
}

TEST(ModelWeights, RandomWeightsAreDeterministicPerSeed) {
  const ModelConfig config = parse(tiny_config_json("Qwen2ForCausalLM"));
  const Named a = named_weights(config, random_model_weights(config, 42));
  const Named b = named_weights(config, random_model_weights(config, 42));
  const Named c = named_weights(config, random_model_weights(config, 43));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::memcmp(a[i].second.raw(), b[i].second.raw(), a[i].second.nbytes()), 0)
        << a[i].first;
  }
  EXPECT_NE(std::memcmp(a[0].second.raw(), c[0].second.raw(), a[0].second.nbytes()), 0);
  // Norms are 1 + noise, matrices noise around 0.
  EXPECT_NEAR(a[1].second.data<float>()[0], 1.0f, 0.2f);
  EXPECT_EQ(a[1].first, "model.layers.0.input_layernorm.weight");
  double sum_sq = 0;
  const Tensor& embed = a[0].second;
  for (int64_t i = 0; i < embed.numel(); ++i)
    sum_sq += double(embed.data<float>()[i]) * embed.data<float>()[i];
  EXPECT_NEAR(std::sqrt(sum_sq / double(embed.numel())), 0.02, 0.002);
}

// Checkpoints written by transformers (tools/fixtures); skipped until they are generated.
TEST(ModelFixtures, EveryFixtureLoadsConfigAndWeights) {
  const std::string root = "tests/data/fixtures";
  int loaded = 0;
  if (is_directory(root)) {
    for (const auto& entry : std::filesystem::directory_iterator(root)) {
      if (!entry.is_directory() || !file_exists(entry.path().string() + "/config.json")) continue;
      SCOPED_TRACE(entry.path().string());
      Result<ModelConfig> config = load_model_config(entry.path().string());
      ASSERT_TRUE(config.ok()) << config.status().to_string();
      LogCapture logs;
      Result<ModelWeights> w = load_model_weights(entry.path().string(), *config);
      ASSERT_TRUE(w.ok()) << w.status().to_string();
      EXPECT_EQ(w->layers.size(), static_cast<size_t>(config->num_hidden_layers));
      EXPECT_EQ(w->layers[0].q_bias.defined(), config->attention_bias);
      EXPECT_EQ(w->lm_head.raw() == w->embed_tokens.raw(), config->tie_word_embeddings);
      EXPECT_EQ(w->final_norm.dtype(), DType::kF32);
      EXPECT_TRUE(logs.lines.empty()) << logs.lines.front();
      ++loaded;
    }
  }
  if (loaded == 0) GTEST_SKIP() << "no fixtures under " << root;
}

}  // namespace
}  // namespace mnemo
