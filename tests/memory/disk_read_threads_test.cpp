// Disk reads split over read threads (KvStoreOptions::disk_read_threads, issue #5): a large batch of
// disk misses read with 4 threads is byte-identical to one thread's; a corrupt block among them is
// reported by name (the first in request order when several are) and nothing is loaded.
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "memory/disk_tier.h"
#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::append;
using memory_test::check_block;
using memory_test::scratch_dir;
using memory_test::tags_from;
using memory_test::tiny_options;

constexpr int64_t kBlocks = 300;
constexpr SequenceId kSeq = 5;

// Writes kSeq with kBlocks sealed blocks per layer (plus one open token) to `dir`, flushed; returns its tags.
std::vector<uint32_t> write_sequence(const std::string& dir) {
  const auto tags = tags_from(41, kBlocks * 4 + 1);
  auto store = KvStore::open(tiny_options(/*gpu_slots=*/8, /*host_slots=*/2 * kBlocks + 8, dir));
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  if (!store.ok()) return tags;
  EXPECT_TRUE((*store)->create_sequence(kSeq).ok());
  EXPECT_TRUE(append(**store, kSeq, tags).ok());
  EXPECT_TRUE((*store)->flush().ok());
  return tags;
}

// A store over `dir` with room for every block of a layer on GPU and host, so that acquiring all
// of them after recovery is one batch of kBlocks disk misses.
std::unique_ptr<KvStore> reopen(const std::string& dir, int threads) {
  KvStoreOptions o = tiny_options(/*gpu_slots=*/kBlocks + 8, /*host_slots=*/kBlocks + 8, dir);
  o.disk_read_threads = threads;
  auto store = KvStore::open(o);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  if (!store.ok()) return nullptr;
  auto n = (*store)->recover_sequence(kSeq);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  return std::move(store).value();
}

// Flips one byte of the value of (kSeq, layer, block), behind the store's back (store closed).
void corrupt(const std::string& dir, uint32_t layer, uint32_t block) {
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : {"default", "kv", "repr", "meta"}) families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(db_options, dir, families, &handles, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  const std::string key = encode_kv_key({kSeq, layer, block});
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), handles[1], key, &value).ok());
  value[kBlockValueHeaderBytes + 37] ^= 0x04;
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[1], key, value).ok());
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  ASSERT_TRUE(db->Close().ok());
}

std::vector<int64_t> all_sealed() {
  std::vector<int64_t> blocks(kBlocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  return blocks;
}

TEST(DiskReadThreads, LargeBatchWithFourThreadsIsByteIdenticalToOneThread) {
  const std::string dir = scratch_dir();
  const auto tags = write_sequence(dir);
  const std::vector<int64_t> blocks = all_sealed();
  const int64_t slot_bytes = tiny_options(1, 1).layout.slot_bytes();
  std::vector<std::vector<char>> read(2);  // per thread count: the blocks' bytes in request order
  int index = 0;
  for (int threads : {1, 4}) {
    auto store = reopen(dir, threads);
    ASSERT_NE(store, nullptr);
    std::vector<int32_t> slots;
    Status s = store->acquire(kSeq, 0, blocks, &slots);
    ASSERT_TRUE(s.ok()) << s.to_string();
    ASSERT_EQ(slots.size(), blocks.size());
    EXPECT_EQ(store->metrics().disk_reads, kBlocks) << threads << " threads";
    const char* arena = static_cast<const char*>(store->gpu_arena_data());
    for (size_t i = 0; i < blocks.size(); ++i) {
      ASSERT_EQ(check_block(*store, slots[i], 0, blocks[i], tags), "") << threads << " threads";
      read[index].insert(read[index].end(), arena + slots[i] * slot_bytes, arena + (slots[i] + 1) * slot_bytes);
    }
    store->release_all();
    ++index;
  }
  ASSERT_EQ(read[0].size(), static_cast<size_t>(kBlocks * slot_bytes));
  EXPECT_TRUE(read[0] == read[1]);
}

TEST(DiskReadThreads, CorruptBlockAmongManyIsReportedByNameAndNothingIsLoaded) {
  const std::string dir = scratch_dir();
  const auto tags = write_sequence(dir);
  corrupt(dir, 0, 217);  // in the third of four shares
  auto store = reopen(dir, 4);
  ASSERT_NE(store, nullptr);
  const KvStoreMetrics before = store->metrics();
  std::vector<int32_t> slots;
  Status s = store->acquire(kSeq, 0, all_sealed(), &slots);
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.to_string();
  EXPECT_NE(s.message().find("seq=5 layer=0 block=217"), std::string::npos) << s.message();
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.disk_reads, 0);
  EXPECT_EQ(m.gpu_slots_used, 0);
  EXPECT_EQ(m.host_slots_used, before.host_slots_used);
  // Every other block is still served, in one batch, and the corrupt one never is.
  std::vector<int64_t> good = all_sealed();
  good.erase(good.begin() + 217);
  s = store->acquire(kSeq, 0, good, &slots);
  ASSERT_TRUE(s.ok()) << s.to_string();
  for (size_t i = 0; i < good.size(); ++i) EXPECT_EQ(check_block(*store, slots[i], 0, good[i], tags), "");
  store->release_all();
  EXPECT_EQ(store->acquire(kSeq, 0, std::vector<int64_t>{217}, &slots).code(), StatusCode::kCorruption);
}

TEST(DiskReadThreads, TheFirstCorruptBlockInRequestOrderIsReported) {
  const std::string dir = scratch_dir();
  write_sequence(dir);
  corrupt(dir, 1, 40);
  corrupt(dir, 1, 260);
  auto store = reopen(dir, 4);
  ASSERT_NE(store, nullptr);
  std::vector<int64_t> reversed = all_sealed();
  std::reverse(reversed.begin(), reversed.end());  // 260 is in the first share, 40 in the last
  std::vector<int32_t> slots;
  Status s = store->acquire(kSeq, 1, reversed, &slots);
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.to_string();
  EXPECT_NE(s.message().find("seq=5 layer=1 block=260"), std::string::npos) << s.message();
  s = store->acquire(kSeq, 1, all_sealed(), &slots);
  EXPECT_NE(s.message().find("seq=5 layer=1 block=40"), std::string::npos) << s.message();
  EXPECT_EQ(store->metrics().disk_reads, 0);
}

TEST(DiskReadThreads, NegativeThreadCountIsRefusedAtOpen) {
  KvStoreOptions o = tiny_options(4, 4, scratch_dir());
  o.disk_read_threads = -1;
  auto store = KvStore::open(o);
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().to_string();
  EXPECT_NE(store.status().message().find("disk_read_threads"), std::string::npos);
}

}  // namespace
}  // namespace mnemo
