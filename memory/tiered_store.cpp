// TieredStore: opening and closing, the life of sequences (create, fork, drop), metadata, metrics.
// The step path (reserve, commit, acquire) is in tiered_store_step.cpp; write-behind, recovery and
// the on-disk registry in tiered_store_disk.cpp.
#include "memory/tiered_store.h"

#include <algorithm>

#include "core/device.h"

namespace mnemo {

Result<std::unique_ptr<KvStore>> KvStore::open(const KvStoreOptions& options) { return TieredStore::open(options); }

TieredStore::TieredStore(const KvStoreOptions& options) : options_(options) {}

Result<std::unique_ptr<KvStore>> TieredStore::open(const KvStoreOptions& options) {
  auto store = std::unique_ptr<TieredStore>(new TieredStore(options));
  MNEMO_RETURN_IF_ERROR(store->init());
  return std::unique_ptr<KvStore>(std::move(store));
}

Status TieredStore::init() {
  const KvLayout& l = options_.layout;
  if (l.num_layers <= 0 || l.num_kv_heads <= 0 || l.block_tokens <= 0 || l.head_dim <= 0) {
    return invalid_argument("KvStore: layout needs positive num_layers, num_kv_heads, block_tokens, head_dim; got ",
                            l.num_layers, ", ", l.num_kv_heads, ", ", l.block_tokens, ", ", l.head_dim);
  }
  if (l.dtype != DType::kF32 && l.dtype != DType::kBF16) {
    return invalid_argument("KvStore: layout.dtype must be f32 or bf16, got ", dtype_name(l.dtype));
  }
  if (options_.cuda) {
    if (!built_with_cuda()) {
      return invalid_argument("KvStore: options.cuda is set but this build has no CUDA support (MNEMO_CUDA=OFF)");
    }
    if (cuda_device_count() == 0) {
      return invalid_argument("KvStore: options.cuda is set but CUDA is unavailable: ", cuda_unavailable_reason());
    }
    if (l.slot_bytes() % 16 != 0) {
      return invalid_argument("KvStore: the CUDA mover copies 16-byte vectors: slot_bytes (2 x num_kv_heads ",
                              l.num_kv_heads, " x block_tokens ", l.block_tokens, " x head_dim ", l.head_dim, " x ",
                              dtype_size(l.dtype), " B) = ", l.slot_bytes(), " is not a multiple of 16");
    }
  }
  slot_bytes_ = l.slot_bytes();
  float_rows_ = !options_.cuda && l.dtype == DType::kF32;
  const int64_t gpu_slots = options_.gpu_budget_bytes > 0 ? options_.gpu_budget_bytes / slot_bytes_
                                                          : KvArena::slots_for_tokens(l, options_.gpu_budget_tokens);
  const int64_t host_slots = options_.host_budget_bytes / slot_bytes_;
  if (gpu_slots < 1) {
    return invalid_argument("KvStore: the GPU budget (gpu_budget_bytes ", options_.gpu_budget_bytes,
                            ", gpu_budget_tokens ", options_.gpu_budget_tokens, ") holds no slot of ", slot_bytes_,
                            " bytes");
  }
  if (host_slots < 1) {
    return invalid_argument("KvStore: host_budget_bytes ", options_.host_budget_bytes, " holds no slot of ",
                            slot_bytes_, " bytes");
  }
  if (gpu_slots > INT32_MAX || host_slots > INT32_MAX) {
    return invalid_argument("KvStore: at most 2^31 - 1 slots per tier; the budgets give ", gpu_slots, " GPU and ",
                            host_slots, " host slots of ", slot_bytes_, " bytes");
  }
  MNEMO_ASSIGN_OR_RETURN(gpu_memory_,
                         SlotMemory::allocate(options_.cuda ? SlotMemoryKind::kCudaDevice : SlotMemoryKind::kHost,
                                              gpu_slots * slot_bytes_, "the GPU tier (gpu_budget_bytes)"));
  MNEMO_ASSIGN_OR_RETURN(host_memory_,
                         SlotMemory::allocate(options_.cuda ? SlotMemoryKind::kCudaMappedHost : SlotMemoryKind::kHost,
                                              host_slots * slot_bytes_, "the host tier (host_budget_bytes)"));
  MNEMO_ASSIGN_OR_RETURN(gpu_, GpuTier::create(gpu_memory_->data(), slot_bytes_, gpu_slots));
  MNEMO_ASSIGN_OR_RETURN(host_, HostTier::create(host_memory_->data(), slot_bytes_, host_slots));
  if (options_.cuda) {
    // One batch never exceeds the GPU slots: loads and open-block copies land in distinct GPU
    // slots, and a commit seals only open blocks, which are GPU slots.
    MNEMO_ASSIGN_OR_RETURN(mover_, make_cuda_mover(gpu_memory_->device_data(), host_memory_->device_data(),
                                                   slot_bytes_, gpu_slots, options_.cuda_stream));
  } else {
    mover_ = make_cpu_mover(gpu_->base(), host_->base(), slot_bytes_);
  }
  if (!options_.data_dir.empty()) {
    MNEMO_ASSIGN_OR_RETURN(disk_, DiskTier::open({.dir = options_.data_dir,
                                                  .sync_writes = options_.sync_writes,
                                                  .read_threads = options_.disk_read_threads,
                                                  .inject_write_error = options_.inject_disk_write_error}));
    MNEMO_RETURN_IF_ERROR(check_identity());
    MNEMO_RETURN_IF_ERROR(load_registry());
    writer_ = std::thread([this] { writer_loop(); });
  }
  return Status::Ok();
}

TieredStore::~TieredStore() {
  if (!writer_.joinable()) return;
  std::unique_lock<std::mutex> lock(mu_);
  // Best effort: blocks that cannot be written are recomputed from the token log after a restart.
  flush_locked(lock).permit_unchecked();
  writer_stop_ = true;
  cv_.notify_all();
  lock.unlock();
  writer_.join();
}

TieredStore::Sequence* TieredStore::live(SequenceId seq) {
  auto it = live_.find(seq);
  return it == live_.end() ? nullptr : &it->second;
}

const TieredStore::Sequence* TieredStore::live(SequenceId seq) const {
  auto it = live_.find(seq);
  return it == live_.end() ? nullptr : &it->second;
}

Status TieredStore::create_sequence(SequenceId seq) {
  std::lock_guard<std::mutex> lock(mu_);
  if (live_.count(seq)) return invalid_argument("create_sequence: sequence ", seq, " already exists");
  if (registered_.count(seq)) {
    return invalid_argument("create_sequence: sequence ", seq, " exists on disk in ", options_.data_dir,
                            "; recover_sequence or drop_sequence it first");
  }
  if (referenced_as_origin(seq, seq)) {
    return invalid_argument("create_sequence: id ", seq,
                            " still names blocks shared by a fork of a dropped "
                            "sequence with this id; choose another id");
  }
  if (disk_) {
    MNEMO_RETURN_IF_ERROR(disk_->put_meta(seq_meta_key(seq), encode_segments({}), options_.sync_writes)
                              .with_context(detail::str_cat("create_sequence ", seq)));
  }
  registered_[seq] = {};
  live_[seq].tables.resize(static_cast<size_t>(options_.layout.num_layers));
  return Status::Ok();
}

Status TieredStore::drop_sequence(SequenceId seq) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!registered_.count(seq)) return not_found("drop_sequence: no sequence ", seq);
  // The freed GPU slots are reused only after the kernels queued on cuda_stream so far.
  MNEMO_RETURN_IF_ERROR(mover_->after_caller().with_context(detail::str_cat("drop_sequence ", seq)));
  if (disk_) {
    // No write may land in a range after it is deleted: wait out the batch in flight. Queued writes
    // of blocks freed below are skipped by their generation.
    wait_writer_idle(lock);
    DiskTier::Batch batch;
    build_drop_batch(seq, &batch);
    MNEMO_RETURN_IF_ERROR(
        disk_->write(batch, options_.sync_writes).with_context(detail::str_cat("drop_sequence ", seq)));
  }
  if (Sequence* s = live(seq)) {
    for (auto& table : s->tables) {
      for (BlockId id : table) unref_block(id);
    }
    live_.erase(seq);
  }
  registered_.erase(seq);
  return Status::Ok();
}

Status TieredStore::fork_sequence(SequenceId parent, SequenceId child) {
  std::lock_guard<std::mutex> lock(mu_);
  Sequence* p = live(parent);
  if (!p)
    return not_found("fork_sequence: no live sequence ", parent,
                     registered_.count(parent) ? " (recover it first)" : "");
  if (registered_.count(child) || referenced_as_origin(child, child)) {
    return invalid_argument("fork_sequence: child id ", child, " is already in use");
  }
  const KvLayout& l = options_.layout;
  const int64_t sealed = p->length / l.block_tokens;
  const bool has_open = p->length % l.block_tokens != 0;
  const int64_t need = has_open ? l.num_layers : 0;
  if (need > gpu_->free_slots() + gpu_->evictable_slots()) {
    return gpu_budget_error(detail::str_cat("fork_sequence ", parent, " -> ", child, " (copying the open blocks)"),
                            need, gpu_->free_slots() + gpu_->evictable_slots());
  }
  std::vector<Segment> segments = registered_[parent];
  const uint32_t inherited = segments.empty() ? 0 : segments.back().end;
  if (sealed > inherited) segments.push_back({parent, static_cast<uint32_t>(sealed)});
  if (disk_) {
    MNEMO_RETURN_IF_ERROR(disk_->put_meta(seq_meta_key(child), encode_segments(segments), options_.sync_writes)
                              .with_context(detail::str_cat("fork_sequence ", parent, " -> ", child)));
  }

  // Nothing below fails.
  make_gpu_room(need);
  Sequence c;
  c.length = p->length;
  c.tables.resize(static_cast<size_t>(l.num_layers));
  std::vector<SlotCopy> copies;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    const auto& src = p->tables[layer];
    auto& dst = c.tables[layer];
    for (int64_t b = 0; b < sealed; ++b) {
      ++blocks_[src[b]].refs;
      dst.push_back(src[b]);
    }
    if (has_open) {
      const BlockId id = new_block({child, static_cast<uint32_t>(layer), static_cast<uint32_t>(sealed)});
      blocks_[id].gpu_slot = gpu_->take_free(id, /*sealed=*/false);
      copies.push_back({blocks_[src[sealed]].gpu_slot, blocks_[id].gpu_slot});
      dst.push_back(id);
    }
  }
  // The open blocks were written by kernels on cuda_stream; the child's are written there next.
  Status copied = copies.empty() ? Status::Ok() : mover_->after_caller();
  if (copied.ok()) copied = mover_->copy(CopyKind::kGpuToGpu, copies);
  if (copied.ok() && !copies.empty()) copied = mover_->before_caller();
  if (!copied.ok()) {  // a device failure: undo the child
    for (auto& table : c.tables) {
      for (BlockId id : table) unref_block(id);
    }
    if (disk_) disk_->delete_meta(seq_meta_key(child), options_.sync_writes).permit_unchecked();
    return copied;
  }
  registered_[child] = std::move(segments);
  live_[child] = std::move(c);
  return Status::Ok();
}

Result<std::vector<SequenceId>> TieredStore::list_sequences() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SequenceId> out;
  for (const auto& [seq, segments] : registered_) out.push_back(seq);
  return out;
}

Result<int64_t> TieredStore::length(SequenceId seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Sequence* s = live(seq);
  if (!s) return not_found("length: no live sequence ", seq);
  return s->length;
}

namespace {
Status check_user_meta_key(const std::string& key) {
  if (!key.empty() && key[0] == '\0')
    return invalid_argument("meta key must not start with '\\0' (reserved for the store)");
  return Status::Ok();
}
}  // namespace

Status TieredStore::put_meta(const std::string& key, const std::string& value, bool sync) {
  MNEMO_RETURN_IF_ERROR(check_user_meta_key(key));
  std::lock_guard<std::mutex> lock(mu_);
  if (disk_) return disk_->put_meta(key, value, sync);
  mem_meta_[key] = value;
  return Status::Ok();
}

Result<std::string> TieredStore::get_meta(const std::string& key) const {
  MNEMO_RETURN_IF_ERROR(check_user_meta_key(key));
  std::lock_guard<std::mutex> lock(mu_);
  if (disk_) return disk_->get_meta(key);
  auto it = mem_meta_.find(key);
  if (it == mem_meta_.end()) return not_found("meta key '", key, "' not found");
  return it->second;
}

Status TieredStore::delete_meta(const std::string& key) {
  MNEMO_RETURN_IF_ERROR(check_user_meta_key(key));
  std::lock_guard<std::mutex> lock(mu_);
  if (disk_) return disk_->delete_meta(key, options_.sync_writes);
  mem_meta_.erase(key);
  return Status::Ok();
}

Status TieredStore::scan_meta(const std::string& prefix,
                              const std::function<void(const std::string&, const std::string&)>& fn) const {
  MNEMO_RETURN_IF_ERROR(check_user_meta_key(prefix));
  std::lock_guard<std::mutex> lock(mu_);
  if (disk_) return disk_->scan_meta(prefix, fn);
  for (auto it = mem_meta_.lower_bound(prefix); it != mem_meta_.end() && it->first.starts_with(prefix); ++it) {
    fn(it->first, it->second);
  }
  return Status::Ok();
}

KvStoreMetrics TieredStore::metrics() const {
  std::lock_guard<std::mutex> lock(mu_);
  KvStoreMetrics m = m_;
  m.gpu_slots_used = gpu_->used_slots();
  m.gpu_slots_total = gpu_->num_slots();
  m.host_slots_used = host_->used_slots();
  m.host_slots_total = host_->num_slots();
  m.blocks = m.shared_blocks = m.disk_blocks = 0;
  for (const Block& b : blocks_) {
    if (b.refs == 0) continue;
    ++m.blocks;
    if (b.refs > 1) ++m.shared_blocks;
    if (b.durable) ++m.disk_blocks;
  }
  m.pending_writes = 0;
  for (const Block& b : blocks_) m.pending_writes += b.refs > 0 && b.write_pending && !b.durable;
  return m;
}

}  // namespace mnemo
