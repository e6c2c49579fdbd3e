// KvStore: where the KV blocks of every sequence live — GPU tier, host tier, disk tier (RocksDB) —
// and how a step gets the blocks it needs into GPU slots.
//
// Vocabulary (DESIGN.md): a *block* is block_tokens tokens of one layer of one sequence (K and V of
// all kv heads, the slot layout of kv_cache.h). The *open block* is the last, partially written block
// of a layer; once full it is *sealed* and immutable forever, so any tier may hold a copy and a copy
// is never written back. A *slot* is a place for one block in a tier's arena.
//
// Tiers and budgets (slot_bytes = layout.slot_bytes(), in the layout's dtype):
//   GPU  : an arena of `gpu_budget_bytes / slot_bytes` slots: one cudaMalloc with `cuda`, else a
//          separate host arena (so tiering runs and is tested everywhere). Holds open blocks, pinned
//          blocks of the step in flight, and a cache of sealed blocks (CLOCK with a
//          selection-frequency hint).
//   host : an arena of `host_budget_bytes / slot_bytes` slots (mapped pinned memory with `cuda`).
//          Every sealed block gets a host copy when sealed.
//   disk : RocksDB at `data_dir` (optional). Column families kv, repr, meta; keys big-endian
//          sequence | layer | block so a sequence is one key range. Sealed blocks are written behind
//          from host; a host copy may be dropped once its disk copy is durable.
// A budget is never exceeded: when a request cannot be met (everything pinned, host full with no disk)
// the call fails with kOutOfBudget and leaves the store as it was.
//
// Two-phase step access (STYLE.md §4): acquire() plans and performs the loads for a set of blocks
// and pins them; the caller reads the returned slots; release() unpins. Hits stay in place; only
// misses are loaded, in one batch per tier. prefetch() starts loading blocks the caller will likely
// acquire next (best effort, unpinned), so that acquire() finds them resident.
//
// Thread-safety: one thread (the engine's step loop) calls the store; the background writer is
// internal. metrics() may be called from any thread.
//
// CUDA stores (`cuda`): blocks move with one gather kernel per batch (memory/gather.h) on the store's
// own stream, never one memcpy per block, and the store orders that stream with `cuda_stream` (the
// stream the model's kernels run on) by events, without blocking the host:
//   - acquire(): kernels queued on cuda_stream after it returns see the loaded blocks;
//   - commit() / fork_sequence(): the copies of open blocks (GPU → host when sealing, GPU → GPU for
//     the child) read what kernels queued on cuda_stream before the call wrote;
//   - reserve(): kernels queued on cuda_stream after it returns may write the open blocks' slots
//     (every earlier copy out of a reused slot is done first);
//   - release_all(), commit(), drop_sequence(), reserve(): slots they make reusable are overwritten
//     only after the kernels queued on cuda_stream before the call (which may still read them).
// So the caller queues its kernels on cuda_stream in program order and never synchronises for the
// store. The host waits only where it must touch bytes itself: a disk read into a host slot waits
// for the store's earlier copies, and write-behind reads a host slot after its seal copy is done.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "memory/kv_cache.h"

namespace mnemo {

using SequenceId = uint64_t;

struct KvStoreOptions {
  KvLayout layout;                 // shape of one block (layers, kv heads, block_tokens, head_dim)
  int64_t gpu_budget_bytes = 0;    // GPU tier bytes. Default: 0 = derive from gpu_budget_tokens
  int64_t gpu_budget_tokens = 65536;  // used when gpu_budget_bytes is 0: this many tokens of every layer
  int64_t host_budget_bytes = int64_t{8} << 30;  // host tier bytes. Default: 8 GiB
  std::string data_dir;            // RocksDB directory; empty = no disk tier. Default: empty
  bool sync_writes = false;        // fsync every disk write (WAL sync). Default: false (WAL on, no fsync)
  // Threads that read one acquire's disk misses: the batch is split into contiguous shares, each read
  // with one MultiGet, checked (crc32c) and copied into its host slots by one thread; the caller runs
  // one share and waits for the rest (errors as with one thread: the first failing block in request
  // order, nothing loaded). 1 = the caller alone. Negative: kInvalidArgument at open.
  // Default: 0 = min(8, hardware threads).
  int disk_read_threads = 0;
  // The model's identity (architecture, shapes, dtype, rope settings, weights hash). A data_dir
  // written under another fingerprint is refused with an error naming both. Default: empty = unchecked.
  std::string fingerprint;
  // Test only: called before every RocksDB write (blocks, sequences, meta); a non-OK Status fails the
  // write as a RocksDB error would (kIoError with its message). Default: none.
  std::function<Status()> inject_disk_write_error;
  // GPU tier in device memory (current device at open), host tier in mapped pinned memory, the
  // gather kernel as mover. kInvalidArgument naming the reason on a CPU build or without a usable
  // device. Default: false (both tiers in host memory, memcpy mover).
  bool cuda = false;
  // With `cuda`: the cudaStream_t the model's kernels run on (see "CUDA stores" above); not owned,
  // must outlive the store. Default: nullptr = the legacy default stream.
  void* cuda_stream = nullptr;
};

struct KvStoreMetrics {
  int64_t gpu_hits = 0, gpu_misses = 0;   // blocks requested by acquire(): resident vs loaded
  int64_t host_hits = 0, disk_reads = 0;  // where the misses came from
  int64_t bytes_host_to_gpu = 0, bytes_disk_to_host = 0, bytes_gpu_to_host = 0, bytes_host_to_disk = 0;
  int64_t gpu_evictions = 0, host_evictions = 0;
  double stall_seconds = 0;               // time acquire() spent waiting for loads
  int64_t gpu_slots_used = 0, gpu_slots_total = 0;
  int64_t host_slots_used = 0, host_slots_total = 0;
  int64_t disk_blocks = 0;                // durable blocks of the sequences this process knows
  int64_t blocks = 0;                     // distinct blocks of known sequences (shared ones once)
  int64_t shared_blocks = 0;              // blocks held by more than one sequence (forks)
  int64_t pending_writes = 0;             // sealed blocks not yet durable (write-behind queue + failed)
  int64_t disk_write_errors = 0;          // failed write-behind batches (flush() reports and retries)
  // prefetch(): blocks it loaded host → GPU (their bytes are in bytes_host_to_gpu, at prefetch time);
  // acquire() hits on a block prefetched and not used since (also counted in gpu_hits); prefetched
  // blocks evicted before any acquire() used them (mispredictions, also in gpu_evictions).
  int64_t prefetched_blocks = 0, prefetch_hits = 0, prefetch_unused_evictions = 0;
};

class KvStore {
 public:
  static Result<std::unique_ptr<KvStore>> open(const KvStoreOptions& options);
  virtual ~KvStore() = default;

  virtual const KvLayout& layout() const = 0;

  // Sequences. Ids are chosen by the caller (the runtime's session ids) and must be unique. With a
  // data_dir the sequence is recorded in `meta` at once (so list_sequences() sees it after a restart).
  // kInvalidArgument for an id in use, also for the id of a dropped sequence whose blocks a fork
  // still shares (its disk keys carry that id).
  virtual Status create_sequence(SequenceId seq) = 0;
  // Drops every block of the sequence from every tier (range deletes on disk) — live or only on disk
  // after a reopen. Blocks a fork shares stay for the fork. On error (kIoError) nothing changed.
  virtual Status drop_sequence(SequenceId seq) = 0;
  // Copy-on-write fork: `child` shares every sealed block of `parent` (refcounted, no block copies);
  // the partial open block is copied (one GPU slot per layer). Both continue independently.
  // All-or-nothing (kOutOfBudget when the GPU cannot hold the copies).
  virtual Status fork_sequence(SequenceId parent, SequenceId child) = 0;
  // Every sequence the store knows, live or not, in id order; after reopening a data_dir, the ones
  // recorded there (with or without durable blocks).
  virtual Result<std::vector<SequenceId>> list_sequences() = 0;
  // After reopening a data_dir: registers `seq` with its durable sealed blocks (disk tier only) and
  // returns the tokens they cover (a whole number of blocks, the longest prefix durable in every
  // layer). The caller recomputes the rest from its token log. Forks recover in any order and share
  // their common blocks again.
  virtual Result<int64_t> recover_sequence(SequenceId seq) = 0;
  // Tokens written so far (all layers agree after each forward). kNotFound unless live.
  virtual Result<int64_t> length(SequenceId seq) const = 0;

  // Makes the open blocks (GPU tier, never evicted) cover exactly tokens [length, new_len) in every
  // layer: adds blocks (evicting unpinned sealed ones) or releases reserved blocks past new_len that
  // hold no committed token. All-or-nothing: kOutOfBudget leaves the sequence as it was.
  // After a failed forward, reserve(seq, length) hands the reservation back.
  virtual Status reserve(SequenceId seq, int64_t new_len) = 0;
  // Rows of token t (in [length, new_len) after reserve) for writing: [head_dim] floats in the GPU
  // arena, valid until commit(). nullptr for anything else (unknown sequence, committed or
  // unreserved token), and always for CUDA stores and non-f32 layouts: there the model writes K/V
  // with a kernel into the slots acquire() returns for the open blocks. Cheap and lock-free: call it
  // from the engine thread only.
  virtual float* k_row(SequenceId seq, int layer, int64_t t, int kv_head) = 0;
  virtual float* v_row(SequenceId seq, int layer, int64_t t, int kv_head) = 0;
  // Marks tokens up to new_len (≤ what reserve covered) as written; seals every block that is now
  // full (copy to host, write-behind to disk) and releases reserved blocks past new_len.
  // All-or-nothing: the host must take a copy of every sealed block. With a data_dir, a host full of
  // blocks not yet durable waits for write-behind (counted as stall), and a failing disk is returned
  // as its kIoError; without one, a full host is kOutOfBudget. On error length is unchanged and the
  // written rows stay in the open blocks (commit again, or reserve(seq, length) to give them back).
  virtual Status commit(SequenceId seq, int64_t new_len) = 0;

  // Pins `blocks` (logical block indices of `layer` in [0, reserved blocks), any order, no
  // duplicates; open blocks included) in GPU slots, loading misses from host or disk: all disk misses
  // in one MultiGet, then one batched host → GPU copy. `slots` receives one slot per requested block,
  // in request order: slot s is at gpu_arena_data() + s * slot_bytes (bytes), so `slots` is a block
  // table for attention (PagedKv). Slots stay valid and unchanged until release_all(); pins
  // accumulate over calls, so the pinned blocks of a step (plus all open blocks) must fit the GPU
  // tier.
  // On error nothing this call pinned stays pinned and no resident block was dropped:
  // kOutOfBudget (pinned + open + requested exceed the GPU slots; the message names the budget),
  // kCorruption (a disk block failed its checksum; named, never served), kIoError.
  virtual Status acquire(SequenceId seq, int layer, std::span<const int64_t> blocks,
                         std::vector<int32_t>* slots) = 0;
  // Unpins every block pinned by acquire() since the last release (one step's worth).
  virtual void release_all() = 0;

  // Hint: the caller expects to acquire `blocks` of (seq, layer) soon (e.g. the previous step's
  // selection of the next layer). Starts loading, host → GPU in one batch, those that are neither
  // resident nor already loading and have a host copy, in request order, as far as there is room,
  // and returns at once (CPU: the copies are done on return, prefetch is an early load; CUDA: they are
  // queued on the store's stream and the host does not wait). Best effort: running out of room
  // prefetches fewer blocks (possibly none), never fails. Blocks only on disk are skipped (no disk read
  // here: a later acquire() reads them as always); open and resident blocks are skipped; duplicates
  // are ignored.
  //   - Room: free GPU slots, then *stale* prefetched blocks (below), then CLOCK over the other
  //     evictable blocks. Never a pinned block, an open block, a block of this request, or a *fresh*
  //     prefetched block; so pinned + open + prefetched never exceed the GPU budget.
  //   - Nothing is pinned: release_all() does not concern prefetched blocks, and reserve(), acquire()
  //     and fork_sequence() may evict them (stale ones first, fresh ones last, after CLOCK found no
  //     other victim).
  //   - Aging: a prefetched block enters the GPU tier with CLOCK counter 0 (evictable at once) and is
  //     *fresh* until the second release_all() after its prefetch (so prefetching one layer ahead —
  //     before or after the current layer's release_all() — keeps it for that layer's acquire()); then
  //     it is *stale* and the first victim of any later load (oldest prefetch first). Prefetching a
  //     resident prefetched block again makes it fresh again.
  //   - acquire() of a prefetched block is a GPU hit (gpu_hits, prefetch_hits; no bytes moved then)
  //     that pins it and bumps its counter like any hit; with CUDA the caller's stream then waits for
  //     the store's stream (the prefetch copy), as for a load.
  //   - Forks: a shared block is one block; prefetching it through either sequence serves both.
  //   - drop_sequence() (or an eviction) while a prefetch copy is queued (CUDA): the slot is reused
  //     only by later copies on the store's stream (ordered after it) or for open blocks handed out
  //     by reserve(), which orders cuda_stream after the store's stream first; a freed host source
  //     slot is rewritten only by copies on that stream or by disk reads, which wait for it.
  // Errors: kInvalidArgument for an unknown (not live) sequence, a layer or a block out of range
  // (nothing is loaded then); otherwise only a device failure of the CUDA mover, as acquire().
  virtual Status prefetch(SequenceId seq, int layer, std::span<const int64_t> blocks) = 0;

  // The GPU arena: [num_slots, 2, num_kv_heads, block_tokens, head_dim] of layout.dtype. A device
  // pointer for CUDA stores, a host pointer otherwise. Allocated once at open; the pointer never
  // changes for the life of the store.
  virtual const void* gpu_arena_data() const = 0;
  // The same arena as floats, for f32 host stores (the CPU model); nullptr for CUDA stores and
  // non-f32 layouts.
  virtual const float* gpu_arena() const = 0;

  // Blocks until write-behind has made every sealed block durable on disk (no-op without data_dir).
  // Retries blocks whose earlier writes failed; returns the first write error of this attempt
  // (kIoError with RocksDB's message), the blocks then stay on host, not durable. Destroying the
  // store flushes too (errors dropped: unwritten blocks are recomputed from the token log).
  virtual Status flush() = 0;

  virtual KvStoreMetrics metrics() const = 0;

  // Small metadata records in the `meta` column family (session state, token logs), durable once
  // the call returns when `sync` (WAL fsync). Without data_dir they live in memory. Keys starting
  // with '\0' are the store's own (kInvalidArgument).
  virtual Status put_meta(const std::string& key, const std::string& value, bool sync) = 0;
  virtual Result<std::string> get_meta(const std::string& key) const = 0;  // kNotFound when absent
  virtual Status delete_meta(const std::string& key) = 0;
  // Visits every record whose key starts with `prefix`, in key order.
  virtual Status scan_meta(const std::string& prefix,
                           const std::function<void(const std::string& key, const std::string& value)>& fn) const = 0;
};

}  // namespace mnemo
