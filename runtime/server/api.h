// The transport-free half of the server: routing, auth, handlers, error mapping and response bodies.
// The HTTP layer (http_server.cpp) turns each request into an ApiRequest, asks Api::handle() for a
// Plan and carries it out: answer now, run a blocking step on a helper thread, or stream a generation.
// Nothing here touches a socket, so every handler can be read (and reasoned about) as plain code.
//
// Internal to runtime/server.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "runtime/runtime.h"
#include "runtime/server/http_metrics.h"
#include "runtime/server/request.h"
#include "runtime/server/server.h"

namespace mnemo::server {

// An error answer: {"error": {"message", "type", "code"}} with an HTTP status.
struct ApiError {
  int http_status = 500;
  std::string type;     // OpenAI's families: "invalid_request_error", "authentication_error", ...
  std::string code;     // stable and machine-readable: "invalid_json", "session_not_found", ...
  std::string message;  // names the field, id or limit
};

// The one mapping from mnemo::StatusCode to HTTP: kInvalidArgument 400, kNotFound 404, kOutOfBudget
// 429 (backpressure: retry later), kCancelled 503 (the session was deleted or the server is stopping
// while the request ran), kUnimplemented 501, everything else 500.
ApiError error_from_status(const Status& status);
// An error with a status the runtime has no code for (401, 405, 409, 413).
ApiError make_error(int http_status, std::string code, std::string message);

struct HttpReply {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::string allow;  // 405: the methods the route takes
};
HttpReply error_reply(const ApiError& e);
HttpReply json_reply(const boost::json::value& v, int status = 200);

struct ApiRequest {
  std::string_view method;         // "GET", "POST", ...
  std::string_view target;         // "/v1/sessions/abc?x=1" (the query is ignored)
  std::string_view authorization;  // the Authorization header, "" when absent
  std::string_view body;
};

class Api;

// One generation requested over HTTP, from setup to cleanup. Order: prepare() (blocking), start(),
// wait for the future, then finish() (blocking) exactly once, also when prepare() failed. cancel()
// may come from any thread at any time. Streamed responses are formatted with sse_chunk()/sse_end()
// on one thread; a non-streamed one runs whole in run_to_end().
class GenerationJob {
 public:
  enum class Format : uint8_t { kCompletion, kChat, kSession };
  GenerationJob(Api& api, Format format, GenerationParams params);
  ~GenerationJob();

  bool stream() const { return params_.stream; }
  // Opens the temporary or named session, claims it (409 when it is already generating) and appends
  // the prompt (durable when this returns).
  std::optional<ApiError> prepare();
  // Starts generating; on_token runs on the engine thread. A job cancelled before start() finishes
  // at once with reason kCancelled.
  std::future<Result<GenerateResult>> start(TokenCallback on_token);
  // The same for a streamed reply: calls launch(session, request) to start the generation (a
  // TokenStream), under the job's lock so a cancel() cannot fall between the check and the start.
  // false, without calling launch, when the job was cancelled first (it ends with kCancelled).
  bool start_with(const std::function<void(const std::shared_ptr<Session>&, const GenerateRequest&)>& launch);
  // Stops the generation; `cause` ("disconnect", "request", "shutdown") goes to the metrics.
  void cancel(const char* cause);
  // Releases the session (deletes a temporary one) and records the outcome (`result` may be null).
  void finish(const Result<GenerateResult>* result);

  // "data: {...}\n\n" carrying `text` (the first chat chunk also carries the role).
  std::string sse_chunk(const std::string& text);
  // Text the runtime added at the end (held back for stop strings, or flushed from the decoder), the
  // finish_reason chunk, the usage chunk when asked, then "data: [DONE]\n\n"; an error as
  // "data: {"error": ...}\n\n" then [DONE].
  std::string sse_end(const Result<GenerateResult>& result);
  HttpReply reply(const Result<GenerateResult>& result) const;
  // prepare, start, wait, finish: the whole non-streamed request (blocking).
  HttpReply run_to_end();

 private:
  boost::json::object chunk_base() const;
  boost::json::object usage(const GenerateResult& r) const;

  Api& api_;
  const Format format_;
  GenerationParams params_;
  const std::string response_id_;
  const int64_t created_;  // Unix seconds
  std::shared_ptr<Session> session_;
  bool temporary_ = false;
  bool claimed_ = false;       // holds the session's busy mark
  int64_t prompt_tokens_ = 0;  // session length before generating
  size_t streamed_bytes_ = 0;  // text sent in sse_chunk()s
  bool sent_role_ = false;

  std::mutex mu_;  // guards the three below: cancel() comes from any thread
  bool started_ = false;
  bool finished_ = false;
  const char* cancel_cause_ = nullptr;
};

// What the HTTP layer does with one request: exactly one of `reply`, `blocking` or a streamed `job`.
struct Plan {
  std::string route = "other";            // route template, the metrics label
  HttpReply reply;                        // answer now (when neither of the below is set)
  std::function<HttpReply()> blocking;    // run on a helper thread, then answer with its reply
  std::function<void()> on_disconnect;    // with `blocking`: the client went away meanwhile
  std::shared_ptr<GenerationJob> stream;  // an SSE generation
};

class Api {
 public:
  Api(Runtime& runtime, const ServerOptions& options, HttpMetrics& metrics)
      : runtime_(runtime), options_(options), metrics_(metrics) {}

  Plan handle(const ApiRequest& request);
  // Cancels every running generation; later generation requests get 503.
  void shutdown();

  Runtime& runtime() { return runtime_; }
  const ServerOptions& options() const { return options_; }
  HttpMetrics& metrics() { return metrics_; }

 private:
  friend class GenerationJob;
  // A session generates for one request at a time; false when another holds it.
  bool claim(const std::string& session_id);
  void release(const std::string& session_id);
  // false once shutting down.
  bool add_job(GenerationJob* job);
  void remove_job(GenerationJob* job);

  Plan generation(const boost::json::object& body, GenerationJob::Format format, std::string session_id);
  Plan sessions(std::string_view method, std::string_view id, std::string_view action, std::string_view body);

  Runtime& runtime_;
  const ServerOptions options_;
  HttpMetrics& metrics_;

  std::mutex mu_;
  std::set<std::string> busy_;     // ids of sessions with a generation from this server
  std::set<GenerationJob*> jobs_;  // jobs between prepare() and finish()
  bool shutting_down_ = false;
};

}  // namespace mnemo::server
