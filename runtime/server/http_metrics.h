// HTTP counters for /metrics: requests by route and status code, connections, cancelled generations.
// Thread-safe (one mutex; every update is a few map operations).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace mnemo::server {

class HttpMetrics {
 public:
  // `route` is the route template ("/v1/sessions/{id}/append", "other"), so labels stay bounded.
  void count_request(const std::string& route, int status);
  void connection_opened();
  void connection_closed();
  void generation_started();
  // `finish_reason`: finish_reason_name() of the result, or "error".
  void generation_finished(const std::string& finish_reason);
  // `cause`: "disconnect" (the client went away), "request" (/cancel), "shutdown".
  void generation_cancelled_by(const std::string& cause);

  // Prometheus text format, mnemo_http_* families.
  std::string text() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;  // (route, status) -> count
  std::map<std::string, int64_t> finished_;                  // finish reason -> count
  std::map<std::string, int64_t> cancelled_;                 // cause -> count
  int64_t open_connections_ = 0;
  int64_t connections_total_ = 0;
  int64_t active_generations_ = 0;
};

}  // namespace mnemo::server
