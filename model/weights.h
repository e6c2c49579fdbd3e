// ModelWeights: the tensors of a Llama-family checkpoint, loaded from safetensors and checked against
// the config (names and shapes), converted to the backend's compute dtype.
//
// Names are Hugging Face's: model.embed_tokens.weight, model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
// (+ .bias for q/k/v when attention_bias), model.layers.{i}.mlp.{gate,up,down}_proj.weight,
// model.layers.{i}.input_layernorm.weight, model.layers.{i}.post_attention_layernorm.weight,
// model.norm.weight, lm_head.weight (absent when tie_word_embeddings). Linear weights are
// [out_features, in_features] as in PyTorch.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace mnemo {

struct LayerWeights {
  Tensor q_proj, k_proj, v_proj, o_proj;  // [H*D, hidden], [Hkv*D, hidden] x2, [hidden, H*D]
  Tensor q_bias, k_bias, v_bias;          // [H*D], [Hkv*D] x2; undefined without attention_bias
  Tensor o_bias;                          // [hidden]; undefined without attention_output_bias
  Tensor gate_proj, up_proj, down_proj;   // [inter, hidden] x2, [hidden, inter]
  Tensor gate_bias, up_bias, down_bias;   // [inter] x2, [hidden]; undefined without mlp_bias
  Tensor input_norm, post_attention_norm; // [hidden]
};

struct ModelWeights {
  Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;    // [hidden]
  Tensor lm_head;       // [vocab, hidden]; shares storage with embed_tokens when tied
};

struct LoadWeightsOptions {
  DType dtype = DType::kF32;  // compute dtype of the loaded tensors. Default: f32 (CPU backend)
};

// Loads DIR/model.safetensors or the shards listed in DIR/model.safetensors.index.json.
// Errors name the file and tensor: missing tensor, shape mismatch (expected vs got), unsupported
// dtype, truncated file, malformed header; every name, shape and dtype is checked before any
// tensor is converted. Unexpected extra tensors are logged as warnings, one per tensor
// (rotary_emb.inv_freq buffers silently ignored). Tied embeddings: lm_head is embed_tokens (same
// storage) and a lm_head.weight in the checkpoint is ignored, as transformers does (with a
// warning if it differs).
Result<ModelWeights> load_model_weights(const std::string& model_dir, const ModelConfig& config,
                                        const LoadWeightsOptions& options = {});

// The checkpoint tensors `config` implies, in load order, with their shapes (lm_head.weight only
// when untied; biases only when the config has them).
struct TensorSpec {
  std::string name;
  Shape shape;
};
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);

// (name, tensor) pairs in checkpoint naming: the inverse of loading, e.g. for write_safetensors.
std::vector<std::pair<std::string, Tensor>> named_weights(const ModelConfig& config,
                                                          const ModelWeights& weights);

// Deterministic random weights for benchmarks and tests of shapes without a checkpoint
// (normal(0, std) for matrices and biases, 1 + normal(0, std) for norms), f32. The same
// (config, seed) gives the same values whatever the thread count.
ModelWeights random_model_weights(const ModelConfig& config, uint64_t seed, float std = 0.02f);

}  // namespace mnemo
