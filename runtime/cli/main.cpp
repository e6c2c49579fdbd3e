// mnemo: the command-line front end. Subcommands: run, logits (more come with the runtime).
#include <cstdio>
#include <string>
#include <vector>

#include "core/log.h"
#include "runtime/cli/commands.h"

namespace {

const char* kTopUsage =
    "mnemo — a language model over an unbounded token stream\n\n"
    "Usage: mnemo <command> [flags]   (mnemo <command> --help for its flags)\n\n"
    "Commands:\n"
    "  run      generate text from a prompt, streaming tokens to stdout\n"
    "  logits   write float32 logits of every position to a .npy file\n"
    "  eval     evaluate a model (eval passkey: long-context retrieval accuracy)\n"
    "  serve    serve the OpenAI-compatible and sessions HTTP API\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kTopUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  mnemo::Status status;
  if (command == "run") {
    status = mnemo::cli::run_command(args);
  } else if (command == "logits") {
    status = mnemo::cli::logits_command(args);
  } else if (command == "serve") {
    status = mnemo::cli::serve_command(args);
  } else if (command == "eval") {
    status = mnemo::cli::eval_command(args);
  } else {
    std::fprintf(stderr, "mnemo: unknown command '%s'\n\n%s", command.c_str(), kTopUsage);
    return 2;
  }
  if (!status.ok()) {
    // Flag errors already start with "mnemo <command>: "; say it once.
    std::string message = status.message();
    const std::string prefix = "mnemo " + command + ": ";
    if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
    std::fprintf(stderr, "mnemo %s: error: %s (%s)\n", command.c_str(), message.c_str(),
                 mnemo::status_code_name(status.code()));
    return status.code() == mnemo::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
