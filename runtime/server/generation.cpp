// GenerationJob: one HTTP generation from setup to cleanup, and its OpenAI-format bodies (api.h).
#include <algorithm>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <random>

#include "model/config.h"
#include "runtime/server/api.h"

namespace mnemo::server {
namespace json = boost::json;
namespace {

std::string fresh_response_id(GenerationJob::Format format) {
  thread_local std::mt19937_64 rng{(uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  std::string id = format == GenerationJob::Format::kChat ? "chatcmpl-" : "cmpl-";
  uint64_t bits = rng();
  for (int i = 0; i < 16; ++i, bits >>= 4) id += kHex[bits & 15];
  return id;
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// OpenAI knows "stop" and "length"; EOS is a stop. "cancelled" is ours.
const char* openai_finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

std::string sse_event(const json::value& v) { return "data: " + json::serialize(v) + "\n\n"; }

}  // namespace

GenerationJob::GenerationJob(Api& api, Format format, GenerationParams params)
    : api_(api),
      format_(format),
      params_(std::move(params)),
      response_id_(fresh_response_id(format)),
      created_(unix_seconds()) {}

GenerationJob::~GenerationJob() {
  // finish() normally ran; this only keeps the Api from holding a dangling pointer or a stale claim.
  if (claimed_) api_.release(session_->id());
  api_.remove_job(this);
}

std::optional<ApiError> GenerationJob::prepare() {
  if (!api_.add_job(this)) return make_error(503, "shutting_down", "the server is stopping");
  Runtime& rt = api_.runtime();
  auto session = params_.session.empty() ? rt.create_session() : rt.open_session(params_.session);
  if (!session.ok()) return error_from_status(session.status());
  session_ = *session;
  temporary_ = params_.session.empty();
  if (!api_.claim(session_->id())) {
    return make_error(409, "session_busy", "session '" + session_->id() + "' is already generating");
  }
  claimed_ = true;
  if (session_->info().generating) {  // a generation started through the C++ API, not this server
    return make_error(409, "session_busy", "session '" + session_->id() + "' is already generating");
  }
  if (params_.has_prompt) {
    Status s = params_.prompt_is_tokens ? session_->append_tokens(params_.prompt_tokens).get()
                                        : session_->append_text(params_.prompt_text).get();
    if (!s.ok()) return error_from_status(s);
  }
  prompt_tokens_ = session_->info().length;
  // Positions are exact (the only policy so far): the stream cannot outgrow the model's context, so
  // max_tokens is cut to the room left, and the answer says "length" when that ends it.
  const int64_t context = rt.model_config().max_position_embeddings;
  if (prompt_tokens_ >= context) {
    return make_error(400, "context_length_exceeded",
                      detail::str_cat("the prompt has ", prompt_tokens_, " tokens, the model's context is ", context,
                                      " tokens; no room to generate"));
  }
  params_.request.max_new_tokens = std::min(params_.request.max_new_tokens, context - prompt_tokens_);
  return std::nullopt;
}

std::future<Result<GenerateResult>> GenerationJob::start(TokenCallback on_token) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancel_cause_) {
    std::promise<Result<GenerateResult>> p;
    GenerateResult r;
    r.reason = FinishReason::kCancelled;
    p.set_value(std::move(r));
    return p.get_future();
  }
  started_ = true;
  api_.metrics().generation_started();
  return session_->generate(params_.request, std::move(on_token));
}

bool GenerationJob::start_with(
    const std::function<void(const std::shared_ptr<Session>&, const GenerateRequest&)>& launch) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancel_cause_) return false;
  started_ = true;
  api_.metrics().generation_started();
  launch(session_, params_.request);
  return true;
}

void GenerationJob::cancel(const char* cause) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancel_cause_ || finished_) return;
  cancel_cause_ = cause;
  api_.metrics().generation_cancelled_by(cause);
  if (started_) session_->cancel();
}

void GenerationJob::finish(const Result<GenerateResult>* result) {
  bool started = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    started = started_;
  }
  if (started) {
    api_.metrics().generation_finished(result && result->ok() ? finish_reason_name((*result)->reason) : "error");
  }
  if (claimed_) {
    api_.release(session_->id());
    claimed_ = false;
  }
  if (temporary_ && session_) {
    // Nothing else knows the temporary session; failing to delete it only leaks it until shutdown.
    api_.runtime().delete_session(session_->id()).permit_unchecked();
  }
  api_.remove_job(this);
}

json::object GenerationJob::chunk_base() const {
  json::object o;
  o["id"] = response_id_;
  o["object"] = format_ == Format::kChat ? "chat.completion.chunk" : "text_completion";
  o["created"] = created_;
  o["model"] = api_.options().model_name;
  if (!temporary_ && session_) o["session"] = session_->id();
  return o;
}

json::object GenerationJob::usage(const GenerateResult& r) const {
  const auto completion = static_cast<int64_t>(r.tokens.size());
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion},
          {"total_tokens", prompt_tokens_ + completion}};
}

std::string GenerationJob::sse_chunk(const std::string& text) {
  streamed_bytes_ += text.size();
  json::object choice{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (format_ == Format::kChat) {
    json::object delta;
    if (!sent_role_) delta["role"] = "assistant";
    sent_role_ = true;
    delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  json::object chunk = chunk_base();
  chunk["choices"] = json::array{std::move(choice)};
  return sse_event(chunk);
}

std::string GenerationJob::sse_end(const Result<GenerateResult>& result) {
  static const std::string kDone = "data: [DONE]\n\n";
  if (!result.ok()) {
    const ApiError e = error_from_status(result.status());
    return sse_event(json::object{{"error", {{"message", e.message}, {"type", e.type}, {"code", e.code}}}}) + kDone;
  }
  std::string out;
  // The runtime's text is what was streamed plus whatever it released only at the end.
  if (result->text.size() > streamed_bytes_) out += sse_chunk(result->text.substr(streamed_bytes_));
  json::object choice{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", openai_finish_reason(result->reason)}};
  if (format_ == Format::kChat) {
    json::object delta;
    if (!sent_role_) delta["role"] = "assistant";
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = "";
  }
  json::object chunk = chunk_base();
  chunk["choices"] = json::array{std::move(choice)};
  out += sse_event(chunk);
  if (params_.include_usage) {
    json::object u = chunk_base();
    u["choices"] = json::array{};
    u["usage"] = usage(*result);
    out += sse_event(u);
  }
  return out + kDone;
}

HttpReply GenerationJob::reply(const Result<GenerateResult>& result) const {
  if (!result.ok()) return error_reply(error_from_status(result.status()));
  json::object choice{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", openai_finish_reason(result->reason)}};
  json::object o = chunk_base();
  if (format_ == Format::kChat) {
    o["object"] = "chat.completion";
    choice["message"] = {{"role", "assistant"}, {"content", result->text}};
  } else {
    choice["text"] = result->text;
  }
  o["choices"] = json::array{std::move(choice)};
  o["usage"] = usage(*result);
  if (format_ == Format::kSession) {
    json::array ids;
    for (int32_t id : result->tokens) ids.push_back(id);
    o["tokens"] = std::move(ids);
  }
  return json_reply(o);
}

HttpReply GenerationJob::run_to_end() {
  if (auto error = prepare()) {
    finish(nullptr);
    return error_reply(*error);
  }
  Result<GenerateResult> result = start({}).get();
  finish(&result);
  return reply(result);
}

}  // namespace mnemo::server
