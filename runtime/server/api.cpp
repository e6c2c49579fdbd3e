// Api: routing, auth, the sessions API and error mapping (api.h). Generations live in generation.cpp.
#include "runtime/server/api.h"

#include <boost/json/serialize.hpp>

namespace mnemo::server {
namespace json = boost::json;
namespace {

const char* error_type(int http_status) {
  switch (http_status) {
    case 400:
    case 404:
    case 405:
    case 413:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 409:
      return "conflict_error";
    case 429:
      return "rate_limit_error";
    case 501:
      return "not_implemented_error";
    case 503:
      return "unavailable_error";
    default:
      return "server_error";
  }
}

// Session ids travel in URL paths: a conservative alphabet keeps them unambiguous without escaping.
Status check_session_id(const std::string& id) {
  if (id.empty() || id.size() > 128)
    return invalid_argument("field 'id': expected 1 to 128 characters, got ", id.size());
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '.' || c == ':';
    if (!ok) return invalid_argument("field 'id': '", id, "' has a character outside [A-Za-z0-9._:-]");
  }
  return Status::Ok();
}

// Compares without an early exit, so response time does not reveal how much of the key matched.
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

json::object session_json(const SessionInfo& i) {
  return {{"id", i.id},
          {"object", "session"},
          {"length", i.length},
          {"pending_tokens", i.pending_tokens},
          {"generating", i.generating},
          {"parent", i.parent.empty() ? json::value(nullptr) : json::value(i.parent)}};
}

// The body as an object (an empty body is {} where `allow_empty`); 400 "invalid_json" otherwise.
std::variant<json::object, ApiError> parse_body(std::string_view body, bool allow_empty) {
  if (allow_empty && body.find_first_not_of(" \t\r\n") == std::string_view::npos) return json::object{};
  auto parsed = parse_json_object(body);
  if (!parsed.ok()) return make_error(400, "invalid_json", parsed.status().message());
  return std::move(*parsed);
}

Plan reply_plan(HttpReply reply) {
  Plan p;
  p.reply = std::move(reply);
  return p;
}

Plan error_plan(const ApiError& e) { return reply_plan(error_reply(e)); }
Plan error_plan(const Status& s) { return reply_plan(error_reply(error_from_status(s))); }

}  // namespace

ApiError error_from_status(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      return make_error(400, "invalid_request", status.message());
    case StatusCode::kNotFound:
      return make_error(404, "not_found", status.message());
    case StatusCode::kOutOfBudget:
      return make_error(429, "out_of_budget", status.message());
    case StatusCode::kCancelled:
      return make_error(503, "cancelled", status.message());
    case StatusCode::kUnimplemented:
      return make_error(501, "unimplemented", status.message());
    default:
      return make_error(500, "internal_error", status.to_string());
  }
}

ApiError make_error(int http_status, std::string code, std::string message) {
  return {http_status, error_type(http_status), std::move(code), std::move(message)};
}

HttpReply json_reply(const json::value& v, int status) { return {status, json::serialize(v), "application/json", ""}; }

HttpReply error_reply(const ApiError& e) {
  return json_reply(json::object{{"error", {{"message", e.message}, {"type", e.type}, {"code", e.code}}}},
                    e.http_status);
}

bool Api::claim(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return busy_.insert(id).second;
}

void Api::release(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_.erase(id);
}

bool Api::add_job(GenerationJob* job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return false;
  jobs_.insert(job);
  return true;
}

void Api::remove_job(GenerationJob* job) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.erase(job);
}

void Api::shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  for (GenerationJob* job : jobs_) job->cancel("shutdown");
}

Plan Api::handle(const ApiRequest& req) {
  const std::string_view path = req.target.substr(0, req.target.find('?'));
  std::vector<std::string_view> parts;  // "/v1/sessions/x/fork" -> v1, sessions, x, fork
  for (size_t at = 0; at < path.size();) {
    const size_t slash = path.find('/', at);
    const size_t end = slash == std::string_view::npos ? path.size() : slash;
    if (end > at) parts.push_back(path.substr(at, end - at));
    at = end + 1;
  }
  std::string route;
  std::vector<std::string_view> methods;
  const size_t n = parts.size();
  if (n == 1 && parts[0] == "health") {
    route = "/health", methods = {"GET"};
  } else if (n == 1 && parts[0] == "metrics") {
    route = "/metrics", methods = {"GET"};
  } else if (n == 2 && parts[0] == "v1" && parts[1] == "models") {
    route = "/v1/models", methods = {"GET"};
  } else if (n == 2 && parts[0] == "v1" && parts[1] == "completions") {
    route = "/v1/completions", methods = {"POST"};
  } else if (n == 3 && parts[0] == "v1" && parts[1] == "chat" && parts[2] == "completions") {
    route = "/v1/chat/completions", methods = {"POST"};
  } else if (n >= 2 && n <= 4 && parts[0] == "v1" && parts[1] == "sessions") {
    if (n == 2) route = "/v1/sessions", methods = {"GET", "POST"};
    if (n == 3) route = "/v1/sessions/{id}", methods = {"GET", "DELETE"};
    if (n == 4 && (parts[3] == "append" || parts[3] == "generate" || parts[3] == "fork" || parts[3] == "cancel")) {
      route = "/v1/sessions/{id}/" + std::string(parts[3]), methods = {"POST"};
    }
  }
  Plan plan;
  if (route != "/health" && !options_.api_key.empty()) {
    constexpr std::string_view kBearer = "Bearer ";
    const bool bearer = req.authorization.substr(0, kBearer.size()) == kBearer;
    if (!bearer || !same_secret(req.authorization.substr(kBearer.size()), options_.api_key)) {
      plan = error_plan(make_error(401, "invalid_api_key",
                                   bearer ? "invalid API key" : "missing 'Authorization: Bearer <key>' header"));
      plan.route = route.empty() ? "other" : route;
      return plan;
    }
  }
  if (route.empty()) {
    plan = error_plan(
        make_error(404, "unknown_route", "unknown route " + std::string(req.method) + " " + std::string(path)));
    return plan;
  }
  if (std::find(methods.begin(), methods.end(), req.method) == methods.end()) {
    std::string allow;
    for (std::string_view m : methods) allow += (allow.empty() ? "" : ", ") + std::string(m);
    plan = error_plan(make_error(405, "method_not_allowed",
                                 std::string(req.method) + " is not allowed on " + route + "; use " + allow));
    plan.reply.allow = allow;
  } else if (route == "/health") {
    plan = reply_plan(json_reply(json::object{{"status", "ok"}}));
  } else if (route == "/metrics") {
    plan = reply_plan({200, runtime_.metrics_text() + metrics_.text(), "text/plain; version=0.0.4", ""});
  } else if (route == "/v1/models") {
    json::object model{{"id", options_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "mnemo"}};
    plan = reply_plan(json_reply(json::object{{"object", "list"}, {"data", json::array{model}}}));
  } else if (parts[1] == "sessions") {
    plan = sessions(req.method, n >= 3 ? parts[2] : "", n == 4 ? parts[3] : "", req.body);
  } else {
    auto body = parse_body(req.body, /*allow_empty=*/false);
    if (auto* e = std::get_if<ApiError>(&body)) {
      plan = error_plan(*e);
    } else {
      const auto format = parts[1] == "chat" ? GenerationJob::Format::kChat : GenerationJob::Format::kCompletion;
      plan = generation(std::get<json::object>(body), format, "");
    }
  }
  plan.route = route;
  return plan;
}

Plan Api::generation(const json::object& body, GenerationJob::Format format, std::string session_id) {
  GenerationParams params;
  using F = GenerationJob::Format;
  // OpenAI's default max_tokens is 16 for completions; chat and sessions get the runtime's 128.
  Status s = parse_generation_fields(body, format == F::kCompletion ? 16 : 128, &params);
  if (s.ok() && format == F::kChat) s = parse_chat(body, &params);
  if (s.ok() && format != F::kChat) s = parse_prompt(body, /*required=*/format == F::kCompletion, &params);
  if (!s.ok()) return error_plan(s);
  if (!session_id.empty()) params.session = std::move(session_id);
  auto job = std::make_shared<GenerationJob>(*this, format, std::move(params));
  Plan plan;
  if (job->stream()) {
    plan.stream = job;
  } else {
    plan.blocking = [job] { return job->run_to_end(); };
    plan.on_disconnect = [job] { job->cancel("disconnect"); };
  }
  return plan;
}

Plan Api::sessions(std::string_view method, std::string_view id_view, std::string_view action,
                   std::string_view body_text) {
  const std::string id(id_view);
  if (id.empty() && method == "GET") {
    json::array data;
    for (const SessionInfo& i : runtime_.list_sessions()) data.push_back(session_json(i));
    return reply_plan(json_reply(json::object{{"object", "list"}, {"data", std::move(data)}}));
  }
  auto parsed = parse_body(body_text, /*allow_empty=*/action != "append");
  if (method == "POST") {
    if (auto* e = std::get_if<ApiError>(&parsed)) return error_plan(*e);
  }
  const json::object body = method == "POST" ? std::get<json::object>(parsed) : json::object{};
  FieldReader fields(body);

  if (id.empty()) {  // POST /v1/sessions: create
    std::string new_id;
    if (Status s = fields.get_string("id", &new_id); !s.ok()) return error_plan(s);
    if (!new_id.empty()) {
      if (Status s = check_session_id(new_id); !s.ok()) return error_plan(s);
      if (runtime_.open_session(new_id).ok()) {
        return error_plan(make_error(409, "session_exists", "session '" + new_id + "' already exists"));
      }
    }
    auto created = runtime_.create_session(new_id);
    if (!created.ok()) return error_plan(created.status());
    return reply_plan(json_reply(session_json((*created)->info())));
  }
  auto opened = runtime_.open_session(id);
  if (!opened.ok()) return error_plan(opened.status());
  std::shared_ptr<Session> session = *opened;
  Plan plan;
  if (action.empty() && method == "GET") {
    plan = reply_plan(json_reply(session_json(session->info())));
  } else if (action.empty()) {  // DELETE: waits for the engine to drop the session
    plan.blocking = [this, id] {
      Status s = runtime_.delete_session(id);
      if (!s.ok()) return error_reply(error_from_status(s));
      return json_reply(json::object{{"id", id}, {"object", "session"}, {"deleted", true}});
    };
  } else if (action == "append") {
    const bool has_text = fields.find("text") != nullptr, has_tokens = fields.find("tokens") != nullptr;
    if (has_text == has_tokens) {
      return error_plan(invalid_argument("append: give exactly one of 'text' (a string) or 'tokens' (token ids)"));
    }
    std::string text;
    std::vector<int32_t> tokens;
    Status s = has_text ? fields.get_string("text", &text) : fields.get_token_ids("tokens", &tokens);
    if (!s.ok()) return error_plan(s);
    plan.blocking = [session, has_text, text = std::move(text), tokens = std::move(tokens)]() mutable {
      Status st =
          has_text ? session->append_text(std::move(text)).get() : session->append_tokens(std::move(tokens)).get();
      if (!st.ok()) return error_reply(error_from_status(st));
      return json_reply(session_json(session->info()));
    };
  } else if (action == "generate") {
    plan = generation(body, GenerationJob::Format::kSession, id);
  } else if (action == "fork") {
    std::string child_id;
    if (Status s = fields.get_string("id", &child_id); !s.ok()) return error_plan(s);
    if (!child_id.empty()) {
      if (Status s = check_session_id(child_id); !s.ok()) return error_plan(s);
      if (runtime_.open_session(child_id).ok()) {
        return error_plan(make_error(409, "session_exists", "session '" + child_id + "' already exists"));
      }
    }
    plan.blocking = [session, child_id] {
      auto child = session->fork(child_id).get();
      if (!child.ok()) return error_reply(error_from_status(child.status()));
      return json_reply(session_json((*child)->info()));
    };
  } else {  // cancel
    const bool generating = session->info().generating;
    session->cancel();
    if (generating) metrics_.generation_cancelled_by("request");
    plan = reply_plan(json_reply(json::object{{"id", id}, {"object", "session"}, {"cancelled", generating}}));
  }
  return plan;
}

}  // namespace mnemo::server
