// TieredStore, the step path: reserve → write rows → commit (seal, copy to host, write behind),
// acquire (plan, read disk misses, evict, gather host → GPU, pin) → release_all, and prefetch (an
// unpinned, best-effort load of host copies).
#include <algorithm>
#include <chrono>
#include <cstring>

#include "memory/tiered_store.h"

namespace mnemo {

TieredStore::BlockId TieredStore::new_block(const BlockKey& key) {
  BlockId id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
  } else {
    id = static_cast<BlockId>(blocks_.size());
    blocks_.emplace_back();
  }
  const uint32_t gen = blocks_[id].gen;
  blocks_[id] = Block{.key = key, .refs = 1, .gen = gen};
  by_key_[key] = id;
  return id;
}

void TieredStore::free_block(BlockId id) {
  Block& b = blocks_[id];
  if (b.gpu_slot >= 0) gpu_->release(b.gpu_slot);
  if (b.host_slot >= 0) host_->release(b.host_slot);
  auto it = by_key_.find(b.key);
  if (it != by_key_.end() && it->second == id) by_key_.erase(it);
  b = Block{.gen = b.gen + 1};
  free_ids_.push_back(id);
}

void TieredStore::unref_block(BlockId id) {
  if (--blocks_[id].refs == 0) free_block(id);
}

Status TieredStore::gpu_budget_error(const std::string& what, int64_t need, int64_t can_free) const {
  return out_of_budget(what, ": needs ", need, " GPU slots, only ", can_free, " can be freed (GPU tier budget ",
                       gpu_->num_slots() * slot_bytes_, " bytes = ", gpu_->num_slots(), " slots of ", slot_bytes_,
                       " bytes; ", gpu_->pinned_slots(), " pinned by this step, ",
                       gpu_->used_slots() - gpu_->evictable_slots(), " pinned or holding open blocks)");
}

void TieredStore::evict_gpu_slot(int32_t s) {
  // Sealed blocks always have a host or durable disk copy (tiered_store.h), so this drops a copy.
  Block& blk = blocks_[gpu_->owner(s)];
  if (blk.prefetch_epoch != 0) {  // prefetched, never used: a misprediction
    blk.prefetch_epoch = blk.prefetch_item = 0;
    ++m_.prefetch_unused_evictions;
  }
  blk.gpu_slot = -1;
  gpu_->release(s);
  ++m_.gpu_evictions;
}

void TieredStore::note_prefetch(BlockId id) {
  Block& blk = blocks_[id];
  blk.prefetch_epoch = step_epoch_;
  blk.prefetch_item = ++prefetch_serial_;
  prefetch_order_.push_back({id, blk.prefetch_item, step_epoch_});
}

int64_t TieredStore::fresh_evictable() const {
  int64_t k = 0;
  for (auto it = prefetch_order_.rbegin(); it != prefetch_order_.rend(); ++it) {
    if (it->epoch + 1 < step_epoch_) break;  // items are in epoch order: the rest are stale
    if (prefetch_valid(*it)) k += gpu_->evictable(blocks_[it->id].gpu_slot);
  }
  return k;
}

void TieredStore::make_gpu_room(int64_t n, int64_t stamped_evictable) {
  if (gpu_->free_slots() >= n) return;
  const bool for_prefetch = stamped_evictable >= 0;
  auto stamped = [&](BlockId id) { return for_prefetch && blocks_[id].stamp == acquire_stamp_; };
  // 1. Stale prefetched blocks (mispredictions), oldest first; items are in epoch order.
  for (const PrefetchItem& item : prefetch_order_) {
    if (gpu_->free_slots() >= n) break;
    if (!prefetch_valid(item)) continue;
    if (!stale_prefetch(item.id)) break;
    const int32_t s = blocks_[item.id].gpu_slot;
    if (gpu_->evictable(s) && !stamped(item.id)) evict_gpu_slot(s);
  }
  prune_prefetch_order();
  if (gpu_->free_slots() >= n) return;
  // 2. CLOCK over the rest, fresh prefetched blocks (and prefetch's own request) excepted.
  const int64_t fresh = fresh_evictable();
  auto skip = [&](int32_t s) {
    const BlockId id = gpu_->owner(s);
    return stamped(id) || fresh_prefetch(id);
  };
  // choose_victims needs enough candidates (else it sweeps every counter down to 0 in vain).
  int64_t want = std::min(n - gpu_->free_slots(),
                          gpu_->evictable_slots() - fresh - (for_prefetch ? stamped_evictable : 0));
  if (want > 0) {
    for (int32_t s : gpu_->choose_victims(want, skip)) evict_gpu_slot(s);
  }
  if (gpu_->free_slots() >= n || for_prefetch) return;
  // 3. acquire, reserve, fork: fresh prefetched blocks too (best effort yields to the step's needs).
  want = std::min(n - gpu_->free_slots(), gpu_->evictable_slots());
  for (int32_t s : gpu_->choose_victims(want, [](int32_t) { return false; })) evict_gpu_slot(s);
}

void TieredStore::prune_prefetch_order() {
  while (!prefetch_order_.empty() && !prefetch_valid(prefetch_order_.front())) prefetch_order_.pop_front();
  // Valid items are distinct resident blocks (at most one per GPU slot); drop the invalid ones
  // behind a valid front once they pile up.
  if (static_cast<int64_t>(prefetch_order_.size()) > 2 * gpu_->num_slots() + 64) {
    std::erase_if(prefetch_order_, [&](const PrefetchItem& item) { return !prefetch_valid(item); });
  }
}

Status TieredStore::ensure_host_room(std::unique_lock<std::mutex>& lock, int64_t n,
                                     const std::function<int64_t()>& protected_droppable) {
  for (int attempt = 0;; ++attempt) {
    const int64_t can = host_->free_slots() + host_->droppable_slots() - protected_droppable();
    if (n <= can) return Status::Ok();
    const bool writes_pending = !write_queue_.empty() || writer_busy_ || !write_failed_.empty();
    if (attempt > 0 || !disk_ || !writes_pending) {
      return out_of_budget("host tier budget host_budget_bytes ", options_.host_budget_bytes, " (", host_->num_slots(),
                           " slots) is full: needs ", n, " slots, ", host_->free_slots(), " free and ",
                           can - host_->free_slots(), " droppable",
                           disk_ ? " (durable on disk)" : "; without data_dir the host is the last tier");
    }
    // The host is full of blocks not yet on disk: wait for write-behind, then they may be dropped.
    const auto t0 = std::chrono::steady_clock::now();
    Status flushed = flush_locked(lock);
    m_.stall_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MNEMO_RETURN_IF_ERROR(flushed.with_context("host tier full, waiting for write-behind"));
  }
}

void TieredStore::make_host_room(int64_t n, bool skip_stamped) {
  if (host_->free_slots() >= n) return;
  auto skip = [&](int32_t s) { return skip_stamped && blocks_[host_->owner(s)].stamp == acquire_stamp_; };
  for (int32_t s : host_->choose_victims(n - host_->free_slots(), skip)) drop_host_copy(host_->owner(s));
}

void TieredStore::drop_host_copy(BlockId id) {
  host_->release(blocks_[id].host_slot);
  blocks_[id].host_slot = -1;
  ++m_.host_evictions;
}

Status TieredStore::reserve(SequenceId seq, int64_t new_len) {
  std::lock_guard<std::mutex> lock(mu_);
  Sequence* s = live(seq);
  if (!s) return not_found("reserve: no live sequence ", seq);
  if (new_len < s->length)
    return invalid_argument("reserve: new_len ", new_len, " < length ", s->length, " of seq ", seq);
  const KvLayout& l = options_.layout;
  const int64_t need_blocks = (new_len + l.block_tokens - 1) / l.block_tokens;
  const int64_t have = static_cast<int64_t>(s->tables[0].size());
  if (need_blocks <= have) {
    // Freed slots are reused only after the kernels already queued on cuda_stream (they may read them).
    MNEMO_RETURN_IF_ERROR(mover_->after_caller());
    trim_open_blocks(s, need_blocks);
    return Status::Ok();
  }
  if (need_blocks > int64_t{UINT32_MAX}) return invalid_argument("reserve: ", new_len, " tokens is too long");
  const int64_t add = (need_blocks - have) * l.num_layers;
  const int64_t can = gpu_->free_slots() + gpu_->evictable_slots();
  if (add > can) {
    return gpu_budget_error(detail::str_cat("reserve of seq ", seq, " to ", new_len, " tokens (", add, " open blocks)"),
                            add, can);
  }
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int64_t b = have; b < need_blocks; ++b) {
      const BlockKey key{seq, static_cast<uint32_t>(layer), static_cast<uint32_t>(b)};
      if (by_key_.count(key)) return internal_error("reserve: block ", to_string(key), " already exists");
    }
  }
  // The caller writes the new open blocks on cuda_stream: after every copy out of (or into) a slot
  // it may get, e.g. the seal copy of an evicted block.
  MNEMO_RETURN_IF_ERROR(mover_->before_caller());
  make_gpu_room(add);
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int64_t b = have; b < need_blocks; ++b) {
      const BlockId id = new_block({seq, static_cast<uint32_t>(layer), static_cast<uint32_t>(b)});
      blocks_[id].gpu_slot = gpu_->take_free(id, /*sealed=*/false);
      s->tables[layer].push_back(id);
    }
  }
  return Status::Ok();
}

void TieredStore::trim_open_blocks(Sequence* s, int64_t keep_blocks) {
  const int64_t written = (s->length + options_.layout.block_tokens - 1) / options_.layout.block_tokens;
  keep_blocks = std::max(keep_blocks, written);  // never a block holding committed tokens
  for (auto& table : s->tables) {
    while (static_cast<int64_t>(table.size()) > keep_blocks) {
      unref_block(table.back());
      table.pop_back();
    }
  }
}

// Unlocked on purpose: only the engine thread changes sequences and GPU slots (tiered_store.h).
float* TieredStore::row(SequenceId seq, int layer, int64_t t, int kv_head, bool v) {
  const KvLayout& l = options_.layout;
  Sequence* s = live(seq);
  if (!float_rows_ || !s || layer < 0 || layer >= l.num_layers || kv_head < 0 || kv_head >= l.num_kv_heads ||
      t < s->length) {
    return nullptr;
  }
  const auto& table = s->tables[layer];
  const int64_t b = t / l.block_tokens;
  if (b >= static_cast<int64_t>(table.size())) return nullptr;
  const Block& blk = blocks_[table[b]];
  if (blk.sealed || blk.gpu_slot < 0) return nullptr;
  const int64_t row = (int64_t{v ? l.num_kv_heads : 0} + kv_head) * l.block_tokens + t % l.block_tokens;
  return static_cast<float*>(gpu_->slot(blk.gpu_slot)) + row * l.head_dim;
}

float* TieredStore::k_row(SequenceId seq, int layer, int64_t t, int kv_head) {
  return row(seq, layer, t, kv_head, false);
}
float* TieredStore::v_row(SequenceId seq, int layer, int64_t t, int kv_head) {
  return row(seq, layer, t, kv_head, true);
}

Status TieredStore::commit(SequenceId seq, int64_t new_len) {
  std::unique_lock<std::mutex> lock(mu_);
  Sequence* s = live(seq);
  if (!s) return not_found("commit: no live sequence ", seq);
  const KvLayout& l = options_.layout;
  const int64_t capacity = static_cast<int64_t>(s->tables[0].size()) * l.block_tokens;
  if (new_len < s->length || new_len > capacity) {
    return invalid_argument("commit: new_len ", new_len, " of seq ", seq, " is outside [length ", s->length,
                            ", reserved ", capacity, "]");
  }
  const int64_t first = s->length / l.block_tokens, last = new_len / l.block_tokens;  // sealing [first, last)
  const int64_t n = (last - first) * l.num_layers;
  // The seal copies read what the caller's kernels wrote; slots trimmed or sealed below become
  // reusable only after those kernels.
  MNEMO_RETURN_IF_ERROR(mover_->after_caller());
  if (n > 0) {
    MNEMO_RETURN_IF_ERROR(ensure_host_room(lock, n, [] { return int64_t{0}; }));
    make_host_room(n, /*skip_stamped=*/false);
    std::vector<SlotCopy> copies;
    std::vector<BlockId> ids;
    for (int layer = 0; layer < l.num_layers; ++layer) {
      for (int64_t b = first; b < last; ++b) {
        const BlockId id = s->tables[layer][b];
        Block& blk = blocks_[id];
        blk.host_slot = host_->take_free(id);
        copies.push_back({blk.gpu_slot, blk.host_slot});
        ids.push_back(id);
      }
    }
    // Asynchronous on CUDA: later copies are stream-ordered after it, write-behind waits for it, and
    // host code waits for the mover before writing a host slot (acquire's disk reads).
    Status copied = mover_->copy(CopyKind::kGpuToHost, copies);
    if (!copied.ok()) {
      for (BlockId id : ids) {
        host_->release(blocks_[id].host_slot);
        blocks_[id].host_slot = -1;
      }
      return copied;
    }
    for (BlockId id : ids) {
      blocks_[id].sealed = true;
      gpu_->seal(blocks_[id].gpu_slot);
      if (disk_) enqueue_write(id);
    }
    m_.bytes_gpu_to_host += n * slot_bytes_;
    if (disk_) cv_.notify_all();
  }
  s->length = new_len;
  trim_open_blocks(s, 0);  // reserved blocks past new_len go back to the GPU tier
  return Status::Ok();
}

Status TieredStore::acquire(SequenceId seq, int layer, std::span<const int64_t> blocks, std::vector<int32_t>* slots) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!order_error_.ok()) return order_error_;
  Sequence* s = live(seq);
  if (!s) return not_found("acquire: no live sequence ", seq);
  if (layer < 0 || layer >= options_.layout.num_layers) {
    return invalid_argument("acquire: layer ", layer, " outside [0, ", options_.layout.num_layers, ")");
  }
  const auto& table = s->tables[layer];
  const size_t n = blocks.size();
  const uint64_t stamp = ++acquire_stamp_;
  std::vector<BlockId> ids(n);
  std::vector<size_t> misses, disk_misses;
  int64_t evictable_hits = 0;
  for (size_t i = 0; i < n; ++i) {
    if (blocks[i] < 0 || blocks[i] >= static_cast<int64_t>(table.size())) {
      return invalid_argument("acquire: block ", blocks[i], " of seq ", seq, " layer ", layer, " outside [0, ",
                              table.size(), ")");
    }
    ids[i] = table[blocks[i]];
    Block& blk = blocks_[ids[i]];
    if (blk.stamp == stamp) return invalid_argument("acquire: block ", blocks[i], " requested twice");
    blk.stamp = stamp;
    if (blk.gpu_slot >= 0) {
      evictable_hits += gpu_->evictable(blk.gpu_slot);
    } else {
      misses.push_back(i);
      if (blk.host_slot < 0) disk_misses.push_back(i);
    }
  }
  // Plan: every miss needs a free slot or a victim that is neither pinned nor requested.
  const int64_t num_misses = static_cast<int64_t>(misses.size());
  const int64_t can_free = gpu_->free_slots() + gpu_->evictable_slots() - evictable_hits;
  if (num_misses > can_free) {
    return gpu_budget_error(
        detail::str_cat("acquire of ", n, " blocks (seq ", seq, " layer ", layer, ", ", num_misses, " not resident)"),
        num_misses, can_free);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t num_disk = static_cast<int64_t>(disk_misses.size());
  if (num_disk > 0) {
    if (!disk_) return internal_error("acquire: block ", blocks[disk_misses[0]], " has no copy in any tier");
    // Requested blocks keep their host copies: they are about to be read.
    auto protected_droppable = [&] {
      int64_t k = 0;
      for (BlockId id : ids) k += blocks_[id].host_slot >= 0 && blocks_[id].durable;
      return k;
    };
    MNEMO_RETURN_IF_ERROR(ensure_host_room(lock, num_disk, protected_droppable));
    // The host slots about to be written may still be read (host → GPU) or written (seal) by
    // queued copies.
    MNEMO_RETURN_IF_ERROR(mover_->wait());
    std::vector<BlockKey> keys;
    for (size_t i : disk_misses) keys.push_back(blocks_[ids[i]].key);
    // Host slots are taken (and the disk → host copies made, by the read threads while this thread
    // holds the lock and waits) only after every value passed its checks.
    MNEMO_RETURN_IF_ERROR(disk_->read_blocks(keys, slot_bytes_, [&](std::span<void*> dst) {
      make_host_room(num_disk, /*skip_stamped=*/true);
      for (size_t j = 0; j < disk_misses.size(); ++j) {
        const BlockId id = ids[disk_misses[j]];
        blocks_[id].host_slot = host_->take_free(id);
        dst[j] = host_->slot(blocks_[id].host_slot);
      }
    }));
    for (size_t i : disk_misses) host_->set_droppable(blocks_[ids[i]].host_slot);
    m_.disk_reads += num_disk;
    m_.bytes_disk_to_host += num_disk * slot_bytes_;
  }

  // Pin the hits first so CLOCK cannot take them, then make room and gather the misses.
  std::vector<int32_t> newly_pinned;
  int64_t prefetch_hits = 0;
  for (BlockId id : ids) {
    const int32_t slot = blocks_[id].gpu_slot;
    if (slot < 0) continue;
    prefetch_hits += blocks_[id].prefetch_epoch != 0;
    if (!gpu_->pinned(slot)) newly_pinned.push_back(slot);
    gpu_->pin(slot);
    gpu_->touch(slot);
  }
  make_gpu_room(num_misses);
  std::vector<SlotCopy> copies;
  for (size_t i : misses) {
    Block& blk = blocks_[ids[i]];
    blk.gpu_slot = gpu_->take_free(ids[i], /*sealed=*/true);
    gpu_->pin(blk.gpu_slot);
    host_->touch(blk.host_slot);
    copies.push_back({blk.host_slot, blk.gpu_slot});
  }
  // The victims' last readers on cuda_stream were queued before the release_all() (or commit, trim,
  // drop) that made them evictable, which ordered the mover after them. Kernels queued on
  // cuda_stream after this call see the loads, and the prefetch copies of prefetched hits
  // (before_caller); the host does not wait.
  Status copied = mover_->copy(CopyKind::kHostToGpu, copies);
  if (copied.ok() && (!copies.empty() || prefetch_hits > 0)) copied = mover_->before_caller();
  if (!copied.ok()) {
    for (int32_t slot : newly_pinned) gpu_->unpin(slot);
    for (size_t i : misses) {
      gpu_->release(blocks_[ids[i]].gpu_slot);
      blocks_[ids[i]].gpu_slot = -1;
    }
    return copied;
  }
  if (prefetch_hits > 0) {
    for (BlockId id : ids) blocks_[id].prefetch_epoch = blocks_[id].prefetch_item = 0;  // used: ordinary from now on
  }
  m_.prefetch_hits += prefetch_hits;
  m_.gpu_hits += static_cast<int64_t>(n) - num_misses;
  m_.gpu_misses += num_misses;
  m_.host_hits += num_misses - num_disk;
  m_.bytes_host_to_gpu += num_misses * slot_bytes_;
  if (num_misses > 0) m_.stall_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  slots->resize(n);
  for (size_t i = 0; i < n; ++i) (*slots)[i] = blocks_[ids[i]].gpu_slot;
  return Status::Ok();
}

void TieredStore::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  // Unpinned slots may be overwritten by later loads: only after the kernels queued on cuda_stream
  // so far, which may still read them. A failure here is returned by every later acquire().
  Status ordered = mover_->after_caller();
  if (!ordered.ok() && order_error_.ok()) order_error_ = ordered.with_context("release_all");
  gpu_->unpin_all();
  ++step_epoch_;  // prefetches of the step before the one just ended become stale
  prune_prefetch_order();
}

Status TieredStore::prefetch(SequenceId seq, int layer, std::span<const int64_t> blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  Sequence* s = live(seq);
  if (!s) return invalid_argument("prefetch: no live sequence ", seq);
  if (layer < 0 || layer >= options_.layout.num_layers) {
    return invalid_argument("prefetch: layer ", layer, " outside [0, ", options_.layout.num_layers, ")");
  }
  const auto& table = s->tables[layer];
  for (int64_t b : blocks) {
    if (b < 0 || b >= static_cast<int64_t>(table.size())) {
      return invalid_argument("prefetch: block ", b, " of seq ", seq, " layer ", layer, " outside [0, ",
                              table.size(), ")");
    }
  }
  if (!order_error_.ok()) return order_error_;
  const uint64_t stamp = ++acquire_stamp_;
  std::vector<BlockId> loads;
  int64_t stamped_evictable = 0;  // resident blocks of this request CLOCK could take (not prefetched)
  for (int64_t b : blocks) {
    const BlockId id = table[b];
    Block& blk = blocks_[id];
    if (blk.stamp == stamp) continue;  // a duplicate
    blk.stamp = stamp;
    if (blk.gpu_slot >= 0) {  // resident, or loading (CUDA): predicted again, a prefetched one is fresh again
      if (blk.prefetch_epoch != 0 && blk.prefetch_epoch != step_epoch_) note_prefetch(id);
      if (blk.prefetch_epoch == 0) stamped_evictable += gpu_->evictable(blk.gpu_slot);
      continue;
    }
    if (blk.host_slot < 0) continue;  // only on disk: no read here (acquire() reads it)
    loads.push_back(id);
  }
  if (loads.empty()) return Status::Ok();
  // Room: free slots, then evictable ones that are neither fresh prefetched nor of this request
  // (stale prefetched included). Best effort: the first blocks of the request that fit.
  const int64_t room = gpu_->free_slots() + gpu_->evictable_slots() - fresh_evictable() - stamped_evictable;
  if (room < static_cast<int64_t>(loads.size())) loads.resize(static_cast<size_t>(std::max<int64_t>(room, 0)));
  if (loads.empty()) return Status::Ok();
  const int64_t n = static_cast<int64_t>(loads.size());
  make_gpu_room(n, stamped_evictable);
  std::vector<SlotCopy> copies;
  for (BlockId id : loads) {
    Block& blk = blocks_[id];
    blk.gpu_slot = gpu_->take_free(id, /*sealed=*/true, /*clock=*/0);
    host_->touch(blk.host_slot);
    copies.push_back({blk.host_slot, blk.gpu_slot});
  }
  // As acquire's loads (victims and freed slots are ordered after cuda_stream's readers), but no
  // before_caller(): the caller's stream waits for these copies only when acquire() uses them.
  Status copied = mover_->copy(CopyKind::kHostToGpu, copies);
  if (!copied.ok()) {
    for (BlockId id : loads) {
      gpu_->release(blocks_[id].gpu_slot);
      blocks_[id].gpu_slot = -1;
    }
    return copied;
  }
  for (BlockId id : loads) note_prefetch(id);
  m_.prefetched_blocks += n;
  m_.bytes_host_to_gpu += n * slot_bytes_;
  prune_prefetch_order();
  return Status::Ok();
}

}  // namespace mnemo
