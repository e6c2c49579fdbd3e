// A small command-line flag parser for the `mnemo` subcommands, with errors that name the flag,
// the expected form and what was given.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace mnemo::cli {

struct FlagSpec {
  std::string name;      // without dashes: "temperature"
  std::string value;     // metavariable for help ("FLOAT"); empty for a boolean switch
  std::string help;      // one line
  std::string fallback;  // default shown in help; "" when none
  char short_name = 0;   // e.g. 'n' for -n
};

class Flags {
 public:
  // Parses argv[first..] against `specs`; positional arguments are kept in order.
  static Result<Flags> parse(const std::string& command, const std::vector<FlagSpec>& specs,
                             const std::vector<std::string>& args);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  Result<int64_t> get_int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  Result<double> get_double(const std::string& name, double fallback, double min, double max) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// "Usage: mnemo run [flags]\n  --model DIR   ..." for --help.
std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs);

}  // namespace mnemo::cli
