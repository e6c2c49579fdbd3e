#include "runtime/server/request.h"

#include <boost/json/serialize.hpp>
#include <boost/json/stream_parser.hpp>
#include <cmath>
#include <limits>
#include <random>

namespace mnemo::server {
namespace json = boost::json;

Result<json::object> parse_json_object(std::string_view body) {
  json::stream_parser parser;
  boost::system::error_code ec;
  const size_t consumed = parser.write(body.data(), body.size(), ec);
  if (!ec) parser.finish(ec);
  if (ec) {
    // The parser stops at the first byte it cannot take; report it as line and column too.
    const size_t at = std::min(consumed, body.size());
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at; ++i) {
      if (body[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    if (body.empty()) return invalid_argument("malformed JSON: the request body is empty");
    return invalid_argument("malformed JSON at line ", line, ", column ", column, " (byte ", at, "): ", ec.message());
  }
  json::value v = parser.release();
  if (!v.is_object()) return invalid_argument("request body: expected a JSON object, got ", json_kind_name(v));
  return std::move(v.as_object());
}

const char* json_kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "boolean";
    case json::kind::int64:
    case json::kind::uint64:
      return "integer";
    case json::kind::double_:
      return "number";
    case json::kind::string:
      return "string";
    case json::kind::array:
      return "array";
    case json::kind::object:
      return "object";
  }
  return "?";
}

const json::value* FieldReader::find(std::string_view key) const {
  const json::value* v = object_.if_contains(key);
  return v && !v->is_null() ? v : nullptr;
}

Status FieldReader::wrong_type(std::string_view key, std::string_view expected, const json::value& got) const {
  return invalid_argument("field '", name(key), "': expected ", expected, ", got ", json_kind_name(got));
}

Status FieldReader::get_string(std::string_view key, std::string* out) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  if (!v->is_string()) return wrong_type(key, "a string", *v);
  *out = std::string(v->as_string());
  return Status::Ok();
}

Status FieldReader::get_bool(std::string_view key, bool* out) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  if (!v->is_bool()) return wrong_type(key, "a boolean", *v);
  *out = v->as_bool();
  return Status::Ok();
}

Status FieldReader::get_int(std::string_view key, int64_t* out, int64_t min, int64_t max) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  const std::string expected = detail::str_cat("an integer in [", min, ", ", max, "]");
  if (v->is_int64() && v->as_int64() >= min && v->as_int64() <= max) {
    *out = v->as_int64();
    return Status::Ok();
  }
  if (v->is_uint64() && max >= 0 && v->as_uint64() <= static_cast<uint64_t>(max)) {
    *out = static_cast<int64_t>(v->as_uint64());
    return Status::Ok();
  }
  if (v->is_int64() || v->is_uint64()) {
    return invalid_argument("field '", name(key), "': expected ", expected, ", got ", json::serialize(*v));
  }
  return wrong_type(key, expected, *v);
}

Status FieldReader::get_number(std::string_view key, double* out, double min, double max) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  if (!v->is_number()) return wrong_type(key, detail::str_cat("a number in [", min, ", ", max, "]"), *v);
  const double x = v->to_number<double>();
  if (!(x >= min && x <= max)) {
    return invalid_argument("field '", name(key), "': expected a number in [", min, ", ", max, "], got ", x);
  }
  *out = x;
  return Status::Ok();
}

Status FieldReader::get_token_ids(std::string_view key, std::vector<int32_t>* out) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  if (!v->is_array()) return wrong_type(key, "an array of token ids", *v);
  std::vector<int32_t> ids;
  const json::array& a = v->as_array();
  for (size_t i = 0; i < a.size(); ++i) {
    const bool ok = (a[i].is_int64() && a[i].as_int64() >= 0 && a[i].as_int64() <= INT32_MAX) ||
                    (a[i].is_uint64() && a[i].as_uint64() <= INT32_MAX);
    if (!ok) {
      return invalid_argument("field '", name(key), "[", i, "]': expected a token id in [0, ", INT32_MAX, "], got ",
                              json::serialize(a[i]));
    }
    ids.push_back(static_cast<int32_t>(a[i].to_number<int64_t>()));
  }
  *out = std::move(ids);
  return Status::Ok();
}

Status FieldReader::get_strings(std::string_view key, std::vector<std::string>* out) const {
  const json::value* v = find(key);
  if (!v) return Status::Ok();
  if (v->is_string()) {
    *out = {std::string(v->as_string())};
    return Status::Ok();
  }
  if (!v->is_array()) return wrong_type(key, "a string or an array of strings", *v);
  std::vector<std::string> items;
  for (size_t i = 0; i < v->as_array().size(); ++i) {
    const json::value& item = v->as_array()[i];
    if (!item.is_string()) return wrong_type(detail::str_cat(key, "[", i, "]"), "a string", item);
    items.emplace_back(item.as_string());
  }
  *out = std::move(items);
  return Status::Ok();
}

Status parse_generation_fields(const json::object& body, int64_t default_max_tokens, GenerationParams* out) {
  FieldReader f(body);
  GenerateRequest& r = out->request;
  r.max_new_tokens = default_max_tokens;
  MNEMO_RETURN_IF_ERROR(f.get_int("max_completion_tokens", &r.max_new_tokens, 0, INT32_MAX));
  MNEMO_RETURN_IF_ERROR(f.get_int("max_tokens", &r.max_new_tokens, 0, INT32_MAX));

  SamplingParams& s = r.sampling;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, penalty = 1.0;  // OpenAI's defaults
  int64_t top_k = 0, n = 1;
  MNEMO_RETURN_IF_ERROR(f.get_number("temperature", &temperature, 0.0, 100.0));
  MNEMO_RETURN_IF_ERROR(f.get_number("top_p", &top_p, 0.0, 1.0));
  MNEMO_RETURN_IF_ERROR(f.get_number("min_p", &min_p, 0.0, 1.0));
  MNEMO_RETURN_IF_ERROR(f.get_number("repetition_penalty", &penalty, 1e-6, 100.0));
  MNEMO_RETURN_IF_ERROR(f.get_int("top_k", &top_k, 0, INT32_MAX));
  MNEMO_RETURN_IF_ERROR(f.get_int("n", &n, 1, 1));
  for (const char* unsupported : {"frequency_penalty", "presence_penalty"}) {
    double x = 0.0;
    MNEMO_RETURN_IF_ERROR(f.get_number(unsupported, &x, -2.0, 2.0));
    if (x != 0.0) return invalid_argument("field '", unsupported, "': not supported; use repetition_penalty");
  }
  s.temperature = static_cast<float>(temperature);
  s.top_p = static_cast<float>(top_p);
  s.min_p = static_cast<float>(min_p);
  s.repetition_penalty = static_cast<float>(penalty);
  s.top_k = static_cast<int>(top_k);
  if (f.find("seed")) {
    int64_t seed = 0;
    MNEMO_RETURN_IF_ERROR(f.get_int("seed", &seed, std::numeric_limits<int64_t>::min(), INT64_MAX));
    s.seed = static_cast<uint64_t>(seed);
  } else {
    // OpenAI: without a seed, sampling differs between requests.
    s.seed = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  }
  MNEMO_RETURN_IF_ERROR(s.validate());

  MNEMO_RETURN_IF_ERROR(f.get_strings("stop", &r.stop));
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty()) return invalid_argument("field 'stop[", i, "]': expected a non-empty string");
  }
  MNEMO_RETURN_IF_ERROR(f.get_bool("ignore_eos", &r.ignore_eos));
  MNEMO_RETURN_IF_ERROR(f.get_bool("stream", &out->stream));
  if (const json::value* so = f.find("stream_options")) {
    if (!so->is_object()) return f.wrong_type("stream_options", "an object", *so);
    MNEMO_RETURN_IF_ERROR(
        FieldReader(so->as_object(), "stream_options.").get_bool("include_usage", &out->include_usage));
  }
  MNEMO_RETURN_IF_ERROR(f.get_string("session", &out->session));
  return Status::Ok();
}

Status parse_prompt(const json::object& body, bool required, GenerationParams* out) {
  FieldReader f(body);
  const json::value* p = f.find("prompt");
  if (!p) {
    if (required) return invalid_argument("field 'prompt': required (a string or an array of token ids)");
    return Status::Ok();
  }
  out->has_prompt = true;
  if (p->is_string()) {
    out->prompt_text = std::string(p->as_string());
    return Status::Ok();
  }
  // OpenAI also takes a batch of prompts; one prompt in a list is accepted, a batch is not.
  if (p->is_array() && p->as_array().size() == 1 && p->as_array()[0].is_string()) {
    out->prompt_text = std::string(p->as_array()[0].as_string());
    return Status::Ok();
  }
  if (p->is_array() && !p->as_array().empty() && p->as_array()[0].is_string()) {
    return invalid_argument("field 'prompt': batches of prompts are not supported; send one string");
  }
  if (!p->is_array()) return f.wrong_type("prompt", "a string or an array of token ids", *p);
  out->prompt_is_tokens = true;
  return f.get_token_ids("prompt", &out->prompt_tokens);
}

Status parse_chat(const json::object& body, GenerationParams* out) {
  FieldReader f(body);
  const json::value* m = f.find("messages");
  if (!m) return invalid_argument("field 'messages': required (an array of {role, content})");
  if (!m->is_array()) return f.wrong_type("messages", "an array of {role, content}", *m);
  if (m->as_array().empty()) return invalid_argument("field 'messages': expected at least one message");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < m->as_array().size(); ++i) {
    const json::value& item = m->as_array()[i];
    const std::string where = detail::str_cat("messages[", i, "].");
    if (!item.is_object()) return f.wrong_type(detail::str_cat("messages[", i, "]"), "an object", item);
    FieldReader mf(item.as_object(), where);
    ChatMessage msg;
    MNEMO_RETURN_IF_ERROR(mf.get_string("role", &msg.role));
    if (msg.role != "system" && msg.role != "developer" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "tool") {
      return invalid_argument("field '", where,
                              "role': expected one of system, developer, user, assistant, tool, got '", msg.role, "'");
    }
    const json::value* content = mf.find("content");
    if (content && content->is_array()) {
      // Parts: [{"type": "text", "text": "..."}]; only text parts are understood.
      for (size_t k = 0; k < content->as_array().size(); ++k) {
        const json::value& part = content->as_array()[k];
        const std::string part_name = detail::str_cat(where, "content[", k, "].");
        if (!part.is_object()) return mf.wrong_type(detail::str_cat("content[", k, "]"), "an object", part);
        FieldReader pf(part.as_object(), part_name);
        std::string type, text;
        MNEMO_RETURN_IF_ERROR(pf.get_string("type", &type));
        if (type != "text") return invalid_argument("field '", part_name, "type': only \"text\" parts are supported");
        MNEMO_RETURN_IF_ERROR(pf.get_string("text", &text));
        msg.content += text;
      }
    } else {
      MNEMO_RETURN_IF_ERROR(mf.get_string("content", &msg.content));
    }
    messages.push_back(std::move(msg));
  }
  out->has_prompt = true;
  out->prompt_text = apply_chat_template(messages);
  for (std::string& s : chat_stop_strings()) out->request.stop.push_back(std::move(s));
  return Status::Ok();
}

std::string apply_chat_template(const std::vector<ChatMessage>& messages) {
  std::string text;
  for (const ChatMessage& m : messages) {
    text += (m.role == "developer" ? std::string("system") : m.role) + ": " + m.content + "\n";
  }
  return text + "assistant:";
}

std::vector<std::string> chat_stop_strings() { return {"\nuser:", "\nsystem:"}; }

}  // namespace mnemo::server
