#include "runtime/server/http_metrics.h"

#include <sstream>

namespace mnemo::server {

void HttpMetrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

void HttpMetrics::connection_opened() {
  std::lock_guard<std::mutex> lock(mu_);
  ++open_connections_;
  ++connections_total_;
}

void HttpMetrics::connection_closed() {
  std::lock_guard<std::mutex> lock(mu_);
  --open_connections_;
}

void HttpMetrics::generation_started() {
  std::lock_guard<std::mutex> lock(mu_);
  ++active_generations_;
}

void HttpMetrics::generation_finished(const std::string& finish_reason) {
  std::lock_guard<std::mutex> lock(mu_);
  --active_generations_;
  ++finished_[finish_reason];
}

void HttpMetrics::generation_cancelled_by(const std::string& cause) {
  std::lock_guard<std::mutex> lock(mu_);
  ++cancelled_[cause];
}

std::string HttpMetrics::text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  os << "# HELP mnemo_http_requests_total HTTP requests answered, by route and status code.\n"
     << "# TYPE mnemo_http_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    os << "mnemo_http_requests_total{route=\"" << key.first << "\",code=\"" << key.second << "\"} " << n << "\n";
  }
  os << "# HELP mnemo_http_open_connections Open HTTP connections.\n# TYPE mnemo_http_open_connections gauge\n"
     << "mnemo_http_open_connections " << open_connections_ << "\n"
     << "# HELP mnemo_http_connections_total HTTP connections accepted.\n"
     << "# TYPE mnemo_http_connections_total counter\nmnemo_http_connections_total " << connections_total_ << "\n"
     << "# HELP mnemo_http_active_generations Generations running for HTTP requests.\n"
     << "# TYPE mnemo_http_active_generations gauge\nmnemo_http_active_generations " << active_generations_ << "\n"
     << "# HELP mnemo_http_generations_total Generations for HTTP requests that ended, by finish reason.\n"
     << "# TYPE mnemo_http_generations_total counter\n";
  for (const auto& [reason, n] : finished_)
    os << "mnemo_http_generations_total{reason=\"" << reason << "\"} " << n << "\n";
  os << "# HELP mnemo_http_generations_cancelled_total Generations the server cancelled, by cause.\n"
     << "# TYPE mnemo_http_generations_cancelled_total counter\n";
  for (const auto& [cause, n] : cancelled_) {
    os << "mnemo_http_generations_cancelled_total{cause=\"" << cause << "\"} " << n << "\n";
  }
  return os.str();
}

}  // namespace mnemo::server
