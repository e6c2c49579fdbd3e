#include "model/json_util.h"

#include <cmath>
#include <limits>

namespace mnemo::json_util {

Result<json::value> parse(std::string_view text, const std::string& path, StatusCode code) {
  json::parser parser;
  boost::system::error_code ec;
  // write() needs one complete value using the whole buffer; it reports how far it got on error.
  size_t consumed = parser.write(text.data(), text.size(), ec);
  if (ec) {
    // Line and column (1-based) of the byte where the parser stopped.
    if (consumed > text.size()) consumed = text.size();
    size_t line = 1, column = 1;
    for (size_t i = 0; i < consumed; ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    return Status(code, detail::str_cat(path, ": malformed JSON at line ", line, ", column ",
                                        column, " (byte ", consumed, "): ", ec.message()));
  }
  return parser.release();
}

std::string describe(const json::value& v) {
  auto clip = [](std::string s) { return s.size() > 40 ? s.substr(0, 37) + "..." : s; };
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return v.get_bool() ? "boolean true" : "boolean false";
    case json::kind::int64:
    case json::kind::uint64:
      return "integer " + json::serialize(v);
    case json::kind::double_:
      return "number " + json::serialize(v);
    case json::kind::string:
      return "string " + clip(json::serialize(v));
    case json::kind::array:
      return "array of " + std::to_string(v.get_array().size());
    case json::kind::object:
      return "object";
  }
  return "?";
}

bool as_int64(const json::value& v, int64_t* out) {
  if (v.is_int64()) {
    *out = v.get_int64();
    return true;
  }
  if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(v.get_uint64());
    return true;
  }
  if (v.is_double()) {
    // Some exporters write 32768.0; accept floats that are exact integers.
    const double d = v.get_double();
    if (std::trunc(d) != d || std::fabs(d) > 9.0e15) return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

const json::value* Fields::get(std::string_view key) const {
  const json::value* v = obj_->if_contains(key);
  return (v && !v->is_null()) ? v : nullptr;
}

Status Fields::missing(std::string_view key) const {
  return invalid_argument(path_, ": missing required field '", name(key), "'");
}

Status Fields::type_error(std::string_view key, const char* expected,
                          const json::value& got) const {
  return invalid_argument(path_, ": field '", name(key), "': expected ", expected, ", got ",
                          describe(got));
}

Status Fields::invalid(std::string_view key, const std::string& what) const {
  return invalid_argument(path_, ": field '", name(key), "': ", what);
}

Status Fields::read(std::string_view key, int64_t* out) const {
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (!as_int64(*v, out)) return type_error(key, "integer", *v);
  return Status::Ok();
}

Status Fields::read(std::string_view key, int* out) const {
  int64_t wide = *out;
  MNEMO_RETURN_IF_ERROR(read(key, &wide));
  if (wide < std::numeric_limits<int>::min() || wide > std::numeric_limits<int>::max()) {
    return invalid(key, "value " + std::to_string(wide) + " is out of range");
  }
  *out = static_cast<int>(wide);
  return Status::Ok();
}

Status Fields::read(std::string_view key, double* out) const {
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (v->is_double()) {
    *out = v->get_double();
  } else if (v->is_int64()) {
    *out = static_cast<double>(v->get_int64());
  } else if (v->is_uint64()) {
    *out = static_cast<double>(v->get_uint64());
  } else {
    return type_error(key, "number", *v);
  }
  return Status::Ok();
}

Status Fields::read(std::string_view key, bool* out) const {
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (!v->is_bool()) return type_error(key, "boolean", *v);
  *out = v->get_bool();
  return Status::Ok();
}

Status Fields::read(std::string_view key, std::string* out) const {
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (!v->is_string()) return type_error(key, "string", *v);
  *out = std::string(v->get_string());
  return Status::Ok();
}

Status Fields::read(std::string_view key, std::vector<double>* out) const {
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (!v->is_array()) return type_error(key, "array of numbers", *v);
  std::vector<double> values;
  for (const json::value& e : v->get_array()) {
    if (e.is_double()) {
      values.push_back(e.get_double());
    } else if (e.is_int64()) {
      values.push_back(static_cast<double>(e.get_int64()));
    } else if (e.is_uint64()) {
      values.push_back(static_cast<double>(e.get_uint64()));
    } else {
      return type_error(key, "array of numbers", e);
    }
  }
  *out = std::move(values);
  return Status::Ok();
}

Status Fields::read_ids(std::string_view key, std::vector<int64_t>* out, bool* present) const {
  const json::value* v = get(key);
  if (present) *present = v != nullptr;
  if (!v) return Status::Ok();
  std::vector<int64_t> ids;
  int64_t id = 0;
  if (v->is_array()) {
    for (const json::value& e : v->get_array()) {
      if (!as_int64(e, &id)) return type_error(key, "integer or array of integers", e);
      ids.push_back(id);
    }
  } else if (as_int64(*v, &id)) {
    ids.push_back(id);
  } else {
    return type_error(key, "integer or array of integers", *v);
  }
  for (int64_t i : ids) {
    if (i < 0) return invalid(key, "token id " + std::to_string(i) + " is negative");
  }
  *out = std::move(ids);
  return Status::Ok();
}

Status Fields::read_object(std::string_view key, const json::object** out) const {
  *out = nullptr;
  const json::value* v = get(key);
  if (!v) return Status::Ok();
  if (!v->is_object()) return type_error(key, "object", *v);
  *out = &v->get_object();
  return Status::Ok();
}

}  // namespace mnemo::json_util
