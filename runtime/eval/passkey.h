// Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention"): a 5-digit key hidden at some depth of
// a long run of filler sentences, then asked for at the end. `mnemo eval passkey` runs it.
//
// Key decision: prompts are built exactly as tools/train/tasks.py's passkey_prompt builds them (same
// intro, needle, question, filler sentences, fitting loop and depth rounding), so accuracies measured
// here and by tools/train/eval_passkey.py are comparable. Text first, then [BOS] + encode(text); the
// tokenizer never merges across whitespace, so a prompt's length is the sum of its pieces' lengths.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace mnemo::eval {

// The pieces of the prompt, verbatim from tools/train/tasks.py (PK_INTRO, PK_NEEDLE, PK_QUESTION,
// REPEAT_SENTENCES). The needle is "The pass key is {k}. Remember it. {k} is the pass key."
inline constexpr std::string_view kPasskeyIntro =
    "There is an important pass key hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the pass key.";
inline constexpr std::string_view kPasskeyQuestion = "What is the pass key? The pass key is";
inline constexpr std::string_view kRepeatSentences[] = {
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."};
std::string passkey_needle(std::string_view key);

// Greedy tokens generated per trial, as eval_passkey.py's N_NEW: ' ', 5 digits, '.'.
inline constexpr int64_t kPasskeyAnswerTokens = 7;

struct PasskeyPrompt {
  std::string text;             // intro, filler with the needle, question; joined by single spaces
  std::vector<int32_t> ids;     // [BOS] + encode(text) (no BOS when the tokenizer has none)
  std::string key;              // "48213"
  double depth = 0;             // requested depth in [0, 1]
  int64_t filler_sentences = 0; // filler sentences in the prompt
  int64_t needle_sentence = 0;  // filler sentences before the needle: round-half-even(depth * filler_sentences)
  int64_t key_tokens = 0;       // tokens of encode(key) ("▁" + 5 digits), reserved inside the target
};

// The passkey prompt for a target length: ids.size() + key_tokens <= target_tokens, and as much
// repeated filler (whole sentences, starting at "The grass is green.") as fits — so at most one
// filler sentence short of the target. `key` must be decimal digits; `depth` in [0, 1].
// InvalidArgument when even a prompt without filler does not fit (the message gives the minimum).
Result<PasskeyPrompt> build_passkey_prompt(const Tokenizer& tokenizer, int64_t target_tokens, double depth,
                                           std::string_view key);

// Key and depth of each trial, drawn from `seed` (std::mt19937_64 turned into integers and doubles by
// hand, so a seed gives the same trials on every platform): key uniform in [10000, 99999], depth
// uniform in [0, 1).
struct PasskeyTrialSpec {
  std::string key;
  double depth = 0;
};
std::vector<PasskeyTrialSpec> passkey_trial_specs(uint64_t seed, int64_t trials);

// Whether a generated continuation answers `key`: with all whitespace removed, it starts with a run of
// at least 5 digits whose first 5 are the key (eval_passkey.py's rule, spaces between digits allowed).
bool passkey_answer_correct(std::string_view answer, std::string_view key);

struct PasskeyEvalOptions {
  // Target prompt length in tokens, answer included. May exceed the model's
  // max_position_embeddings (that measures extrapolation). Required, > 0.
  int64_t context_tokens = 0;
  // Number of prompts. Required, > 0.
  int64_t trials = 0;
  // Seed of keys and depths. Default: 0.
  uint64_t seed = 0;
};

struct PasskeyTrial {
  double depth = 0;
  std::string key;
  std::string answer;           // decoded greedy continuation, as generated
  bool correct = false;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;   // prompt forward and the first token
  double decode_seconds = 0;    // the remaining generated tokens
};

struct PasskeyReport {
  int64_t context_tokens = 0;
  int64_t trials = 0;
  uint64_t seed = 0;
  double accuracy = 0;              // correct / trials, in [0, 1]
  double tokens_per_s = 0;          // prompt + generated tokens / all seconds
  double prefill_tokens_per_s = 0;  // all prompt tokens / all prefill seconds
  double decode_tokens_per_s = 0;   // tokens after the first / all decode seconds (0 if none)
  std::vector<PasskeyTrial> results;
};

// Called after each trial with its 0-based index.
using PasskeyProgressFn = std::function<void(int64_t index, const PasskeyTrial& trial)>;

// Builds `options.trials` prompts and decodes each greedily (kPasskeyAnswerTokens tokens, stopping
// at EOS) on a fresh sequence of `model`. The model's KV budget must hold context_tokens tokens
// (OutOfBudget otherwise). On error nothing is returned; sequences are released either way.
Result<PasskeyReport> run_passkey_eval(LlamaModel& model, const Tokenizer& tokenizer,
                                       const PasskeyEvalOptions& options, const PasskeyProgressFn& progress = {});

// The report as a JSON object: model, context, trials, seed, accuracy, tokens/s, and per trial its
// depth, key, answer, correct and prompt tokens. `model_name` is written as given.
std::string passkey_report_json(const PasskeyReport& report, std::string_view model_name,
                                int64_t max_position_embeddings);

}  // namespace mnemo::eval
