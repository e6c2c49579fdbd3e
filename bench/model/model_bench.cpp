// Decode at long context through the whole model and the tiered KV store (issues #5, #6).
//
// One configuration per process (the GPU budget is fixed when the store opens); bench/model/run.sh
// runs the resident / budgeted pairs in one call. Steps:
//   1. the model: a checkpoint (--model) or random weights of a config (--config, e.g. the MiniCPM4-8B
//      shape in bench/model/minicpm4_8b.json);
//   2. the context: --context tokens of synthetic K/V (LlamaModel::fill_synthetic_kv: random keys and
//      values in every layer, representatives included) — seconds instead of a 1M-token prefill;
//   3. --prompt real tokens prefilled through the model, then --decode greedy tokens, each timed.
// Prints one JSON object (also to --json): decode ms/token (median, p90), tokens/s, prefill tokens/s,
// the fill's tokens/s, and the store's counters over the decode steps (GPU hits and misses, host
// hits, disk reads, bytes moved, stall). Greedy tokens are listed so two runs can be compared.
//
//   model_bench --config bench/model/minicpm4_8b.json --device cuda --context 131072 --decode 32
//               [--kv-budget-gib 4] [--host-kv-gib 48] [--prompt 64] [--chunk 4096] [--label NAME] [--json F]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/file.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/weights.h"

namespace mnemo {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "model_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T check(Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + r.status().to_string());
  return std::move(*r);
}
void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.to_string());
}

struct Options {
  std::string model, config, device = "cuda", label, json;
  int64_t context = 131072, prompt = 64, decode = 32, chunk = 4096;
  double kv_budget_gib = 0;  // 0: everything resident
  double host_kv_gib = 0;    // 0: what the context needs plus a quarter
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) die("flag " + k + " needs a value");
    const std::string v = argv[++i];
    if (k == "--model") o.model = v;
    else if (k == "--config") o.config = v;
    else if (k == "--device") o.device = v;
    else if (k == "--context") o.context = std::stoll(v);
    else if (k == "--prompt") o.prompt = std::stoll(v);
    else if (k == "--decode") o.decode = std::stoll(v);
    else if (k == "--chunk") o.chunk = std::stoll(v);
    else if (k == "--kv-budget-gib") o.kv_budget_gib = std::stod(v);
    else if (k == "--host-kv-gib") o.host_kv_gib = std::stod(v);
    else if (k == "--label") o.label = v;
    else if (k == "--json") o.json = v;
    else die("unknown flag " + k);
  }
  if (o.model.empty() == o.config.empty()) die("give exactly one of --model DIR and --config FILE.json");
  if (o.prompt < 1 || o.decode < 1 || o.context < 0) die("--prompt and --decode must be >= 1, --context >= 0");
  return o;
}

}  // namespace
}  // namespace mnemo

int main(int argc, char** argv) {
  using namespace mnemo;
  const Options o = parse(argc, argv);
  ModelOptions mo;
  mo.device = check(parse_device(o.device), "--device");
  mo.chunk_tokens = o.chunk;
  ModelConfig config = o.config.empty() ? check(load_model_config(o.model), "config")
                                        : check(parse_model_config(check(read_text_file(o.config), "--config"), o.config),
                                                "--config");
  if (config.sparse) mo.block_tokens = config.sparse->block_size;
  const int64_t elem = mo.device.is_cpu() ? 4 : 2;
  const int64_t token_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem;
  const int64_t total_tokens = o.context + o.prompt + o.decode + 2 * mo.block_tokens;
  const int64_t resident_bytes = token_bytes * total_tokens;
  const int64_t gpu_bytes = o.kv_budget_gib > 0 ? static_cast<int64_t>(o.kv_budget_gib * (1 << 30)) : resident_bytes;
  mo.kv_budget_tokens = std::max<int64_t>(mo.block_tokens, gpu_bytes / token_bytes / mo.block_tokens * mo.block_tokens);
  mo.host_budget_bytes = o.host_kv_gib > 0 ? static_cast<int64_t>(o.host_kv_gib * (1 << 30)) : resident_bytes * 5 / 4;

  auto t0 = Clock::now();
  std::unique_ptr<LlamaModel> model;
  if (o.config.empty()) {
    model = check(LlamaModel::load(o.model, mo), "load");
  } else {
    ModelWeights w = random_model_weights(config, 1);
    model = check(LlamaModel::from_weights(config, std::move(w), mo), "from_weights");
  }
  const double load_s = since(t0);
  std::fprintf(stderr, "model ready in %.1f s (%s, %lld layers, kv budget %lld tokens = %.2f GiB, host %.2f GiB)\n", load_s,
               o.device.c_str(), static_cast<long long>(config.num_hidden_layers),
               static_cast<long long>(mo.kv_budget_tokens), double(mo.kv_budget_tokens) * token_bytes / (1 << 30),
               double(mo.host_budget_bytes) / (1 << 30));

  auto seq = check(model->new_sequence(), "new_sequence");
  t0 = Clock::now();
  check(model->fill_synthetic_kv(*seq, o.context, 7), "fill_synthetic_kv");
  const double fill_s = since(t0);
  std::fprintf(stderr, "context of %lld synthetic tokens in %.1f s\n", static_cast<long long>(o.context), fill_s);

  std::vector<int32_t> prompt(static_cast<size_t>(o.prompt));
  for (int64_t i = 0; i < o.prompt; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % config.vocab_size);
  Tensor logits;
  t0 = Clock::now();
  check(model->forward(*seq, prompt, &logits), "prefill");
  const double prefill_s = since(t0);

  auto argmax = [&](const Tensor& l) {
    const float* p = l.data<float>();
    return static_cast<int32_t>(std::max_element(p, p + config.vocab_size) - p);
  };
  const KvStoreMetrics before = model->store().metrics();
  std::vector<double> step_ms;
  std::vector<int32_t> generated;
  int32_t next = argmax(logits);
  const auto decode_start = Clock::now();
  for (int64_t i = 0; i < o.decode; ++i) {
    generated.push_back(next);
    const auto s0 = Clock::now();
    check(model->forward(*seq, std::span<const int32_t>(&next, 1), &logits), "decode");
    step_ms.push_back(since(s0) * 1e3);
    next = argmax(logits);
  }
  const double decode_s = since(decode_start);
  const KvStoreMetrics after = model->store().metrics();
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2], p90 = sorted[sorted.size() * 9 / 10];
  const int64_t gpu_hits = after.gpu_hits - before.gpu_hits, gpu_misses = after.gpu_misses - before.gpu_misses;
  const int64_t host_hits = after.host_hits - before.host_hits, disk_reads = after.disk_reads - before.disk_reads;
  const double requested = std::max<int64_t>(1, gpu_hits + gpu_misses);

  std::string tokens;
  for (size_t i = 0; i < generated.size(); ++i) tokens += (i ? "," : "") + std::to_string(generated[i]);
  char buf[4096];
  std::snprintf(buf, sizeof buf,
                "{\"label\": \"%s\", \"device\": \"%s\", \"context\": %lld, \"sparse\": %s, \"kv_budget_tokens\": %lld, "
                "\"kv_budget_gib\": %.3f, \"resident_gib\": %.3f, \"load_s\": %.2f, \"fill_tok_s\": %.0f, "
                "\"prefill_tok_s\": %.1f, \"decode_ms_median\": %.3f, \"decode_ms_p90\": %.3f, \"decode_tok_s\": %.2f, "
                "\"gpu_hit_rate\": %.4f, \"gpu_hits\": %lld, \"gpu_misses\": %lld, \"host_hits\": %lld, \"disk_reads\": %lld, "
                "\"bytes_host_to_gpu\": %lld, \"gpu_evictions\": %lld, \"prefetched_blocks\": %lld, \"prefetch_hits\": %lld, "
                "\"stall_s\": %.4f, \"tokens\": [%s]}",
                o.label.c_str(), o.device.c_str(), static_cast<long long>(o.context), config.sparse ? "true" : "false",
                static_cast<long long>(mo.kv_budget_tokens), double(mo.kv_budget_tokens) * token_bytes / (1 << 30),
                double(resident_bytes) / (1 << 30), load_s, o.context / std::max(fill_s, 1e-9),
                o.prompt / prefill_s, median, p90, o.decode / decode_s, gpu_hits / requested,
                static_cast<long long>(gpu_hits), static_cast<long long>(gpu_misses), static_cast<long long>(host_hits),
                static_cast<long long>(disk_reads),
                static_cast<long long>(after.bytes_host_to_gpu - before.bytes_host_to_gpu),
                static_cast<long long>(after.gpu_evictions - before.gpu_evictions),
                static_cast<long long>(after.prefetched_blocks - before.prefetched_blocks),
                static_cast<long long>(after.prefetch_hits - before.prefetch_hits), after.stall_seconds - before.stall_seconds, tokens.c_str());
  std::printf("%s\n", buf);
  if (!o.json.empty()) std::ofstream(o.json) << buf << "\n";
  return 0;
}
