// Helpers for the KV store tests: scratch directories, deterministic block contents, a shadow
// check of what acquire() returns, and a random workload's ops.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "memory/store.h"

namespace mnemo::memory_test {

// A fresh directory named after the running test, under a per-process root removed at exit.
inline std::string scratch_dir() {
  static const std::string root = [] {
    std::string dir = testing::TempDir();
    if (!dir.empty() && dir.back() == '/') dir.pop_back();
    return dir + "/mnemo_memory_test_" + std::to_string(getpid());
  }();
  struct Remove : testing::Environment {
    void TearDown() override { std::filesystem::remove_all(root); }
  };
  static const bool registered = [] {
    testing::AddGlobalTestEnvironment(new Remove);  // owned by gtest
    return true;
  }();
  (void)registered;
  static int counter = 0;
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = root + "/" + info->name() + "_" + std::to_string(++counter);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// 2 layers, 2 kv heads, 4 tokens per block, head_dim 8: 512-byte slots.
inline KvLayout tiny_layout() { return KvLayout{.num_layers = 2, .num_kv_heads = 2, .block_tokens = 4, .head_dim = 8}; }

// KvStoreOptions::disk_read_threads for the tests' stores: MNEMO_TEST_DISK_READ_THREADS when set
// (ctest runs memory_test again with 1), else the default (0).
inline int test_disk_read_threads() {
  const char* v = std::getenv("MNEMO_TEST_DISK_READ_THREADS");
  return v ? std::atoi(v) : 0;
}

inline KvStoreOptions tiny_options(int64_t gpu_slots, int64_t host_slots, std::string data_dir = "") {
  KvStoreOptions o;
  o.layout = tiny_layout();
  o.gpu_budget_bytes = gpu_slots * o.layout.slot_bytes();
  o.host_budget_bytes = host_slots * o.layout.slot_bytes();
  o.data_dir = std::move(data_dir);
  o.disk_read_threads = test_disk_read_threads();
  return o;
}

// The value written at (token tag, position t, layer, k/v, head, i): exact in f32, never NaN.
inline float kv_value(uint32_t tag, int64_t t, int layer, int kv, int head, int i) {
  uint64_t h = (uint64_t{tag} * 0x9E3779B97F4A7C15ull) ^ (uint64_t(t) << 20) ^ (uint64_t(layer) << 12) ^
               (uint64_t(kv) << 10) ^ (uint64_t(head) << 6) ^ uint64_t(i);
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 27;
  return static_cast<float>(static_cast<int32_t>(h % 2000001) - 1000000) / 1024.0f;
}

// Appends tokens with `tags` to every layer: reserve, write rows, commit (as one forward would).
inline Status append_once(KvStore& store, SequenceId seq, const std::vector<uint32_t>& tags) {
  MNEMO_ASSIGN_OR_RETURN(const int64_t len, store.length(seq));
  const int64_t new_len = len + static_cast<int64_t>(tags.size());
  MNEMO_RETURN_IF_ERROR(store.reserve(seq, new_len));
  const KvLayout& l = store.layout();
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int64_t t = len; t < new_len; ++t) {
      for (int h = 0; h < l.num_kv_heads; ++h) {
        float* k = store.k_row(seq, layer, t, h);
        float* v = store.v_row(seq, layer, t, h);
        if (!k || !v) return internal_error("k_row/v_row returned null for token ", t);
        for (int i = 0; i < l.head_dim; ++i) {
          k[i] = kv_value(tags[t - len], t, layer, 0, h, i);
          v[i] = kv_value(tags[t - len], t, layer, 1, h, i);
        }
      }
    }
  }
  return store.commit(seq, new_len);
}

// append_once in chunks of at most `chunk` tokens (tiny GPU budgets hold few open blocks).
inline Status append(KvStore& store, SequenceId seq, const std::vector<uint32_t>& tags, size_t chunk = 4) {
  for (size_t i = 0; i < tags.size(); i += chunk) {
    const size_t end = std::min(tags.size(), i + chunk);
    MNEMO_RETURN_IF_ERROR(append_once(store, seq, std::vector<uint32_t>(tags.begin() + i, tags.begin() + end)));
  }
  return Status::Ok();
}

inline std::vector<uint32_t> tags_from(uint32_t first, int64_t n) {
  std::vector<uint32_t> tags(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tags[i] = first + static_cast<uint32_t>(i);
  return tags;
}

// Checks that `slot` holds block `b` of `layer` for a sequence whose tokens have `tags` (rows past
// the end of the sequence are not checked). Returns a description of the first difference.
inline std::string check_block(const KvStore& store, int32_t slot, int layer, int64_t b,
                               const std::vector<uint32_t>& tags) {
  const KvLayout& l = store.layout();
  const float* base = store.gpu_arena() + slot * l.slot_floats();
  const int64_t end = std::min<int64_t>(static_cast<int64_t>(tags.size()), (b + 1) * l.block_tokens);
  for (int64_t t = b * l.block_tokens; t < end; ++t) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int h = 0; h < l.num_kv_heads; ++h) {
        const float* row =
            base + ((int64_t{kv} * l.num_kv_heads + h) * l.block_tokens + t % l.block_tokens) * l.head_dim;
        for (int i = 0; i < l.head_dim; ++i) {
          const float want = kv_value(tags[t], t, layer, kv, h, i);
          if (std::memcmp(&row[i], &want, sizeof(float)) != 0) {
            return "layer " + std::to_string(layer) + " block " + std::to_string(b) + " token " + std::to_string(t) +
                   (kv ? " V" : " K") + " head " + std::to_string(h) + " [" + std::to_string(i) + "]: got " +
                   std::to_string(row[i]) + ", want " + std::to_string(want);
          }
        }
      }
    }
  }
  return "";
}

// Acquires `blocks` of `layer` and checks each against `tags`; releases the pins afterwards.
inline void expect_blocks(KvStore& store, SequenceId seq, int layer, const std::vector<int64_t>& blocks,
                          const std::vector<uint32_t>& tags) {
  std::vector<int32_t> slots;
  Status s = store.acquire(seq, layer, blocks, &slots);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(slots.size(), blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(check_block(store, slots[i], layer, blocks[i], tags), "") << "seq " << seq;
  }
  store.release_all();
}

inline std::vector<int64_t> all_blocks(const KvStore& store, int64_t tokens) {
  std::vector<int64_t> b;
  for (int64_t i = 0; i * store.layout().block_tokens < tokens; ++i) b.push_back(i);
  return b;
}

// A random workload against a shadow copy of every live sequence's token tags (the random-workload
// tests of tiered_store and prefetch): each op is one store call plus the checks that hold for it;
// the caller picks the op mix and checks its own invariants after each op. Ops use gtest ASSERTs:
// call them through ASSERT_NO_FATAL_FAILURE.
class Workload {
 public:
  struct Pinned {
    SequenceId seq;
    int layer;
    int64_t block;
    int32_t slot;
  };
  Workload(KvStore* store, const KvStoreOptions& options, uint32_t seed)
      : store_(store), options_(options), rng_(seed), bt_(options.layout.block_tokens) {}

  int64_t pick(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(rng_); }
  std::mt19937& rng() { return rng_; }
  std::map<SequenceId, std::vector<uint32_t>>& shadow() { return shadow_; }
  std::vector<Pinned>& pinned() { return pinned_; }
  SequenceId random_seq() {
    auto it = shadow_.begin();
    std::advance(it, pick(static_cast<int64_t>(shadow_.size())));
    return it->first;
  }
  int64_t num_blocks(SequenceId seq) const {
    return (static_cast<int64_t>(shadow_.at(seq).size()) + bt_ - 1) / bt_;
  }
  int random_layer() { return static_cast<int>(pick(options_.layout.num_layers)); }
  // 1 to min(num_blocks, max_n) distinct blocks in random order.
  std::vector<int64_t> random_blocks(int64_t num_blocks, int64_t max_n) {
    std::vector<int64_t> blocks(static_cast<size_t>(num_blocks));
    for (int64_t b = 0; b < num_blocks; ++b) blocks[b] = b;
    std::shuffle(blocks.begin(), blocks.end(), rng_);
    blocks.resize(static_cast<size_t>(1 + pick(std::min(num_blocks, max_n))));
    return blocks;
  }

  void create() {
    ASSERT_TRUE(store_->create_sequence(next_id_).ok());
    shadow_[next_id_++] = {};
  }
  // Appends 1 to 2 blocks + 3 tokens of fresh tags; on kOutOfBudget hands the reservation back as the
  // engine does after a failed forward.
  void append() {
    const SequenceId seq = random_seq();
    std::vector<uint32_t> tags(static_cast<size_t>(1 + pick(2 * bt_ + 3)));
    for (auto& t : tags) t = next_tag_++;
    Status s = append_once(*store_, seq, tags);
    if (s.ok()) {
      shadow_[seq].insert(shadow_[seq].end(), tags.begin(), tags.end());
    } else {
      ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      ASSERT_TRUE(store_->reserve(seq, static_cast<int64_t>(shadow_[seq].size())).ok());
    }
    ASSERT_EQ(*store_->length(seq), static_cast<int64_t>(shadow_[seq].size()));
  }
  // Acquires `blocks` of (seq, layer): every slot holds its block, and stays pinned until release().
  void acquire(SequenceId seq, int layer, const std::vector<int64_t>& blocks) {
    std::vector<int32_t> slots;
    Status s = store_->acquire(seq, layer, blocks, &slots);
    if (!s.ok()) {
      ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      return;
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      ASSERT_EQ(check_block(*store_, slots[i], layer, blocks[i], shadow_[seq]), "");
      pinned_.push_back({seq, layer, blocks[i], slots[i]});
    }
  }
  void release() {
    store_->release_all();
    pinned_.clear();
  }
  void fork() {
    const SequenceId parent = random_seq();
    if (shadow_.size() >= 5) return;
    Status s = store_->fork_sequence(parent, next_id_);
    if (s.ok()) {
      shadow_[next_id_] = shadow_[parent];
    } else {
      ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
    }
    ++next_id_;
  }
  void drop() {
    const SequenceId seq = random_seq();
    ASSERT_TRUE(store_->drop_sequence(seq).ok());
    shadow_.erase(seq);
    std::erase_if(pinned_, [&](const Pinned& p) { return p.seq == seq; });
  }
  void flush() {
    Status s = store_->flush();
    ASSERT_TRUE(s.ok()) << s.to_string();
  }
  // After every op: occupancy within the budgets, and every pinned slot still holds its block.
  void check_invariants(int64_t gpu_slots) {
    const KvStoreMetrics m = store_->metrics();
    ASSERT_LE(m.gpu_slots_used, m.gpu_slots_total);
    ASSERT_LE(m.host_slots_used, m.host_slots_total);
    ASSERT_EQ(m.gpu_slots_total, gpu_slots);
    for (const Pinned& p : pinned_) {
      ASSERT_EQ(check_block(*store_, p.slot, p.layer, p.block, shadow_[p.seq]), "") << "pinned block moved";
    }
  }

 private:
  KvStore* store_;
  KvStoreOptions options_;
  std::mt19937 rng_;
  int bt_;
  std::map<SequenceId, std::vector<uint32_t>> shadow_;
  std::vector<Pinned> pinned_;
  SequenceId next_id_ = 1;
  uint32_t next_tag_ = 1;
};

}  // namespace mnemo::memory_test
