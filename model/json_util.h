// Internal to model/: JSON parsing with error positions, and typed field reads whose errors name
// the file, the dotted field name, the expected type and what was found. Not a public header of
// model/ (it exposes Boost.JSON types); config.cpp, safetensors.cpp and tokenizer code share it.
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mnemo::json_util {

namespace json = boost::json;

// Parses `text`; a syntax error becomes `code` with "PATH: malformed JSON at line L, column C (byte
// B): <reason>". Trailing garbage after the value is an error too.
Result<json::value> parse(std::string_view text, const std::string& path,
                          StatusCode code = StatusCode::kInvalidArgument);

// "integer", "string", ... plus a short rendering of the value: `string "4096"`.
std::string describe(const json::value& v);

// Typed reads from one JSON object. Absent keys and JSON null leave the output unchanged (the
// caller pre-fills defaults); a present key of the wrong type is an InvalidArgument error:
//   "config.json: field 'rope_scaling.factor': expected number, got string \"2\"".
class Fields {
 public:
  Fields(const json::object& obj, std::string path, std::string prefix = "")
      : obj_(&obj), path_(std::move(path)), prefix_(std::move(prefix)) {}

  // The value, or nullptr when absent or null.
  const json::value* get(std::string_view key) const;
  bool has(std::string_view key) const { return get(key) != nullptr; }

  Status read(std::string_view key, int64_t* out) const;  // integers; integral floats (32768.0)
  Status read(std::string_view key, int* out) const;
  Status read(std::string_view key, double* out) const;  // integers or floats
  Status read(std::string_view key, bool* out) const;
  Status read(std::string_view key, std::string* out) const;
  Status read(std::string_view key, std::vector<double>* out) const;
  // An integer or a list of integers (bos/eos ids); *present says whether the key was set.
  Status read_ids(std::string_view key, std::vector<int64_t>* out, bool* present = nullptr) const;
  // A nested object; nullptr (and OK) when absent or null.
  Status read_object(std::string_view key, const json::object** out) const;

  // Like read, but an absent or null key is "PATH: missing required field 'NAME'".
  template <typename T>
  Status require(std::string_view key, T* out) const {
    if (!has(key)) return missing(key);
    return read(key, out);
  }
  // read / require over (key, out) pairs, stopping at the first error.
  template <typename T, typename... Rest>
  Status read_all(std::string_view key, T* out, Rest... rest) const {
    MNEMO_RETURN_IF_ERROR(read(key, out));
    if constexpr (sizeof...(rest) > 0) return read_all(rest...);
    return Status::Ok();
  }
  template <typename T, typename... Rest>
  Status require_all(std::string_view key, T* out, Rest... rest) const {
    MNEMO_RETURN_IF_ERROR(require(key, out));
    if constexpr (sizeof...(rest) > 0) return require_all(rest...);
    return Status::Ok();
  }

  std::string name(std::string_view key) const { return prefix_ + std::string(key); }
  const std::string& path() const { return path_; }
  Fields nested(const json::object& obj, std::string_view key) const {
    return Fields(obj, path_, name(key) + ".");
  }
  Status missing(std::string_view key) const;
  Status type_error(std::string_view key, const char* expected, const json::value& got) const;
  // "PATH: field 'NAME': <what>" as InvalidArgument, for range checks.
  Status invalid(std::string_view key, const std::string& what) const;

 private:
  const json::object* obj_;
  std::string path_;
  std::string prefix_;
};

// Reads an integer from a JSON value (int64, uint64 within range, or an integral double).
bool as_int64(const json::value& v, int64_t* out);

}  // namespace mnemo::json_util
