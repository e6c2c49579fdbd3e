// Tiered-store scenarios on raw slot bytes, for stores whose rows are not host floats: bf16 layouts
// and CUDA stores (k_row/v_row are null there; the model writes K/V into the slots acquire() returns
// for the open blocks). The same scenarios run on a bf16 host store in CI (memcpy) and on a CUDA
// store on a GPU machine (cudaMemcpy), against a host model of the expected bytes: every element is
// a hash of (token tag, position, layer, K/V, head, index), so any byte out of place is caught.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/memory/store_test_util.h"

namespace mnemo::memory_test {

// How a test reaches the bytes of the GPU arena (host memory or device memory).
struct SlotIo {
  std::function<void(void* arena_dst, const void* src, size_t bytes)> write;
  std::function<void(void* dst, const void* arena_src, size_t bytes)> read;
};

inline SlotIo host_io() {
  return {[](void* d, const void* s, size_t n) { std::memcpy(d, s, n); },
          [](void* d, const void* s, size_t n) { std::memcpy(d, s, n); }};
}

// 2 layers, 2 kv heads, 4 tokens per block, head_dim 8, bf16: 256-byte slots.
inline KvLayout bf16_layout() {
  KvLayout l = tiny_layout();
  l.dtype = DType::kBF16;
  return l;
}

inline KvStoreOptions byte_options(const KvLayout& layout, int64_t gpu_slots, int64_t host_slots,
                                   std::string data_dir = "") {
  KvStoreOptions o;
  o.layout = layout;
  o.gpu_budget_bytes = gpu_slots * layout.slot_bytes();
  o.host_budget_bytes = host_slots * layout.slot_bytes();
  o.data_dir = std::move(data_dir);
  if (const char* v = std::getenv("MNEMO_TEST_DISK_READ_THREADS")) o.disk_read_threads = std::atoi(v);
  return o;
}

// The bytes of one row ([head_dim] elements of the layout's dtype) of token `t` with `tag`.
inline std::vector<uint8_t> row_bytes(const KvLayout& l, uint32_t tag, int64_t t, int layer, int kv, int head) {
  const size_t es = dtype_size(l.dtype);
  std::vector<uint8_t> row(static_cast<size_t>(l.head_dim) * es);
  for (int i = 0; i < l.head_dim; ++i) {
    const float v = kv_value(tag, t, layer, kv, head, i);
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits ^= bits >> 13;  // the low half varies too, so bf16 slots see all 16 bits change
    std::memcpy(row.data() + i * es, &bits, es);
  }
  return row;
}

inline int64_t row_offset(const KvLayout& l, int64_t t, int kv, int head) {
  return ((int64_t{kv} * l.num_kv_heads + head) * l.block_tokens + t % l.block_tokens) * l.head_dim *
         static_cast<int64_t>(dtype_size(l.dtype));
}

inline char* slot_ptr(const KvStore& store, int32_t slot) {
  return static_cast<char*>(const_cast<void*>(store.gpu_arena_data())) + int64_t{slot} * store.layout().slot_bytes();
}

// One forward's worth of K/V for tokens with `tags`, as a model would write it: reserve, acquire the
// open blocks of each layer, write their rows into the slots, release, commit.
inline Status append_bytes(KvStore& store, const SlotIo& io, SequenceId seq, const std::vector<uint32_t>& tags) {
  MNEMO_ASSIGN_OR_RETURN(const int64_t len, store.length(seq));
  const int64_t new_len = len + static_cast<int64_t>(tags.size());
  MNEMO_RETURN_IF_ERROR(store.reserve(seq, new_len));
  const KvLayout& l = store.layout();
  std::vector<int64_t> open;
  for (int64_t b = len / l.block_tokens; b * l.block_tokens < new_len; ++b) open.push_back(b);
  for (int layer = 0; layer < l.num_layers; ++layer) {
    if (store.k_row(seq, layer, len, 0) != nullptr && !store.gpu_arena()) {
      return internal_error("k_row must be null for a store without float rows");
    }
    std::vector<int32_t> slots;
    MNEMO_RETURN_IF_ERROR(store.acquire(seq, layer, open, &slots));
    for (int64_t t = len; t < new_len; ++t) {
      const int32_t slot = slots[t / l.block_tokens - open[0]];
      for (int kv = 0; kv < 2; ++kv) {
        for (int h = 0; h < l.num_kv_heads; ++h) {
          const std::vector<uint8_t> row = row_bytes(l, tags[t - len], t, layer, kv, h);
          io.write(slot_ptr(store, slot) + row_offset(l, t, kv, h), row.data(), row.size());
        }
      }
    }
  }
  store.release_all();
  return store.commit(seq, new_len);
}

inline Status append_bytes_chunked(KvStore& store, const SlotIo& io, SequenceId seq, const std::vector<uint32_t>& tags,
                                   size_t chunk) {
  for (size_t i = 0; i < tags.size(); i += chunk) {
    const size_t end = std::min(tags.size(), i + chunk);
    MNEMO_RETURN_IF_ERROR(
        append_bytes(store, io, seq, std::vector<uint32_t>(tags.begin() + i, tags.begin() + end)));
  }
  return Status::Ok();
}

// "" when `slot` holds block `b` of `layer` of a sequence with `tags` (rows past its end unchecked).
inline std::string check_block_bytes(const KvStore& store, const SlotIo& io, int32_t slot, int layer, int64_t b,
                                     const std::vector<uint32_t>& tags) {
  const KvLayout& l = store.layout();
  std::vector<uint8_t> got(static_cast<size_t>(l.slot_bytes()));
  io.read(got.data(), slot_ptr(store, slot), got.size());
  const int64_t end = std::min<int64_t>(static_cast<int64_t>(tags.size()), (b + 1) * l.block_tokens);
  for (int64_t t = b * l.block_tokens; t < end; ++t) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int h = 0; h < l.num_kv_heads; ++h) {
        const std::vector<uint8_t> want = row_bytes(l, tags[t], t, layer, kv, h);
        const uint8_t* row = got.data() + row_offset(l, t, kv, h);
        for (size_t i = 0; i < want.size(); ++i) {
          if (row[i] != want[i]) {
            return "layer " + std::to_string(layer) + " block " + std::to_string(b) + " (slot " +
                   std::to_string(slot) + ") token " + std::to_string(t) + (kv ? " V" : " K") + " head " +
                   std::to_string(h) + " byte " + std::to_string(i) + ": got " + std::to_string(row[i]) +
                   ", want " + std::to_string(want[i]);
          }
        }
      }
    }
  }
  return "";
}

inline void expect_blocks_bytes(KvStore& store, const SlotIo& io, SequenceId seq, int layer,
                                const std::vector<int64_t>& blocks, const std::vector<uint32_t>& tags) {
  std::vector<int32_t> slots;
  Status s = store.acquire(seq, layer, blocks, &slots);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(slots.size(), blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(check_block_bytes(store, io, slots[i], layer, blocks[i], tags), "") << "seq " << seq;
  }
  store.release_all();
}

inline void expect_sequence_bytes(KvStore& store, const SlotIo& io, SequenceId seq, const std::vector<uint32_t>& tags) {
  for (int layer = 0; layer < store.layout().num_layers; ++layer) {
    for (int64_t b : all_blocks(store, static_cast<int64_t>(tags.size()))) {
      expect_blocks_bytes(store, io, seq, layer, {b}, tags);
    }
  }
}

inline std::unique_ptr<KvStore> open_or_fail(const KvStoreOptions& o) {
  auto opened = KvStore::open(o);
  EXPECT_TRUE(opened.ok()) << opened.status().to_string();
  return opened.ok() ? std::move(opened).value() : nullptr;
}

// Host tier only (no disk): 6 GPU slots for 2 layers, so every block is evicted and read back.
inline void run_host_round_trip(const KvStoreOptions& base, const SlotIo& io) {
  KvStoreOptions o = base;
  o.gpu_budget_bytes = 6 * o.layout.slot_bytes();
  o.host_budget_bytes = 40 * o.layout.slot_bytes();
  auto store = open_or_fail(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->create_sequence(1).ok());
  const std::vector<uint32_t> tags = tags_from(100, 43);  // 10 sealed blocks and an open one
  Status s = append_bytes_chunked(*store, io, 1, tags, 4);
  ASSERT_TRUE(s.ok()) << s.to_string();
  expect_sequence_bytes(*store, io, 1, tags);
  // Several blocks at once, in an order that is not the block order.
  expect_blocks_bytes(*store, io, 1, 1, {9, 0, 4, 10}, tags);
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.gpu_evictions, 0);
  EXPECT_GT(m.host_hits, 0);
  EXPECT_EQ(m.bytes_host_to_gpu, m.gpu_misses * o.layout.slot_bytes());
  EXPECT_EQ(m.bytes_gpu_to_host, 20 * o.layout.slot_bytes());  // every sealed block, once
  EXPECT_LE(m.gpu_slots_used, 6);
  EXPECT_EQ(m.gpu_slots_total, 6);
}

// GPU, host and disk all tiny: blocks come back from RocksDB; then again after reopening.
inline void run_disk_round_trip(const KvStoreOptions& base, const SlotIo& io, const std::string& dir) {
  KvStoreOptions o = base;
  o.gpu_budget_bytes = 6 * o.layout.slot_bytes();
  o.host_budget_bytes = 8 * o.layout.slot_bytes();
  o.data_dir = dir;
  auto store = open_or_fail(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->create_sequence(7).ok());
  const std::vector<uint32_t> tags = tags_from(5000, 77);  // 19 sealed blocks and an open one
  Status s = append_bytes_chunked(*store, io, 7, tags, 5);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_TRUE(store->flush().ok());
  expect_sequence_bytes(*store, io, 7, tags);
  KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.disk_reads, 0);
  EXPECT_GT(m.host_evictions, 0);
  EXPECT_EQ(m.bytes_disk_to_host, m.disk_reads * o.layout.slot_bytes());
  EXPECT_LE(m.host_slots_used, 8);
  EXPECT_LE(m.gpu_slots_used, 6);

  store.reset();
  store = open_or_fail(o);
  ASSERT_TRUE(store);
  auto recovered = store->recover_sequence(7);
  ASSERT_TRUE(recovered.ok()) << recovered.status().to_string();
  ASSERT_EQ(*recovered, 76);
  std::vector<uint32_t> durable(tags.begin(), tags.begin() + 76);
  expect_sequence_bytes(*store, io, 7, durable);
  // The sequence continues after recovery.
  std::vector<uint32_t> more = tags_from(9000, 9);
  s = append_bytes(*store, io, 7, more);
  ASSERT_TRUE(s.ok()) << s.to_string();
  durable.insert(durable.end(), more.begin(), more.end());
  expect_sequence_bytes(*store, io, 7, durable);
}

// A fork shares the sealed blocks (no copies) and copies the open one; both branches then diverge.
inline void run_fork(const KvStoreOptions& base, const SlotIo& io) {
  KvStoreOptions o = base;
  o.gpu_budget_bytes = 12 * o.layout.slot_bytes();
  o.host_budget_bytes = 64 * o.layout.slot_bytes();
  auto store = open_or_fail(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->create_sequence(1).ok());
  std::vector<uint32_t> parent = tags_from(1, 10);  // 2 sealed blocks, 2 tokens in the open one
  ASSERT_TRUE(append_bytes(*store, io, 1, parent).ok());
  const KvStoreMetrics before = store->metrics();
  Status s = store->fork_sequence(1, 2);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const KvStoreMetrics after = store->metrics();
  EXPECT_EQ(after.shared_blocks, 2 * o.layout.num_layers);
  EXPECT_EQ(after.blocks, before.blocks + o.layout.num_layers);        // one open block per layer copied
  EXPECT_EQ(after.bytes_gpu_to_host, before.bytes_gpu_to_host);          // nothing sealed by the fork
  std::vector<uint32_t> child = parent;
  expect_sequence_bytes(*store, io, 2, child);
  const std::vector<uint32_t> a = tags_from(700, 9), b = tags_from(800, 13);
  ASSERT_TRUE(append_bytes(*store, io, 1, a).ok());
  ASSERT_TRUE(append_bytes(*store, io, 2, b).ok());
  parent.insert(parent.end(), a.begin(), a.end());
  child.insert(child.end(), b.begin(), b.end());
  expect_sequence_bytes(*store, io, 1, parent);
  expect_sequence_bytes(*store, io, 2, child);
  ASSERT_TRUE(store->drop_sequence(1).ok());
  expect_sequence_bytes(*store, io, 2, child);
}

// Random appends, acquires (some pins kept across operations), forks, drops and flushes with tiny
// budgets, checked against the host model after every operation: budgets hold, pinned slots keep
// their bytes, and at the end every block of every sequence reads back exactly.
inline void run_random_workload(const KvStoreOptions& base, const SlotIo& io, uint32_t seed, const std::string& dir) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (dir.empty() ? " without disk" : " with disk"));
  std::mt19937 rng(seed);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(std::uniform_int_distribution<int64_t>(0, n - 1)(rng)); };
  KvStoreOptions o = base;
  const int64_t gpu_slots = 12, host_slots = dir.empty() ? 40 : 8;
  o.gpu_budget_bytes = gpu_slots * o.layout.slot_bytes();
  o.host_budget_bytes = host_slots * o.layout.slot_bytes();
  o.data_dir = dir;
  auto store = open_or_fail(o);
  ASSERT_TRUE(store);
  const int bt = o.layout.block_tokens;
  struct Pinned {
    SequenceId seq;
    int layer;
    int64_t block;
    int32_t slot;
  };
  std::map<SequenceId, std::vector<uint32_t>> shadow;
  std::vector<Pinned> pinned;
  SequenceId next_id = 1;
  uint32_t next_tag = 1;
  auto random_seq = [&] {
    auto it = shadow.begin();
    std::advance(it, pick(static_cast<int64_t>(shadow.size())));
    return it->first;
  };
  for (int op = 0; op < 300; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    const int64_t kind = pick(100);
    if (shadow.size() < 2 || (kind < 8 && shadow.size() < 4)) {
      ASSERT_TRUE(store->create_sequence(next_id).ok());
      shadow[next_id++] = {};
    } else if (kind < 45) {  // append (a forward releases the step's pins)
      const SequenceId seq = random_seq();
      std::vector<uint32_t> tags(static_cast<size_t>(1 + pick(2 * bt + 3)));
      for (auto& t : tags) t = next_tag++;
      Status s = append_bytes(*store, io, seq, tags);
      pinned.clear();
      if (s.ok()) {
        shadow[seq].insert(shadow[seq].end(), tags.begin(), tags.end());
      } else {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
        store->release_all();
        ASSERT_TRUE(store->reserve(seq, static_cast<int64_t>(shadow[seq].size())).ok());
      }
      ASSERT_EQ(*store->length(seq), static_cast<int64_t>(shadow[seq].size()));
    } else if (kind < 78) {  // acquire a random set, in random order
      const SequenceId seq = random_seq();
      const auto& tags = shadow[seq];
      const int64_t num_blocks = (static_cast<int64_t>(tags.size()) + bt - 1) / bt;
      if (num_blocks == 0) continue;
      std::vector<int64_t> blocks(static_cast<size_t>(num_blocks));
      for (int64_t b = 0; b < num_blocks; ++b) blocks[b] = b;
      std::shuffle(blocks.begin(), blocks.end(), rng);
      blocks.resize(static_cast<size_t>(1 + pick(std::min<int64_t>(num_blocks, 6))));
      const int layer = static_cast<int>(pick(o.layout.num_layers));
      std::vector<int32_t> slots;
      Status s = store->acquire(seq, layer, blocks, &slots);
      if (!s.ok()) {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      } else {
        for (size_t i = 0; i < blocks.size(); ++i) {
          ASSERT_EQ(check_block_bytes(*store, io, slots[i], layer, blocks[i], tags), "");
          pinned.push_back({seq, layer, blocks[i], slots[i]});
        }
        if (pick(2) == 0) {
          store->release_all();
          pinned.clear();
        }
      }
    } else if (kind < 86) {
      store->release_all();
      pinned.clear();
    } else if (kind < 92) {  // fork
      const SequenceId parent = random_seq();
      if (shadow.size() >= 5) continue;
      Status s = store->fork_sequence(parent, next_id);
      if (s.ok()) {
        shadow[next_id] = shadow[parent];
      } else {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      }
      ++next_id;
    } else if (kind < 97) {  // drop
      const SequenceId seq = random_seq();
      ASSERT_TRUE(store->drop_sequence(seq).ok());
      shadow.erase(seq);
      std::erase_if(pinned, [&](const Pinned& p) { return p.seq == seq; });
    } else {
      Status s = store->flush();
      ASSERT_TRUE(s.ok()) << s.to_string();
    }
    const KvStoreMetrics m = store->metrics();
    ASSERT_LE(m.gpu_slots_used, m.gpu_slots_total);
    ASSERT_LE(m.host_slots_used, m.host_slots_total);
    ASSERT_EQ(m.gpu_slots_total, gpu_slots);
    ASSERT_EQ(m.host_slots_total, host_slots);
    for (const Pinned& p : pinned) {
      ASSERT_EQ(check_block_bytes(*store, io, p.slot, p.layer, p.block, shadow[p.seq]), "") << "pinned block moved";
    }
  }
  store->release_all();
  for (const auto& [seq, tags] : shadow) expect_sequence_bytes(*store, io, seq, tags);
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.gpu_evictions, 0);
  if (!dir.empty()) {
    EXPECT_GT(m.disk_reads, 0);
  }
}

}  // namespace mnemo::memory_test
