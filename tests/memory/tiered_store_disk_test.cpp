// TieredStore with a RocksDB disk tier: eviction through disk, write-behind and reopen, recovery of
// the durable prefix, identity checks, write failures, corrupt values, drops of forked sequences.
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <atomic>
#include <cstdlib>

#include "memory/disk_tier.h"
#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::all_blocks;
using memory_test::append;
using memory_test::expect_blocks;
using memory_test::scratch_dir;
using memory_test::tags_from;
using memory_test::tiny_options;

std::unique_ptr<KvStore> open_store(const KvStoreOptions& options) {
  auto store = KvStore::open(options);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  return store.ok() ? std::move(store).value() : nullptr;
}

// Blocks of (seq, layer) on disk, counted from block 0 to the first gap (store closed).
uint32_t blocks_on_disk(const std::string& dir, uint64_t seq, uint32_t layer) {
  auto disk = DiskTier::open({.dir = dir});
  EXPECT_TRUE(disk.ok()) << disk.status().to_string();
  auto n = (*disk)->count_present(seq, layer, 0, UINT32_MAX);
  EXPECT_TRUE(n.ok()) << n.status().to_string();
  return n.ok() ? *n : 0;
}

TEST(TieredStore, EvictedBlockIsReadBackBitExact) {
  const std::string dir = scratch_dir();
  auto store = open_store(tiny_options(/*gpu_slots=*/4, /*host_slots=*/4, dir));
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(7, 12 * 4 + 1);  // 24 sealed blocks through 4 host slots
  ASSERT_TRUE(append(*store, 1, tags).ok());
  ASSERT_TRUE(store->flush().ok());
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t b : all_blocks(*store, 49)) expect_blocks(*store, 1, layer, {b}, tags);
  }
  expect_blocks(*store, 1, 0, {11, 0}, tags);  // a batch: one MultiGet for both disk misses
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.disk_reads, 0);
  EXPECT_GT(m.host_evictions, 0);
  EXPECT_EQ(m.bytes_disk_to_host, m.disk_reads * store->layout().slot_bytes());
  EXPECT_EQ(m.disk_blocks, 24);
  EXPECT_EQ(m.pending_writes, 0);
  EXPECT_LE(m.host_slots_used, 4);
  EXPECT_LE(m.gpu_slots_used, 4);
}

TEST(TieredStore, BlocksAndMetaSurviveReopenAndRecoverReturnsTheDurablePrefix) {
  const std::string dir = scratch_dir();
  const auto tags = tags_from(3, 10 * 4 + 3);
  {
    auto store = open_store(tiny_options(8, 64, dir));
    ASSERT_TRUE(store->create_sequence(42).ok());
    ASSERT_TRUE(append(*store, 42, tags).ok());
    ASSERT_TRUE(store->put_meta("session/42", "tokens...", /*sync=*/true).ok());
    ASSERT_TRUE(store->put_meta("zz", "last", false).ok());
  }  // closing drains write-behind
  auto store = open_store(tiny_options(8, 64, dir));
  EXPECT_EQ(*store->list_sequences(), std::vector<SequenceId>{42});
  EXPECT_EQ(store->length(42).status().code(), StatusCode::kNotFound);  // not live until recovered
  auto recovered = store->recover_sequence(42);
  ASSERT_TRUE(recovered.ok()) << recovered.status().to_string();
  EXPECT_EQ(*recovered, 40);  // whole blocks only: the open block is recomputed from the token log
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t b : all_blocks(*store, 40)) expect_blocks(*store, 42, layer, {b}, tags);
  }
  EXPECT_EQ(*store->get_meta("session/42"), "tokens...");
  std::vector<std::string> keys;
  ASSERT_TRUE(store->scan_meta("", [&](const std::string& k, const std::string&) { keys.push_back(k); }).ok());
  EXPECT_EQ(keys, (std::vector<std::string>{"session/42", "zz"}));  // the store's own records stay hidden
  // The sequence continues where the durable prefix ends.
  auto more = tags;
  more.resize(40);
  const auto next = tags_from(1000, 6);
  more.insert(more.end(), next.begin(), next.end());
  ASSERT_TRUE(append(*store, 42, next).ok());
  for (int64_t b : all_blocks(*store, 46)) expect_blocks(*store, 42, 1, {b}, more);
}

TEST(TieredStore, RecoverStopsAtTheFirstBlockMissingInAnyLayer) {
  const std::string dir = scratch_dir();
  const auto tags = tags_from(3, 8 * 4);
  {
    auto store = open_store(tiny_options(8, 64, dir));
    ASSERT_TRUE(store->create_sequence(5).ok());
    ASSERT_TRUE(append(*store, 5, tags).ok());
  }
  {  // as if the writer had not reached layer 1 block 5 before a crash
    auto disk = DiskTier::open({.dir = dir});
    ASSERT_TRUE(disk.ok());
    DiskTier::Batch batch;
    batch.block_ranges.push_back({{5, 1, 5}, {5, 1, 6}});
    ASSERT_TRUE((*disk)->write(batch, true).ok());
  }
  auto store = open_store(tiny_options(8, 64, dir));
  EXPECT_EQ(*store->recover_sequence(5), 5 * 4);
  expect_blocks(*store, 5, 0, {0, 1, 2, 3, 4}, tags);
}

TEST(TieredStore, OpenRefusesADataDirOfAnotherModel) {
  const std::string dir = scratch_dir();
  KvStoreOptions options = tiny_options(8, 64, dir);
  options.fingerprint = "llama-3.2-1b sha256:aaaa";
  { open_store(options); }
  options.fingerprint = "qwen2-0.5b sha256:bbbb";
  auto other = KvStore::open(options);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.status().message().find("llama-3.2-1b sha256:aaaa"), std::string::npos) << other.status().message();
  EXPECT_NE(other.status().message().find("qwen2-0.5b sha256:bbbb"), std::string::npos) << other.status().message();

  options.fingerprint = "llama-3.2-1b sha256:aaaa";
  options.layout.head_dim = 16;
  auto reshaped = KvStore::open(options);
  ASSERT_FALSE(reshaped.ok());
  EXPECT_NE(reshaped.status().message().find("head_dim=8"), std::string::npos) << reshaped.status().message();
  options.layout.head_dim = 8;
  EXPECT_TRUE(KvStore::open(options).ok());
}

TEST(TieredStore, DiskWriteFailureIsReportedAndTheStoreStaysConsistent) {
  const std::string dir = scratch_dir();
  std::atomic<bool> fail{false};
  KvStoreOptions options = tiny_options(/*gpu_slots=*/4, /*host_slots=*/6, dir);
  options.inject_disk_write_error = [&] {
    return fail ? io_error("No space left on device (injected)") : Status::Ok();
  };
  auto store = open_store(options);
  ASSERT_TRUE(store->create_sequence(1).ok());
  fail = true;
  const auto tags = tags_from(11, 3 * 4);
  ASSERT_TRUE(append(*store, 1, tags).ok());  // write-behind fails in the background
  Status s = store->flush();
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  EXPECT_NE(s.message().find("No space left on device"), std::string::npos) << s.message();
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.disk_blocks, 0);
  EXPECT_EQ(m.pending_writes, 6);
  EXPECT_GT(m.disk_write_errors, 0);
  for (int layer = 0; layer < 2; ++layer) expect_blocks(*store, 1, layer, {0, 1, 2}, tags);  // from GPU/host

  // The host is full of blocks that are not durable: sealing more fails clearly, nothing changes.
  s = append(*store, 1, tags_from(50, 4));
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  EXPECT_EQ(*store->length(1), 12);
  EXPECT_EQ(store->put_meta("k", "v", true).code(), StatusCode::kIoError);
  EXPECT_EQ(store->create_sequence(2).code(), StatusCode::kIoError);

  fail = false;  // space is back: the next flush retries
  ASSERT_TRUE(store->flush().ok());
  m = store->metrics();
  EXPECT_EQ(m.disk_blocks, 6);
  EXPECT_EQ(m.pending_writes, 0);
  auto all = tags;
  const auto next = tags_from(50, 4);
  all.insert(all.end(), next.begin(), next.end());
  ASSERT_TRUE(append(*store, 1, next).ok());
  store.reset();
  store = open_store(tiny_options(4, 6, dir));
  EXPECT_EQ(*store->recover_sequence(1), 16);
  for (int layer = 0; layer < 2; ++layer) expect_blocks(*store, 1, layer, {0, 1, 2, 3}, all);
}

TEST(TieredStore, CorruptValueIsReportedAndNeverServed) {
  const std::string dir = scratch_dir();
  const auto tags = tags_from(21, 4 * 4);
  {
    auto store = open_store(tiny_options(8, 64, dir));
    ASSERT_TRUE(store->create_sequence(3).ok());
    ASSERT_TRUE(append(*store, 3, tags).ok());
  }
  {  // flip one float of layer 0 block 2, behind the store's back
    rocksdb::DBOptions db_options;
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const char* name : {"default", "kv", "repr", "meta"})
      families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(db_options, dir, families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    const std::string key = encode_kv_key({3, 0, 2});
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), handles[1], key, &value).ok());
    value[kBlockValueHeaderBytes + 100] ^= 0x10;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[1], key, value).ok());
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  auto store = open_store(tiny_options(/*gpu_slots=*/2, 64, dir));
  ASSERT_EQ(*store->recover_sequence(3), 16);
  std::vector<int32_t> slots;
  Status s = store->acquire(3, 0, std::vector<int64_t>{1, 2}, &slots);
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.to_string();
  EXPECT_NE(s.message().find("seq=3 layer=0 block=2"), std::string::npos) << s.message();
  // Nothing was pinned or loaded by the failed call: both GPU slots are still usable.
  KvStoreMetrics m = store->metrics();
  EXPECT_EQ(m.disk_reads, 0);
  EXPECT_EQ(m.gpu_slots_used, 0);
  expect_blocks(*store, 3, 0, {0, 1}, tags);
  expect_blocks(*store, 3, 1, {2, 3}, tags);
  EXPECT_EQ(store->acquire(3, 0, std::vector<int64_t>{2}, &slots).code(), StatusCode::kCorruption);
}

TEST(TieredStore, DropRemovesTheSequenceFromDisk) {
  const std::string dir = scratch_dir();
  {
    auto store = open_store(tiny_options(8, 64, dir));
    ASSERT_TRUE(store->create_sequence(1).ok());
    ASSERT_TRUE(store->create_sequence(2).ok());
    ASSERT_TRUE(append(*store, 1, tags_from(1, 12)).ok());
    ASSERT_TRUE(append(*store, 2, tags_from(1, 12)).ok());
    ASSERT_TRUE(store->flush().ok());
    ASSERT_TRUE(store->drop_sequence(1).ok());
    EXPECT_EQ(store->drop_sequence(1).code(), StatusCode::kNotFound);
  }
  EXPECT_EQ(blocks_on_disk(dir, 1, 0), 0u);
  EXPECT_EQ(blocks_on_disk(dir, 2, 1), 3u);
  auto store = open_store(tiny_options(8, 64, dir));
  EXPECT_EQ(*store->list_sequences(), std::vector<SequenceId>{2});
  ASSERT_TRUE(store->drop_sequence(2).ok());  // dropped without being recovered
  EXPECT_TRUE(store->list_sequences()->empty());
  store.reset();
  EXPECT_EQ(blocks_on_disk(dir, 2, 1), 0u);
}

TEST(TieredStore, DroppingTheParentKeepsTheBlocksItsForkShares) {
  const std::string dir = scratch_dir();
  auto parent = tags_from(1, 3 * 4 + 1);
  auto child = parent;
  const auto child_more = tags_from(300, 8);
  child.insert(child.end(), child_more.begin(), child_more.end());
  {
    auto store = open_store(tiny_options(/*gpu_slots=*/6, /*host_slots=*/4, dir));
    ASSERT_TRUE(store->create_sequence(1).ok());
    ASSERT_TRUE(append(*store, 1, parent).ok());
    ASSERT_TRUE(store->fork_sequence(1, 2).ok());
    EXPECT_EQ(store->metrics().shared_blocks, 6);
    ASSERT_TRUE(append(*store, 2, child_more).ok());
    ASSERT_TRUE(append(*store, 1, tags_from(700, 8)).ok());
    ASSERT_TRUE(store->flush().ok());
    ASSERT_TRUE(store->drop_sequence(1).ok());
    Status reuse = store->create_sequence(1);
    EXPECT_EQ(reuse.code(), StatusCode::kInvalidArgument) << reuse.to_string();
    for (int layer = 0; layer < 2; ++layer) {
      for (int64_t b : all_blocks(*store, 21)) expect_blocks(*store, 2, layer, {b}, child);
    }
  }
  EXPECT_EQ(blocks_on_disk(dir, 1, 0), 3u);  // the shared prefix stays under the parent's key
  {
    auto store = open_store(tiny_options(4, 4, dir));
    EXPECT_EQ(*store->list_sequences(), std::vector<SequenceId>{2});
    EXPECT_EQ(*store->recover_sequence(2), 20);
    for (int layer = 0; layer < 2; ++layer) {
      for (int64_t b : all_blocks(*store, 20)) expect_blocks(*store, 2, layer, {b}, child);
    }
    ASSERT_TRUE(store->drop_sequence(2).ok());
    ASSERT_TRUE(store->create_sequence(1).ok());  // the id is free again
  }
  EXPECT_EQ(blocks_on_disk(dir, 1, 0), 0u);
  EXPECT_EQ(blocks_on_disk(dir, 2, 0), 0u);
}

TEST(TieredStore, ForksOfForksRecoverAndShareAfterReopen) {
  const std::string dir = scratch_dir();
  const auto a = tags_from(1, 8);
  auto b = a, c = a;
  {
    auto store = open_store(tiny_options(8, 64, dir));
    ASSERT_TRUE(store->create_sequence(10).ok());
    ASSERT_TRUE(append(*store, 10, a).ok());
    ASSERT_TRUE(store->fork_sequence(10, 11).ok());
    const auto b_more = tags_from(100, 8);
    ASSERT_TRUE(append(*store, 11, b_more).ok());
    b.insert(b.end(), b_more.begin(), b_more.end());
    ASSERT_TRUE(store->fork_sequence(11, 12).ok());
    c = b;
    const auto c_more = tags_from(200, 4);
    ASSERT_TRUE(append(*store, 12, c_more).ok());
    c.insert(c.end(), c_more.begin(), c_more.end());
  }
  auto store = open_store(tiny_options(8, 64, dir));
  EXPECT_EQ(*store->recover_sequence(12), 20);
  EXPECT_EQ(*store->recover_sequence(10), 8);
  EXPECT_EQ(store->metrics().shared_blocks, 2 * 2);  // a's blocks, held by 10 and 12
  ASSERT_TRUE(store->drop_sequence(11).ok());        // never recovered; 12 still uses its blocks
  for (int layer = 0; layer < 2; ++layer) {
    for (int64_t blk : all_blocks(*store, 20)) expect_blocks(*store, 12, layer, {blk}, c);
    for (int64_t blk : all_blocks(*store, 8)) expect_blocks(*store, 10, layer, {blk}, a);
  }
}

// A really full disk (a 2 MiB tmpfs; needs mount rights, skipped without them).
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& dir) : dir_(dir) {
    mounted_ = std::system(("mount -t tmpfs -o size=2M tmpfs " + dir + " 2>/dev/null").c_str()) == 0;
  }
  ~SmallTmpfs() {
    if (mounted_) (void)std::system(("umount " + dir_).c_str());
  }
  bool mounted() const { return mounted_; }
  bool grow() { return std::system(("mount -o remount,size=64M " + dir_).c_str()) == 0; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

TEST(TieredStore, FullDiskIsAnIoErrorAndWritesResumeWhenSpaceReturns) {
  const std::string dir = scratch_dir();
  SmallTmpfs fs(dir);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  KvStoreOptions options;
  options.layout = {.num_layers = 2, .num_kv_heads = 2, .block_tokens = 64, .head_dim = 64};  // 64 KiB slots
  options.gpu_budget_bytes = 8 * options.layout.slot_bytes();
  options.host_budget_bytes = 256 * options.layout.slot_bytes();
  options.data_dir = dir + "/db";
  auto store = open_store(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->create_sequence(1).ok());
  const auto tags = tags_from(5, 40 * 64);  // 80 blocks, 5 MiB: more than the disk holds
  ASSERT_TRUE(append(*store, 1, tags, /*chunk=*/64).ok());
  Status s = store->flush();
  ASSERT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  EXPECT_NE(s.message().find("RocksDB"), std::string::npos) << s.message();
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.pending_writes, 0);
  for (int64_t b : {0, 17, 39}) expect_blocks(*store, 1, 1, {b}, tags);  // still served from host

  ASSERT_TRUE(fs.grow());
  s = store->flush();
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(store->metrics().pending_writes, 0);
  store.reset();
  store = open_store(options);
  EXPECT_EQ(*store->recover_sequence(1), 40 * 64);
  for (int64_t b : {0, 17, 39}) expect_blocks(*store, 1, 0, {b}, tags);
}

}  // namespace
}  // namespace mnemo
