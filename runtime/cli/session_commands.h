// The CLI over persistent sessions (RuntimeOptions::data_dir): `mnemo ingest` and `mnemo sessions`
// (declared in commands.h with the other subcommands) and `mnemo run --session`, which run_command
// hands over to once it has parsed and checked its flags.
#pragma once

#include "core/status.h"
#include "runtime/cli/flags.h"
#include "runtime/generate.h"

namespace mnemo::cli {

// `mnemo run --session ID --data-dir DIR --prompt TEXT`: appends the prompt to the persisted session
// (created when there is none) and streams the continuation to stdout. `run_flags` are run's flags;
// `options` its sampling and -n (stop ids are the runtime's own EOS ids unless --ignore-eos).
Status run_session_command(const Flags& run_flags, const GenerateOptions& options);

}  // namespace mnemo::cli
