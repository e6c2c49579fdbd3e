// A random workload against a shadow copy: appends, acquires of random block sets (some kept pinned
// across operations), releases, forks, drops and flushes, with tiny budgets so every tier overflows.
// After every operation: occupancy within budget, and every pinned slot still holds its block.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::append_once;
using memory_test::scratch_dir;
using memory_test::tiny_options;

void run_workload(uint32_t seed, bool with_disk) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (with_disk ? " with disk" : " without disk"));
  const std::string dir = with_disk ? scratch_dir() : "";
  const KvStoreOptions options = tiny_options(/*gpu_slots=*/12, /*host_slots=*/with_disk ? 8 : 40, dir);
  auto opened = KvStore::open(options);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  std::unique_ptr<KvStore> store = std::move(opened).value();
  const int bt = options.layout.block_tokens;
  memory_test::Workload w(store.get(), options, seed);
  auto& shadow = w.shadow();

  for (int op = 0; op < 400; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    const int64_t kind = w.pick(100);
    if (shadow.size() < 2 || (kind < 8 && shadow.size() < 4)) {
      ASSERT_NO_FATAL_FAILURE(w.create());
    } else if (kind < 50) {
      ASSERT_NO_FATAL_FAILURE(w.append());
    } else if (kind < 80) {  // acquire a random set, in random order
      const SequenceId seq = w.random_seq();
      const int64_t num_blocks = w.num_blocks(seq);
      if (num_blocks == 0) continue;
      const std::vector<int64_t> blocks = w.random_blocks(num_blocks, 6);
      ASSERT_NO_FATAL_FAILURE(w.acquire(seq, w.random_layer(), blocks));
      if (w.pick(2) == 0) w.release();  // most steps release at once; the rest keep pins across operations
    } else if (kind < 88) {
      w.release();
    } else if (kind < 93) {
      ASSERT_NO_FATAL_FAILURE(w.fork());
    } else if (kind < 98) {
      ASSERT_NO_FATAL_FAILURE(w.drop());
    } else {
      ASSERT_NO_FATAL_FAILURE(w.flush());
    }
    ASSERT_NO_FATAL_FAILURE(w.check_invariants(12));
  }
  store->release_all();
  for (const auto& [seq, tags] : shadow) {
    for (int layer = 0; layer < options.layout.num_layers; ++layer) {
      for (int64_t b = 0; b * bt < static_cast<int64_t>(tags.size()); ++b) {
        memory_test::expect_blocks(*store, seq, layer, {b}, tags);
      }
    }
  }
  if (!with_disk) return;

  // Everything sealed is durable after close; recovery returns each sequence's whole blocks.
  store.reset();
  opened = KvStore::open(options);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  store = std::move(opened).value();
  std::vector<SequenceId> want;
  for (const auto& [seq, tags] : shadow) want.push_back(seq);
  EXPECT_EQ(*store->list_sequences(), want);
  for (const auto& [seq, tags] : shadow) {
    auto recovered = store->recover_sequence(seq);
    ASSERT_TRUE(recovered.ok()) << recovered.status().to_string();
    ASSERT_EQ(*recovered, static_cast<int64_t>(tags.size()) / bt * bt) << "seq " << seq;
    for (int layer = 0; layer < options.layout.num_layers; ++layer) {
      for (int64_t b = 0; b < *recovered / bt; ++b) memory_test::expect_blocks(*store, seq, layer, {b}, tags);
    }
  }
}

TEST(TieredStore, BudgetsHoldAndDataStaysIntactUnderARandomWorkload) {
  for (uint32_t seed : {1u, 2u, 3u}) run_workload(seed, /*with_disk=*/false);
}

TEST(TieredStore, BudgetsHoldAndDataStaysIntactUnderARandomWorkloadWithDisk) {
  for (uint32_t seed : {11u, 12u}) run_workload(seed, /*with_disk=*/true);
}

}  // namespace
}  // namespace mnemo
