// `mnemo serve`: the HTTP server (runtime/server/server.h) over one Runtime until SIGINT/SIGTERM.
#include <cstdio>
#include <cstdlib>

#include "runtime/cli/commands.h"
#include "runtime/cli/flags.h"
#include "runtime/cli/model_flags.h"
#include "runtime/server/server.h"

namespace mnemo::cli {

Status serve_command(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> specs = {
      {"model", "DIR", "Hugging Face model folder", "the bundled models/tiny"},
      {"host", "ADDR", "address to bind (0.0.0.0 exposes the server to the network)", "127.0.0.1"},
      {"port", "N", "TCP port; 0 picks a free one (printed at start)", "8080"},
      {"api-key", "KEY", "require 'Authorization: Bearer KEY' (or set MNEMO_API_KEY)", ""},
      {"model-name", "NAME", "the model name in OpenAI responses", "mnemo"},
      {"max-body-bytes", "N", "largest request body", "8388608"},
      {"timeout-ms", "MS", "read and write timeout of a connection", "30000"},
      {"chunk-tokens", "N", "largest prefill chunk of one session per step", "2048"},
      {"max-batch-tokens", "N", "tokens per engine step across sessions", "4096"},
      {"data-dir", "DIR", "persistent sessions and KV on disk (RocksDB); sessions survive restarts", "in memory"},
      {"positions", "POLICY", "exact or bounded (streams past the model's trained positions)", "exact"},
      {"sparse-config", "FILE.json", "InfLLM-V2 sparse attention (MiniCPM4 sparse_config keys)", "the model's"},
      {"device", "NAME", "cpu or cuda[:N]", "cpu"},
      {"gpu-kv-mib", "N", "KV budget of the compute-device tier, MiB", "1024"},
      {"host-kv-mib", "N", "KV budget of the host tier, MiB", "4096"},
      {"help", "", "show this help", ""},
  };
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("serve", specs, args));
  if (f.has("help")) {
    std::fputs(
        usage("serve", "Serves the OpenAI-compatible and sessions HTTP API until SIGINT/SIGTERM.", specs).c_str(),
        stdout);
    return Status::Ok();
  }
  if (!f.positional().empty()) return invalid_argument("mnemo serve: unexpected argument '", f.positional()[0], "'");
  RuntimeOptions runtime_options;
  runtime_options.model_dir = f.get("model", default_model_dir());
  MNEMO_ASSIGN_OR_RETURN(runtime_options.chunk_tokens, f.get_int("chunk-tokens", 2048, 1, int64_t{1} << 30));
  MNEMO_ASSIGN_OR_RETURN(runtime_options.max_batch_tokens, f.get_int("max-batch-tokens", 4096, 1, int64_t{1} << 30));
  runtime_options.data_dir = f.get("data-dir");
  runtime_options.sparse_config_path = f.get("sparse-config");
  MNEMO_ASSIGN_OR_RETURN(runtime_options.device, parse_device(f.get("device", "cpu")));
  const std::string positions = f.get("positions", "exact");
  if (positions == "bounded") {
    runtime_options.positions = PositionPolicy::kBounded;
  } else if (positions != "exact") {
    return invalid_argument("mnemo serve: --positions: expected 'exact' or 'bounded', got '", positions, "'");
  }
  MNEMO_ASSIGN_OR_RETURN(int64_t gpu_mib, f.get_int("gpu-kv-mib", 1024, 1, int64_t{1} << 24));
  MNEMO_ASSIGN_OR_RETURN(int64_t host_mib, f.get_int("host-kv-mib", 4096, 1, int64_t{1} << 24));
  runtime_options.gpu_kv_budget_bytes = gpu_mib << 20;
  runtime_options.host_kv_budget_bytes = host_mib << 20;

  server::ServerOptions options;
  options.host = f.get("host", "127.0.0.1");
  MNEMO_ASSIGN_OR_RETURN(int64_t port, f.get_int("port", 8080, 0, 65535));
  options.port = static_cast<uint16_t>(port);
  const char* env_key = std::getenv("MNEMO_API_KEY");
  options.api_key = f.get("api-key", env_key ? env_key : "");
  options.model_name = f.get("model-name", "mnemo");
  MNEMO_ASSIGN_OR_RETURN(options.max_body_bytes,
                         f.get_int("max-body-bytes", options.max_body_bytes, 1, int64_t{1} << 40));
  MNEMO_ASSIGN_OR_RETURN(options.read_timeout_ms, f.get_int("timeout-ms", 30000, 1, int64_t{1} << 40));
  options.write_timeout_ms = options.read_timeout_ms;
  options.handle_signals = true;

  MNEMO_ASSIGN_OR_RETURN(auto runtime, Runtime::open(runtime_options));
  MNEMO_ASSIGN_OR_RETURN(auto server, server::Server::start(*runtime, options));
  std::printf("mnemo serve: listening on http://%s:%u (model %s)%s\n", options.host.c_str(), unsigned{server->port()},
              runtime_options.model_dir.c_str(), options.api_key.empty() ? "" : ", API key required");
  std::fflush(stdout);
  server->wait();
  std::printf("mnemo serve: stopped\n");
  return Status::Ok();
}

}  // namespace mnemo::cli
