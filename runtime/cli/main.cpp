// mnemo: the command-line front end. Subcommands: run, logits (more come with the runtime).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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
    "  serve    serve the OpenAI-compatible and sessions HTTP API\n"
    "  ingest   stream a text file into a persistent session (resumable)\n"
    "  sessions list, show or delete the persistent sessions of a data dir\n";

}  // namespace

int main(int argc, char** argv) {
  // OpenMP worker threads spin between parallel regions by default; on a shared or oversubscribed
  // machine (the engine, server and helper threads all want cores) that made decode 70x slower in a
  // measurement here. libgomp reads the policy when it loads, so set it and start again.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default policy
  }
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
  } else if (command == "ingest") {
    status = mnemo::cli::ingest_command(args);
  } else if (command == "sessions") {
    status = mnemo::cli::sessions_command(args);
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
