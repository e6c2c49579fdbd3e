// Flags shared by every command that loads a model: --model / --random-weights / --seed, and the
// model options. Loading goes through one function so every command accepts the same inputs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "runtime/cli/flags.h"

namespace mnemo::cli {

// The bundled default model (models/tiny in the source tree), used when --model is not given.
std::string default_model_dir();

std::vector<FlagSpec> model_flag_specs();

struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null for --random-weights without --tokenizer
  std::string source;                    // model dir or "random weights from CONFIG"
};

Result<LoadedModel> load_model_from_flags(const Flags& flags, bool need_tokenizer);

}  // namespace mnemo::cli
