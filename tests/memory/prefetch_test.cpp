// KvStore::prefetch (issue #5) on the CPU store, where the copies are synchronous: a prefetch is an
// early load, so what it moved and where shows in the metrics and the slots right after the call.
// Hits and bytes, the budget and pins, aging of unused prefetches, blocks only on disk, forks, bad
// arguments, and a random workload with prefetches checked after every operation.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::append;
using memory_test::append_once;
using memory_test::check_block;
using memory_test::expect_blocks;
using memory_test::scratch_dir;
using memory_test::tags_from;
using memory_test::tiny_options;

std::unique_ptr<KvStore> open_store(const KvStoreOptions& options) {
  auto store = KvStore::open(options);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  return store.ok() ? std::move(store).value() : nullptr;
}

// One layer, so block b of the layer is simply "block b".
KvStoreOptions one_layer(int64_t gpu_slots, int64_t host_slots, std::string dir = "") {
  KvStoreOptions o = tiny_options(gpu_slots, host_slots, std::move(dir));
  o.layout.num_layers = 1;
  return o;
}

// Evicts every sealed block from the GPU tier: another sequence's open blocks take every slot but
// the `open_slots` of open blocks already there, then it is dropped.
void empty_gpu(KvStore& store, SequenceId scratch_seq, int64_t open_slots = 0) {
  const KvStoreMetrics m = store.metrics();
  const KvLayout& l = store.layout();
  ASSERT_TRUE(store.create_sequence(scratch_seq).ok());
  ASSERT_TRUE(store.reserve(scratch_seq, (m.gpu_slots_total - open_slots) / l.num_layers * l.block_tokens).ok());
  ASSERT_TRUE(store.drop_sequence(scratch_seq).ok());
  ASSERT_EQ(store.metrics().gpu_slots_used, open_slots);
}

Status prefetch(KvStore& store, SequenceId seq, int layer, std::vector<int64_t> blocks) {
  return store.prefetch(seq, layer, blocks);
}

TEST(Prefetch, ThenAcquireIsAHitAndTheBytesMovedAtPrefetchTime) {
  auto store = open_store(one_layer(/*gpu_slots=*/4, /*host_slots=*/64));
  const int64_t sb = store->layout().slot_bytes();
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(100, 6 * 4 + 2);  // 6 sealed blocks and an open one
  ASSERT_TRUE(append(*store, 1, tags).ok());
  empty_gpu(*store, 99, /*open_slots=*/1);

  const KvStoreMetrics before = store->metrics();
  ASSERT_TRUE(prefetch(*store, 1, 0, {0, 2, 5}).ok());
  const KvStoreMetrics after = store->metrics();
  EXPECT_EQ(after.prefetched_blocks, 3);
  EXPECT_EQ(after.bytes_host_to_gpu, before.bytes_host_to_gpu + 3 * sb) << "moved at prefetch time";
  EXPECT_EQ(after.gpu_slots_used, 1 + 3);
  EXPECT_EQ(after.gpu_misses, before.gpu_misses);
  EXPECT_EQ(after.gpu_hits, before.gpu_hits);
  EXPECT_EQ(after.host_hits, before.host_hits);

  // Resident blocks, the open block and duplicates load nothing more.
  ASSERT_TRUE(prefetch(*store, 1, 0, {5, 5, 0, 6}).ok());
  EXPECT_EQ(store->metrics().prefetched_blocks, 3);
  EXPECT_EQ(store->metrics().bytes_host_to_gpu, after.bytes_host_to_gpu);

  std::vector<int32_t> slots;
  const std::vector<int64_t> want{5, 0, 2};
  ASSERT_TRUE(store->acquire(1, 0, want, &slots).ok());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(check_block(*store, slots[i], 0, want[i], tags), "");
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.gpu_hits, after.gpu_hits + 3);
  EXPECT_EQ(m.gpu_misses, after.gpu_misses);
  EXPECT_EQ(m.prefetch_hits, 3);
  EXPECT_EQ(m.bytes_host_to_gpu, after.bytes_host_to_gpu) << "nothing moved at acquire";
  store->release_all();

  // A used prefetch is an ordinary cached block: hitting it again is no prefetch hit.
  expect_blocks(*store, 1, 0, {0, 3}, tags);
  m = store->metrics();
  EXPECT_EQ(m.prefetch_hits, 3);
  EXPECT_EQ(m.gpu_misses, after.gpu_misses + 1);
  EXPECT_EQ(m.bytes_host_to_gpu, after.bytes_host_to_gpu + sb);
  EXPECT_EQ(m.prefetch_unused_evictions, 0);
}

TEST(Prefetch, BadArgumentsAreInvalidAndLoadNothing) {
  auto store = open_store(tiny_options(/*gpu_slots=*/8, /*host_slots=*/16));
  ASSERT_TRUE(store->create_sequence(1).ok());
  ASSERT_TRUE(append(*store, 1, tags_from(1, 9)).ok());  // blocks 0, 1 sealed, 2 open
  empty_gpu(*store, 99, /*open_slots=*/2);
  auto expect_invalid = [&](SequenceId seq, int layer, std::vector<int64_t> blocks, const std::string& what) {
    Status s = prefetch(*store, seq, layer, blocks);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
  };
  expect_invalid(9, 0, {0}, "no live sequence 9");
  expect_invalid(1, 2, {0}, "layer 2 outside [0, 2)");
  expect_invalid(1, -1, {0}, "layer -1 outside [0, 2)");
  expect_invalid(1, 0, {0, 3}, "block 3 of seq 1 layer 0 outside [0, 3)");
  expect_invalid(1, 1, {-1}, "block -1 of seq 1 layer 1 outside [0, 3)");
  ASSERT_TRUE(store->drop_sequence(1).ok());
  expect_invalid(1, 0, {0}, "no live sequence 1");
  const KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetched_blocks, 0);
  EXPECT_EQ(m.gpu_slots_used, 0) << "(seq 1 dropped) a bad block later in the list loads nothing before it either";
  // An empty list is fine.
  ASSERT_TRUE(store->create_sequence(2).ok());
  EXPECT_TRUE(prefetch(*store, 2, 0, {}).ok());
}

TEST(Prefetch, StopsAtTheBudgetAndNeverEvictsPinnedOrFreshPrefetchedBlocks) {
  auto store = open_store(one_layer(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 8 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  empty_gpu(*store, 99);

  const int64_t ev = store->metrics().gpu_evictions;
  std::vector<int32_t> pinned;
  ASSERT_TRUE(store->acquire(1, 0, std::vector<int64_t>{0, 1}, &pinned).ok());
  // Two free slots: the first two blocks of the request, no error.
  ASSERT_TRUE(prefetch(*store, 1, 0, {2, 3, 4, 5}).ok());
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetched_blocks, 2);
  EXPECT_EQ(m.gpu_slots_used, 4);
  EXPECT_EQ(m.gpu_evictions, ev);
  // Everything left is pinned or freshly prefetched: nothing more.
  ASSERT_TRUE(prefetch(*store, 1, 0, {4, 5}).ok());
  EXPECT_EQ(store->metrics().prefetched_blocks, 2);
  EXPECT_EQ(store->metrics().gpu_evictions, ev);
  EXPECT_EQ(check_block(*store, pinned[0], 0, 0, tags), "");
  EXPECT_EQ(check_block(*store, pinned[1], 0, 1, tags), "");

  // After the step, 0 and 1 are evictable; 2 and 3 are still fresh (one release_all).
  store->release_all();
  ASSERT_TRUE(prefetch(*store, 1, 0, {4, 5, 6}).ok());
  m = store->metrics();
  EXPECT_EQ(m.prefetched_blocks, 4) << "4 and 5 in the slots of 0 and 1";
  EXPECT_EQ(m.gpu_evictions, ev + 2);
  EXPECT_EQ(m.prefetch_unused_evictions, 0);
  std::vector<int32_t> slots;
  ASSERT_TRUE(store->acquire(1, 0, std::vector<int64_t>{2, 3, 4, 5}, &slots).ok());
  m = store->metrics();
  EXPECT_EQ(m.prefetch_hits, 4);
  EXPECT_EQ(m.gpu_misses, 2) << "only the first acquire's two";
  for (int i = 0; i < 4; ++i) EXPECT_EQ(check_block(*store, slots[i], 0, 2 + i, tags), "");
  // Pinned everywhere: a prefetch finds no room and still succeeds.
  ASSERT_TRUE(prefetch(*store, 1, 0, {0, 1, 6, 7}).ok());
  EXPECT_EQ(store->metrics().prefetched_blocks, 4);
  store->release_all();
}

TEST(Prefetch, AnUnusedPrefetchAgesOutAndIsEvictedFirst) {
  auto store = open_store(one_layer(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 8 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  empty_gpu(*store, 99);

  const int64_t ev = store->metrics().gpu_evictions;
  expect_blocks(*store, 1, 0, {0, 1}, tags);  // resident, CLOCK counter 1
  ASSERT_TRUE(prefetch(*store, 1, 0, {2, 3}).ok());
  // Fresh: an acquire in the same step that needs room takes a CLOCK victim among 0 and 1 (counter
  // 1), never 2 or 3 (counter 0, but fresh).
  expect_blocks(*store, 1, 0, {4}, tags);
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetch_unused_evictions, 0);
  EXPECT_EQ(m.gpu_evictions, ev + 1);
  // Another step without acquiring 2 and 3 (expect_blocks ended with release_all, this is the
  // second): stale now, so the next loads take them before any cached block.
  store->release_all();
  const int64_t hits = m.gpu_hits;
  expect_blocks(*store, 1, 0, {5, 6}, tags);
  m = store->metrics();
  EXPECT_EQ(m.prefetch_unused_evictions, 2);
  EXPECT_EQ(m.gpu_evictions, ev + 3);
  EXPECT_EQ(m.gpu_hits, hits);
  EXPECT_EQ(m.prefetch_hits, 0);
  // The cached block that survived is still there; 2 and 3 are gone.
  const int64_t misses = m.gpu_misses;
  expect_blocks(*store, 1, 0, {2}, tags);
  EXPECT_EQ(store->metrics().gpu_misses, misses + 1);
}

TEST(Prefetch, AcquireTakesFreshPrefetchedBlocksOnlyWhenNothingElseIsLeft) {
  auto store = open_store(one_layer(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 8 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  empty_gpu(*store, 99);
  ASSERT_TRUE(prefetch(*store, 1, 0, {0, 1, 2, 3}).ok());
  EXPECT_EQ(store->metrics().prefetched_blocks, 4);
  // All four slots hold fresh prefetches: an acquire is never refused for them.
  std::vector<int32_t> slots;
  ASSERT_TRUE(store->acquire(1, 0, std::vector<int64_t>{0, 4, 5}, &slots).ok());
  EXPECT_EQ(check_block(*store, slots[0], 0, 0, tags), "");
  EXPECT_EQ(check_block(*store, slots[1], 0, 4, tags), "");
  EXPECT_EQ(check_block(*store, slots[2], 0, 5, tags), "");
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetch_hits, 1);
  EXPECT_EQ(m.prefetch_unused_evictions, 2);
  store->release_all();
}

TEST(Prefetch, BlocksOnlyOnDiskAreSkipped) {
  const std::string dir = scratch_dir();
  // 12 blocks, 6 host slots: after write-behind the host keeps 6 copies, the rest are on disk only.
  auto store = open_store(one_layer(/*gpu_slots=*/16, /*host_slots=*/6, dir));
  const int64_t sb = store->layout().slot_bytes();
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(7, 12 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  ASSERT_TRUE(store->flush().ok());
  empty_gpu(*store, 99);
  KvStoreMetrics before = store->metrics();
  ASSERT_EQ(before.host_slots_used, 6);
  ASSERT_EQ(before.disk_blocks, 12);

  std::vector<int64_t> all;
  for (int64_t b = 0; b < 12; ++b) all.push_back(b);
  ASSERT_TRUE(store->prefetch(1, 0, all).ok());
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetched_blocks, 6) << "the blocks with host copies";
  EXPECT_EQ(m.disk_reads, before.disk_reads) << "no disk read in prefetch";
  EXPECT_EQ(m.bytes_disk_to_host, before.bytes_disk_to_host);
  EXPECT_EQ(m.bytes_host_to_gpu, before.bytes_host_to_gpu + 6 * sb);
  EXPECT_EQ(m.gpu_slots_used, 6);

  // Acquire each block (pins accumulate; 12 fit): the prefetched ones hit, the others are read from
  // disk as always; every block's bytes are right.
  std::vector<int32_t> slots(12);
  for (int64_t b = 0; b < 12; ++b) {
    std::vector<int32_t> one;
    ASSERT_TRUE(store->acquire(1, 0, std::vector<int64_t>{b}, &one).ok());
    slots[b] = one[0];
  }
  for (int64_t b = 0; b < 12; ++b) EXPECT_EQ(check_block(*store, slots[b], 0, b, tags), "") << "block " << b;
  m = store->metrics();
  EXPECT_EQ(m.prefetch_hits, 6);
  EXPECT_EQ(m.gpu_hits, before.gpu_hits + 6);
  EXPECT_EQ(m.gpu_misses, before.gpu_misses + 6);
  EXPECT_EQ(m.disk_reads, before.disk_reads + 6);
  store->release_all();
}

TEST(Prefetch, ForksShareAPrefetchedBlockAndDropsLeaveTheOtherBranchIntact) {
  auto store = open_store(one_layer(/*gpu_slots=*/6, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  auto tags = tags_from(1, 5 * 4 + 1);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  ASSERT_TRUE(store->fork_sequence(1, 2).ok());
  ASSERT_TRUE(store->create_sequence(99).ok());  // empty the GPU but for the two open blocks
  ASSERT_TRUE(store->reserve(99, 4 * 4).ok());
  ASSERT_TRUE(store->drop_sequence(99).ok());
  ASSERT_EQ(store->metrics().gpu_slots_used, 2);

  ASSERT_TRUE(prefetch(*store, 2, 0, {0, 1, 2}).ok());  // through the child
  ASSERT_TRUE(prefetch(*store, 1, 0, {1, 2, 3}).ok());  // 1, 2 are the same blocks: only 3 loads
  EXPECT_EQ(store->metrics().prefetched_blocks, 4);
  // The child is dropped with its prefetches in place: the shared blocks stay for the parent.
  ASSERT_TRUE(store->drop_sequence(2).ok());
  const KvStoreMetrics before = store->metrics();
  EXPECT_EQ(before.gpu_slots_used, 5);
  expect_blocks(*store, 1, 0, {0, 1, 2, 3, 5}, tags);
  const KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.prefetch_hits, 4);
  EXPECT_EQ(m.gpu_hits, before.gpu_hits + 5);
  EXPECT_EQ(m.bytes_host_to_gpu, before.bytes_host_to_gpu);
}

// Random appends, acquires (some pins kept across operations), prefetches of random (also
// oversized, duplicated, disk-only) block lists, releases, forks and drops, with tiny budgets.
// After every operation: occupancy within budget, pinned slots unchanged; after every prefetch: no
// acquire-side metric moved, bytes moved = blocks prefetched; every acquire returns the right bytes.
void run_workload(uint32_t seed, bool with_disk) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (with_disk ? " with disk" : " without disk"));
  const std::string dir = with_disk ? scratch_dir() : "";
  const KvStoreOptions options = tiny_options(/*gpu_slots=*/12, /*host_slots=*/with_disk ? 8 : 48, dir);
  auto store = open_store(options);
  ASSERT_TRUE(store);
  const int bt = options.layout.block_tokens;
  const int64_t sb = options.layout.slot_bytes();
  memory_test::Workload w(store.get(), options, seed);
  auto& shadow = w.shadow();
  int64_t prefetch_ops = 0;

  for (int op = 0; op < 500; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    const int64_t kind = w.pick(100);
    if (shadow.size() < 2 || (kind < 6 && shadow.size() < 4)) {
      ASSERT_NO_FATAL_FAILURE(w.create());
    } else if (kind < 40) {
      ASSERT_NO_FATAL_FAILURE(w.append());
    } else if (kind < 60) {  // prefetch
      const SequenceId seq = w.random_seq();
      const int64_t num_blocks = w.num_blocks(seq);
      if (num_blocks == 0) continue;
      std::vector<int64_t> blocks = w.random_blocks(num_blocks, 16);
      if (w.pick(4) == 0) blocks.push_back(blocks.front());  // a duplicate is ignored
      const int layer = w.random_layer();
      const KvStoreMetrics before = store->metrics();
      Status s = store->prefetch(seq, layer, blocks);
      ASSERT_TRUE(s.ok()) << s.to_string();
      const KvStoreMetrics after = store->metrics();
      const int64_t loaded = after.prefetched_blocks - before.prefetched_blocks;
      ASSERT_GE(loaded, 0);
      ASSERT_LE(loaded, static_cast<int64_t>(blocks.size()));
      ASSERT_EQ(after.bytes_host_to_gpu - before.bytes_host_to_gpu, loaded * sb);
      ASSERT_EQ(after.gpu_hits, before.gpu_hits);
      ASSERT_EQ(after.gpu_misses, before.gpu_misses);
      ASSERT_EQ(after.disk_reads, before.disk_reads);
      ASSERT_EQ(after.bytes_disk_to_host, before.bytes_disk_to_host);
      ASSERT_LE(after.gpu_evictions - before.gpu_evictions, loaded) << "a prefetch evicts only for its loads";
      ++prefetch_ops;
      // Sometimes the predicted acquire follows at once: the prefetched blocks are hits.
      if (w.pick(2) == 0 && loaded > 0) {
        blocks.pop_back();  // drop a possible duplicate: acquire refuses them
        if (blocks.empty()) continue;
        const size_t pins = w.pinned().size();
        ASSERT_NO_FATAL_FAILURE(w.acquire(seq, layer, blocks));
        if (w.pinned().size() > pins) {
          // Every block it loaded is a hit (but the popped last one, which may have been loaded).
          const KvStoreMetrics m = store->metrics();
          ASSERT_GE(m.prefetch_hits - after.prefetch_hits, loaded - 1);
          ASSERT_EQ(m.bytes_host_to_gpu - after.bytes_host_to_gpu, (m.gpu_misses - after.gpu_misses) * sb);
        }
      }
    } else if (kind < 80) {  // acquire
      const SequenceId seq = w.random_seq();
      const int64_t num_blocks = w.num_blocks(seq);
      if (num_blocks == 0) continue;
      ASSERT_NO_FATAL_FAILURE(w.acquire(seq, w.random_layer(), w.random_blocks(num_blocks, 6)));
    } else if (kind < 90) {
      w.release();
    } else if (kind < 94) {
      ASSERT_NO_FATAL_FAILURE(w.fork());
    } else if (kind < 98) {
      ASSERT_NO_FATAL_FAILURE(w.drop());
    } else {
      ASSERT_NO_FATAL_FAILURE(w.flush());
    }
    ASSERT_NO_FATAL_FAILURE(w.check_invariants(12));
    const KvStoreMetrics m = store->metrics();
    ASSERT_LE(m.prefetch_hits, m.gpu_hits);
    ASSERT_LE(m.prefetch_hits + m.prefetch_unused_evictions, m.prefetched_blocks);
  }
  store->release_all();
  EXPECT_GT(prefetch_ops, 50);
  EXPECT_GT(store->metrics().prefetched_blocks, 0);
  EXPECT_GT(store->metrics().prefetch_hits, 0);
  for (const auto& [seq, tags] : shadow) {
    for (int layer = 0; layer < options.layout.num_layers; ++layer) {
      for (int64_t b = 0; b * bt < static_cast<int64_t>(tags.size()); ++b) expect_blocks(*store, seq, layer, {b}, tags);
    }
  }
}

TEST(Prefetch, BudgetsHoldAndDataStaysIntactUnderARandomWorkload) {
  for (uint32_t seed : {41u, 42u, 43u}) run_workload(seed, /*with_disk=*/false);
}

TEST(Prefetch, BudgetsHoldAndDataStaysIntactUnderARandomWorkloadWithDisk) {
  for (uint32_t seed : {51u, 52u}) run_workload(seed, /*with_disk=*/true);
}

}  // namespace
}  // namespace mnemo
