#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/model/scratch_dir.h"

namespace mnemo {
namespace {

using ::testing::HasSubstr;
using testing_util::scratch_dir;

constexpr const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
  "num_hidden_layers": 32, "num_attention_heads": 32, "rms_norm_eps": 1e-05
})";

void write_file(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string longrope_factors(int n, double value) {
  std::string s = "[";
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(value + 0.01 * i);
  return s + "]";
}

TEST(ModelConfig, LlamaAbsentKeysTakeTransformersDefaults) {
  Result<ModelConfig> c = parse_model_config(kLlama, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->bos_token_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_DOUBLE_EQ(c->residual_scale(), 1.0);
  EXPECT_DOUBLE_EQ(c->logit_divisor(), 1.0);
  EXPECT_FALSE(c->sparse.has_value());
}

TEST(ModelConfig, ExplicitHeadDimGqaAndEosListAreRead) {
  Result<ModelConfig> c = parse_model_config(R"({
    "architectures": ["MistralForCausalLM"], "vocab_size": 1000, "hidden_size": 320,
    "intermediate_size": 640, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 64, "sliding_window": null, "rope_theta": 1000000,
    "bos_token_id": 1, "eos_token_id": [2, 7], "max_position_embeddings": 32768.0})",
                                             "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, Architecture::kMistral);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2, 7}));
}

TEST(ModelConfig, Qwen2ImpliesQkvBiasButNoOutputBias) {
  Result<ModelConfig> c = parse_model_config(R"({
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "tie_word_embeddings": true, "use_sliding_window": false,
    "sliding_window": 32768, "bos_token_id": 151643, "eos_token_id": 151645})",
                                             "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, Architecture::kQwen2);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->attention_output_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{151645}));
}

TEST(ModelConfig, LlamaAttentionBiasAlsoBiasesTheOutputProjection) {
  std::string text = kLlama;
  text.insert(text.rfind('}'), R"(, "attention_bias": true, "mlp_bias": true)");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->attention_output_bias);
  EXPECT_TRUE(c->mlp_bias);
}

TEST(ModelConfig, MiniCpm4ReadsScalingSparseConfigAndLongRope) {
  const std::string text = R"({
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "vocab_size": 73448,
    "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 65536, "rms_norm_eps": 1e-06,
    "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 256, "tie_word_embeddings": false,
    "bos_token_id": 1, "eos_token_id": [2, 73440], "torch_dtype": "bfloat16",
    "rope_scaling": {"rope_type": "longrope", "long_factor": )" +
                           longrope_factors(32, 1.0) + R"(, "short_factor": )" +
                           longrope_factors(32, 0.5) + R"(,
                     "original_max_position_embeddings": 32768},
    "sparse_config": {"kernel_size": 32, "kernel_stride": 16, "init_blocks": 1, "block_size": 64,
                      "window_size": 2048, "topk": 64, "use_nope": false, "dense_len": 8192}})";
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, Architecture::kMiniCPM);
  EXPECT_DOUBLE_EQ(c->scale_emb, 12.0);
  EXPECT_DOUBLE_EQ(c->residual_scale(), 1.4 / 2.0);
  EXPECT_DOUBLE_EQ(c->logit_divisor(), 1.0);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2, 73440}));
  const RopeScaling& r = c->rope_scaling;
  EXPECT_EQ(r.type, RopeScalingType::kLongRope);
  ASSERT_EQ(r.long_factor.size(), 32u);
  ASSERT_EQ(r.short_factor.size(), 32u);
  EXPECT_DOUBLE_EQ(r.long_factor[3], 1.03);
  EXPECT_DOUBLE_EQ(r.short_factor[0], 0.5);
  EXPECT_EQ(r.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(r.factor,
                   2.0);  // max_position_embeddings / original, as transformers derives it
  EXPECT_FALSE(r.attention_factor.has_value());
  ASSERT_TRUE(c->sparse.has_value());
  EXPECT_EQ(c->sparse->kernel_size, 32);
  EXPECT_EQ(c->sparse->kernel_stride, 16);
  EXPECT_EQ(c->sparse->block_size, 64);
  EXPECT_EQ(c->sparse->window_size, 2048);
  EXPECT_EQ(c->sparse->topk, 64);
  EXPECT_EQ(c->sparse->dense_len, 8192);
  EXPECT_FALSE(c->sparse->use_nope);
}

TEST(ModelConfig, MiniCpmWithoutScalingKeysTiesEmbeddingsAndScalesByDefault) {
  Result<ModelConfig> c = parse_model_config(R"({"architectures": ["MiniCPMForCausalLM"],
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4})",
                                             "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->residual_scale(), 0.5);  // scale_depth 1 / sqrt(4)
  EXPECT_DOUBLE_EQ(c->logit_divisor(), 64.0);  // hidden_size / dim_model_base 1
}

TEST(ModelConfig, LongRopeFactorListsMustHaveHeadDimOver2Entries) {
  const std::string text = R"({"architectures": ["MiniCPMForCausalLM"], "vocab_size": 100,
    "hidden_size": 256, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
    "rope_scaling": {"type": "longrope", "long_factor": )" +
                           longrope_factors(31, 1) + R"(, "short_factor": )" +
                           longrope_factors(32, 1) + "}}";
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("rope_scaling.long_factor"));
  EXPECT_THAT(c.status().message(), HasSubstr("31 entries, expected head_dim/2 = 32"));
}

TEST(ModelConfig, RopeScalingAcceptsTypeOrRopeTypeKey) {
  std::string linear = kLlama, dynamic = kLlama;
  linear.insert(linear.rfind('}'), R"(, "rope_scaling": {"type": "linear", "factor": 4.0})");
  dynamic.insert(dynamic.rfind('}'), R"(, "rope_scaling": {"rope_type": "dynamic", "factor": 2})");
  Result<ModelConfig> a = parse_model_config(linear, "config.json");
  Result<ModelConfig> b = parse_model_config(dynamic, "config.json");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(a->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(a->rope_scaling.factor, 4.0);
  EXPECT_EQ(b->rope_scaling.type, RopeScalingType::kDynamic);
  EXPECT_DOUBLE_EQ(b->rope_scaling.factor, 2.0);
}

TEST(ModelConfig, Llama3RopeScalingReadsAllFourParameters) {
  std::string text = kLlama;
  text.insert(text.rfind('}'), R"(, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192})");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
}

TEST(ModelConfig, Transformers5RopeParametersAreRead) {
  std::string text = kLlama;
  text.insert(text.rfind('}'),
              R"(, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
    "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}, "dtype": "bfloat16")");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->torch_dtype, "bfloat16");

  std::string plain = kLlama;
  plain.insert(plain.rfind('}'),
               R"(, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"})");
  Result<ModelConfig> d = parse_model_config(plain, "config.json");
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_DOUBLE_EQ(d->rope_theta, 1e6);
  EXPECT_EQ(d->rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfig, UnsupportedRopeTypeIsNamed) {
  std::string text = kLlama;
  text.insert(text.rfind('}'), R"(, "rope_scaling": {"rope_type": "mrope", "factor": 2})");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("rope type 'mrope' is not supported"));
}

TEST(ModelConfig, UnknownArchitectureIsNamedWithTheSupportedList) {
  Result<ModelConfig> c =
      parse_model_config(R"({"architectures": ["GPT2LMHeadModel"]})", "m/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(c.status().message(),
              HasSubstr("m/config.json: unsupported architecture 'GPT2LMHeadModel'"));
  EXPECT_THAT(
      c.status().message(),
      HasSubstr("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MiniCPMForCausalLM"));
}

TEST(ModelConfig, MissingRequiredFieldNamesFileAndField) {
  Result<ModelConfig> c = parse_model_config(R"({"architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32})",
                                             "models/x/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "models/x/config.json: missing required field 'hidden_size'");
}

TEST(ModelConfig, WrongJsonTypeNamesFieldExpectedAndGot) {
  std::string text = kLlama;
  text.replace(text.find("4096"), 4, "\"4096\"");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "config.json: field 'hidden_size': expected integer, got string \"4096\"");

  std::string nested = kLlama;
  nested.insert(nested.rfind('}'), R"(, "rope_scaling": {"type": "linear", "factor": "2"})");
  c = parse_model_config(nested, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "config.json: field 'rope_scaling.factor': expected number, got string \"2\"");
}

TEST(ModelConfig, MalformedJsonNamesFileAndPosition) {
  Result<ModelConfig> c =
      parse_model_config("{\n  \"vocab_size\": 32000,\n  \"hidden_size\": ,\n}", "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("config.json: malformed JSON at line 3, column 18"));
}

TEST(ModelConfig, HeadsMustBeAMultipleOfKvHeads) {
  std::string text = kLlama;
  text.insert(text.rfind('}'), R"(, "num_key_value_heads": 6)");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("num_attention_heads (32) must be a multiple of num_key_value_heads (6)"));
}

TEST(ModelConfig, HiddenSizeNotDivisibleByHeadsNeedsExplicitHeadDim) {
  std::string text = kLlama;
  text.replace(text.find("\"num_attention_heads\": 32"), 25, "\"num_attention_heads\": 30");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(),
              HasSubstr("hidden_size (4096) is not divisible by num_attention_heads (30)"));
  text.insert(text.rfind('}'), R"(, "head_dim": 128)");
  EXPECT_TRUE(parse_model_config(text, "config.json").ok());
}

TEST(ModelConfig, QuantizedCheckpointsAreRejectedByName) {
  std::string text = kLlama;
  text.insert(text.rfind('}'), R"(, "quantization_config": {"quant_method": "awq", "bits": 4})");
  Result<ModelConfig> c = parse_model_config(text, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("quant_method 'awq'"));
}

TEST(ModelConfig, MissingModelDirectoryIsNotFound) {
  Result<ModelConfig> c = load_model_config("/nonexistent/mnemo-model");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(),
              HasSubstr("model directory '/nonexistent/mnemo-model' does not exist"));

  const std::string dir = scratch_dir();
  c = load_model_config(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr(dir + "/config.json: no such file"));
}

TEST(ModelConfig, LoadAddsGenerationConfigEosAndTokenizerConfigBos) {
  const std::string dir = scratch_dir();
  write_file(dir + "/config.json", R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 1000,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
    "eos_token_id": 7})");
  write_file(dir + "/generation_config.json", R"({"eos_token_id": [7, 9], "do_sample": true})");
  write_file(dir + "/tokenizer_config.json",
             R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
    "added_tokens_decoder": {"3": {"content": "<s>"}, "4": {"content": "</s>"}}})");
  Result<ModelConfig> c = load_model_config(dir);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->eos_token_ids,
            (std::vector<int64_t>{7, 9}));                 // config.json first, then generation's
  EXPECT_EQ(c->bos_token_ids, (std::vector<int64_t>{3}));  // only tokenizer_config.json names one

  write_file(dir + "/generation_config.json", R"({"eos_token_id": [7, 9],})");
  c = load_model_config(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr(dir + "/generation_config.json: malformed JSON"));
}

TEST(ModelConfig, ParseSparseConfigReadsAStandaloneObjectOrAConfigJson) {
  Result<SparseConfig> s =
      parse_sparse_config(R"({"topk": 16, "dense_len": -1, "use_nope": true})", "s.json");
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->topk, 16);
  EXPECT_EQ(s->dense_len, -1);
  EXPECT_TRUE(s->use_nope);
  EXPECT_EQ(s->block_size, 64);  // defaults for absent keys
  s = parse_sparse_config(R"({"sparse_config": {"block_size": 128}})", "config.json");
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->block_size, 128);
  s = parse_sparse_config(R"({"block_size": 60})", "s.json");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(
      s.status().message(),
      HasSubstr("s.json: field 'block_size': must be a multiple of kernel_stride (16), got 60"));
}

}  // namespace
}  // namespace mnemo
