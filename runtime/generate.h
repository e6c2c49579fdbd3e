// Generation on one sequence: prefill a prompt, then sample token by token until a stop condition.
// The runtime's Session and Scheduler build on the same pieces; this is the single-stream path that
// `mnemo run` uses.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/llama.h"
#include "model/sampler.h"

namespace mnemo {

struct GenerateOptions {
  int64_t max_new_tokens = 128;       // Default: 128
  SamplingParams sampling;            // Default: greedy
  std::vector<int32_t> stop_token_ids;  // generation stops after emitting one (not included in output)
};

// Called for every generated token; return false to stop early.
using GenerateTokenFn = std::function<bool(int32_t token)>;

// Appends `prompt` to `seq`, then generates. Returns the generated ids (without a stop token).
Result<std::vector<int32_t>> generate(LlamaModel& model, Sequence& seq, std::span<const int32_t> prompt,
                                      const GenerateOptions& options, const GenerateTokenFn& on_token);

}  // namespace mnemo
