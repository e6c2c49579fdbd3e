// A random workload against a shadow copy: appends, acquires of random block sets (some kept pinned
// across operations), releases, forks, drops and flushes, with tiny budgets so every tier overflows.
// After every operation: occupancy within budget, and every pinned slot still holds its block.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tests/memory/store_test_util.h"

namespace mnemo {
namespace {

using memory_test::append_once;
using memory_test::check_block;
using memory_test::scratch_dir;
using memory_test::tiny_options;

struct Pinned {
  SequenceId seq;
  int layer;
  int64_t block;
  int32_t slot;
};

void run_workload(uint32_t seed, bool with_disk) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (with_disk ? " with disk" : " without disk"));
  std::mt19937 rng(seed);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(std::uniform_int_distribution<int64_t>(0, n - 1)(rng)); };
  const std::string dir = with_disk ? scratch_dir() : "";
  const KvStoreOptions options = tiny_options(/*gpu_slots=*/12, /*host_slots=*/with_disk ? 8 : 40, dir);
  auto opened = KvStore::open(options);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  std::unique_ptr<KvStore> store = std::move(opened).value();
  const int bt = options.layout.block_tokens;

  std::map<SequenceId, std::vector<uint32_t>> shadow;  // live sequences: token tags
  std::vector<Pinned> pinned;
  SequenceId next_id = 1;
  uint32_t next_tag = 1;
  auto random_seq = [&] {
    auto it = shadow.begin();
    std::advance(it, pick(static_cast<int64_t>(shadow.size())));
    return it->first;
  };

  for (int op = 0; op < 400; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    const int64_t kind = pick(100);
    if (shadow.size() < 2 || (kind < 8 && shadow.size() < 4)) {
      ASSERT_TRUE(store->create_sequence(next_id).ok());
      shadow[next_id++] = {};
    } else if (kind < 50) {  // append
      const SequenceId seq = random_seq();
      std::vector<uint32_t> tags(static_cast<size_t>(1 + pick(2 * bt + 3)));
      for (auto& t : tags) t = next_tag++;
      Status s = append_once(*store, seq, tags);
      if (s.ok()) {
        shadow[seq].insert(shadow[seq].end(), tags.begin(), tags.end());
      } else {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
        // As the engine after a failed forward: hand back the open blocks reserved for it.
        ASSERT_TRUE(store->reserve(seq, static_cast<int64_t>(shadow[seq].size())).ok());
      }
      ASSERT_EQ(*store->length(seq), static_cast<int64_t>(shadow[seq].size()));
    } else if (kind < 80) {  // acquire a random set, in random order
      const SequenceId seq = random_seq();
      const auto& tags = shadow[seq];
      const int64_t num_blocks = (static_cast<int64_t>(tags.size()) + bt - 1) / bt;
      if (num_blocks == 0) continue;
      std::vector<int64_t> blocks(static_cast<size_t>(num_blocks));
      for (int64_t b = 0; b < num_blocks; ++b) blocks[b] = b;
      std::shuffle(blocks.begin(), blocks.end(), rng);
      blocks.resize(static_cast<size_t>(1 + pick(std::min<int64_t>(num_blocks, 6))));
      const int layer = static_cast<int>(pick(options.layout.num_layers));
      std::vector<int32_t> slots;
      Status s = store->acquire(seq, layer, blocks, &slots);
      if (!s.ok()) {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      } else {
        for (size_t i = 0; i < blocks.size(); ++i) {
          ASSERT_EQ(check_block(*store, slots[i], layer, blocks[i], tags), "");
          pinned.push_back({seq, layer, blocks[i], slots[i]});
        }
        if (pick(2) == 0) {  // most steps release at once; the rest keep pins across operations
          store->release_all();
          pinned.clear();
        }
      }
    } else if (kind < 88) {
      store->release_all();
      pinned.clear();
    } else if (kind < 93) {  // fork
      const SequenceId parent = random_seq();
      if (shadow.size() >= 5) continue;
      Status s = store->fork_sequence(parent, next_id);
      if (s.ok()) {
        shadow[next_id] = shadow[parent];
      } else {
        ASSERT_EQ(s.code(), StatusCode::kOutOfBudget) << s.to_string();
      }
      ++next_id;
    } else if (kind < 98) {  // drop
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
    ASSERT_EQ(m.gpu_slots_total, 12);
    for (const Pinned& p : pinned) {
      ASSERT_EQ(check_block(*store, p.slot, p.layer, p.block, shadow[p.seq]), "") << "pinned block moved";
    }
  }
  store->release_all();
  for (const auto& [seq, tags] : shadow) {
    for (int layer = 0; layer < options.layout.num_layers; ++layer) {
      for (int64_t b = 0; b * bt < static_cast<int64_t>(tags.size()); ++b) {
        memory_test::expect_blocks(*store, seq, layer, {b}, tags);
      }
    }
  }
  if (!with_disk) return;

  // Everything sealed is durable after close; recovery returns each sequence's whole blocks.
  store.reset();
  opened = KvStore::open(options);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  store = std::move(opened).value();
  std::vector<SequenceId> want;
  for (const auto& [seq, tags] : shadow) want.push_back(seq);
  EXPECT_EQ(*store->list_sequences(), want);
  for (const auto& [seq, tags] : shadow) {
    auto recovered = store->recover_sequence(seq);
    ASSERT_TRUE(recovered.ok()) << recovered.status().to_string();
    ASSERT_EQ(*recovered, static_cast<int64_t>(tags.size()) / bt * bt) << "seq " << seq;
    for (int layer = 0; layer < options.layout.num_layers; ++layer) {
      for (int64_t b = 0; b < *recovered / bt; ++b) memory_test::expect_blocks(*store, seq, layer, {b}, tags);
    }
  }
}

TEST(TieredStore, BudgetsHoldAndDataStaysIntactUnderARandomWorkload) {
  for (uint32_t seed : {1u, 2u, 3u}) run_workload(seed, /*with_disk=*/false);
}

TEST(TieredStore, BudgetsHoldAndDataStaysIntactUnderARandomWorkloadWithDisk) {
  for (uint32_t seed : {11u, 12u}) run_workload(seed, /*with_disk=*/true);
}

}  // namespace
}  // namespace mnemo
