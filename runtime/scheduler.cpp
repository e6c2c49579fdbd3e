#include "runtime/scheduler.h"

#include <algorithm>

namespace mnemo {

std::vector<StepWork> plan_step(std::span<const SessionLoad> loads, const SchedulerOptions& options,
                                size_t* cursor) {
  std::vector<StepWork> work;
  int64_t budget = options.max_batch_tokens;
  const size_t n = loads.size();
  for (size_t i = 0; i < n && budget > 0; ++i) {
    if (loads[i].decode_ready) {
      work.push_back({i, 1, true});
      --budget;
    }
  }
  if (n == 0) return work;
  const size_t start = *cursor % n;
  bool first_served = false;
  for (size_t k = 0; k < n && budget > 0; ++k) {
    const size_t i = (start + k) % n;
    if (loads[i].decode_ready || loads[i].pending_prefill <= 0) continue;
    const int64_t take = std::min({loads[i].pending_prefill, options.chunk_tokens, budget});
    work.push_back({i, take, false});
    budget -= take;
    if (!first_served) {
      *cursor = i + 1;  // next step starts after the session served first now
      first_served = true;
    }
  }
  return work;
}

}  // namespace mnemo
