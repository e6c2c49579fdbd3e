// DiskTier: the RocksDB half of the KV store — blocks, the block index and small metadata records.
//
// Column families:
//   kv   : key = big-endian seq(8) | layer(4) | block(4), so one sequence is one key range. Value =
//          magic(4) | crc32c(4) of key and block bytes | block bytes ([2, Hkv, block_tokens, head_dim]
//          of the layout's dtype: slot_bytes). Blob files (values are 64–256 KiB: compaction moves
//          keys, not blocks), no compression.
//   repr : reserved for representatives (compressed keys); empty for now.
//   meta : small records: the caller's (put_meta) and the store's own, whose keys start with '\0':
//          "\0store/fingerprint", "\0store/layout", "\0store/seq/" + be64 seq (a sequence's fork
//          segments), "\0idx/" + kv key (an empty marker per durable block, so recovery lists blocks
//          without reading 64 KiB values).
// Checks: RocksDB block checksums (XXH3) on every table, and the value's own crc32c checked on every
// read, so a corrupt block is reported as kCorruption naming seq/layer/block and never served.
// A block and its index marker are written in one WriteBatch; range deletes cover both.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace mnemo {

struct BlockKey {
  uint64_t seq = 0;  // the sequence that sealed the block (its origin; forks share it)
  uint32_t layer = 0;
  uint32_t block = 0;  // logical block index in the layer
  bool operator==(const BlockKey&) const = default;
};

struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const {
    uint64_t h = k.seq * 0x9E3779B97F4A7C15ull ^ (uint64_t{k.layer} << 32 | k.block);
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

// "seq=7 layer=3 block=12", for messages.
std::string to_string(const BlockKey& key);
std::string encode_kv_key(const BlockKey& key);  // 16 bytes, big-endian
std::string encode_block_value(const BlockKey& key, const void* data, int64_t block_bytes);
// Checks magic, size and crc32c of `value` stored under `key`; kCorruption naming the block.
Status verify_block_value(const BlockKey& key, const char* value, size_t value_size, int64_t block_bytes);
constexpr size_t kBlockValueHeaderBytes = 8;

struct DiskTierOptions {
  std::string dir;           // created when missing
  bool sync_writes = false;  // WriteOptions.sync for block writes
  // Threads that read a batch of blocks (read_blocks): the caller plus read_threads - 1 owned by the
  // tier. 0 = min(8, hardware threads); 1 = the caller alone (one MultiGet). Negative: kInvalidArgument.
  int read_threads = 0;
  // Test only: called before every write; a non-OK Status fails it as a RocksDB error would.
  std::function<Status()> inject_write_error;
};

class DiskTier {
 public:
  static Result<std::unique_ptr<DiskTier>> open(const DiskTierOptions& options);
  ~DiskTier();
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  const std::string& dir() const { return options_.dir; }

  struct BlockWrite {
    BlockKey key;
    const void* data = nullptr;  // [block_bytes]
  };
  // Writes blocks and their index markers in one WriteBatch. On error nothing was written.
  Status write_blocks(std::span<const BlockWrite> blocks, int64_t block_bytes);

  // Reads `keys` split into contiguous shares, one per read thread (the caller runs one and waits for
  // the rest); each thread does one MultiGet of its share and checks every value. Only when all are
  // good, calls `place` once on the caller's thread, which sets a destination of block_bytes for
  // every key (`dst[i]` for `keys[i]`); then the threads copy their shares' bytes there and the call
  // returns when every copy is done (nothing can fail after `place`). Otherwise returns the error of
  // the first failing key in key order, without calling `place`. A missing block is kCorruption (the
  // caller only asks for blocks it knows durable).
  Status read_blocks(std::span<const BlockKey> keys, int64_t block_bytes,
                     const std::function<void(std::span<void*> dst)>& place);
  int read_threads() const;

  // Blocks [first, end) of (seq, layer) present on disk, counted from `first` up to the first gap.
  Result<uint32_t> count_present(uint64_t seq, uint32_t layer, uint32_t first, uint32_t end);

  // One atomic batch of deletes and metadata updates.
  struct Batch {
    std::vector<std::pair<BlockKey, BlockKey>> block_ranges;  // [from, to) in key order, with index
    std::vector<std::pair<std::string, std::string>> meta_puts;
    std::vector<std::string> meta_deletes;
  };
  Status write(const Batch& batch, bool sync);

  Status put_meta(const std::string& key, const std::string& value, bool sync);
  Result<std::string> get_meta(const std::string& key) const;  // kNotFound when absent
  Status delete_meta(const std::string& key, bool sync);
  // Key order; an empty prefix visits only keys not starting with '\0' (not the store's own).
  Status scan_meta(const std::string& prefix,
                   const std::function<void(const std::string& key, const std::string& value)>& fn) const;

  // Clears a background error RocksDB may be stuck in after a failed write (a retry follows).
  void try_resume();

 private:
  struct Impl;
  explicit DiskTier(DiskTierOptions options);
  DiskTierOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mnemo
