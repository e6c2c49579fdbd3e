// ModelConfig: what mnemo reads from a Hugging Face config.json for the Llama family.
//
// Supported architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v bias),
// MiniCPMForCausalLM (incl. MiniCPM4: scale_emb, scale_depth, dim_model_base, sparse_config).
// Every field has the default transformers uses when the key is absent; a key that is required and
// missing, or has the wrong JSON type, is an error naming the file, the key, expected and got.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace mnemo {

enum class Architecture : uint8_t { kLlama, kMistral, kQwen2, kMiniCPM };
const char* architecture_name(Architecture arch);

enum class RopeScalingType : uint8_t { kNone, kLinear, kDynamic, kLlama3, kLongRope, kYarn };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                          // linear, dynamic, llama3, yarn; longrope: given,
                                                // else max_position_embeddings / original
  double low_freq_factor = 1.0;                 // llama3
  double high_freq_factor = 4.0;                // llama3
  int64_t original_max_position_embeddings = 0; // llama3, longrope (always set), yarn (0: absent)
  std::vector<double> short_factor;             // longrope, head_dim/2 entries
  std::vector<double> long_factor;              // longrope, head_dim/2 entries
  std::optional<double> attention_factor;       // longrope / yarn override of the cos/sin scale
  double beta_fast = 32.0;                      // yarn
  double beta_slow = 1.0;                       // yarn
};

// InfLLM-V2 block-sparse attention parameters (MiniCPM4's `sparse_config`, same keys).
struct SparseConfig {
  int kernel_size = 32;     // tokens per compressed key
  int kernel_stride = 16;   // tokens between compressed keys
  int block_size = 64;      // tokens per selection / KV block
  int init_blocks = 1;      // leading blocks always attended
  int window_size = 2048;   // local window always attended, in tokens
  int topk = 64;            // blocks chosen by score (init and local blocks come on top)
  int64_t dense_len = 8192; // contexts shorter than this run dense; -1 forces sparse
  bool use_nope = false;    // score with un-rotated queries and keys
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;        // as written in config.json ("llama", "qwen2", "minicpm", ...)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v bias (true for Qwen2)
  bool attention_output_bias = false;  // o_proj bias: Llama/MiniCPM's attention_bias; never Qwen2
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  int64_t sliding_window = 0;       // 0: none. Mistral's; Qwen2's only with use_sliding_window
  // MiniCPM scaling (1.0 / absent for other families).
  double scale_emb = 1.0;           // embeddings *= scale_emb
  double scale_depth = 0.0;         // residual branch *= scale_depth / sqrt(num_hidden_layers) when > 0
  double dim_model_base = 0.0;      // logits input /= hidden_size / dim_model_base when > 0
  std::optional<SparseConfig> sparse;  // from config.json's sparse_config, or --sparse-config
  std::vector<int64_t> bos_token_ids;  // usually one; may be empty
  std::vector<int64_t> eos_token_ids;  // one or several (e.g. Llama 3 lists several)
  std::string torch_dtype;          // as written ("bfloat16", ...); informational

  // Multiplier on the residual branch (MiniCPM's scale_depth / sqrt(L); 1 otherwise).
  double residual_scale() const;
  // Divisor of the final hidden state before lm_head (MiniCPM's hidden/dim_model_base; 1 otherwise).
  double logit_divisor() const;
};

// Parses config.json text; `path` only names the file in messages.
Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& path);
// Reads DIR/config.json (and DIR/generation_config.json, tokenizer_config.json for BOS/EOS if present).
// BOS: the first of config.json, generation_config.json, tokenizer_config.json (bos_token resolved
// through its added_tokens_decoder) that names one, else the family default. EOS: config.json's
// ids, then generation_config.json's not already listed (generate() stops on those: Llama 3's
// <|eot_id|>, Qwen2's <|im_end|>); tokenizer_config.json, then the family default, only when
// neither has any. Missing directory or config.json: NotFound; a malformed optional file: error.
Result<ModelConfig> load_model_config(const std::string& model_dir);
// Parses a sparse_config JSON object (the same keys as MiniCPM4's), e.g. for --sparse-config FILE.
Result<SparseConfig> parse_sparse_config(const std::string& json_text, const std::string& path);

}  // namespace mnemo
