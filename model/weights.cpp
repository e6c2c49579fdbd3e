// Checkpoint tensors <-> ModelWeights. One table (bind) maps every checkpoint name to its shape and
// its Tensor field, so loading, random init and export cannot disagree on names or shapes.
#include "model/weights.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <set>

#include "core/log.h"
#include "model/safetensors.h"

namespace mnemo {
namespace {

struct Slot {
  std::string name;
  Shape shape;
  Tensor* tensor;
  bool is_norm;
};

// Sizes w->layers and lists every tensor the config implies, in checkpoint naming.
std::vector<Slot> bind(const ModelConfig& c, ModelWeights* w) {
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  std::vector<Slot> slots;
  slots.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}, &w->embed_tokens, false});
  w->layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& l = w->layers[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    slots.push_back({p + "input_layernorm.weight", {hidden}, &l.input_norm, true});
    slots.push_back({p + "self_attn.q_proj.weight", {q_dim, hidden}, &l.q_proj, false});
    slots.push_back({p + "self_attn.k_proj.weight", {kv_dim, hidden}, &l.k_proj, false});
    slots.push_back({p + "self_attn.v_proj.weight", {kv_dim, hidden}, &l.v_proj, false});
    if (c.attention_bias) {
      slots.push_back({p + "self_attn.q_proj.bias", {q_dim}, &l.q_bias, false});
      slots.push_back({p + "self_attn.k_proj.bias", {kv_dim}, &l.k_bias, false});
      slots.push_back({p + "self_attn.v_proj.bias", {kv_dim}, &l.v_bias, false});
    }
    slots.push_back({p + "self_attn.o_proj.weight", {hidden, q_dim}, &l.o_proj, false});
    if (c.attention_output_bias)
      slots.push_back({p + "self_attn.o_proj.bias", {hidden}, &l.o_bias, false});
    slots.push_back(
        {p + "post_attention_layernorm.weight", {hidden}, &l.post_attention_norm, true});
    slots.push_back({p + "mlp.gate_proj.weight", {inter, hidden}, &l.gate_proj, false});
    slots.push_back({p + "mlp.up_proj.weight", {inter, hidden}, &l.up_proj, false});
    slots.push_back({p + "mlp.down_proj.weight", {hidden, inter}, &l.down_proj, false});
    if (c.mlp_bias) {
      slots.push_back({p + "mlp.gate_proj.bias", {inter}, &l.gate_bias, false});
      slots.push_back({p + "mlp.up_proj.bias", {inter}, &l.up_bias, false});
      slots.push_back({p + "mlp.down_proj.bias", {hidden}, &l.down_bias, false});
    }
  }
  slots.push_back({"model.norm.weight", {hidden}, &w->final_norm, true});
  if (!c.tie_word_embeddings)
    slots.push_back({"lm_head.weight", {c.vocab_size, hidden}, &w->lm_head, false});
  return slots;
}

bool is_float(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills `t` (f32) with mean + normal(0, std). Each chunk has its own generator seeded from
// (seed, chunk), so the values do not depend on the thread count.
void fill_normal(Tensor& t, uint64_t seed, float mean, float std) {
  constexpr int64_t kChunk = 1 << 16;
  float* data = t.data<float>();
  const int64_t n = t.numel();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    std::mt19937_64 rng(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(c))));
    std::normal_distribution<float> normal(mean, std);
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) data[i] = normal(rng);
  }
}

// With tied embeddings transformers uses embed_tokens for lm_head; say so when a stored
// lm_head.weight would have given different logits.
void check_tied_lm_head(const SafetensorsCheckpoint& ckpt) {
  const auto lm = ckpt.find("lm_head.weight");
  const auto embed = ckpt.find("model.embed_tokens.weight");
  if (!lm.info || !embed.info) return;
  const bool same = lm.info->dtype_name == embed.info->dtype_name &&
                    lm.info->shape == embed.info->shape &&
                    std::memcmp(lm.file->bytes(*lm.info), embed.file->bytes(*embed.info),
                                lm.info->data_end - lm.info->data_begin) == 0;
  if (!same) {
    MNEMO_LOG(kWarning) << lm.file->path()
                        << ": lm_head.weight differs from model.embed_tokens.weight, "
                        << "but tie_word_embeddings is true: using model.embed_tokens.weight (as "
                           "transformers does)";
  }
}

}  // namespace

std::vector<TensorSpec> expected_tensors(const ModelConfig& config) {
  ModelWeights scratch;
  std::vector<TensorSpec> out;
  for (Slot& s : bind(config, &scratch)) out.push_back({std::move(s.name), std::move(s.shape)});
  return out;
}

std::vector<std::pair<std::string, Tensor>> named_weights(const ModelConfig& config,
                                                          const ModelWeights& weights) {
  ModelWeights copy = weights;  // handles, not bytes
  std::vector<std::pair<std::string, Tensor>> out;
  for (Slot& s : bind(config, &copy)) out.emplace_back(std::move(s.name), *s.tensor);
  return out;
}

Result<ModelWeights> load_model_weights(const std::string& model_dir, const ModelConfig& config,
                                        const LoadWeightsOptions& options) {
  if (!is_float(options.dtype)) {
    return invalid_argument("load_model_weights: dtype must be f32, f16 or bf16, got ",
                            dtype_name(options.dtype));
  }
  MNEMO_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::open(model_dir));
  ModelWeights w;
  std::vector<Slot> slots = bind(config, &w);
  std::vector<SafetensorsCheckpoint::Entry> entries;
  std::set<std::string> used;
  // Every name, shape and dtype first, so a bad checkpoint fails before gigabytes are converted.
  for (const Slot& s : slots) {
    const SafetensorsCheckpoint::Entry e = ckpt.find(s.name);
    if (!e.info) {
      return not_found(ckpt.source(), ": tensor '", s.name, "' is missing",
                       ckpt.sharded() ? " from weight_map" : "", " (",
                       architecture_name(config.architecture), " with this config.json needs it)");
    }
    if (e.info->shape != s.shape) {
      return invalid_argument(e.file->path(), ": tensor '", s.name, "': expected shape ",
                              shape_to_string(s.shape), ", got ", shape_to_string(e.info->shape));
    }
    if (!e.info->dtype || !is_float(*e.info->dtype)) {
      return unimplemented(e.file->path(), ": tensor '", s.name, "': unsupported dtype '",
                           e.info->dtype_name, "' (weights must be BF16, F16 or F32)");
    }
    entries.push_back(e);
    used.insert(s.name);
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    MNEMO_ASSIGN_OR_RETURN(*slots[i].tensor,
                           entries[i].file->read(*entries[i].info, options.dtype));
  }
  if (config.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    if (ckpt.find("lm_head.weight").info) {
      used.insert("lm_head.weight");
      check_tied_lm_head(ckpt);
    }
  }
  // One warning per unexpected tensor, capped so a checkpoint with thousands of extras stays
  // readable.
  constexpr int kMaxWarnings = 32;
  int unexpected = 0;
  for (const std::string& name : ckpt.names()) {
    if (used.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
    if (++unexpected <= kMaxWarnings) {
      MNEMO_LOG(kWarning) << ckpt.find(name).file->path() << ": unexpected tensor '" << name
                          << "' ignored (not part of " << architecture_name(config.architecture)
                          << " with this config.json)";
    }
  }
  if (unexpected > kMaxWarnings) {
    MNEMO_LOG(kWarning) << ckpt.source() << ": " << unexpected - kMaxWarnings
                        << " more unexpected tensors ignored";
  }
  return w;
}

ModelWeights random_model_weights(const ModelConfig& config, uint64_t seed, float std) {
  ModelWeights w;
  std::vector<Slot> slots = bind(config, &w);
  for (size_t i = 0; i < slots.size(); ++i) {
    Slot& s = slots[i];
    *s.tensor = Tensor::zeros(s.shape, DType::kF32);
    fill_normal(*s.tensor, splitmix64(seed) ^ splitmix64(i + 1), s.is_norm ? 1.0f : 0.0f, std);
  }
  if (config.tie_word_embeddings) w.lm_head = w.embed_tokens;
  return w;
}

}  // namespace mnemo
