// Parsing request bodies: JSON with the error position, typed fields whose errors name the field,
// what was expected and what came, the sampling fields every generating endpoint shares, prompts, and
// chat messages with the default chat template.
//
// Internal to runtime/server (Boost.JSON types appear here, never in server.h).
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "runtime/runtime.h"

namespace mnemo::server {

// The body as a JSON object. kInvalidArgument with the position: "malformed JSON at line 1,
// column 9 (byte 8): syntax error", or "request body: expected a JSON object, got array".
Result<boost::json::object> parse_json_object(std::string_view body);

// "string", "integer", "number", "boolean", "null", "array", "object".
const char* json_kind_name(const boost::json::value& v);

// Reads optional fields of one JSON object. An absent or null field leaves the output untouched.
// Errors are kInvalidArgument: "field 'top_k': expected an integer in [0, 2147483647], got string".
class FieldReader {
 public:
  // `where` prefixes field names in messages ("messages[2]." -> "field 'messages[2].role'").
  explicit FieldReader(const boost::json::object& object, std::string where = "")
      : object_(object), where_(std::move(where)) {}

  // The field, or null when absent or JSON null.
  const boost::json::value* find(std::string_view key) const;
  Status get_string(std::string_view key, std::string* out) const;
  Status get_bool(std::string_view key, bool* out) const;
  Status get_int(std::string_view key, int64_t* out, int64_t min, int64_t max) const;
  Status get_number(std::string_view key, double* out, double min, double max) const;
  // An array of integers in [0, INT32_MAX].
  Status get_token_ids(std::string_view key, std::vector<int32_t>* out) const;
  // A string or an array of strings.
  Status get_strings(std::string_view key, std::vector<std::string>* out) const;

  std::string name(std::string_view key) const { return where_ + std::string(key); }
  Status wrong_type(std::string_view key, std::string_view expected, const boost::json::value& got) const;

 private:
  const boost::json::object& object_;
  std::string where_;
};

// What a generating request asks for (/v1/completions, /v1/chat/completions, sessions' generate).
struct GenerationParams {
  GenerateRequest request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  std::string session;         // extension: run in this existing session; "" = a temporary one
  bool has_prompt = false;     // there is input to append before generating
  bool prompt_is_tokens = false;
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
};

// The fields every generating endpoint shares: max_tokens (alias max_completion_tokens), temperature
// (OpenAI's default 1), top_p, top_k and min_p and repetition_penalty (extensions), seed (absent: a
// random one), stop (string or list), stream, stream_options.include_usage, ignore_eos and session
// (extensions), n (must be 1), frequency_penalty / presence_penalty (must be 0 when given).
Status parse_generation_fields(const boost::json::object& body, int64_t default_max_tokens, GenerationParams* out);

// "prompt": a string, an array of token ids (used as given, no BOS), or an array of one string.
Status parse_prompt(const boost::json::object& body, bool required, GenerationParams* out);

struct ChatMessage {
  std::string role;     // "system", "developer", "user", "assistant" or "tool"
  std::string content;  // a string, or the text parts of an array of parts
};

// "messages" -> the prompt through apply_chat_template(); adds chat_stop_strings() to the stops.
Status parse_chat(const boost::json::object& body, GenerationParams* out);

// The default chat template (the one place to change it until the agent layer brings real templates):
// one "role: content" line per message, then "assistant:" for the model to continue. Example:
//   "system: Be brief.\nuser: Hi\nassistant:"
std::string apply_chat_template(const std::vector<ChatMessage>& messages);
// Stops that end the assistant's turn under that template: "\nuser:" and "\nsystem:".
std::vector<std::string> chat_stop_strings();

}  // namespace mnemo::server
