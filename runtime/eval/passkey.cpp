// Passkey prompts, scoring and the evaluation loop. The prompt builder mirrors
// tools/train/tasks.py's passkey_prompt line by line; keep the two in step.
#include "runtime/eval/passkey.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "runtime/generate.h"

namespace mnemo::eval {
namespace {

using Clock = std::chrono::steady_clock;

int64_t encoded_length(const Tokenizer& tokenizer, std::string_view text) {
  return static_cast<int64_t>(tokenizer.encode(text, /*add_bos=*/false).size());
}

// tasks.py's _repeat_filler_text(tok, n_tokens, phase=0): whole sentences, in order, while they fit.
std::vector<std::string_view> repeat_filler(const std::vector<int64_t>& sentence_tokens, int64_t budget_tokens) {
  std::vector<std::string_view> out;
  constexpr size_t kCount = std::size(kRepeatSentences);
  for (int64_t total = 0, i = 0;; ++i) {
    const int64_t t = sentence_tokens[i % kCount];
    if (total + t > budget_tokens) break;
    out.push_back(kRepeatSentences[i % kCount]);
    total += t;
  }
  return out;
}

// Python's round(): to nearest, ties to even (round(2.5) == 2), whatever the FP rounding mode.
int64_t round_half_even(double x) {
  const double lo = std::floor(x);
  const double frac = x - lo;
  const int64_t n = static_cast<int64_t>(lo);
  if (frac < 0.5) return n;
  if (frac > 0.5) return n + 1;
  return n % 2 == 0 ? n : n + 1;
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", u);
      out += buf;
    } else {
      out += c;  // UTF-8 passes through: decode() output is valid UTF-8
    }
  }
  out += '"';
}

// A finite JSON number (JSON has no inf/nan; those become 0).
std::string json_number(double x, const char* format = "%.6g") {
  if (!std::isfinite(x)) return "0";
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, x);
  return buf;
}

double rate(double count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

}  // namespace

std::string passkey_needle(std::string_view key) {
  std::string k(key);
  return "The pass key is " + k + ". Remember it. " + k + " is the pass key.";
}

Result<PasskeyPrompt> build_passkey_prompt(const Tokenizer& tokenizer, int64_t target_tokens, double depth,
                                           std::string_view key) {
  if (key.empty() || key.find_first_not_of("0123456789") != std::string_view::npos) {
    return invalid_argument("passkey key must be decimal digits, got '", key, "'");
  }
  if (!(depth >= 0.0 && depth <= 1.0)) return invalid_argument("passkey depth must be in [0, 1], got ", depth);
  const std::string needle = passkey_needle(key);
  const int64_t bos_tokens = tokenizer.bos_id() >= 0 ? 1 : 0;
  const int64_t key_tokens = encoded_length(tokenizer, key);
  const int64_t fixed = bos_tokens + encoded_length(tokenizer, kPasskeyIntro) + encoded_length(tokenizer, needle) +
                        encoded_length(tokenizer, kPasskeyQuestion) + key_tokens;
  std::vector<int64_t> sentence_tokens;
  for (std::string_view s : kRepeatSentences) sentence_tokens.push_back(encoded_length(tokenizer, s));

  // As tasks.py: fill to the budget, and if the joined text encodes longer than the pieces summed
  // (it does not for sentencepiece with a dummy prefix, but stay safe), shrink and retry.
  int64_t budget = target_tokens - fixed;
  for (int attempt = 0; attempt < 8; ++attempt) {
    const std::vector<std::string_view> sentences = repeat_filler(sentence_tokens, budget);
    const int64_t num = static_cast<int64_t>(sentences.size());
    const int64_t cut = round_half_even(depth * static_cast<double>(num));
    PasskeyPrompt p;
    p.text = kPasskeyIntro;
    for (int64_t i = 0; i <= num; ++i) {
      if (i == cut) (p.text += ' ') += needle;
      if (i < num) (p.text += ' ') += sentences[i];
    }
    (p.text += ' ') += kPasskeyQuestion;
    p.ids = tokenizer.encode(p.text, /*add_bos=*/bos_tokens > 0);
    const int64_t over = static_cast<int64_t>(p.ids.size()) + key_tokens - target_tokens;
    if (over <= 0) {
      p.key = std::string(key);
      p.depth = depth;
      p.filler_sentences = num;
      p.needle_sentence = cut;
      p.key_tokens = key_tokens;
      return p;
    }
    budget -= over;
  }
  return invalid_argument("a passkey prompt needs at least ", fixed, " tokens (intro, needle, question and a ",
                          key_tokens, "-token answer); the target was ", target_tokens);
}

std::vector<PasskeyTrialSpec> passkey_trial_specs(uint64_t seed, int64_t trials) {
  std::mt19937_64 rng(seed);
  std::vector<PasskeyTrialSpec> specs;
  for (int64_t i = 0; i < trials; ++i) {
    // 2^64 mod 90000 is < 2^17: the modulo bias is below 1e-14.
    const uint64_t key = 10000 + rng() % 90000;
    const double depth = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1), 53 random bits
    specs.push_back({std::to_string(key), depth});
  }
  return specs;
}

bool passkey_answer_correct(std::string_view answer, std::string_view key) {
  std::string digits;
  for (const char c : answer) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') continue;
    if (c < '0' || c > '9') break;
    digits += c;
  }
  return key.size() == 5 && digits.size() >= 5 && std::string_view(digits).substr(0, 5) == key;
}

Result<PasskeyReport> run_passkey_eval(LlamaModel& model, const Tokenizer& tokenizer,
                                       const PasskeyEvalOptions& options, const PasskeyProgressFn& progress) {
  if (options.context_tokens <= 0) {
    return invalid_argument("passkey context_tokens must be positive, got ", options.context_tokens);
  }
  if (options.trials <= 0) return invalid_argument("passkey trials must be positive, got ", options.trials);
  PasskeyReport report;
  report.context_tokens = options.context_tokens;
  report.trials = options.trials;
  report.seed = options.seed;

  GenerateOptions generate_options;  // greedy
  generate_options.max_new_tokens = kPasskeyAnswerTokens;
  for (int64_t id : model.config().eos_token_ids) generate_options.stop_token_ids.push_back(static_cast<int32_t>(id));
  for (int32_t id : tokenizer.eos_ids()) generate_options.stop_token_ids.push_back(id);

  int64_t correct = 0, prompt_tokens = 0, generated_tokens = 0, decode_tokens = 0;
  double prefill_s = 0, decode_s = 0;
  const std::vector<PasskeyTrialSpec> specs = passkey_trial_specs(options.seed, options.trials);
  for (int64_t i = 0; i < options.trials; ++i) {
    MNEMO_ASSIGN_OR_RETURN(PasskeyPrompt prompt,
                           build_passkey_prompt(tokenizer, options.context_tokens, specs[i].depth, specs[i].key));
    MNEMO_ASSIGN_OR_RETURN(auto seq, model.new_sequence());
    const auto t0 = Clock::now();
    auto t_first = t0;
    bool first = true;
    auto on_token = [&](int32_t) {
      if (first) t_first = Clock::now();
      first = false;
      return true;
    };
    auto generated = generate(model, *seq, prompt.ids, generate_options, on_token);
    if (!generated.ok()) {
      return generated.status().with_context("passkey trial " + std::to_string(i + 1) + " (" +
                                             std::to_string(prompt.ids.size()) + " prompt tokens)");
    }
    const auto t1 = Clock::now();
    if (first) t_first = t1;  // nothing generated (EOS first): all of it was prefill

    PasskeyTrial trial;
    trial.depth = prompt.depth;
    trial.key = prompt.key;
    trial.answer = tokenizer.decode(*generated);
    trial.correct = passkey_answer_correct(trial.answer, trial.key);
    trial.prompt_tokens = static_cast<int64_t>(prompt.ids.size());
    trial.generated_tokens = static_cast<int64_t>(generated->size());
    trial.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
    trial.decode_seconds = std::chrono::duration<double>(t1 - t_first).count();
    correct += trial.correct ? 1 : 0;
    prompt_tokens += trial.prompt_tokens;
    generated_tokens += trial.generated_tokens;
    decode_tokens += std::max<int64_t>(0, trial.generated_tokens - 1);
    prefill_s += trial.prefill_seconds;
    decode_s += trial.decode_seconds;
    if (progress) progress(i, trial);
    report.results.push_back(std::move(trial));
  }
  report.accuracy = static_cast<double>(correct) / static_cast<double>(options.trials);
  report.prefill_tokens_per_s = rate(static_cast<double>(prompt_tokens), prefill_s);
  report.decode_tokens_per_s = rate(static_cast<double>(decode_tokens), decode_s);
  report.tokens_per_s = rate(static_cast<double>(prompt_tokens + generated_tokens), prefill_s + decode_s);
  return report;
}

std::string passkey_report_json(const PasskeyReport& report, std::string_view model_name,
                                int64_t max_position_embeddings) {
  std::string out = "{\n  \"task\": \"passkey\",\n  \"filler\": \"repeat\",\n  \"model\": ";
  append_json_string(out, model_name);
  out += ",\n  \"max_position_embeddings\": " + std::to_string(max_position_embeddings);
  out += ",\n  \"context\": " + std::to_string(report.context_tokens);
  out += ",\n  \"trials\": " + std::to_string(report.trials);
  out += ",\n  \"seed\": " + std::to_string(report.seed);
  out += ",\n  \"accuracy\": " + json_number(report.accuracy);
  out += ",\n  \"tokens_per_s\": " + json_number(report.tokens_per_s, "%.1f");
  out += ",\n  \"prefill_tokens_per_s\": " + json_number(report.prefill_tokens_per_s, "%.1f");
  out += ",\n  \"decode_tokens_per_s\": " + json_number(report.decode_tokens_per_s, "%.1f");
  out += ",\n  \"results\": [";
  for (size_t i = 0; i < report.results.size(); ++i) {
    const PasskeyTrial& t = report.results[i];
    out += i ? ",\n    {" : "\n    {";
    out += "\"depth\": " + json_number(t.depth, "%.6f");
    out += ", \"key\": ";
    append_json_string(out, t.key);
    out += ", \"answer\": ";
    append_json_string(out, t.answer);
    out += ", \"correct\": ";
    out += t.correct ? "true" : "false";
    out += ", \"prompt_tokens\": " + std::to_string(t.prompt_tokens);
    out += ", \"generated_tokens\": " + std::to_string(t.generated_tokens);
    out += ", \"prefill_seconds\": " + json_number(t.prefill_seconds, "%.4f");
    out += ", \"decode_seconds\": " + json_number(t.decode_seconds, "%.4f");
    out += "}";
  }
  out += report.results.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

}  // namespace mnemo::eval
