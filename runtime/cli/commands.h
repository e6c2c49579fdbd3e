// The subcommands of the `mnemo` CLI. Each returns a Status; main prints it and picks the exit code
// (2 for invalid arguments, 1 for other errors).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace mnemo::cli {

Status run_command(const std::vector<std::string>& args);
Status logits_command(const std::vector<std::string>& args);
Status serve_command(const std::vector<std::string>& args);
Status eval_command(const std::vector<std::string>& args);
Status ingest_command(const std::vector<std::string>& args);    // session_commands.cpp
Status sessions_command(const std::vector<std::string>& args);  // session_commands.cpp

}  // namespace mnemo::cli
