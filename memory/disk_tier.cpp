#include "memory/disk_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/log.h"
#include "memory/checksum.h"

namespace mnemo {
namespace {

constexpr uint32_t kValueMagic = 0x3156'4B4Du;  // "MKV1" little-endian
const std::string kIndexPrefix("\0idx/", 5);

void put_be(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

std::string index_key(const BlockKey& key) { return kIndexPrefix + encode_kv_key(key); }

// RocksDB's status as ours, with `what` (the operation) in front of RocksDB's message.
Status from_rocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  if (s.IsNotFound()) return not_found(what, ": ", s.ToString());
  if (s.IsCorruption()) return corruption(what, ": ", s.ToString());
  return io_error(what, ": RocksDB: ", s.ToString());
}

// RocksDB's info log, sent to ours (warnings and errors only). Without it RocksDB writes a LOG file
// into the data directory, and on a full disk the second failed LOG write aborts the process (an
// assert in WritableFileWriter that Debian's build keeps).
class RocksLogger final : public rocksdb::Logger {
 public:
  RocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::WARN_LEVEL, format, ap); }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buf[1024];
    std::vsnprintf(buf, sizeof(buf), format, ap);
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      MNEMO_LOG(kError) << "rocksdb: " << buf;
    } else {
      MNEMO_LOG(kWarning) << "rocksdb: " << buf;
    }
  }
};

// After a write error (a full disk) RocksDB turns read-only. Its automatic recovery polls for free
// space every few seconds and makes DB::Resume() answer Busy meanwhile; the store instead resumes
// explicitly when flush() retries, so a retry after space returns succeeds at once.
class ManualRecovery final : public rocksdb::EventListener {
 public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status, bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

rocksdb::ColumnFamilyOptions kv_family_options() {
  rocksdb::ColumnFamilyOptions cf;
  rocksdb::BlockBasedTableOptions table;
  table.checksum = rocksdb::kXXH3;
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  cf.compression = rocksdb::kNoCompression;  // f32 activations barely compress
  cf.enable_blob_files = true;               // compaction rewrites 16-byte keys, not 64 KiB blocks
  cf.min_blob_size = 4096;
  cf.enable_blob_garbage_collection = true;
  return cf;
}

rocksdb::ColumnFamilyOptions meta_family_options() {
  rocksdb::ColumnFamilyOptions cf;
  rocksdb::BlockBasedTableOptions table;
  table.checksum = rocksdb::kXXH3;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

// A fixed set of worker threads that run `fn(0 .. tasks-1)` together with the caller; run() returns
// when every task is done. One run at a time (run() calls are serialised).
class ReadPool {
 public:
  explicit ReadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~ReadPool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  ReadPool(const ReadPool&) = delete;
  ReadPool& operator=(const ReadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(size_t tasks, const std::function<void(size_t)>& fn) {
    std::lock_guard<std::mutex> one_run(run_mu_);
    if (workers_.empty() || tasks <= 1) {
      for (size_t i = 0; i < tasks; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      fn_ = &fn;
      tasks_ = tasks;
      next_ = 0;
      done_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return done_ == tasks_; });
    fn_ = nullptr;
  }

 private:
  void work() {
    for (;;) {
      const std::function<void(size_t)>* fn = nullptr;
      size_t i = 0;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (next_ >= tasks_) return;
        i = next_++;
        fn = fn_;
      }
      (*fn)(i);
      std::lock_guard<std::mutex> l(mu_);
      if (++done_ == tasks_) done_cv_.notify_all();
    }
  }
  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      wake_.wait(l, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      l.unlock();
      work();
      l.lock();
    }
  }

  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable wake_, done_cv_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t tasks_ = 0, next_ = 0, done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

std::string to_string(const BlockKey& key) {
  return detail::str_cat("seq=", key.seq, " layer=", key.layer, " block=", key.block);
}

std::string encode_kv_key(const BlockKey& key) {
  std::string out;
  out.reserve(16);
  put_be(&out, key.seq, 8);
  put_be(&out, key.layer, 4);
  put_be(&out, key.block, 4);
  return out;
}

std::string encode_block_value(const BlockKey& key, const void* data, int64_t block_bytes) {
  const std::string k = encode_kv_key(key);
  const uint32_t crc = crc32c_extend(crc32c(k.data(), k.size()), data, static_cast<size_t>(block_bytes));
  std::string value(kBlockValueHeaderBytes + static_cast<size_t>(block_bytes), '\0');
  std::memcpy(value.data(), &kValueMagic, 4);
  std::memcpy(value.data() + 4, &crc, 4);
  std::memcpy(value.data() + kBlockValueHeaderBytes, data, static_cast<size_t>(block_bytes));
  return value;
}

Status verify_block_value(const BlockKey& key, const char* value, size_t value_size, int64_t block_bytes) {
  const size_t want = kBlockValueHeaderBytes + static_cast<size_t>(block_bytes);
  if (value_size != want) {
    return corruption("kv block ", to_string(key), ": value is ", value_size, " bytes, expected ", want);
  }
  uint32_t magic = 0, stored = 0;
  std::memcpy(&magic, value, 4);
  std::memcpy(&stored, value + 4, 4);
  if (magic != kValueMagic) return corruption("kv block ", to_string(key), ": bad value header");
  const std::string k = encode_kv_key(key);
  const uint32_t crc =
      crc32c_extend(crc32c(k.data(), k.size()), value + kBlockValueHeaderBytes, static_cast<size_t>(block_bytes));
  if (crc != stored) {
    return corruption("kv block ", to_string(key), ": checksum mismatch (stored crc32c ", stored, ", computed ", crc,
                      "); the block is not served");
  }
  return Status::Ok();
}

struct DiskTier::Impl {
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyHandle* kv = nullptr;
  rocksdb::ColumnFamilyHandle* repr = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  std::unique_ptr<ReadPool> pool;  // joined before the DB closes

  ~Impl() {
    pool.reset();
    if (!db) return;
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    db->Close().PermitUncheckedError();
  }
};

DiskTier::DiskTier(DiskTierOptions options) : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}
DiskTier::~DiskTier() = default;

Result<std::unique_ptr<DiskTier>> DiskTier::open(const DiskTierOptions& options) {
  if (options.read_threads < 0) {
    return invalid_argument("KV store: disk_read_threads is ", options.read_threads, ", expected >= 0 (0 = default)");
  }
  auto tier = std::unique_ptr<DiskTier>(new DiskTier(options));
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return io_error("KV store: cannot create data_dir ", options.dir, ": ", ec.message());
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.info_log = std::make_shared<RocksLogger>();
  db_options.listeners.push_back(std::make_shared<ManualRecovery>());

  // Open every family already there (RocksDB requires it) plus ours.
  std::vector<std::string> names;
  rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, options.dir, &names);
  if (!s.ok()) names.clear();  // a new directory
  for (const char* want : {rocksdb::kDefaultColumnFamilyName.c_str(), "kv", "repr", "meta"}) {
    if (std::find(names.begin(), names.end(), want) == names.end()) names.push_back(want);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : names) {
    const bool is_meta = name == "meta" || name == rocksdb::kDefaultColumnFamilyName;
    families.emplace_back(name, is_meta ? meta_family_options() : kv_family_options());
  }
  rocksdb::DB* db = nullptr;
  s = rocksdb::DB::Open(db_options, options.dir, families, &tier->impl_->handles, &db);
  if (!s.ok()) return from_rocks(s, "opening KV store at " + options.dir);
  tier->impl_->db.reset(db);
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == "kv") tier->impl_->kv = tier->impl_->handles[i];
    if (names[i] == "repr") tier->impl_->repr = tier->impl_->handles[i];
    if (names[i] == "meta") tier->impl_->meta = tier->impl_->handles[i];
  }
  int threads = options.read_threads;
  if (threads == 0) threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  tier->impl_->pool = std::make_unique<ReadPool>(threads);
  return tier;
}

Status DiskTier::write_blocks(std::span<const BlockWrite> blocks, int64_t block_bytes) {
  if (options_.inject_write_error) {
    Status injected = options_.inject_write_error();
    if (!injected.ok()) return io_error("writing ", blocks.size(), " KV blocks: ", injected.message());
  }
  rocksdb::WriteBatch batch;
  for (const BlockWrite& b : blocks) {
    const std::string key = encode_kv_key(b.key);
    rocksdb::Status s = batch.Put(impl_->kv, key, encode_block_value(b.key, b.data, block_bytes));
    if (s.ok()) s = batch.Put(impl_->meta, index_key(b.key), rocksdb::Slice());
    if (!s.ok()) return from_rocks(s, "batching KV block " + to_string(b.key));
  }
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  return from_rocks(impl_->db->Write(wo, &batch), detail::str_cat("writing ", blocks.size(), " KV blocks"));
}

int DiskTier::read_threads() const { return impl_->pool->threads(); }

Status DiskTier::read_blocks(std::span<const BlockKey> keys, int64_t block_bytes,
                             const std::function<void(std::span<void*>)>& place) {
  const size_t n = keys.size();
  if (n == 0) return Status::Ok();
  std::vector<std::string> key_bytes(n);
  std::vector<rocksdb::Slice> slices(n);
  for (size_t i = 0; i < n; ++i) {
    key_bytes[i] = encode_kv_key(keys[i]);
    slices[i] = key_bytes[i];
  }
  std::vector<rocksdb::PinnableSlice> values(n);
  std::vector<rocksdb::Status> statuses(n);
  // Contiguous shares, one per thread: share t is keys [t * n / shares, (t + 1) * n / shares).
  const size_t shares = std::min(n, static_cast<size_t>(impl_->pool->threads()));
  auto begin = [&](size_t t) { return t * n / shares; };
  // Per share: the first failing key (n = none) and its error.
  std::vector<size_t> failed_at(shares, n);
  std::vector<Status> failure(shares);
  impl_->pool->run(shares, [&](size_t t) {
    const size_t b = begin(t), e = begin(t + 1);
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    impl_->db->MultiGet(ro, impl_->kv, e - b, slices.data() + b, values.data() + b, statuses.data() + b);
    for (size_t i = b; i < e; ++i) {
      Status s;
      if (statuses[i].IsNotFound()) {
        s = corruption("kv block ", to_string(keys[i]), " is recorded durable but missing from ", dir());
      } else {
        s = from_rocks(statuses[i], "reading kv block " + to_string(keys[i]));
        if (s.ok()) s = verify_block_value(keys[i], values[i].data(), values[i].size(), block_bytes);
      }
      if (!s.ok()) {
        failed_at[t] = i;
        failure[t] = std::move(s);
        return;
      }
    }
  });
  // Shares are contiguous in key order: the first share that failed has the first failing key.
  for (size_t t = 0; t < shares; ++t) {
    if (failed_at[t] < n) return failure[t];
  }
  std::vector<void*> dst(n, nullptr);
  place(dst);
  impl_->pool->run(shares, [&](size_t t) {
    for (size_t i = begin(t), e = begin(t + 1); i < e; ++i) {
      std::memcpy(dst[i], values[i].data() + kBlockValueHeaderBytes, static_cast<size_t>(block_bytes));
    }
  });
  return Status::Ok();
}

Result<uint32_t> DiskTier::count_present(uint64_t seq, uint32_t layer, uint32_t first, uint32_t end) {
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->meta));
  uint32_t count = 0;
  it->Seek(index_key({seq, layer, first}));
  for (uint32_t b = first; b < end && it->Valid(); ++b, it->Next()) {
    if (it->key() != rocksdb::Slice(index_key({seq, layer, b}))) break;
    ++count;
  }
  MNEMO_RETURN_IF_ERROR(from_rocks(it->status(), "listing kv blocks of seq " + std::to_string(seq)));
  return count;
}

Status DiskTier::write(const Batch& batch, bool sync) {
  if (options_.inject_write_error) {
    Status injected = options_.inject_write_error();
    if (!injected.ok()) return io_error("KV store batch: ", injected.message());
  }
  rocksdb::WriteBatch wb;
  rocksdb::Status s;
  for (const auto& [from, to] : batch.block_ranges) {
    if (s.ok()) s = wb.DeleteRange(impl_->kv, encode_kv_key(from), encode_kv_key(to));
    if (s.ok()) s = wb.DeleteRange(impl_->meta, index_key(from), index_key(to));
  }
  for (const auto& [k, v] : batch.meta_puts) {
    if (s.ok()) s = wb.Put(impl_->meta, k, v);
  }
  for (const std::string& k : batch.meta_deletes) {
    if (s.ok()) s = wb.Delete(impl_->meta, k);
  }
  if (!s.ok()) return from_rocks(s, "building a KV store batch");
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return from_rocks(impl_->db->Write(wo, &wb), "KV store batch");
}

Status DiskTier::put_meta(const std::string& key, const std::string& value, bool sync) {
  Batch batch;
  batch.meta_puts.emplace_back(key, value);
  return write(batch, sync);
}

Result<std::string> DiskTier::get_meta(const std::string& key) const {
  std::string value;
  rocksdb::Status s = impl_->db->Get(rocksdb::ReadOptions(), impl_->meta, key, &value);
  if (s.IsNotFound()) return not_found("meta key '", key, "' not found");
  MNEMO_RETURN_IF_ERROR(from_rocks(s, "reading meta key '" + key + "'"));
  return value;
}

Status DiskTier::delete_meta(const std::string& key, bool sync) {
  Batch batch;
  batch.meta_deletes.push_back(key);
  return write(batch, sync);
}

Status DiskTier::scan_meta(const std::string& prefix,
                           const std::function<void(const std::string&, const std::string&)>& fn) const {
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->meta));
  // The store's own records start with '\0'; an empty prefix visits only the caller's.
  it->Seek(prefix.empty() ? rocksdb::Slice("\x01", 1) : rocksdb::Slice(prefix));
  for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
    fn(it->key().ToString(), it->value().ToString());
  }
  return from_rocks(it->status(), "scanning meta prefix '" + prefix + "'");
}

void DiskTier::try_resume() {
  rocksdb::Status s = impl_->db->Resume();
  if (!s.ok()) {
    MNEMO_LOG(kWarning) << "KV store at " << dir() << ": RocksDB did not resume: " << s.ToString();
  }
}

}  // namespace mnemo
