// `mnemo eval <task>`: model evaluations. Tasks: passkey (runtime/eval/passkey.h).
//
// The KV budget follows the context: without --kv-budget-tokens the arena is sized to hold one
// prompt plus its answer, so a context past the model's max_position_embeddings (extrapolation) runs
// without a flag, and a short one does not reserve the 64K-token default.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "core/file.h"
#include "model/config.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/model_flags.h"
#include "runtime/eval/passkey.h"

namespace mnemo::cli {
namespace {

const char* kEvalUsage =
    "Usage: mnemo eval <task> [flags]   (mnemo eval <task> --help for its flags)\n\n"
    "Tasks:\n"
    "  passkey   retrieval of a 5-digit key hidden in N tokens of filler (greedy)\n";

std::vector<FlagSpec> passkey_flag_specs() {
  std::vector<FlagSpec> specs = {
      {"context", "N", "prompt length in tokens, answer included (may exceed the model's trained length)", ""},
      {"trials", "K", "number of prompts", ""},
      {"seed", "S", "seed of the keys and needle depths", "0"},
      {"filler", "KIND", "filler text: repeat (the classic repeated sentences)", "repeat"},
      {"json", "OUT.json", "write the report (per-trial depth, key, answer) as JSON", ""},
  };
  for (FlagSpec& s : model_flag_specs()) {
    if (s.name == "kv-budget-tokens") s.fallback = "context + 7 answer tokens";
    specs.push_back(std::move(s));
  }
  specs.push_back({"help", "", "show this help", ""});
  return specs;
}

Status write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return io_error("--json: cannot open '", path, "' for writing");
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) return io_error("--json: writing '", path, "' failed");
  return Status::Ok();
}

Status passkey_command(const std::vector<std::string>& args) {
  const auto specs = passkey_flag_specs();
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("eval passkey", specs, args));
  if (f.has("help")) {
    std::fputs(usage("eval passkey",
                     "Passkey retrieval accuracy: K prompts of about N tokens, a random 5-digit key at a random\n"
                     "depth, greedy answer. Progress per trial on stderr, accuracy on stdout.",
                     specs)
                   .c_str(),
               stdout);
    return Status::Ok();
  }
  if (!f.positional().empty()) {
    return invalid_argument("mnemo eval passkey: unexpected argument '", f.positional()[0], "'");
  }
  if (!f.has("context")) return invalid_argument("mnemo eval passkey: --context N is required");
  if (!f.has("trials")) return invalid_argument("mnemo eval passkey: --trials K is required");
  eval::PasskeyEvalOptions options;
  MNEMO_ASSIGN_OR_RETURN(options.context_tokens, f.get_int("context", 0, 1, int64_t{1} << 32));
  MNEMO_ASSIGN_OR_RETURN(options.trials, f.get_int("trials", 0, 1, int64_t{1} << 32));
  MNEMO_ASSIGN_OR_RETURN(int64_t seed, f.get_int("seed", 0, 0, INT64_MAX));
  options.seed = static_cast<uint64_t>(seed);
  if (const std::string filler = f.get("filler", "repeat"); filler != "repeat") {
    return invalid_argument("mnemo eval passkey: --filler: expected 'repeat', got '", filler,
                            "' (corpus-text filler needs data files mnemo does not ship)");
  }

  // The arena must hold the longest prompt plus the generated answer (generate() does not run the
  // last generated token, so this is one more than needed).
  const int64_t kv_needed = options.context_tokens + eval::kPasskeyAnswerTokens;
  Flags model_flags = f;
  if (f.has("kv-budget-tokens")) {
    MNEMO_ASSIGN_OR_RETURN(int64_t given, f.get_int("kv-budget-tokens", 0, 0, INT64_MAX));
    if (given < kv_needed) {
      return invalid_argument("mnemo eval passkey: --kv-budget-tokens ", given, " cannot hold --context ",
                              options.context_tokens, " plus ", eval::kPasskeyAnswerTokens,
                              " answer tokens; give at least ", kv_needed, " or leave it out");
    }
  } else {
    std::vector<std::string> with_budget = args;
    with_budget.push_back("--kv-budget-tokens=" + std::to_string(std::max<int64_t>(64, kv_needed)));
    MNEMO_ASSIGN_OR_RETURN(model_flags, Flags::parse("eval passkey", specs, with_budget));
  }
  MNEMO_ASSIGN_OR_RETURN(LoadedModel m, load_model_from_flags(model_flags, /*need_tokenizer=*/true));

  const int64_t trained = m.model->config().max_position_embeddings;
  std::fprintf(stderr,
               "mnemo eval passkey: %s, context %lld (max_position_embeddings %lld%s), %lld trials, seed %llu\n",
               m.source.c_str(), static_cast<long long>(options.context_tokens), static_cast<long long>(trained),
               options.context_tokens > trained ? ": extrapolating" : "", static_cast<long long>(options.trials),
               static_cast<unsigned long long>(options.seed));
  int64_t correct_so_far = 0;
  auto progress = [&](int64_t i, const eval::PasskeyTrial& t) {
    correct_so_far += t.correct ? 1 : 0;
    std::fprintf(stderr,
                 "  trial %lld/%lld: depth %.3f key %s answer \"%s\" %s (%lld prompt tokens, %.2f s) "
                 "[%lld/%lld correct]\n",
                 static_cast<long long>(i + 1), static_cast<long long>(options.trials), t.depth, t.key.c_str(),
                 t.answer.c_str(), t.correct ? "correct" : "wrong", static_cast<long long>(t.prompt_tokens),
                 t.prefill_seconds + t.decode_seconds, static_cast<long long>(correct_so_far),
                 static_cast<long long>(i + 1));
  };
  MNEMO_ASSIGN_OR_RETURN(eval::PasskeyReport report, eval::run_passkey_eval(*m.model, *m.tokenizer, options, progress));
  std::printf("passkey context %lld: accuracy %.4f (%lld/%lld); prefill %.1f tokens/s, decode %.1f tokens/s\n",
              static_cast<long long>(report.context_tokens), report.accuracy, static_cast<long long>(correct_so_far),
              static_cast<long long>(report.trials), report.prefill_tokens_per_s, report.decode_tokens_per_s);
  std::fflush(stdout);
  if (f.has("json")) {
    MNEMO_RETURN_IF_ERROR(write_text_file(f.get("json"), eval::passkey_report_json(report, m.source, trained)));
    std::fprintf(stderr, "mnemo eval passkey: wrote %s\n", f.get("json").c_str());
  }
  return Status::Ok();
}

}  // namespace

Status eval_command(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::fputs(kEvalUsage, stderr);
    return invalid_argument("mnemo eval: name a task (passkey)");
  }
  const std::string& task = args[0];
  if (task == "--help" || task == "-h" || task == "help") {
    std::fputs(kEvalUsage, stdout);
    return Status::Ok();
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (task == "passkey") {
    // main prints "mnemo eval: error: ..."; flag errors start "mnemo eval passkey: ": name the task once.
    const Status s = passkey_command(rest);
    const std::string prefix = "mnemo eval passkey: ";
    if (!s.ok() && s.message().rfind(prefix, 0) == 0) {
      return Status(s.code(), "passkey: " + s.message().substr(prefix.size()));
    }
    return s;
  }
  return invalid_argument("mnemo eval: unknown task '", task, "' (tasks: passkey; see mnemo eval --help)");
}

}  // namespace mnemo::cli
