// Runtime benchmark (issue #6), CPU backend, models/tiny: what the engine's continuous batching and
// chunked-prefill scheduler deliver end to end through the public API (runtime/runtime.h).
//
//   decode   1, 8 and 64 concurrent sessions: each a ~32-token prompt (prefilled first, untimed), then
//            greedy generation of N tokens with ignore_eos; timed from the first generate() call to
//            every future ready. Aggregate tok/s = sessions·N / time; per-session tok/s = N / (time
//            of that session's last token − start), median over sessions.
//   ttft     a short chat (~20-token prompt, 1 generated token): time from append to the token
//            callback, alone and while a long ingest (K sessions × ~2000 tokens appended at once)
//            runs beside it; the first chat goes 100 ms after the ingest's append, the next ones one
//            after another, a random 0–100 ms apart, while the ingest has tokens pending. Reported for the default scheduler (chunk 2048, batch 4096)
//            and for chunk 256, with the ingest's prefill tok/s.
//   check    the 8-session greedy outputs equal each prompt's single-session output (PASS/FAIL).
//
// Every measurement is repeated --runs times (each run a fresh Runtime); the JSON keeps every
// sample and the table shows medians. Usage:
//   runtime_bench [--model models/tiny] [--device cpu|cuda] [--runs 2] [--decode-tokens 32] [--decode-tokens-64 16]
//                 [--ingest-sessions 1] [--ingest-tokens 2000] [--chat-tokens 20] [--alone-reps 5]
//                 [--json runtime.json]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "model/config.h"
#include "model/tokenizer.h"
#include "runtime/runtime.h"

namespace {

using namespace mnemo;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model = "models/tiny";
  std::string device = "cpu";     // cpu or cuda[:N]
  std::string positions = "exact";  // exact or bounded (an ingest past max_position_embeddings)
  std::string sparse_config;      // --sparse-config FILE.json (InfLLM-V2 for the bundled model)
  bool ttft_only = false;         // skip the decode phase (a 1M-token ingest run)
  int runs = 2;
  int64_t decode_tokens = 32;     // N for 1 and 8 sessions
  int64_t decode_tokens_64 = 16;  // N for 64 sessions
  int64_t prompt_tokens = 32;
  int ingest_sessions = 1;
  int64_t ingest_tokens = 2000;
  int64_t chat_tokens = 20;
  int alone_reps = 5;
  std::string json = "runtime.json";
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "runtime_bench: %s\n", what.c_str());
  std::exit(1);
}

void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.to_string());
}

template <typename T>
T take(Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + r.status().to_string());
  return std::move(*r);
}

double seconds_since(Clock::time_point t0, Clock::time_point t1 = Clock::now()) {
  return std::chrono::duration<double>(t1 - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// A counter from the runtime's Prometheus text (0 when absent).
double metric(const Runtime& rt, const std::string& name) {
  std::istringstream in(rt.metrics_text());
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return 0;
}

std::unique_ptr<Runtime> open_runtime(const Options& o, int64_t chunk_tokens, int64_t max_batch_tokens) {
  RuntimeOptions ro;
  ro.model_dir = o.model;
  ro.device = parse_device(o.device).value();
  ro.positions = o.positions == "bounded" ? PositionPolicy::kBounded : PositionPolicy::kExact;
  ro.sparse_config_path = o.sparse_config;
  ro.chunk_tokens = chunk_tokens;
  ro.max_batch_tokens = max_batch_tokens;
  return take(Runtime::open(ro), "Runtime::open");
}

// Exactly `n` ids: BOS, then the text's tokens, repeated text when it is too short.
std::vector<int32_t> prompt_ids(const Tokenizer& tok, const std::string& text, int64_t n) {
  std::vector<int32_t> ids;
  if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  const std::vector<int32_t> body = tok.encode(text, false);
  if (body.empty()) die("empty prompt encoding");
  while (static_cast<int64_t>(ids.size()) < n) {
    for (int32_t id : body) {
      if (static_cast<int64_t>(ids.size()) == n) break;
      ids.push_back(id);
    }
  }
  return ids;
}

std::string decode_text(int i) {
  return "Session " + std::to_string(i) + " asks: what is the number " + std::to_string(1000 + 37 * i) +
         " plus " + std::to_string(7 * i + 3) + ", and which river flows through the old town by the sea?";
}

// --- decode ------------------------------------------------------------------------------------------

struct DecodeRun {
  int sessions = 0;
  int64_t tokens = 0;          // per session
  double seconds = 0;          // first generate() to every future ready
  double aggregate_tps = 0;
  double per_session_tps = 0;  // median over sessions of N / (last token − start)
  double model_seconds = 0;    // engine time inside model forward during the window
  std::vector<std::vector<int32_t>> outputs;
};

// `prompts.size()` sessions generate concurrently; one Runtime per call.
DecodeRun run_decode(const Options& o, const std::vector<std::vector<int32_t>>& prompts, int64_t n) {
  auto rt = open_runtime(o, 2048, 4096);
  const int k = static_cast<int>(prompts.size());
  std::vector<std::shared_ptr<Session>> sessions;
  for (int i = 0; i < k; ++i) {
    sessions.push_back(take(rt->create_session(), "create_session"));
    check(sessions.back()->append_tokens(prompts[i]).get(), "append");
  }
  for (auto& s : sessions) check(s->wait_prefilled().get(), "wait_prefilled");

  std::vector<Clock::time_point> last(k);
  std::vector<std::future<Result<GenerateResult>>> futures;
  const double model0 = metric(*rt, "mnemo_model_seconds_total");
  const auto t0 = Clock::now();
  for (int i = 0; i < k; ++i) {
    GenerateRequest req;
    req.max_new_tokens = n;
    req.ignore_eos = true;
    futures.push_back(sessions[i]->generate(req, [&last, i](const TokenEvent&) { last[i] = Clock::now(); }));
  }
  DecodeRun r;
  for (auto& f : futures) {
    GenerateResult g = take(f.get(), "generate");
    if (static_cast<int64_t>(g.tokens.size()) != n) die("generate returned " + std::to_string(g.tokens.size()) + " tokens");
    r.outputs.push_back(std::move(g.tokens));
  }
  r.seconds = seconds_since(t0);
  r.model_seconds = metric(*rt, "mnemo_model_seconds_total") - model0;
  r.sessions = k;
  r.tokens = n;
  r.aggregate_tps = static_cast<double>(k) * static_cast<double>(n) / r.seconds;
  std::vector<double> per;
  for (int i = 0; i < k; ++i) per.push_back(static_cast<double>(n) / seconds_since(t0, last[i]));
  r.per_session_tps = median(per);
  return r;
}

// --- TTFT --------------------------------------------------------------------------------------------

// One chat on a fresh, empty session created beforehand (create_session waits for the engine's
// current step, which a chat arriving at an existing session would not): the prompt appended, one
// greedy token. Seconds from the append to the token callback.
double chat_ttft(Session& s, const std::vector<int32_t>& prompt) {
  std::promise<Clock::time_point> first;
  auto first_f = first.get_future();
  bool set = false;
  GenerateRequest req;
  req.max_new_tokens = 1;
  req.ignore_eos = true;
  const auto t0 = Clock::now();
  check(s.append_tokens(prompt).get(), "append (chat)");
  auto f = s.generate(req, [&](const TokenEvent&) {
    if (!set) {
      set = true;
      first.set_value(Clock::now());
    }
  });
  take(f.get(), "generate (chat)");
  return seconds_since(t0, first_f.get());
}

struct TtftRun {
  int64_t chunk_tokens = 0, max_batch_tokens = 0;
  std::vector<double> alone;       // seconds, one per chat
  std::vector<double> beside;      // seconds, chats sent while the ingest had tokens pending
  double ingest_seconds = 0;
  double ingest_tps = 0;
  int64_t ingest_total = 0;
  double steps_during_ingest = 0;
};

TtftRun run_ttft(const Options& o, int64_t chunk, int64_t batch, const std::vector<int32_t>& chat,
                 const std::vector<std::vector<int32_t>>& ingest, uint32_t seed) {
  auto rt = open_runtime(o, chunk, batch);
  TtftRun r;
  r.chunk_tokens = chunk;
  r.max_batch_tokens = batch;
  constexpr int kBesidePool = 32;  // at most this many chats beside one ingest
  std::vector<std::shared_ptr<Session>> chats;
  for (int i = 0; i < 1 + o.alone_reps + kBesidePool; ++i) chats.push_back(take(rt->create_session(), "create_session (chat)"));
  size_t next_chat = 0;
  chat_ttft(*chats[next_chat++], chat);  // warm-up (first allocations)
  for (int i = 0; i < o.alone_reps; ++i) r.alone.push_back(chat_ttft(*chats[next_chat++], chat));

  std::vector<std::shared_ptr<Session>> sessions;
  for (size_t i = 0; i < ingest.size(); ++i) sessions.push_back(take(rt->create_session(), "create_session (ingest)"));
  const double steps0 = metric(*rt, "mnemo_steps_total");
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ingest.size(); ++i) {
    check(sessions[i]->append_tokens(ingest[i]).get(), "append (ingest)");
    r.ingest_total += static_cast<int64_t>(ingest[i].size());
  }
  std::atomic<bool> ingest_done{false};
  auto waiter = std::async(std::launch::async, [&] {
    for (auto& s : sessions) check(s->wait_prefilled().get(), "wait_prefilled (ingest)");
    const double secs = seconds_since(t0);
    ingest_done = true;
    return secs;
  });
  // The first chat 100 ms after the ingest's append (its first step is running), then one after
  // another, 0-100 ms apart, for as long as the ingest has tokens pending at the chat's send time.
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> gap_ms(0, 100);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  while (!ingest_done && next_chat < chats.size()) {
    r.beside.push_back(chat_ttft(*chats[next_chat++], chat));
    std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms(rng)));
  }
  r.ingest_seconds = waiter.get();
  r.steps_during_ingest = metric(*rt, "mnemo_steps_total") - steps0;
  r.ingest_tps = static_cast<double>(r.ingest_total) / r.ingest_seconds;
  return r;
}

// --- main --------------------------------------------------------------------------------------------

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) die("missing value for " + k);
    const std::string v = argv[i + 1];
    if (k == "--model") o.model = v;
    else if (k == "--positions") { o.positions = v; if (v != "exact" && v != "bounded") die("--positions: exact or bounded"); }
    else if (k == "--sparse-config") o.sparse_config = v;
    else if (k == "--ttft-only") o.ttft_only = v == "1";
    else if (k == "--device") { o.device = v; if (!parse_device(v).ok()) die("--device: expected cpu or cuda[:N]"); }
    else if (k == "--runs") o.runs = std::stoi(v);
    else if (k == "--decode-tokens") o.decode_tokens = std::stoll(v);
    else if (k == "--decode-tokens-64") o.decode_tokens_64 = std::stoll(v);
    else if (k == "--prompt-tokens") o.prompt_tokens = std::stoll(v);
    else if (k == "--ingest-sessions") o.ingest_sessions = std::stoi(v);
    else if (k == "--ingest-tokens") o.ingest_tokens = std::stoll(v);
    else if (k == "--chat-tokens") o.chat_tokens = std::stoll(v);
    else if (k == "--alone-reps") o.alone_reps = std::stoi(v);
    else if (k == "--json") o.json = v;
    else die("unknown flag " + k);
  }
  if (o.runs < 1 || o.alone_reps < 1 || o.ingest_sessions < 1) die("--runs, --alone-reps, --ingest-sessions must be >= 1");
  return o;
}

std::string json_array(const std::vector<double>& v, const char* fmt = "%.6f") {
  std::string s = "[";
  char buf[64];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof buf, fmt, v[i]);
    s += (i ? ", " : "") + std::string(buf);
  }
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::string load_start = load_average();
  const auto bench_t0 = Clock::now();

  // Prompts are built with the model's tokenizer (one throw-away runtime).
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> chat;
  std::vector<std::vector<int32_t>> ingest;
  int64_t max_positions = 0;
  {
    auto rt = open_runtime(o, 2048, 4096);
    max_positions = rt->model_config().max_position_embeddings;
    const Tokenizer& tok = rt->tokenizer();
    for (int i = 0; i < 64; ++i) prompts.push_back(prompt_ids(tok, decode_text(i), o.prompt_tokens));
    chat = prompt_ids(tok, "User: what time does the library open on Sunday? Assistant:", o.chat_tokens);
    const std::string book =
        "Chapter one. The river ran past the mill and the old stone bridge, and every morning the miller "
        "counted the sacks of grain that the carts brought down from the hills. ";
    for (int i = 0; i < o.ingest_sessions; ++i) {
      ingest.push_back(prompt_ids(tok, "Document " + std::to_string(i) + ". " + book, o.ingest_tokens));
    }
  }
  if (o.ingest_tokens > max_positions && o.positions != "bounded") {
    die("--ingest-tokens exceeds max_position_embeddings (use --positions bounded)");
  }
  std::printf("runtime_bench: model %s, %u hardware threads, load %s, %d run(s)\n", o.model.c_str(),
              std::thread::hardware_concurrency(), load_start.c_str(), o.runs);
  std::fflush(stdout);

  // Decode and the correctness check.
  const auto decode_t0 = Clock::now();
  const std::vector<int> counts = {1, 8, 64};
  std::vector<std::vector<DecodeRun>> decode(counts.size());  // [config][run]
  std::vector<bool> check_pass;
  std::vector<std::string> check_detail;
  for (int run = 0; run < (o.ttft_only ? 0 : o.runs); ++run) {
    // Single sessions: prompts 0..7 one at a time (the 1-session samples and the check's reference).
    std::vector<std::vector<int32_t>> alone_out;
    std::vector<DecodeRun> singles;
    for (int i = 0; i < 8; ++i) {
      DecodeRun d = run_decode(o, {prompts[i]}, o.decode_tokens);
      alone_out.push_back(d.outputs[0]);
      singles.push_back(std::move(d));
    }
    // The 1-session row of this run: the single-session sample with the median aggregate.
    std::sort(singles.begin(), singles.end(), [](const DecodeRun& a, const DecodeRun& b) { return a.aggregate_tps < b.aggregate_tps; });
    decode[0].push_back(singles[singles.size() / 2]);
    std::printf("run %d decode  1 session  x %lld tokens: %.3f s, %.1f tok/s (median of 8 prompts run alone)\n", run + 1,
                static_cast<long long>(o.decode_tokens), decode[0].back().seconds, decode[0].back().aggregate_tps);
    for (size_t c = 1; c < counts.size(); ++c) {
      const int k = counts[c];
      const int64_t n = k == 64 ? o.decode_tokens_64 : o.decode_tokens;
      decode[c].push_back(run_decode(o, std::vector<std::vector<int32_t>>(prompts.begin(), prompts.begin() + k), n));
      const DecodeRun& d = decode[c].back();
      std::printf("run %d decode %2d sessions x %lld tokens: %.3f s, %.1f tok/s aggregate, %.1f tok/s per session\n",
                  run + 1, k, static_cast<long long>(n), d.seconds, d.aggregate_tps, d.per_session_tps);
      std::fflush(stdout);
    }
    const DecodeRun& d8 = decode[1].back();
    int mismatches = 0;
    for (int i = 0; i < 8; ++i) mismatches += d8.outputs[i] != alone_out[i];
    check_pass.push_back(mismatches == 0);
    check_detail.push_back(std::to_string(8 - mismatches) + "/8 sessions equal");
    std::printf("run %d check 8 concurrent == single: %s (%s)\n", run + 1, mismatches ? "FAIL" : "PASS",
                check_detail.back().c_str());
    std::fflush(stdout);
  }

  const double decode_phase_seconds = seconds_since(decode_t0);
  // TTFT alone vs beside the ingest, default scheduler and chunk 256.
  const auto ttft_t0 = Clock::now();
  const std::vector<std::pair<int64_t, int64_t>> configs = {{2048, 4096}, {256, 4096}};
  std::vector<std::vector<TtftRun>> ttft(configs.size());
  for (int run = 0; run < o.runs; ++run) {
    for (size_t c = 0; c < configs.size(); ++c) {
      ttft[c].push_back(run_ttft(o, configs[c].first, configs[c].second, chat, ingest, 1234u + run * 17u + c));
      const TtftRun& t = ttft[c].back();
      std::printf("run %d ttft chunk %4lld: alone %.1f ms, beside ingest %.1f ms (median of %zu), ingest %lld tokens "
                  "in %.2f s = %.0f tok/s, %.0f steps\n",
                  run + 1, static_cast<long long>(t.chunk_tokens), 1e3 * median(t.alone), 1e3 * median(t.beside),
                  t.beside.size(), static_cast<long long>(t.ingest_total), t.ingest_seconds, t.ingest_tps,
                  t.steps_during_ingest);
      std::fflush(stdout);
    }
  }
  const double ttft_phase_seconds = seconds_since(ttft_t0);
  const double total_seconds = seconds_since(bench_t0);
  const std::string load_end = load_average();
  const bool all_pass = std::all_of(check_pass.begin(), check_pass.end(), [](bool b) { return b; });

  // JSON: every sample, plus the medians over runs that the table shows.
  if (FILE* f = std::fopen(o.json.c_str(), "w")) {
    std::fprintf(f, "{\"bench\": \"runtime\", \"backend\": \"%s\", \"positions\": \"%s\", \"sparse_config\": \"%s\", "
                    "\"model\": \"%s\", \"runs\": %d, "
                    "\"hardware_threads\": %u, \"loadavg_start\": \"%s\", \"loadavg_end\": \"%s\", "
                    "\"total_seconds\": %.2f, \"decode_phase_seconds\": %.2f, \"ttft_phase_seconds\": %.2f, "
                    "\"prompt_tokens\": %lld,\n \"decode\": [",
                 o.device.c_str(), o.positions.c_str(), o.sparse_config.c_str(), o.model.c_str(), o.runs,
                 std::thread::hardware_concurrency(), load_start.c_str(), load_end.c_str(),
                 total_seconds, decode_phase_seconds, ttft_phase_seconds, static_cast<long long>(o.prompt_tokens));
    for (size_t c = 0; c < (o.ttft_only ? 0 : counts.size()); ++c) {
      std::vector<double> agg, per, secs, model;
      for (const DecodeRun& d : decode[c]) {
        agg.push_back(d.aggregate_tps);
        per.push_back(d.per_session_tps);
        secs.push_back(d.seconds);
        model.push_back(d.model_seconds);
      }
      std::fprintf(f, "%s\n  {\"sessions\": %d, \"new_tokens_per_session\": %lld, \"aggregate_tps\": %.2f, "
                      "\"per_session_tps\": %.2f, \"runs_aggregate_tps\": %s, \"runs_per_session_tps\": %s, "
                      "\"runs_seconds\": %s, \"runs_model_seconds\": %s}",
                   c ? "," : "", counts[c], static_cast<long long>(decode[c][0].tokens), median(agg), median(per),
                   json_array(agg, "%.2f").c_str(), json_array(per, "%.2f").c_str(), json_array(secs, "%.4f").c_str(),
                   json_array(model, "%.4f").c_str());
    }
    std::fprintf(f, "\n ],\n \"check_8_sessions_equal_single\": {\"pass\": %s, \"runs\": [",
                 o.ttft_only ? "null" : all_pass ? "true" : "false");
    for (size_t i = 0; i < check_pass.size(); ++i) {
      std::fprintf(f, "%s\"%s: %s\"", i ? ", " : "", check_pass[i] ? "PASS" : "FAIL", check_detail[i].c_str());
    }
    std::fprintf(f, "]},\n \"ttft\": {\"chat_prompt_tokens\": %lld, \"ingest_sessions\": %d, \"ingest_tokens_per_session\": %lld, "
                    "\"configs\": [",
                 static_cast<long long>(chat.size()), o.ingest_sessions, static_cast<long long>(o.ingest_tokens));
    for (size_t c = 0; c < configs.size(); ++c) {
      std::vector<double> alone, beside, tps, all_beside, all_alone;
      for (const TtftRun& t : ttft[c]) {
        alone.push_back(median(t.alone));
        beside.push_back(median(t.beside));
        tps.push_back(t.ingest_tps);
        all_alone.insert(all_alone.end(), t.alone.begin(), t.alone.end());
        all_beside.insert(all_beside.end(), t.beside.begin(), t.beside.end());
      }
      std::fprintf(f, "%s\n  {\"chunk_tokens\": %lld, \"max_batch_tokens\": %lld, \"ttft_alone_ms\": %.2f, "
                      "\"ttft_beside_ingest_ms\": %.2f, \"ingest_prefill_tps\": %.1f, \"runs_ttft_alone_ms\": %s, "
                      "\"runs_ttft_beside_ingest_ms\": %s, \"runs_ingest_prefill_tps\": %s, "
                      "\"samples_alone_s\": %s, \"samples_beside_s\": %s}",
                   c ? "," : "", static_cast<long long>(configs[c].first), static_cast<long long>(configs[c].second),
                   1e3 * median(alone), 1e3 * median(beside), median(tps),
                   json_array([&] { auto v = alone; for (auto& x : v) x *= 1e3; return v; }(), "%.2f").c_str(),
                   json_array([&] { auto v = beside; for (auto& x : v) x *= 1e3; return v; }(), "%.2f").c_str(),
                   json_array(tps, "%.1f").c_str(), json_array(all_alone, "%.4f").c_str(),
                   json_array(all_beside, "%.4f").c_str());
    }
    std::fprintf(f, "\n ]}\n}\n");
    std::fclose(f);
  } else {
    die("cannot write " + o.json);
  }

  // The short table, last.
  std::printf("\nmnemo runtime bench, %s backend, %s positions, %s, median of %d run(s), %.0f s, load %s -> %s\n",
              o.device.c_str(), o.positions.c_str(), o.model.c_str(), o.runs, total_seconds, load_start.c_str(), load_end.c_str());
  std::printf("| decode | sessions | new tokens each | aggregate tok/s | per-session tok/s |\n|---|---|---|---|---|\n");
  for (size_t c = 0; c < (o.ttft_only ? 0 : counts.size()); ++c) {
    std::vector<double> agg, per;
    for (const DecodeRun& d : decode[c]) {
      agg.push_back(d.aggregate_tps);
      per.push_back(d.per_session_tps);
    }
    std::printf("| | %d | %lld | %.1f | %.1f |\n", counts[c], static_cast<long long>(decode[c][0].tokens), median(agg),
                median(per));
  }
  std::printf("| TTFT (%lld-token chat, 1 token) | chunk / batch | alone ms | beside ingest ms | ingest prefill tok/s (%d x %lld) |\n"
              "|---|---|---|---|---|\n",
              static_cast<long long>(chat.size()), o.ingest_sessions, static_cast<long long>(o.ingest_tokens));
  for (size_t c = 0; c < configs.size(); ++c) {
    std::vector<double> alone, beside, tps;
    for (const TtftRun& t : ttft[c]) {
      alone.push_back(median(t.alone));
      beside.push_back(median(t.beside));
      tps.push_back(t.ingest_tps);
    }
    std::printf("| | %lld / %lld | %.1f | %.1f | %.0f |\n", static_cast<long long>(configs[c].first),
                static_cast<long long>(configs[c].second), 1e3 * median(alone), 1e3 * median(beside), median(tps));
  }
  std::printf("check: 8 concurrent sessions == single-session greedy outputs: %s\n",
              o.ttft_only ? "not run (--ttft-only)" : all_pass ? "PASS" : "FAIL");
  std::printf("json: %s\n", o.json.c_str());
  return all_pass ? 0 : 2;
}
