// mnemo's C++ API: a Runtime owns one model and its KV store; Sessions are unbounded token streams.
//
//   auto rt = Runtime::open({.model_dir = "models/tiny"});           // Result<unique_ptr<Runtime>>
//   auto s = (*rt)->create_session();                                 // Result<shared_ptr<Session>>
//   (*s)->append_text("The pass key is 12345. ...").get();            // durable when the future is ready
//   auto r = (*s)->generate({.max_new_tokens = 16}, [](const TokenEvent& e) { print(e.text); }).get();
//
// The same generation as an awaitable stream with backpressure (Boost.Asio): runtime/token_stream.h.
//
// Threading: one engine thread runs every model step (continuous batching across sessions: decode
// tokens first, then prefill chunks); the API is thread-safe and never blocks on model work — calls
// return futures. Token callbacks run on the engine thread: keep them short, and never wait there —
// not on a future, and not in Runtime::create_session / open_session / delete_session, which run
// their store work on the engine thread between steps and would wait forever for it.
//
// Durability: with a data_dir, an append is acknowledged (its future ready) only once its token ids are
// in the store's WAL; after a crash the session reopens by id with every acknowledged token, and the KV
// not yet on disk is recomputed from the ids.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/device.h"
#include "model/positions.h"
#include "model/sampler.h"

namespace mnemo {

struct ModelConfig;
class Tokenizer;


struct RuntimeOptions {
  std::string model_dir;            // HF folder. Default: "" = the bundled models/tiny
  Device device = Device::cpu();    // where the model runs: cpu or cuda:N (bf16 KV). Default: cpu
  std::string data_dir;             // sessions + KV on disk (RocksDB). Default: "" = in memory only
  std::string sparse_config_path;   // JSON with MiniCPM4 sparse_config keys. Default: the model's own
  PositionPolicy positions = PositionPolicy::kExact;  // Default: exact
  int64_t gpu_kv_budget_bytes = int64_t{1} << 30;     // KV bytes on the compute device. Default: 1 GiB
  int64_t host_kv_budget_bytes = int64_t{4} << 30;    // KV bytes in host memory. Default: 4 GiB
  int64_t chunk_tokens = 2048;      // largest prefill chunk of one session in one step. Default: 2048
  int64_t max_batch_tokens = 4096;  // tokens in one step across sessions. Default: 4096
  int64_t max_pending_tokens = int64_t{1} << 22;  // appended-not-prefilled tokens per session before
                                                  // append() pushes back (kOutOfBudget). Default: 4M
};

enum class FinishReason : uint8_t { kLength, kEos, kStop, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "length", "eos", "stop", "cancelled", "error"

struct GenerateRequest {
  int64_t max_new_tokens = 128;        // Default: 128
  SamplingParams sampling;             // Default: greedy
  std::vector<std::string> stop;       // stop strings (not included in the text). Default: none
  bool ignore_eos = false;             // Default: stop at the model's EOS
};

struct TokenEvent {
  int32_t id;
  std::string text;  // complete UTF-8 only; may be empty while a multi-byte character is pending
};
using TokenCallback = std::function<void(const TokenEvent&)>;

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::kLength;
};

struct SessionInfo {
  std::string id;
  int64_t length = 0;          // tokens in the stream (appended and generated)
  int64_t pending_tokens = 0;  // appended, not yet prefilled
  bool generating = false;
  std::string parent;          // fork parent id, or ""
};

class Session {
 public:
  virtual ~Session() = default;
  virtual const std::string& id() const = 0;
  virtual SessionInfo info() const = 0;

  // Appends text (encoded without BOS; the session's first append gets BOS) or raw token ids.
  // The future is ready once the ids are durable (with a data_dir) and queued for prefill; it does not
  // wait for the model. Errors: kInvalidArgument (ids outside the vocabulary), kOutOfBudget (too many
  // pending tokens, or past max_position_embeddings under the exact policy), kCancelled (session closed).
  virtual std::future<Status> append_text(std::string text) = 0;
  virtual std::future<Status> append_tokens(std::vector<int32_t> ids) = 0;
  // Resolves when every appended token is prefilled (for progress and benchmarks).
  virtual std::future<Status> wait_prefilled() = 0;

  // Generates after all appended input. Generated tokens become part of the stream. One generation at
  // a time per session (a second one fails with kInvalidArgument) — except that one requested while
  // the running one is being cancelled waits for it to stop, then starts: cancel() then generate()
  // never races the engine.
  virtual std::future<Result<GenerateResult>> generate(GenerateRequest request, TokenCallback on_token = {}) = 0;
  // Stops the running generation (it finishes with kCancelled at the engine's next step) and ends one
  // queued behind it (kCancelled, no tokens); no-op when none runs.
  virtual void cancel() = 0;

  // A new session sharing this one's history copy-on-write (no block copies). Waits for pending
  // prefill of this session first.
  virtual std::future<Result<std::shared_ptr<Session>>> fork(std::string new_id = "") = 0;
  // Token ids of the whole stream.
  virtual std::vector<int32_t> tokens() const = 0;
};

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> open(const RuntimeOptions& options);
  virtual ~Runtime() = default;  // finishes in-flight steps, cancels generations, flushes the store

  // `id` empty: a fresh unique id. An existing id is an error (kInvalidArgument).
  virtual Result<std::shared_ptr<Session>> create_session(std::string id = "") = 0;
  // A live session, or one persisted in data_dir (recovered: KV recomputed where not durable).
  virtual Result<std::shared_ptr<Session>> open_session(const std::string& id) = 0;
  virtual std::vector<SessionInfo> list_sessions() = 0;
  // Closes the session (cancelling its work) and drops its data from every tier and the disk.
  virtual Status delete_session(const std::string& id) = 0;

  virtual const ModelConfig& model_config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  // Prometheus text format: steps, tokens, sessions, tier hits/misses, bytes moved, stalls.
  virtual std::string metrics_text() const = 0;
};

}  // namespace mnemo
