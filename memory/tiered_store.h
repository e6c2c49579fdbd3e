// TieredStore: the implementation behind KvStore::open (store.h) — GPU slots, host slots, RocksDB.
//
// Blocks. Every block the store knows is a `Block` in one table, addressed by BlockId. A sequence's
// block table per layer is a list of BlockIds; a fork copies the list of sealed ids and bumps their
// refcounts, so shared blocks exist once in every tier. A block's disk key is its *origin*: the
// sequence that sealed it, its layer and index. A fork child keeps using its parent's keys for the
// shared prefix; which prefix comes from which origin is the child's list of *segments*, kept in
// `meta` so recovery, drops and forks of forks agree after a restart.
//
// Where copies live (the invariants every method keeps):
//   open block   : GPU only, never evictable, owned by one sequence.
//   sealed block : a host copy from the moment it is sealed, until it is durable on disk; after that
//                  any subset of {GPU, host, disk} with disk always in it. A GPU copy is evicted only
//                  unpinned; a host copy is dropped only when durable.
//   prefetched   : a sealed block loaded by prefetch() and not acquired since (Block::prefetch_epoch);
//                  unpinned, CLOCK counter 0, listed in prefetch_order_ (oldest first); never evicted
//                  by prefetch() while fresh, the first victim of any load once stale.
// Every mutating call first plans (counts slots, reads and verifies disk blocks) and fails before
// changing anything; the mutations that follow cannot fail (on the CPU mover).
//
// Threads: the engine thread calls the store; one writer thread writes sealed blocks behind (a queue
// of BlockIds). `mu_` guards all shared state; the writer reads a host slot unlocked, which is safe
// because a block's host slot is neither freed nor reused while its write is queued or in flight
// (host copies are dropped only once durable, and drops wait for the writer to go idle). With the
// CUDA mover the seal copy into the host slot is asynchronous: the writer calls mover_->wait()
// after taking a batch, and every block in it was queued after its copy.
//
// CUDA ordering (store.h, "CUDA stores"): the mover stream waits for cuda_stream (after_caller)
// wherever slots the model's kernels may read become reusable or open blocks are read; cuda_stream
// waits for the mover (before_caller) after loads and fork copies, and in reserve() before the model
// writes new open blocks. Host code touches slot bytes only after mover_->wait().
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "memory/disk_tier.h"
#include "memory/mover.h"
#include "memory/slot_tiers.h"
#include "memory/store.h"

namespace mnemo {

class TieredStore final : public KvStore {
 public:
  static Result<std::unique_ptr<KvStore>> open(const KvStoreOptions& options);
  ~TieredStore() override;

  const KvLayout& layout() const override { return options_.layout; }
  Status create_sequence(SequenceId seq) override;
  Status drop_sequence(SequenceId seq) override;
  Status fork_sequence(SequenceId parent, SequenceId child) override;
  Result<std::vector<SequenceId>> list_sequences() override;
  Result<int64_t> recover_sequence(SequenceId seq) override;
  Result<int64_t> length(SequenceId seq) const override;
  Status reserve(SequenceId seq, int64_t new_len) override;
  float* k_row(SequenceId seq, int layer, int64_t t, int kv_head) override;
  float* v_row(SequenceId seq, int layer, int64_t t, int kv_head) override;
  Status commit(SequenceId seq, int64_t new_len) override;
  Status acquire(SequenceId seq, int layer, std::span<const int64_t> blocks, std::vector<int32_t>* slots) override;
  void release_all() override;
  Status prefetch(SequenceId seq, int layer, std::span<const int64_t> blocks) override;
  const void* gpu_arena_data() const override { return gpu_->base(); }
  const float* gpu_arena() const override { return float_rows_ ? static_cast<const float*>(gpu_->base()) : nullptr; }
  Status flush() override;
  KvStoreMetrics metrics() const override;
  Status put_meta(const std::string& key, const std::string& value, bool sync) override;
  Result<std::string> get_meta(const std::string& key) const override;
  Status delete_meta(const std::string& key) override;
  Status scan_meta(const std::string& prefix,
                   const std::function<void(const std::string&, const std::string&)>& fn) const override;

 private:
  using BlockId = uint32_t;
  struct Block {
    BlockKey key;
    int32_t refs = 0;  // sequences whose tables hold it; 0 = free entry
    int32_t gpu_slot = -1;
    int32_t host_slot = -1;
    uint32_t gen = 0;    // bumped when the entry is freed: stale write-queue items are skipped
    uint64_t stamp = 0;  // == acquire_stamp_ while it is in the request being planned
    // Prefetched and not acquired since: the step_epoch_ of its (latest) prefetch and the serial of
    // its item in prefetch_order_; 0 otherwise.
    uint64_t prefetch_epoch = 0;
    uint64_t prefetch_item = 0;
    bool sealed = false;
    bool durable = false;        // on disk (index marker and value written)
    bool write_pending = false;  // queued, in flight, or failed (flush() retries)
  };
  // Blocks [previous end, end) of a sequence carry `origin`'s keys; later blocks carry its own.
  struct Segment {
    uint64_t origin = 0;
    uint32_t end = 0;
  };
  struct Sequence {
    std::vector<std::vector<BlockId>> tables;  // [layer][block]; blocks past length/block_tokens are open
    int64_t length = 0;
  };
  struct WriteItem {
    BlockId id;
    uint32_t gen;
  };
  // One prefetch of a block, in prefetch order (so in epoch order); valid while the block's
  // prefetch_item is this serial (not freed, evicted, acquired or prefetched again since), so a
  // block has at most one valid item.
  struct PrefetchItem {
    BlockId id;
    uint64_t serial;
    uint64_t epoch;
  };

  explicit TieredStore(const KvStoreOptions& options);
  Status init();

  // --- blocks and tiers (tiered_store_step.cpp) ---
  BlockId new_block(const BlockKey& key);
  void free_block(BlockId id);
  void unref_block(BlockId id);
  Sequence* live(SequenceId seq);
  const Sequence* live(SequenceId seq) const;
  // Releases open blocks past max(keep_blocks, the blocks holding committed tokens).
  void trim_open_blocks(Sequence* s, int64_t keep_blocks);
  float* row(SequenceId seq, int layer, int64_t t, int kv_head, bool v);
  Status gpu_budget_error(const std::string& what, int64_t need, int64_t can_free) const;
  // Frees GPU slots until `n` are free: stale prefetched blocks first (oldest first), then CLOCK
  // over the other evictable slots except fresh prefetched ones, then CLOCK over those. prefetch()
  // passes `stamped_evictable` >= 0: never a block of the request being planned (that many of them
  // are evictable and not fresh prefetched) and never a fresh prefetched block.
  // Precondition: enough victims exist under these rules.
  void make_gpu_room(int64_t n, int64_t stamped_evictable = -1);
  void evict_gpu_slot(int32_t s);
  bool prefetch_valid(const PrefetchItem& item) const { return blocks_[item.id].prefetch_item == item.serial; }
  // Marks `id` (resident) prefetched now and appends its item.
  void note_prefetch(BlockId id);
  // Evictable fresh prefetched blocks.
  int64_t fresh_evictable() const;
  // Prefetched, not acquired since, and not older than one release_all() (store.h, prefetch()).
  bool fresh_prefetch(BlockId id) const {
    const uint64_t e = blocks_[id].prefetch_epoch;
    return e != 0 && e + 1 >= step_epoch_;
  }
  bool stale_prefetch(BlockId id) const {
    const uint64_t e = blocks_[id].prefetch_epoch;
    return e != 0 && e + 1 < step_epoch_;
  }
  // Drops invalid items from the front of prefetch_order_ (and all of them when it grew large).
  void prune_prefetch_order();
  // Checks that `n` host slots can be had from free slots and droppable (durable) copies, less
  // `protected_droppable()` copies the caller keeps. With a disk tier and writes pending, waits for
  // write-behind once (the lock is released meanwhile) before giving up with kOutOfBudget.
  Status ensure_host_room(std::unique_lock<std::mutex>& lock, int64_t n,
                          const std::function<int64_t()>& protected_droppable);
  // Frees host slots until `n` are free (after ensure_host_room), dropping least recently used
  // durable copies; with `skip_stamped`, never one of the request being planned.
  void make_host_room(int64_t n, bool skip_stamped);
  void drop_host_copy(BlockId id);

  // --- disk (tiered_store_disk.cpp) ---
  static std::string seq_meta_key(SequenceId seq);
  static std::string encode_segments(const std::vector<Segment>& segments);
  static Result<std::vector<Segment>> decode_segments(SequenceId seq, const std::string& value);
  BlockKey origin_key(SequenceId seq, int layer, int64_t block) const;
  bool referenced_as_origin(SequenceId seq, SequenceId except) const;
  Status check_identity();
  Status load_registry();
  void build_drop_batch(SequenceId seq, DiskTier::Batch* batch) const;
  void enqueue_write(BlockId id);
  void writer_loop();
  // Waits until the write queue is empty and no write is in flight; returns the first write error
  // seen meanwhile. Retries blocks whose earlier writes failed.
  Status flush_locked(std::unique_lock<std::mutex>& lock);
  void wait_writer_idle(std::unique_lock<std::mutex>& lock);

  KvStoreOptions options_;
  int64_t slot_bytes_ = 0;
  bool float_rows_ = false;  // f32 layout in host memory: k_row/v_row and gpu_arena() work
  std::unique_ptr<SlotMemory> gpu_memory_, host_memory_;  // the arenas behind gpu_ and host_
  std::unique_ptr<GpuTier> gpu_;
  std::unique_ptr<HostTier> host_;
  std::unique_ptr<Mover> mover_;
  std::unique_ptr<DiskTier> disk_;  // null without data_dir

  mutable std::mutex mu_;
  std::condition_variable cv_;  // queue gained work, or the writer went idle
  std::vector<Block> blocks_;
  std::vector<BlockId> free_ids_;
  std::unordered_map<BlockKey, BlockId, BlockKeyHash> by_key_;
  std::unordered_map<SequenceId, Sequence> live_;
  // Every sequence the store knows, live or only on disk, with its fork segments.
  std::map<SequenceId, std::vector<Segment>> registered_;
  std::map<std::string, std::string> mem_meta_;  // meta records without data_dir
  uint64_t acquire_stamp_ = 0;
  uint64_t step_epoch_ = 1;  // release_all() calls + 1: the age of prefetches
  uint64_t prefetch_serial_ = 0;
  std::deque<PrefetchItem> prefetch_order_;
  Status order_error_;  // release_all() could not order the mover after cuda_stream (CUDA failure)

  std::deque<WriteItem> write_queue_;
  std::vector<WriteItem> write_failed_;
  Status write_error_;  // first failure since the last flush
  bool writer_busy_ = false;
  bool writer_stop_ = false;
  std::thread writer_;

  KvStoreMetrics m_;
};

}  // namespace mnemo
