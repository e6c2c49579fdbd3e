#include "core/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace mnemo {
namespace {

LogLevel threshold_from_env() {
  const char* v = std::getenv("MNEMO_LOG_LEVEL");
  if (!v) return LogLevel::kWarning;
  if (!std::strcmp(v, "debug")) return LogLevel::kDebug;
  if (!std::strcmp(v, "info")) return LogLevel::kInfo;
  if (!std::strcmp(v, "error")) return LogLevel::kError;
  return LogLevel::kWarning;
}

LogLevel g_threshold = threshold_from_env();
LogSink g_sink = nullptr;
std::mutex g_mutex;

const char* level_tag(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

}  // namespace

LogLevel log_threshold() { return g_threshold; }
void set_log_threshold(LogLevel level) { g_threshold = level; }
void set_log_sink(LogSink sink) { g_sink = sink; }

LogMessage::~LogMessage() {
  const std::string text = os_.str();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_sink) g_sink(level_, text);
  std::fprintf(stderr, "mnemo %s: %s\n", level_tag(level_), text.c_str());
}

}  // namespace mnemo
