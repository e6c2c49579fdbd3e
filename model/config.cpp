// config.json text -> ModelConfig for the Llama family. Defaults are those of each family's
// transformers config class (LlamaConfig, MistralConfig, Qwen2Config, MiniCPM's remote-code
// MiniCPMConfig); the shape-defining fields have no useful default and are required. Reading a
// model directory (generation_config.json, tokenizer_config.json) lives in config_load.cpp.
#include "model/config.h"

#include <cmath>

#include "model/json_util.h"

namespace mnemo {
namespace {

namespace json = boost::json;
using json_util::Fields;

struct Family {
  Architecture arch;
  const char* architecture;  // config.json's "architectures" entry
  const char* model_type;
  int64_t max_position_embeddings;
  int64_t num_key_value_heads;  // 0: num_attention_heads
  bool tie_word_embeddings;
  int64_t bos_token_id;  // -1: none
  int64_t eos_token_id;
};

constexpr Family kFamilies[] = {
    {Architecture::kLlama, "LlamaForCausalLM", "llama", 2048, 0, false, 1, 2},
    {Architecture::kMistral, "MistralForCausalLM", "mistral", 131072, 8, false, 1, 2},
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2", 32768, 0, false, -1, -1},
    {Architecture::kMiniCPM, "MiniCPMForCausalLM", "minicpm", 2048, 0, true, 1, 2},
};

std::string supported_architectures() {
  std::string s;
  for (const Family& f : kFamilies) s += (s.empty() ? "" : ", ") + std::string(f.architecture);
  return s;
}

Result<const Family*> detect_family(const Fields& f) {
  if (const json::value* archs = f.get("architectures")) {
    if (!archs->is_array()) return f.type_error("architectures", "array of strings", *archs);
    std::string names;
    for (const json::value& a : archs->get_array()) {
      if (!a.is_string()) return f.type_error("architectures", "array of strings", a);
      for (const Family& fam : kFamilies) {
        if (a.get_string() == fam.architecture) return &fam;
      }
      names += (names.empty() ? "'" : ", '") + std::string(a.get_string()) + "'";
    }
    if (!names.empty()) {
      return unimplemented(f.path(), ": unsupported architecture ", names,
                           " (supported: ", supported_architectures(), ")");
    }
  }
  // No "architectures" (older exports): fall back to model_type.
  std::string model_type;
  MNEMO_RETURN_IF_ERROR(f.read("model_type", &model_type));
  if (model_type.empty()) {
    return invalid_argument(f.path(), ": missing required field 'architectures' (or 'model_type')");
  }
  for (const Family& fam : kFamilies) {
    if (model_type == fam.model_type) return &fam;
  }
  return unimplemented(f.path(), ": unsupported model_type '", model_type,
                       "' (supported architectures: ", supported_architectures(), ")");
}

// Reads rope_scaling (or transformers 5's rope_parameters; `type_optional` there, where an absent
// rope_type means "default"). `top` is config.json's top level, for
// original_max_position_embeddings.
Status parse_rope_scaling(const Fields& s, const Fields& top, bool type_optional, ModelConfig* c) {
  const char* type_key = s.has("rope_type") ? "rope_type" : "type";
  std::string type;
  MNEMO_RETURN_IF_ERROR(s.read(type_key, &type));
  if (type.empty()) {
    if (!type_optional) {
      return invalid_argument(s.path(), ": missing required field '", s.name("rope_type"),
                              "' (or '", s.name("type"), "')");
    }
    type = "default";
  }
  RopeScaling& r = c->rope_scaling;
  r = RopeScaling{};
  double attention_factor = 0;
  if (s.has("attention_factor")) {
    MNEMO_RETURN_IF_ERROR(s.read("attention_factor", &attention_factor));
    r.attention_factor = attention_factor;
  }
  if (type == "default") return Status::Ok();
  if (type == "linear" || type == "dynamic") {
    r.type = type == "linear" ? RopeScalingType::kLinear : RopeScalingType::kDynamic;
    MNEMO_RETURN_IF_ERROR(s.require("factor", &r.factor));
    MNEMO_RETURN_IF_ERROR(
        s.read("original_max_position_embeddings", &r.original_max_position_embeddings));
  } else if (type == "llama3") {
    r.type = RopeScalingType::kLlama3;
    MNEMO_RETURN_IF_ERROR(s.require_all("factor", &r.factor, "low_freq_factor", &r.low_freq_factor,
                                        "high_freq_factor", &r.high_freq_factor,
                                        "original_max_position_embeddings",
                                        &r.original_max_position_embeddings));
    if (r.high_freq_factor <= r.low_freq_factor) {
      return s.invalid("high_freq_factor", "must exceed low_freq_factor");
    }
  } else if (type == "longrope" || type == "su") {  // "su": Phi-3's early name for longrope
    r.type = RopeScalingType::kLongRope;
    MNEMO_RETURN_IF_ERROR(
        s.require_all("short_factor", &r.short_factor, "long_factor", &r.long_factor));
    // MiniCPM4 writes original_max_position_embeddings inside rope_scaling; Phi-3 at the top level.
    MNEMO_RETURN_IF_ERROR(
        s.read("original_max_position_embeddings", &r.original_max_position_embeddings));
    if (r.original_max_position_embeddings == 0) {
      MNEMO_RETURN_IF_ERROR(
          top.read("original_max_position_embeddings", &r.original_max_position_embeddings));
    }
    if (r.original_max_position_embeddings == 0)
      r.original_max_position_embeddings = c->max_position_embeddings;
    if (r.original_max_position_embeddings <= 0) {
      return s.invalid("original_max_position_embeddings", "must be positive");
    }
    r.factor = static_cast<double>(c->max_position_embeddings) /
               static_cast<double>(r.original_max_position_embeddings);
    MNEMO_RETURN_IF_ERROR(s.read("factor", &r.factor));
    const size_t half = static_cast<size_t>(c->head_dim / 2);
    for (const auto* list : {&r.short_factor, &r.long_factor}) {
      if (list->size() != half) {
        return s.invalid(
            list == &r.short_factor ? "short_factor" : "long_factor",
            detail::str_cat("has ", list->size(), " entries, expected head_dim/2 = ", half));
      }
    }
  } else if (type == "yarn") {
    r.type = RopeScalingType::kYarn;
    MNEMO_RETURN_IF_ERROR(s.require("factor", &r.factor));
    MNEMO_RETURN_IF_ERROR(s.read_all("original_max_position_embeddings",
                                     &r.original_max_position_embeddings, "beta_fast", &r.beta_fast,
                                     "beta_slow", &r.beta_slow));
  } else {
    return unimplemented(
        s.path(), ": field '", s.name(type_key), "': rope type '", type,
        "' is not supported (supported: default, linear, dynamic, llama3, longrope, yarn)");
  }
  if (!(r.factor > 0)) return s.invalid("factor", "must be positive");
  return Status::Ok();
}

Status read_sparse_config(const Fields& s, SparseConfig* out) {
  SparseConfig sc;
  MNEMO_RETURN_IF_ERROR(s.read_all("kernel_size", &sc.kernel_size, "kernel_stride",
                                   &sc.kernel_stride, "block_size", &sc.block_size, "init_blocks",
                                   &sc.init_blocks, "window_size", &sc.window_size, "topk",
                                   &sc.topk, "dense_len", &sc.dense_len, "use_nope", &sc.use_nope));
  using KeyValue = std::pair<const char*, int>;
  for (auto [key, v] :
       {KeyValue{"kernel_size", sc.kernel_size}, KeyValue{"kernel_stride", sc.kernel_stride},
        KeyValue{"block_size", sc.block_size}, KeyValue{"topk", sc.topk}}) {
    if (v <= 0) return s.invalid(key, detail::str_cat("must be positive, got ", v));
  }
  if (sc.init_blocks < 0) return s.invalid("init_blocks", "must not be negative");
  if (sc.window_size < 0) return s.invalid("window_size", "must not be negative");
  if (sc.dense_len < -1) return s.invalid("dense_len", "must be -1 (always sparse) or a length");
  // Windows of kernel_size every kernel_stride tokens tile the keys, and a block's score is a max
  // over whole windows: both need the stride to divide evenly.
  if (sc.kernel_size < sc.kernel_stride)
    return s.invalid("kernel_size", "must be at least kernel_stride");
  if (sc.block_size % sc.kernel_stride != 0) {
    return s.invalid("block_size", detail::str_cat("must be a multiple of kernel_stride (",
                                                   sc.kernel_stride, "), got ", sc.block_size));
  }
  *out = sc;
  return Status::Ok();
}

Status check_positive(const Fields& f, const char* key, int64_t v) {
  if (v <= 0) return f.invalid(key, detail::str_cat("must be positive, got ", v));
  return Status::Ok();
}

Status check_token_ids(const ModelConfig& c, const std::string& path) {
  for (const auto* list : {&c.bos_token_ids, &c.eos_token_ids}) {
    for (int64_t id : *list) {
      if (id >= c.vocab_size) {
        return invalid_argument(path, ": ", list == &c.bos_token_ids ? "bos" : "eos", " token id ",
                                id, " is outside the vocabulary (vocab_size ", c.vocab_size, ")");
      }
    }
  }
  return Status::Ok();
}

Result<ModelConfig> parse_config(const std::string& text, const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(json::value root, json_util::parse(text, path));
  if (!root.is_object()) {
    return invalid_argument(path, ": expected a JSON object, got ", json_util::describe(root));
  }
  const json::object& obj = root.get_object();
  const Fields f(obj, path);
  MNEMO_ASSIGN_OR_RETURN(const Family* fam, detect_family(f));
  ModelConfig c;
  c.architecture = fam->arch;
  c.model_type = fam->model_type;
  MNEMO_RETURN_IF_ERROR(f.read("model_type", &c.model_type));
  const json::object* quant = nullptr;
  MNEMO_RETURN_IF_ERROR(f.read_object("quantization_config", &quant));
  if (quant) {
    std::string method = "unknown";
    MNEMO_RETURN_IF_ERROR(f.nested(*quant, "quantization_config").read("quant_method", &method));
    return unimplemented(path, ": quantized checkpoints are not supported (quant_method '", method,
                         "')");
  }

  using Required = std::pair<const char*, int64_t*>;
  for (auto [key, out] :
       {Required{"vocab_size", &c.vocab_size}, Required{"hidden_size", &c.hidden_size},
        Required{"intermediate_size", &c.intermediate_size},
        Required{"num_hidden_layers", &c.num_hidden_layers},
        Required{"num_attention_heads", &c.num_attention_heads}}) {
    MNEMO_RETURN_IF_ERROR(f.require(key, out));
    MNEMO_RETURN_IF_ERROR(check_positive(f, key, *out));
  }
  c.num_key_value_heads =
      fam->num_key_value_heads ? fam->num_key_value_heads : c.num_attention_heads;
  MNEMO_RETURN_IF_ERROR(f.read("num_key_value_heads", &c.num_key_value_heads));
  MNEMO_RETURN_IF_ERROR(check_positive(f, "num_key_value_heads", c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return invalid_argument(path, ": num_attention_heads (", c.num_attention_heads,
                            ") must be a multiple of num_key_value_heads (", c.num_key_value_heads,
                            ")");
  }
  if (f.has("head_dim")) {
    MNEMO_RETURN_IF_ERROR(f.read("head_dim", &c.head_dim));
    MNEMO_RETURN_IF_ERROR(check_positive(f, "head_dim", c.head_dim));
  } else if (c.hidden_size % c.num_attention_heads != 0) {
    return invalid_argument(path, ": hidden_size (", c.hidden_size,
                            ") is not divisible by num_attention_heads (", c.num_attention_heads,
                            ") and no head_dim is given");
  } else {
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    return f.invalid("head_dim", detail::str_cat("must be even for RoPE, got ", c.head_dim));

  c.max_position_embeddings = fam->max_position_embeddings;
  MNEMO_RETURN_IF_ERROR(f.read("max_position_embeddings", &c.max_position_embeddings));
  MNEMO_RETURN_IF_ERROR(check_positive(f, "max_position_embeddings", c.max_position_embeddings));
  MNEMO_RETURN_IF_ERROR(f.read("rms_norm_eps", &c.rms_norm_eps));
  if (!(c.rms_norm_eps > 0)) return f.invalid("rms_norm_eps", "must be positive");
  MNEMO_RETURN_IF_ERROR(f.read("hidden_act", &c.hidden_act));
  if (c.hidden_act != "silu" && c.hidden_act != "swish") {
    return unimplemented(path, ": field 'hidden_act': activation '", c.hidden_act,
                         "' is not supported (silu)");
  }
  c.tie_word_embeddings = fam->tie_word_embeddings;
  MNEMO_RETURN_IF_ERROR(f.read("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.architecture == Architecture::kQwen2) {
    c.attention_bias = true;  // Qwen2Attention: q/k/v always have a bias, o_proj never
  } else if (c.architecture != Architecture::kMistral) {  // MistralAttention has no bias at all
    MNEMO_RETURN_IF_ERROR(f.read("attention_bias", &c.attention_bias));
    c.attention_output_bias = c.attention_bias;  // LlamaAttention/MiniCPM: o_proj bias too
  }
  if (c.architecture == Architecture::kLlama)
    MNEMO_RETURN_IF_ERROR(f.read("mlp_bias", &c.mlp_bias));
  MNEMO_RETURN_IF_ERROR(f.read("torch_dtype", &c.torch_dtype));
  if (c.torch_dtype.empty())
    MNEMO_RETURN_IF_ERROR(f.read("dtype", &c.torch_dtype));  // transformers 5
  if (c.architecture == Architecture::kMistral) {
    // MistralConfig's default is 4096; an explicit null (v0.2 on) means full attention.
    if (!obj.contains("sliding_window")) c.sliding_window = 4096;
    MNEMO_RETURN_IF_ERROR(f.read("sliding_window", &c.sliding_window));
  } else if (c.architecture == Architecture::kQwen2) {
    bool use_sliding_window = false;
    MNEMO_RETURN_IF_ERROR(f.read("use_sliding_window", &use_sliding_window));
    if (use_sliding_window) {
      c.sliding_window = 4096;
      MNEMO_RETURN_IF_ERROR(f.read("sliding_window", &c.sliding_window));
    }
  }
  if (c.sliding_window < 0) return f.invalid("sliding_window", "must not be negative");

  if (c.architecture == Architecture::kMiniCPM) {
    c.scale_depth = c.dim_model_base = 1.0;  // MiniCPMConfig defaults (scale_emb too)
    MNEMO_RETURN_IF_ERROR(f.read_all("scale_emb", &c.scale_emb, "scale_depth", &c.scale_depth,
                                     "dim_model_base", &c.dim_model_base));
    if (!(c.dim_model_base > 0)) return f.invalid("dim_model_base", "must be positive");
    if (!(c.scale_depth >= 0)) return f.invalid("scale_depth", "must not be negative");
  }
  const json::object* sparse = nullptr;
  MNEMO_RETURN_IF_ERROR(f.read_object("sparse_config", &sparse));
  if (sparse) {
    SparseConfig sc;
    MNEMO_RETURN_IF_ERROR(read_sparse_config(f.nested(*sparse, "sparse_config"), &sc));
    c.sparse = sc;
  }

  // Transformers 5 writes rope_parameters {rope_theta, rope_type, ...}; earlier versions rope_theta
  // and rope_scaling at the top level. rope_parameters wins when both are present.
  MNEMO_RETURN_IF_ERROR(f.read("rope_theta", &c.rope_theta));
  const json::object* rope = nullptr;
  MNEMO_RETURN_IF_ERROR(f.read_object("rope_parameters", &rope));
  if (rope) {
    const Fields p = f.nested(*rope, "rope_parameters");
    MNEMO_RETURN_IF_ERROR(p.read("rope_theta", &c.rope_theta));
    MNEMO_RETURN_IF_ERROR(parse_rope_scaling(p, f, /*type_optional=*/true, &c));
  } else {
    MNEMO_RETURN_IF_ERROR(f.read_object("rope_scaling", &rope));
    if (rope)
      MNEMO_RETURN_IF_ERROR(parse_rope_scaling(f.nested(*rope, "rope_scaling"), f, false, &c));
  }
  if (!(c.rope_theta > 0)) return f.invalid("rope_theta", "must be positive");

  // Absent ids take the family default; load_model_config may fill them from other files instead.
  if (fam->bos_token_id >= 0) c.bos_token_ids = {fam->bos_token_id};
  if (fam->eos_token_id >= 0) c.eos_token_ids = {fam->eos_token_id};
  MNEMO_RETURN_IF_ERROR(f.read_ids("bos_token_id", &c.bos_token_ids));
  MNEMO_RETURN_IF_ERROR(f.read_ids("eos_token_id", &c.eos_token_ids));
  MNEMO_RETURN_IF_ERROR(check_token_ids(c, path));
  return c;
}

}  // namespace

const char* architecture_name(Architecture arch) {
  for (const Family& f : kFamilies) {
    if (f.arch == arch) return f.architecture;
  }
  return "?";
}

double ModelConfig::residual_scale() const {
  return scale_depth > 0 ? scale_depth / std::sqrt(static_cast<double>(num_hidden_layers)) : 1.0;
}

double ModelConfig::logit_divisor() const {
  return dim_model_base > 0 ? static_cast<double>(hidden_size) / dim_model_base : 1.0;
}

Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& path) {
  return parse_config(json_text, path);
}

Result<SparseConfig> parse_sparse_config(const std::string& json_text, const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(json::value root, json_util::parse(json_text, path));
  if (!root.is_object()) {
    return invalid_argument(path, ": expected a JSON object, got ", json_util::describe(root));
  }
  // Either the sparse_config object itself or a whole config.json holding one.
  const json::object* obj = &root.get_object();
  const Fields top(*obj, path);
  const json::object* nested = nullptr;
  MNEMO_RETURN_IF_ERROR(top.read_object("sparse_config", &nested));
  SparseConfig sc;
  MNEMO_RETURN_IF_ERROR(
      read_sparse_config(nested ? top.nested(*nested, "sparse_config") : top, &sc));
  return sc;
}

}  // namespace mnemo
