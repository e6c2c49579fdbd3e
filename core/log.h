// Minimal leveled logging to stderr: MNEMO_LOG(kWarning) << "text";
// The threshold comes from MNEMO_LOG_LEVEL (debug|info|warning|error; default: warning), so library
// warnings (an unexpected extra tensor, say) are seen but routine progress is quiet.
#pragma once

#include <sstream>

namespace mnemo {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

LogLevel log_threshold();
void set_log_threshold(LogLevel level);

// Optional sink for tests: receives every message at or above the threshold. Not thread-safe to set.
using LogSink = void (*)(LogLevel, const std::string&);
void set_log_sink(LogSink sink);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage();
  std::ostream& stream() { return os_; }

 private:
  LogLevel level_;
  std::ostringstream os_;
};

}  // namespace mnemo

#define MNEMO_LOG(level)                                                        \
  if (::mnemo::LogLevel::level < ::mnemo::log_threshold()) {                    \
  } else                                                                        \
    ::mnemo::LogMessage(::mnemo::LogLevel::level).stream()
