#include "runtime/generate.h"

#include <algorithm>

namespace mnemo {

Result<std::vector<int32_t>> generate(LlamaModel& model, Sequence& seq, std::span<const int32_t> prompt,
                                      const GenerateOptions& options, const GenerateTokenFn& on_token) {
  MNEMO_RETURN_IF_ERROR(options.sampling.validate());
  if (prompt.empty()) return invalid_argument("generate: the prompt has no tokens");
  Sampler sampler(options.sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  std::vector<int32_t> generated;
  Tensor logits;
  MNEMO_RETURN_IF_ERROR(model.forward(seq, prompt, &logits));
  const int64_t vocab = model.config().vocab_size;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sampler.sample(logits.data<float>(), vocab, history);
    if (std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(), token) !=
        options.stop_token_ids.end()) {
      break;
    }
    generated.push_back(token);
    history.push_back(token);
    if (on_token && !on_token(token)) break;
    if (i + 1 == options.max_new_tokens) break;  // no forward for a token nobody will sample after
    const int32_t one[1] = {token};
    MNEMO_RETURN_IF_ERROR(model.forward(seq, one, &logits));
  }
  return generated;
}

}  // namespace mnemo
