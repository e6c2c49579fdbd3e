#include "runtime/scheduler.h"

#include <gtest/gtest.h>

namespace mnemo {
namespace {

TEST(Scheduler, DecodeTokensGoFirstThenPrefillChunks) {
  std::vector<SessionLoad> loads = {{false, 5000}, {true, 1}, {false, 10}};
  size_t cursor = 0;
  auto work = plan_step(loads, {.chunk_tokens = 2048, .max_batch_tokens = 4096}, &cursor);
  ASSERT_EQ(work.size(), 3u);
  EXPECT_TRUE(work[0].decode);
  EXPECT_EQ(work[0].session, 1u);
  EXPECT_EQ(work[1].session, 0u);
  EXPECT_EQ(work[1].tokens, 2048);
  EXPECT_EQ(work[2].session, 2u);
  EXPECT_EQ(work[2].tokens, 10);
}

TEST(Scheduler, NeverExceedsMaxBatchTokens) {
  std::vector<SessionLoad> loads(10, SessionLoad{false, 100000});
  size_t cursor = 0;
  for (int step = 0; step < 20; ++step) {
    int64_t total = 0;
    for (const auto& w : plan_step(loads, {.chunk_tokens = 2048, .max_batch_tokens = 3000}, &cursor)) total += w.tokens;
    EXPECT_LE(total, 3000);
    EXPECT_GT(total, 0);
  }
}

TEST(Scheduler, ALongIngestDoesNotStarveAShortPrompt) {
  // Session 0 ingests a million tokens; session 1's short prompt must be served within two steps.
  std::vector<SessionLoad> loads = {{false, 1000000}, {false, 0}};
  size_t cursor = 0;
  SchedulerOptions options{.chunk_tokens = 2048, .max_batch_tokens = 2048};
  plan_step(loads, options, &cursor);
  loads[1].pending_prefill = 30;
  bool served = false;
  for (int step = 0; step < 2 && !served; ++step) {
    for (const auto& w : plan_step(loads, options, &cursor)) served |= w.session == 1;
  }
  EXPECT_TRUE(served);
}

}  // namespace
}  // namespace mnemo
