#include "runtime/cli/commands.h"

#include <chrono>
#include <cstdio>
#include <sstream>

#include "core/file.h"
#include "runtime/cli/model_flags.h"
#include "runtime/cli/session_commands.h"
#include "runtime/generate.h"

namespace mnemo::cli {
namespace {

std::vector<FlagSpec> with_model_flags(std::vector<FlagSpec> specs) {
  for (FlagSpec& s : model_flag_specs()) specs.push_back(std::move(s));
  specs.push_back({"help", "", "show this help", ""});
  return specs;
}

Result<std::vector<int32_t>> parse_token_list(const std::string& text) {
  std::vector<int32_t> ids;
  std::string item;
  std::stringstream ss(text);
  while (std::getline(ss, item, ',')) {
    std::stringstream ws(item);
    std::string tok;
    while (ws >> tok) {
      char* end = nullptr;
      const long v = std::strtol(tok.c_str(), &end, 10);
      if (*end != '\0' || v < 0 || v > INT32_MAX) {
        return invalid_argument("--tokens: expected non-negative integer ids separated by commas or spaces, got '",
                                tok, "'");
      }
      ids.push_back(static_cast<int32_t>(v));
    }
  }
  if (ids.empty()) return invalid_argument("--tokens: no token ids given");
  return ids;
}

Result<SamplingParams> sampling_from_flags(const Flags& f) {
  SamplingParams s;
  MNEMO_ASSIGN_OR_RETURN(double temperature, f.get_double("temperature", 0.0, 0.0, 100.0));
  MNEMO_ASSIGN_OR_RETURN(int64_t top_k, f.get_int("top-k", 0, 0, INT32_MAX));
  MNEMO_ASSIGN_OR_RETURN(double top_p, f.get_double("top-p", 1.0, 1e-9, 1.0));
  MNEMO_ASSIGN_OR_RETURN(double min_p, f.get_double("min-p", 0.0, 0.0, 1.0));
  MNEMO_ASSIGN_OR_RETURN(double penalty, f.get_double("repeat-penalty", 1.0, 1e-6, 100.0));
  MNEMO_ASSIGN_OR_RETURN(int64_t seed, f.get_int("seed", 0, 0, INT64_MAX));
  s.temperature = static_cast<float>(temperature);
  s.top_k = static_cast<int>(top_k);
  s.top_p = static_cast<float>(top_p);
  s.min_p = static_cast<float>(min_p);
  s.repetition_penalty = static_cast<float>(penalty);
  s.seed = static_cast<uint64_t>(seed);
  MNEMO_RETURN_IF_ERROR(s.validate());
  return s;
}

}  // namespace

Status run_command(const std::vector<std::string>& args) {
  const auto specs = with_model_flags({
      {"prompt", "TEXT", "the prompt", "", 'p'},
      {"n-predict", "N", "tokens to generate", "128", 'n'},
      {"temperature", "T", "sampling temperature; 0 = greedy", "0"},
      {"top-k", "K", "keep the K most likely tokens; 0 = off", "0"},
      {"top-p", "P", "nucleus sampling mass", "1"},
      {"min-p", "P", "drop tokens below P x the top probability", "0"},
      {"repeat-penalty", "R", "repetition penalty (HF semantics); 1 = off", "1"},
      {"seed", "S", "sampling seed", "0"},
      {"no-bos", "", "do not prepend the BOS token", ""},
      {"ignore-eos", "", "keep generating past EOS", ""},
      {"stats", "", "print timing to stderr at the end", ""},
      {"session", "ID", "continue this persistent session (needs --data-dir)", ""},
      {"data-dir", "DIR", "folder of the persistent sessions, with --session", ""},
  });
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("run", specs, args));
  if (f.has("help")) {
    std::fputs(usage("run", "Generates text from a prompt, streaming tokens to stdout.", specs).c_str(), stdout);
    return Status::Ok();
  }
  if (!f.positional().empty()) return invalid_argument("mnemo run: unexpected argument '", f.positional()[0], "'");
  if (!f.has("prompt")) return invalid_argument("mnemo run: --prompt TEXT is required");
  GenerateOptions options;
  MNEMO_ASSIGN_OR_RETURN(options.sampling, sampling_from_flags(f));
  MNEMO_ASSIGN_OR_RETURN(options.max_new_tokens, f.get_int("n-predict", 128, 0, int64_t{1} << 40));
  if (f.has("session") || f.has("data-dir")) return run_session_command(f, options);
  MNEMO_ASSIGN_OR_RETURN(LoadedModel m, load_model_from_flags(f, /*need_tokenizer=*/true));
  Tokenizer& tok = *m.tokenizer;
  std::vector<int32_t> prompt = tok.encode(f.get("prompt"), /*add_bos=*/!f.has("no-bos"));
  if (prompt.empty()) return invalid_argument("mnemo run: the prompt encodes to no tokens (pass text, or drop --no-bos)");
  if (!f.has("ignore-eos")) {
    for (int64_t id : m.model->config().eos_token_ids) options.stop_token_ids.push_back(static_cast<int32_t>(id));
    for (int32_t id : tok.eos_ids()) options.stop_token_ids.push_back(id);
  }
  MNEMO_ASSIGN_OR_RETURN(auto seq, m.model->new_sequence());
  DecodeOptions decode_options;
  decode_options.continuation = true;  // the prompt was printed: a leading space is real
  StreamDecoder decoder(tok, decode_options);
  std::fputs(f.get("prompt").c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  auto t_first = t0;
  int64_t count = 0;
  auto on_token = [&](int32_t id) {
    if (count++ == 0) t_first = std::chrono::steady_clock::now();
    const std::string piece = decoder.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  MNEMO_ASSIGN_OR_RETURN(auto generated, generate(*m.model, *seq, prompt, options, on_token));
  const std::string rest = decoder.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (f.has("stats")) {
    const auto t1 = std::chrono::steady_clock::now();
    const double prefill_s = std::chrono::duration<double>(t_first - t0).count();
    const double decode_s = std::chrono::duration<double>(t1 - t_first).count();
    std::fprintf(stderr, "mnemo run: %zu prompt tokens, %zu generated; prefill+first token %.3f s; %.1f tokens/s decode\n",
                 prompt.size(), generated.size(), prefill_s,
                 generated.size() > 1 ? double(generated.size() - 1) / decode_s : 0.0);
  }
  return Status::Ok();
}

Status logits_command(const std::vector<std::string>& args) {
  const auto specs = with_model_flags({
      {"text", "TEXT", "text to score (encoded with the model's tokenizer)", ""},
      {"tokens", "IDS", "token ids, comma or space separated (used as given: no BOS added)", ""},
      {"no-bos", "", "with --text: do not prepend BOS", ""},
      {"out", "FILE.npy", "where to write float32 logits [tokens, vocab]", ""},
  });
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("logits", specs, args));
  if (f.has("help")) {
    std::fputs(usage("logits", "Writes float32 logits of every position to a .npy file.", specs).c_str(), stdout);
    return Status::Ok();
  }
  if (!f.positional().empty()) return invalid_argument("mnemo logits: unexpected argument '", f.positional()[0], "'");
  if (f.has("text") == f.has("tokens")) return invalid_argument("mnemo logits: give exactly one of --text or --tokens");
  if (!f.has("out")) return invalid_argument("mnemo logits: --out FILE.npy is required");
  MNEMO_ASSIGN_OR_RETURN(LoadedModel m, load_model_from_flags(f, /*need_tokenizer=*/f.has("text")));
  std::vector<int32_t> ids;
  if (f.has("tokens")) {
    MNEMO_ASSIGN_OR_RETURN(ids, parse_token_list(f.get("tokens")));
  } else {
    ids = m.tokenizer->encode(f.get("text"), !f.has("no-bos"));
    if (ids.empty()) return invalid_argument("mnemo logits: --text encodes to no tokens");
  }
  MNEMO_ASSIGN_OR_RETURN(auto seq, m.model->new_sequence());
  Tensor logits;
  MNEMO_RETURN_IF_ERROR(m.model->forward(*seq, ids, &logits, /*all_logits=*/true));
  MNEMO_RETURN_IF_ERROR(write_npy(f.get("out"), logits));
  std::fprintf(stderr, "mnemo logits: wrote %s [%zu, %lld]\n", f.get("out").c_str(), ids.size(),
               static_cast<long long>(m.model->config().vocab_size));
  return Status::Ok();
}

}  // namespace mnemo::cli
