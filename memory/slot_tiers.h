// The two slot arenas of the tiered store and their replacement policies.
//
// GpuTier: CLOCK with a selection-frequency hint. Every acquire of a block bumps its slot's counter
// (saturating at kMaxClock); the hand decrements counters as it passes and takes the first evictable
// slot whose counter is 0, so a block selected on many recent steps survives several sweeps. Open
// blocks and pinned slots are never evictable.
// HostTier: LRU over the slots whose block is durable on disk (only those may be dropped); a host
// copy that is the last copy of a block is never a candidate.
//
// Neither tier knows sequences or disk: each slot records the id of the block it holds (`owner`),
// and the store decides what a block's state means. Neither owns or touches the slot memory (host,
// device or mapped pinned: the store's SlotMemory); slot(s) is only address arithmetic.
// Single-threaded (the store's lock).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/status.h"

namespace mnemo {

// A fixed set of slots [0, num_slots) of `slot_bytes` each at `base`; free slots are handed out
// lowest id first.
class SlotPool {
 public:
  SlotPool(void* base, int64_t slot_bytes, int64_t num_slots);
  int64_t num_slots() const { return num_slots_; }
  int64_t free_slots() const { return static_cast<int64_t>(free_.size()); }
  // Precondition: free_slots() > 0.
  int32_t allocate();
  void release(int32_t s) { free_.push_back(s); }
  void* base() const { return base_; }
  void* slot(int32_t s) const { return base_ + s * slot_bytes_; }

 private:
  char* base_;
  int64_t slot_bytes_;
  int64_t num_slots_;
  std::vector<int32_t> free_;  // stack of free slots, lowest id on top
};

class GpuTier {
 public:
  static constexpr uint8_t kMaxClock = 3;

  // `memory`: [num_slots, slot_bytes] (host or device), owned by the caller; never moves.
  static Result<std::unique_ptr<GpuTier>> create(void* memory, int64_t slot_bytes, int64_t num_slots);

  int64_t num_slots() const { return arena_->num_slots(); }
  int64_t free_slots() const { return arena_->free_slots(); }
  int64_t used_slots() const { return num_slots() - free_slots(); }
  // Sealed and unpinned: what CLOCK may take.
  int64_t evictable_slots() const { return evictable_; }
  void* base() const { return arena_->base(); }
  void* slot(int32_t s) const { return arena_->slot(s); }

  // Takes a free slot for block `owner` with CLOCK counter `clock` (1: as if just requested; 0 for a
  // prefetched block nobody requested yet). Precondition: free_slots() > 0.
  int32_t take_free(uint32_t owner, bool sealed, uint8_t clock = 1);
  void release(int32_t s);
  void seal(int32_t s);
  uint32_t owner(int32_t s) const { return slots_[s].owner; }
  bool evictable(int32_t s) const { return slots_[s].sealed && !slots_[s].pinned; }

  // Pins last until unpin_all() (one step).
  void pin(int32_t s);
  bool pinned(int32_t s) const { return slots_[s].pinned; }
  int64_t pinned_slots() const { return pinned_; }
  void unpin(int32_t s);
  void unpin_all();
  // The selection-frequency hint: the block in `s` was just requested.
  void touch(int32_t s);

  // Chooses `n` evictable slots with CLOCK, never one for which skip(s) is true. Precondition: at
  // least n such slots exist. Only counters and the hand change; the caller frees the victims.
  std::vector<int32_t> choose_victims(int64_t n, const std::function<bool(int32_t)>& skip);

 private:
  struct SlotState {
    uint32_t owner = 0;
    uint8_t clock = 0;
    bool used = false;
    bool sealed = false;
    bool pinned = false;
  };
  std::unique_ptr<SlotPool> arena_;
  std::vector<SlotState> slots_;
  std::vector<int32_t> pinned_list_;
  int64_t evictable_ = 0;
  int64_t pinned_ = 0;
  int64_t hand_ = 0;
};

class HostTier {
 public:
  // `memory`: [num_slots, slot_bytes] host memory (plain or mapped pinned), owned by the caller.
  static Result<std::unique_ptr<HostTier>> create(void* memory, int64_t slot_bytes, int64_t num_slots);

  int64_t num_slots() const { return arena_->num_slots(); }
  int64_t free_slots() const { return arena_->free_slots(); }
  int64_t used_slots() const { return num_slots() - free_slots(); }
  int64_t droppable_slots() const { return droppable_; }
  void* base() const { return arena_->base(); }
  void* slot(int32_t s) const { return arena_->slot(s); }

  // Precondition: free_slots() > 0.
  int32_t take_free(uint32_t owner);
  void release(int32_t s);
  uint32_t owner(int32_t s) const { return owner_[s]; }
  // The block in `s` is durable on disk: it may be dropped (enters the LRU as most recent).
  void set_droppable(int32_t s);
  // The block in `s` was just used: most recent in the LRU (no-op unless droppable).
  void touch(int32_t s);

  // The `n` least recently used droppable slots with skip(s) false. Precondition: enough exist.
  std::vector<int32_t> choose_victims(int64_t n, const std::function<bool(int32_t)>& skip) const;

 private:
  void unlink(int32_t s);
  void link_back(int32_t s);

  std::unique_ptr<SlotPool> arena_;
  std::vector<uint32_t> owner_;
  // Doubly linked LRU of droppable slots; index num_slots is the sentinel (next = oldest).
  std::vector<int32_t> prev_, next_;
  std::vector<uint8_t> linked_;
  int64_t droppable_ = 0;
};

}  // namespace mnemo
