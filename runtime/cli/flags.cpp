#include "runtime/cli/flags.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace mnemo::cli {

Result<Flags> Flags::parse(const std::string& command, const std::vector<FlagSpec>& specs,
                           const std::vector<std::string>& args) {
  Flags f;
  f.command_ = command;
  auto find = [&](const std::string& name, char short_name) -> const FlagSpec* {
    for (const FlagSpec& s : specs) {
      if ((!name.empty() && s.name == name) || (short_name && s.short_name == short_name)) return &s;
    }
    return nullptr;
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      for (++i; i < args.size(); ++i) f.positional_.push_back(args[i]);
      break;
    }
    const FlagSpec* spec = nullptr;
    std::string inline_value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2);
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline = true;
      }
      spec = find(name, 0);
      if (!spec) return invalid_argument("mnemo ", command, ": unknown flag '--", name, "' (see mnemo ", command, " --help)");
    } else if (a.size() == 2 && a[0] == '-' && a[1] != '-') {
      spec = find("", a[1]);
      if (!spec) return invalid_argument("mnemo ", command, ": unknown flag '", a, "' (see mnemo ", command, " --help)");
    } else {
      f.positional_.push_back(a);
      continue;
    }
    if (spec->value.empty()) {
      if (has_inline) return invalid_argument("mnemo ", command, ": flag '--", spec->name, "' takes no value");
      f.values_[spec->name] = "true";
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= args.size()) {
        return invalid_argument("mnemo ", command, ": flag '--", spec->name, "' needs a value (", spec->value, ")");
      }
      inline_value = args[++i];
    }
    f.values_[spec->name] = inline_value;
  }
  return f;
}

std::string Flags::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

Result<int64_t> Flags::get_int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& v = it->second;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE) {
    return invalid_argument("mnemo ", command_, ": --", name, ": expected an integer, got '", v, "'");
  }
  if (x < min || x > max) {
    return invalid_argument("mnemo ", command_, ": --", name, ": expected an integer in [", min, ", ", max,
                            "], got ", x);
  }
  return static_cast<int64_t>(x);
}

Result<double> Flags::get_double(const std::string& name, double fallback, double min, double max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& v = it->second;
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno == ERANGE || x != x) {
    return invalid_argument("mnemo ", command_, ": --", name, ": expected a number, got '", v, "'");
  }
  if (x < min || x > max) {
    return invalid_argument("mnemo ", command_, ": --", name, ": expected a number in [", min, ", ", max,
                            "], got ", v);
  }
  return x;
}

std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs) {
  std::ostringstream os;
  os << "Usage: mnemo " << command << " [flags]\n" << summary << "\n\nFlags:\n";
  for (const FlagSpec& s : specs) {
    std::string left = "  ";
    if (s.short_name) left += std::string("-") + s.short_name + ", ";
    left += "--" + s.name + (s.value.empty() ? "" : " " + s.value);
    if (left.size() < 30) left.resize(30, ' ');
    os << left << " " << s.help;
    if (!s.fallback.empty()) os << " (default: " << s.fallback << ")";
    os << "\n";
  }
  return os.str();
}

}  // namespace mnemo::cli
