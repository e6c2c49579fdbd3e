// TieredStore without a disk tier, and the tier policies that do not need one: budgets, pins,
// all-or-nothing acquire, CLOCK with the frequency hint, forks, metadata in memory.
#include <gtest/gtest.h>

#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::all_blocks;
using memory_test::append;
using memory_test::expect_blocks;
using memory_test::tags_from;
using memory_test::tiny_options;

std::unique_ptr<KvStore> open_store(const KvStoreOptions& options) {
  auto store = KvStore::open(options);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  return store.ok() ? std::move(store).value() : nullptr;
}

TEST(TieredStore, BlocksMoveFromGpuToHostAndBackBitExact) {
  auto store = open_store(tiny_options(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(100, 10 * 4 + 3);  // 10 sealed blocks and a partial one per layer
  ASSERT_TRUE(append(*store, 1, tags, /*chunk=*/5).ok());
  EXPECT_EQ(*store->length(1), 43);
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t b = 0; b < 11; ++b) expect_blocks(*store, 1, layer, {b}, tags);
  }
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.gpu_misses, 0);
  EXPECT_EQ(m.gpu_misses, m.host_hits);
  EXPECT_EQ(m.bytes_host_to_gpu, m.gpu_misses * store->layout().slot_bytes());
  EXPECT_EQ(m.bytes_gpu_to_host, 20 * store->layout().slot_bytes());  // every sealed block, once
  EXPECT_GT(m.gpu_evictions, 0);
  EXPECT_LE(m.gpu_slots_used, m.gpu_slots_total);
  EXPECT_EQ(m.gpu_slots_total, 4);
}

TEST(TieredStore, WithoutDataDirAFullHostIsOutOfBudgetAndChangesNothing) {
  auto store = open_store(tiny_options(/*gpu_slots=*/8, /*host_slots=*/4));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 8);  // 2 blocks x 2 layers = the whole host
  ASSERT_TRUE(append(*store, 1, tags).ok());
  Status s = append(*store, 1, tags_from(50, 4));
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
  EXPECT_NE(s.message().find("host tier budget"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("host is the last tier"), std::string::npos) << s.message();
  EXPECT_EQ(*store->length(1), 8);
  expect_blocks(*store, 1, 0, {0, 1}, tags);
  // A drop frees the host; the store keeps working.
  ASSERT_TRUE(store->create_sequence(2).ok());
  ASSERT_TRUE(store->drop_sequence(1).ok());
  ASSERT_TRUE(append(*store, 2, tags_from(7, 9)).ok());
  expect_blocks(*store, 2, 1, {0, 1, 2}, tags_from(7, 9));
}

TEST(TieredStore, AcquireFailsBeforeChangingAnythingWhenPinsExceedTheGpu) {
  auto store = open_store(tiny_options(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 6 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  std::vector<int32_t> first;
  ASSERT_TRUE(store->acquire(1, 0, std::vector<int64_t>{0, 1, 2}, &first).ok());
  const KvStoreMetrics before = store->metrics();
  std::vector<int32_t> more;
  Status s = store->acquire(1, 1, std::vector<int64_t>{0, 1}, &more);
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
  EXPECT_NE(s.message().find("GPU tier budget"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("3 pinned"), std::string::npos) << s.message();
  const KvStoreMetrics after = store->metrics();
  EXPECT_EQ(after.gpu_evictions, before.gpu_evictions);
  EXPECT_EQ(after.gpu_misses, before.gpu_misses);
  // The first acquire's slots still hold its blocks.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(memory_test::check_block(*store, first[i], 0, i, tags), "");
  // One more fits next to the three pinned; after release everything fits again.
  ASSERT_TRUE(store->acquire(1, 1, std::vector<int64_t>{5}, &more).ok());
  store->release_all();
  expect_blocks(*store, 1, 1, {0, 1, 2, 3}, tags);
}

TEST(TieredStore, DuplicateOrOutOfRangeBlocksAreInvalid) {
  auto store = open_store(tiny_options(8, 16));
  ASSERT_TRUE(store->create_sequence(1).ok());
  ASSERT_TRUE(append(*store, 1, tags_from(1, 9)).ok());
  std::vector<int32_t> slots;
  EXPECT_EQ(store->acquire(1, 0, std::vector<int64_t>{1, 1}, &slots).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->acquire(1, 0, std::vector<int64_t>{3}, &slots).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->acquire(1, 2, std::vector<int64_t>{0}, &slots).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->acquire(9, 0, std::vector<int64_t>{0}, &slots).code(), StatusCode::kNotFound);
  EXPECT_EQ(store->commit(1, 100).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->k_row(1, 0, 3, 0), nullptr);  // sealed: never written again
}

TEST(TieredStore, OpenBlocksStayResidentAndAreNeverEvicted) {
  auto store = open_store(tiny_options(/*gpu_slots=*/4, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  ASSERT_TRUE(store->create_sequence(2).ok());
  ASSERT_TRUE(append(*store, 1, tags_from(1, 2)).ok());  // open block in both layers
  ASSERT_TRUE(append(*store, 2, tags_from(9, 2)).ok());
  Status s = store->reserve(1, 5);  // would need two more slots; all four hold open blocks
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
  EXPECT_NE(s.message().find("4 pinned or holding open blocks"), std::string::npos) << s.message();
  expect_blocks(*store, 1, 0, {0}, tags_from(1, 2));
  expect_blocks(*store, 2, 1, {0}, tags_from(9, 2));
}

TEST(TieredStore, FrequentlySelectedBlockOutlivesRecentColdBlocks) {
  KvStoreOptions options = tiny_options(/*gpu_slots=*/4, /*host_slots=*/64);
  options.layout.num_layers = 1;
  auto store = open_store(options);
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(1, 6 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());
  // Empty the GPU tier: a second sequence's open blocks take every slot, then it is dropped.
  ASSERT_TRUE(store->create_sequence(2).ok());
  ASSERT_TRUE(store->reserve(2, 16).ok());
  ASSERT_TRUE(store->drop_sequence(2).ok());
  ASSERT_EQ(store->metrics().gpu_slots_used, 0);

  for (int i = 0; i < 3; ++i) expect_blocks(*store, 1, 0, {0}, tags);        // hot: selected every step
  for (int64_t b : {1, 2, 3, 4, 5}) expect_blocks(*store, 1, 0, {b}, tags);  // cold, newer than block 0
  const int64_t hits = store->metrics().gpu_hits;
  expect_blocks(*store, 1, 0, {0}, tags);
  EXPECT_EQ(store->metrics().gpu_hits, hits + 1) << "LRU would have evicted block 0; CLOCK's hint keeps it";
}

TEST(TieredStore, ForkSharesSealedBlocksAndBothBranchesReadTheirOwnData) {
  auto store = open_store(tiny_options(/*gpu_slots=*/6, /*host_slots=*/64));
  ASSERT_TRUE(store->create_sequence(1).ok());
  auto parent = tags_from(1, 3 * 4 + 2);
  ASSERT_TRUE(append(*store, 1, parent).ok());
  ASSERT_TRUE(store->fork_sequence(1, 2).ok());
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.shared_blocks, 3 * 2);   // the sealed blocks of both layers
  EXPECT_EQ(m.blocks, 3 * 2 + 2 * 2);  // plus one open block per layer in each branch
  EXPECT_EQ(*store->length(2), 14);

  auto child = parent;
  const auto parent_more = tags_from(500, 7), child_more = tags_from(900, 9);
  ASSERT_TRUE(append(*store, 1, parent_more).ok());
  ASSERT_TRUE(append(*store, 2, child_more).ok());
  parent.insert(parent.end(), parent_more.begin(), parent_more.end());
  child.insert(child.end(), child_more.begin(), child_more.end());
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t b : all_blocks(*store, 21)) expect_blocks(*store, 1, layer, {b}, parent);
    for (int64_t b : all_blocks(*store, 23)) expect_blocks(*store, 2, layer, {b}, child);
  }
  ASSERT_TRUE(store->drop_sequence(1).ok());
  EXPECT_EQ(store->metrics().shared_blocks, 0);
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t b : all_blocks(*store, 23)) expect_blocks(*store, 2, layer, {b}, child);
  }
  ASSERT_TRUE(store->drop_sequence(2).ok());
  EXPECT_EQ(store->metrics().blocks, 0);
  EXPECT_EQ(store->metrics().host_slots_used, 0);
  EXPECT_EQ(store->metrics().gpu_slots_used, 0);
}

TEST(TieredStore, MetaLivesInMemoryWithoutDataDir) {
  auto store = open_store(tiny_options(4, 4));
  ASSERT_TRUE(store->put_meta("session/2", "b", false).ok());
  ASSERT_TRUE(store->put_meta("session/1", "a", true).ok());
  ASSERT_TRUE(store->put_meta("other", "x", false).ok());
  EXPECT_EQ(*store->get_meta("session/1"), "a");
  EXPECT_EQ(store->get_meta("nope").status().code(), StatusCode::kNotFound);
  std::vector<std::string> seen;
  ASSERT_TRUE(
      store->scan_meta("session/", [&](const std::string& k, const std::string& v) { seen.push_back(k + v); }).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"session/1a", "session/2b"}));
  ASSERT_TRUE(store->delete_meta("session/1").ok());
  EXPECT_EQ(store->get_meta("session/1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->put_meta(std::string("\0x", 2), "v", false).code(), StatusCode::kInvalidArgument);
}

TEST(TieredStore, BudgetsSmallerThanOneSlotAreRefused) {
  auto r = KvStore::open(tiny_options(0, 4));
  KvStoreOptions o = tiny_options(4, 4);
  o.host_budget_bytes = 100;
  auto h = KvStore::open(o);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("host_budget_bytes 100"), std::string::npos) << h.status().message();
  EXPECT_TRUE(r.ok()) << "gpu_budget_bytes 0 falls back to gpu_budget_tokens";
}

}  // namespace
}  // namespace mnemo
