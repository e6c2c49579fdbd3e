// mnemo's HTTP server: an OpenAI-compatible API and a sessions API over one Runtime.
//
//   auto rt = Runtime::open({.model_dir = "models/tiny"});
//   auto server = Server::start(**rt, {.port = 0});       // Result<unique_ptr<Server>>, listening
//   printf("port %d\n", (*server)->port());
//   (*server)->wait();                                     // until stop() or SIGINT/SIGTERM
//
// Endpoints (JSON in and out; errors are {"error": {"message", "type", "code"}}):
//   GET  /health                         {"status":"ok"} (never needs the API key)
//   GET  /metrics                        Prometheus text: the runtime's metrics and HTTP counters
//   POST /v1/completions                 OpenAI completions; `stream: true` answers with SSE
//   POST /v1/chat/completions            OpenAI chat completions (default template: chat.h)
//   POST /v1/sessions                    create {id?} -> {id}
//   GET  /v1/sessions                    list
//   GET  /v1/sessions/{id}               info
//   DELETE /v1/sessions/{id}             delete
//   POST /v1/sessions/{id}/append        {text} or {tokens}; answered once durable
//   POST /v1/sessions/{id}/generate      sampling fields as /v1/completions (stream or not)
//   POST /v1/sessions/{id}/fork          {id?} -> {id}
//   POST /v1/sessions/{id}/cancel        stops the session's generation
// Completions run in a fresh temporary session (deleted afterwards) unless the request names an
// existing one in `session` (an extension). A client that disconnects cancels its generation.
//
// Threading: one I/O thread runs every connection (one coroutine each); calls that wait on the
// runtime (append, fork, delete, non-streamed generations) run on short-lived helper threads, so no
// connection waits for another. Public API: no Asio types (STYLE.md §5).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "runtime/runtime.h"

namespace mnemo::server {

struct ServerOptions {
  std::string host = "127.0.0.1";             // address to bind; "0.0.0.0" exposes the server. Default: loopback
  uint16_t port = 8080;                       // TCP port; 0 = an ephemeral port (see Server::port()). Default: 8080
  std::string api_key;                        // when set, requests need "Authorization: Bearer <key>". Default: none
  int64_t max_body_bytes = int64_t{8} << 20;  // larger request bodies get 413. Default: 8 MiB
  int64_t read_timeout_ms = 30000;            // to read one request, and idle time between keep-alive
                                              // requests; then the connection closes. Default: 30 s
  int64_t write_timeout_ms = 30000;           // to write one response or one SSE chunk. Default: 30 s
  int64_t max_connections = 256;              // open connections; more are answered 503. Default: 256
  std::string model_name = "mnemo";           // "model" in OpenAI responses. Default: "mnemo"
  bool handle_signals = false;                // stop on SIGINT/SIGTERM (the CLI sets it). Default: off
};

// States: running (after start) -> stopping (stop() or a signal: the listener is closed, generations
// are cancelled, connections are closed) -> stopped (every connection and helper thread has ended).
class Server {
 public:
  // Binds, listens and starts serving on a background thread. `runtime` must outlive the Server.
  // Errors: kInvalidArgument (bad options or host), kIoError (the address cannot be bound).
  static Result<std::unique_ptr<Server>> start(Runtime& runtime, const ServerOptions& options);
  ~Server();  // stop()

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (the ephemeral one when options.port was 0).
  uint16_t port() const;
  // Cancels generations, closes connections and waits until everything has ended. Idempotent; call
  // from any thread but a request handler.
  void stop();
  // Blocks until the server stops (stop() from another thread, or a signal), then finishes stop().
  void wait();

  class Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mnemo::server
