// TieredStore, the disk side: identity checks at open, the sequence registry (fork segments) in
// `meta`, write-behind, flush, recovery after a restart, and the range deletes of a drop.
#include <algorithm>

#include "memory/tiered_store.h"

namespace mnemo {
namespace {

const std::string kSeqPrefix("\0store/seq/", 11);
const std::string kFingerprintKey("\0store/fingerprint", 18);
const std::string kLayoutKey("\0store/layout", 13);
constexpr size_t kWriteBatchBlocks = 32;   // 2–8 MiB per RocksDB write
constexpr uint32_t kNoBlock = UINT32_MAX;  // past every block index (reserve() never reaches it)

void put_be(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_be(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

using Interval = std::pair<uint32_t, uint32_t>;  // blocks [first, second)

}  // namespace

std::string TieredStore::seq_meta_key(SequenceId seq) {
  std::string key = kSeqPrefix;
  put_be(&key, seq, 8);
  return key;
}

std::string TieredStore::encode_segments(const std::vector<Segment>& segments) {
  std::string out;
  for (const Segment& s : segments) {
    put_be(&out, s.origin, 8);
    put_be(&out, s.end, 4);
  }
  return out;
}

Result<std::vector<TieredStore::Segment>> TieredStore::decode_segments(SequenceId seq, const std::string& value) {
  if (value.size() % 12 != 0) return corruption("sequence record of seq ", seq, ": ", value.size(), " bytes, not 12k");
  std::vector<Segment> segments;
  for (size_t i = 0; i < value.size(); i += 12) {
    segments.push_back({get_be(value.data() + i, 8), static_cast<uint32_t>(get_be(value.data() + i + 8, 4))});
  }
  return segments;
}

BlockKey TieredStore::origin_key(SequenceId seq, int layer, int64_t block) const {
  auto it = registered_.find(seq);
  if (it != registered_.end()) {
    for (const Segment& s : it->second) {
      if (block < s.end) return {s.origin, static_cast<uint32_t>(layer), static_cast<uint32_t>(block)};
    }
  }
  return {seq, static_cast<uint32_t>(layer), static_cast<uint32_t>(block)};
}

bool TieredStore::referenced_as_origin(SequenceId seq, SequenceId except) const {
  for (const auto& [other, segments] : registered_) {
    if (other == except) continue;
    for (const Segment& s : segments) {
      if (s.origin == seq) return true;
    }
  }
  return false;
}

Status TieredStore::check_identity() {
  const KvLayout& l = options_.layout;
  const std::string layout = detail::str_cat("num_layers=", l.num_layers, " num_kv_heads=", l.num_kv_heads,
                                             " block_tokens=", l.block_tokens, " head_dim=", l.head_dim,
                                             " dtype=", dtype_name(l.dtype));
  Result<std::string> stored = disk_->get_meta(kLayoutKey);
  if (stored.ok() && *stored != layout) {
    return invalid_argument("KV store at ", options_.data_dir, " holds blocks of layout '", *stored,
                            "'; refusing to open it with layout '", layout, "'");
  }
  if (!stored.ok() && stored.status().code() != StatusCode::kNotFound) return stored.status();
  if (!stored.ok()) MNEMO_RETURN_IF_ERROR(disk_->put_meta(kLayoutKey, layout, /*sync=*/true));

  if (options_.fingerprint.empty()) return Status::Ok();
  stored = disk_->get_meta(kFingerprintKey);
  if (stored.ok() && *stored != options_.fingerprint) {
    return invalid_argument("KV store at ", options_.data_dir, " was written by model fingerprint '", *stored,
                            "'; refusing to open it for model fingerprint '", options_.fingerprint, "'");
  }
  if (!stored.ok() && stored.status().code() != StatusCode::kNotFound) return stored.status();
  if (!stored.ok()) MNEMO_RETURN_IF_ERROR(disk_->put_meta(kFingerprintKey, options_.fingerprint, /*sync=*/true));
  return Status::Ok();
}

Status TieredStore::load_registry() {
  Status decode_error;
  MNEMO_RETURN_IF_ERROR(disk_->scan_meta(kSeqPrefix, [&](const std::string& key, const std::string& value) {
    if (key.size() != kSeqPrefix.size() + 8) {
      decode_error = corruption("meta: malformed sequence record key of ", key.size(), " bytes");
      return;
    }
    const SequenceId seq = get_be(key.data() + kSeqPrefix.size(), 8);
    Result<std::vector<Segment>> segments = decode_segments(seq, value);
    if (!segments.ok())
      decode_error = segments.status();
    else
      registered_[seq] = std::move(*segments);
  }));
  return decode_error;
}

void TieredStore::build_drop_batch(SequenceId seq, DiskTier::Batch* batch) const {
  // Blocks of `origin` that sequences other than `seq` still use, merged.
  auto kept = [&](uint64_t origin) {
    std::vector<Interval> keep;
    for (const auto& [other, segments] : registered_) {
      uint32_t first = 0;
      for (const Segment& s : segments) {
        if (other != seq && s.origin == origin) keep.push_back({first, s.end});
        first = s.end;
      }
    }
    std::sort(keep.begin(), keep.end());
    return keep;
  };
  // Range-deletes blocks [first, end) of `origin` in every layer, except `keep`.
  auto erase = [&](uint64_t origin, uint32_t first, uint32_t end, const std::vector<Interval>& keep) {
    for (uint32_t layer = 0; layer < static_cast<uint32_t>(options_.layout.num_layers); ++layer) {
      uint32_t cursor = first;
      for (const auto& [a, b] : keep) {
        if (b <= cursor || a >= end) continue;
        if (a > cursor) batch->block_ranges.push_back({{origin, layer, cursor}, {origin, layer, a}});
        cursor = std::max(cursor, b);
      }
      if (cursor < end) batch->block_ranges.push_back({{origin, layer, cursor}, {origin, layer, end}});
    }
  };
  const std::vector<Interval> own_keep = kept(seq);
  if (own_keep.empty()) {  // the common case: one range for the whole sequence
    batch->block_ranges.push_back({{seq, 0, 0}, {seq, kNoBlock, kNoBlock}});
  } else {
    erase(seq, 0, kNoBlock, own_keep);
  }
  // Blocks inherited from an already dropped origin die with their last user.
  uint32_t first = 0;
  for (const Segment& s : registered_.at(seq)) {
    if (s.origin != seq && !registered_.count(s.origin)) erase(s.origin, first, s.end, kept(s.origin));
    first = s.end;
  }
  batch->meta_deletes.push_back(seq_meta_key(seq));
}

void TieredStore::enqueue_write(BlockId id) {
  blocks_[id].write_pending = true;
  write_queue_.push_back({id, blocks_[id].gen});
}

void TieredStore::writer_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return writer_stop_ || !write_queue_.empty(); });
    if (writer_stop_) return;
    std::vector<WriteItem> batch;
    std::vector<DiskTier::BlockWrite> writes;
    while (!write_queue_.empty() && batch.size() < kWriteBatchBlocks) {
      const WriteItem item = write_queue_.front();
      write_queue_.pop_front();
      const Block& b = blocks_[item.id];
      if (b.gen != item.gen || b.durable) continue;  // freed (dropped) since it was queued
      batch.push_back(item);
      writes.push_back({b.key, host_->slot(b.host_slot)});
    }
    if (batch.empty()) {
      cv_.notify_all();
      continue;
    }
    writer_busy_ = true;
    lock.unlock();
    // Every block here was queued after its seal copy (commit); on CUDA that copy may still run.
    Status written = mover_->wait();
    if (written.ok()) written = disk_->write_blocks(writes, slot_bytes_);
    lock.lock();
    writer_busy_ = false;
    for (const WriteItem& item : batch) {
      Block& b = blocks_[item.id];
      if (b.gen != item.gen) continue;  // cannot happen: drops wait for the writer to go idle
      if (!written.ok()) {
        write_failed_.push_back(item);  // stays on host, not durable; flush() retries
        continue;
      }
      b.durable = true;
      b.write_pending = false;
      host_->set_droppable(b.host_slot);
      m_.bytes_host_to_disk += slot_bytes_;
    }
    if (!written.ok()) {
      ++m_.disk_write_errors;
      if (write_error_.ok()) write_error_ = written;
    }
    cv_.notify_all();
  }
}

void TieredStore::wait_writer_idle(std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [&] { return !writer_busy_; });
}

Status TieredStore::flush_locked(std::unique_lock<std::mutex>& lock) {
  if (!disk_) return Status::Ok();
  if (!write_failed_.empty()) {
    disk_->try_resume();
    write_queue_.insert(write_queue_.end(), write_failed_.begin(), write_failed_.end());
    write_failed_.clear();
  }
  write_error_ = Status::Ok();
  cv_.notify_all();
  cv_.wait(lock, [&] { return write_queue_.empty() && !writer_busy_; });
  Status error = write_error_;
  write_error_ = Status::Ok();
  return error;
}

Status TieredStore::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  return flush_locked(lock);
}

Result<int64_t> TieredStore::recover_sequence(SequenceId seq) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!disk_) return invalid_argument("recover_sequence: the store has no data_dir");
  if (live_.count(seq)) return invalid_argument("recover_sequence: sequence ", seq, " is already live");
  auto it = registered_.find(seq);
  if (it == registered_.end()) return not_found("recover_sequence: no sequence ", seq, " in ", options_.data_dir);
  const std::vector<Segment>& segments = it->second;
  const KvLayout& l = options_.layout;

  // The longest prefix of blocks present in every layer, following the segments' origins.
  uint32_t prefix = kNoBlock;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    uint32_t b = 0;
    bool gap = false;
    for (const Segment& s : segments) {
      MNEMO_ASSIGN_OR_RETURN(const uint32_t n, disk_->count_present(s.origin, layer, b, s.end));
      b += n;
      if (b < s.end) {
        gap = true;
        break;
      }
    }
    if (!gap) {
      MNEMO_ASSIGN_OR_RETURN(const uint32_t n, disk_->count_present(seq, layer, b, kNoBlock));
      b += n;
    }
    prefix = std::min(prefix, b);
  }
  std::vector<Segment> kept;
  uint32_t first = 0;
  for (const Segment& s : segments) {
    if (first >= prefix) break;
    kept.push_back({s.origin, std::min(s.end, prefix)});
    first = s.end;
  }
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (uint32_t b = 0; b < prefix; ++b) {
      auto found = by_key_.find(origin_key(seq, layer, b));
      if (found != by_key_.end() && !blocks_[found->second].sealed) {
        return internal_error("recover_sequence: block ", to_string(found->first), " is open in a live sequence");
      }
    }
  }
  if (kept.size() != segments.size() || (!kept.empty() && kept.back().end != segments.back().end)) {
    MNEMO_RETURN_IF_ERROR(disk_->put_meta(seq_meta_key(seq), encode_segments(kept), options_.sync_writes));
  }

  it->second = std::move(kept);
  Sequence s;
  s.tables.resize(static_cast<size_t>(l.num_layers));
  s.length = int64_t{prefix} * l.block_tokens;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (uint32_t b = 0; b < prefix; ++b) {
      const BlockKey key = origin_key(seq, layer, b);
      auto found = by_key_.find(key);
      BlockId id;
      if (found != by_key_.end()) {
        id = found->second;
        ++blocks_[id].refs;
      } else {
        id = new_block(key);
        blocks_[id].sealed = true;
        blocks_[id].durable = true;
      }
      s.tables[layer].push_back(id);
    }
  }
  const int64_t tokens = s.length;
  live_[seq] = std::move(s);
  return tokens;
}

}  // namespace mnemo
