#include "runtime/cli/model_flags.h"

#include "core/file.h"
#include "model/config.h"
#include "model/weights.h"

#ifndef MNEMO_SOURCE_DIR
#define MNEMO_SOURCE_DIR "."
#endif

namespace mnemo::cli {

std::string default_model_dir() { return std::string(MNEMO_SOURCE_DIR) + "/models/tiny"; }

std::vector<FlagSpec> model_flag_specs() {
  return {
      {"model", "DIR", "Hugging Face model folder (config.json, *.safetensors, tokenizer.model)",
       "the bundled models/tiny"},
      {"random-weights", "CONFIG.json", "use random weights of this config instead of a checkpoint", ""},
      {"seed-weights", "N", "seed of --random-weights", "0"},
      {"tokenizer", "PATH", "tokenizer.model or its folder (default: the model folder)", ""},
      {"device", "NAME", "cpu or cuda[:N]", "cpu"},
      {"kv-budget-tokens", "N", "KV cache capacity in tokens", "65536"},
      {"chunk-tokens", "N", "largest prefill chunk", "2048"},
      {"positions", "POLICY", "exact (true positions) or bounded (InfLLM: distances capped at a window)", "exact"},
      {"bounded-window", "N", "local window of the bounded policy, in tokens", "sparse window_size, else half the model's context"},
      {"sparse-config", "FILE.json", "InfLLM-V2 sparse attention (MiniCPM4 sparse_config keys), for any model",
       "the checkpoint's sparse_config, else dense"},
  };
}

Result<LoadedModel> load_model_from_flags(const Flags& flags, bool need_tokenizer) {
  MNEMO_ASSIGN_OR_RETURN(Device device, parse_device(flags.get("device", "cpu")));
  ModelOptions options;
  options.device = device;  // a CUDA device this build or machine lacks is refused by the model, with the reason
  MNEMO_ASSIGN_OR_RETURN(options.kv_budget_tokens, flags.get_int("kv-budget-tokens", 65536, 64, int64_t{1} << 40));
  MNEMO_ASSIGN_OR_RETURN(options.chunk_tokens, flags.get_int("chunk-tokens", 2048, 1, int64_t{1} << 30));
  const std::string positions = flags.get("positions", "exact");
  if (positions == "bounded") {
    options.positions = PositionPolicy::kBounded;
  } else if (positions != "exact") {
    return invalid_argument("--positions: expected 'exact' or 'bounded', got '", positions, "'");
  }
  MNEMO_ASSIGN_OR_RETURN(options.bounded_window, flags.get_int("bounded-window", 0, 0, int64_t{1} << 40));
  if (flags.has("sparse-config")) {
    const std::string path = flags.get("sparse-config");
    MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
    MNEMO_ASSIGN_OR_RETURN(SparseConfig sparse, parse_sparse_config(text, path));
    options.block_tokens = sparse.block_size;  // selection blocks are KV blocks
    options.sparse = sparse;
  }
  LoadedModel out;
  std::string tokenizer_path = flags.get("tokenizer");
  if (flags.has("random-weights")) {
    if (flags.has("model")) return invalid_argument("--model and --random-weights are mutually exclusive");
    const std::string path = flags.get("random-weights");
    MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
    MNEMO_ASSIGN_OR_RETURN(ModelConfig config, parse_model_config(text, path));
    MNEMO_ASSIGN_OR_RETURN(int64_t seed, flags.get_int("seed-weights", 0, 0, INT64_MAX));
    ModelWeights weights = random_model_weights(config, static_cast<uint64_t>(seed));
    MNEMO_ASSIGN_OR_RETURN(out.model, LlamaModel::from_weights(std::move(config), std::move(weights), options));
    out.source = "random weights of " + path;
  } else {
    const std::string dir = flags.get("model", default_model_dir());
    if (!is_directory(dir)) {
      return not_found("model directory '", dir, "' does not exist",
                       flags.has("model") ? "" : " (the bundled default; run from a full checkout)");
    }
    MNEMO_ASSIGN_OR_RETURN(out.model, LlamaModel::load(dir, options));
    out.source = dir;
    // The model folder's tokenizer, when a command needs one or the folder has one.
    if (tokenizer_path.empty() && (need_tokenizer || file_exists(dir + "/tokenizer.model"))) tokenizer_path = dir;
  }
  if (!tokenizer_path.empty()) {
    MNEMO_ASSIGN_OR_RETURN(out.tokenizer, Tokenizer::load(tokenizer_path));
  } else if (need_tokenizer) {
    return invalid_argument("--random-weights has no tokenizer: pass --tokenizer PATH (or --tokens for logits)");
  }
  return out;
}

}  // namespace mnemo::cli
