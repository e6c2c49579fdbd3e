// Scheduler: which work one engine step runs (continuous batching across sessions).
//
// Policy: every generating session that has a token to run gets its decode token first (latency of
// running chats); the remaining budget (max_batch_tokens) goes to prefill chunks of at most
// chunk_tokens, handed out round-robin starting after the session served first last time, so a
// 1M-token ingest and a short chat prompt alternate instead of the chat waiting behind the ingest.
// A pure function of its inputs: tested without a model.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mnemo {

struct SchedulerOptions {
  int64_t chunk_tokens = 2048;      // Default: 2048
  int64_t max_batch_tokens = 4096;  // Default: 4096
};

struct SessionLoad {
  bool decode_ready = false;   // a generated token waits to be run
  int64_t pending_prefill = 0; // appended tokens not yet run (ignored while generating)
};

struct StepWork {
  size_t session;   // index into the loads span
  int64_t tokens;   // 1 for decode; the chunk size for prefill
  bool decode;
};

// `cursor` carries the round-robin position between steps.
std::vector<StepWork> plan_step(std::span<const SessionLoad> loads, const SchedulerOptions& options,
                                size_t* cursor);

}  // namespace mnemo
