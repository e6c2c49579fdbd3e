#include "memory/slot_tiers.h"

#include <algorithm>

namespace mnemo {
namespace {
Status check_slots(void* memory, int64_t slot_bytes, int64_t num_slots) {
  if (!memory || slot_bytes <= 0) return invalid_argument("slot tier: memory and slot_bytes must be set");
  if (num_slots <= 0 || num_slots > INT32_MAX) {
    return invalid_argument("slot tier: num_slots must be in [1, 2^31), got ", num_slots);
  }
  return Status::Ok();
}
}  // namespace

SlotPool::SlotPool(void* base, int64_t slot_bytes, int64_t num_slots)
    : base_(static_cast<char*>(base)), slot_bytes_(slot_bytes), num_slots_(num_slots) {
  free_.resize(static_cast<size_t>(num_slots));
  for (int64_t i = 0; i < num_slots; ++i) free_[i] = static_cast<int32_t>(num_slots - 1 - i);
}

int32_t SlotPool::allocate() {
  const int32_t s = free_.back();
  free_.pop_back();
  return s;
}

Result<std::unique_ptr<GpuTier>> GpuTier::create(void* memory, int64_t slot_bytes, int64_t num_slots) {
  MNEMO_RETURN_IF_ERROR(check_slots(memory, slot_bytes, num_slots));
  auto tier = std::unique_ptr<GpuTier>(new GpuTier());
  tier->arena_ = std::make_unique<SlotPool>(memory, slot_bytes, num_slots);
  tier->slots_.resize(static_cast<size_t>(num_slots));
  return tier;
}

int32_t GpuTier::take_free(uint32_t owner, bool sealed, uint8_t clock) {
  const int32_t s = arena_->allocate();  // precondition: a slot is free
  slots_[s] = SlotState{
      .owner = owner, .clock = std::min(clock, kMaxClock), .used = true, .sealed = sealed, .pinned = false};
  if (sealed) ++evictable_;
  return s;
}

void GpuTier::release(int32_t s) {
  SlotState& st = slots_[s];
  if (evictable(s)) --evictable_;
  if (st.pinned) --pinned_;
  // A pinned slot stays in pinned_list_; unpin_all() skips slots no longer pinned.
  st = SlotState{};
  arena_->release(s);
}

void GpuTier::seal(int32_t s) {
  SlotState& st = slots_[s];
  if (st.sealed) return;
  st.sealed = true;
  if (!st.pinned) ++evictable_;
}

void GpuTier::pin(int32_t s) {
  SlotState& st = slots_[s];
  if (st.pinned) return;
  if (st.sealed) --evictable_;
  st.pinned = true;
  ++pinned_;
  pinned_list_.push_back(s);
}

void GpuTier::unpin(int32_t s) {
  SlotState& st = slots_[s];
  if (!st.pinned) return;
  st.pinned = false;  // its pinned_list_ entry is skipped by unpin_all()
  --pinned_;
  if (st.sealed) ++evictable_;
}

void GpuTier::unpin_all() {
  for (int32_t s : pinned_list_) {
    SlotState& st = slots_[s];
    if (!st.pinned) continue;  // released (and maybe reused unpinned) since it was pinned
    st.pinned = false;
    if (st.sealed) ++evictable_;
  }
  pinned_list_.clear();
  pinned_ = 0;
}

void GpuTier::touch(int32_t s) {
  uint8_t& c = slots_[s].clock;
  if (c < kMaxClock) ++c;
}

std::vector<int32_t> GpuTier::choose_victims(int64_t n, const std::function<bool(int32_t)>& skip) {
  std::vector<int32_t> victims;
  victims.reserve(static_cast<size_t>(n));
  const int64_t slots = num_slots();
  std::vector<bool> chosen(static_cast<size_t>(slots), false);
  // Each full sweep lowers every candidate's counter by one, so kMaxClock + 1 sweeps reach all of
  // them; the bound only guards a broken precondition.
  for (int64_t step = 0; static_cast<int64_t>(victims.size()) < n && step < (kMaxClock + 2) * slots; ++step) {
    const int32_t s = static_cast<int32_t>(hand_);
    hand_ = (hand_ + 1) % slots;
    if (!evictable(s) || chosen[s] || skip(s)) continue;
    if (slots_[s].clock > 0) {
      --slots_[s].clock;
      continue;
    }
    chosen[s] = true;
    victims.push_back(s);
  }
  return victims;
}

Result<std::unique_ptr<HostTier>> HostTier::create(void* memory, int64_t slot_bytes, int64_t num_slots) {
  MNEMO_RETURN_IF_ERROR(check_slots(memory, slot_bytes, num_slots));
  auto tier = std::unique_ptr<HostTier>(new HostTier());
  tier->arena_ = std::make_unique<SlotPool>(memory, slot_bytes, num_slots);
  const size_t n = static_cast<size_t>(num_slots);
  tier->owner_.assign(n, 0);
  tier->prev_.assign(n + 1, static_cast<int32_t>(n));
  tier->next_.assign(n + 1, static_cast<int32_t>(n));
  tier->linked_.assign(n, 0);
  return tier;
}

int32_t HostTier::take_free(uint32_t owner) {
  const int32_t s = arena_->allocate();  // precondition: a slot is free
  owner_[s] = owner;
  return s;
}

void HostTier::release(int32_t s) {
  if (linked_[s]) {
    unlink(s);
    --droppable_;
  }
  arena_->release(s);
}

void HostTier::set_droppable(int32_t s) {
  if (linked_[s]) return;
  link_back(s);
  ++droppable_;
}

void HostTier::touch(int32_t s) {
  if (!linked_[s]) return;
  unlink(s);
  link_back(s);
}

std::vector<int32_t> HostTier::choose_victims(int64_t n, const std::function<bool(int32_t)>& skip) const {
  std::vector<int32_t> victims;
  const int32_t sentinel = static_cast<int32_t>(num_slots());
  for (int32_t s = next_[sentinel]; s != sentinel && static_cast<int64_t>(victims.size()) < n; s = next_[s]) {
    if (!skip(s)) victims.push_back(s);
  }
  return victims;
}

void HostTier::unlink(int32_t s) {
  next_[prev_[s]] = next_[s];
  prev_[next_[s]] = prev_[s];
  linked_[s] = 0;
}

void HostTier::link_back(int32_t s) {
  const int32_t sentinel = static_cast<int32_t>(num_slots());
  const int32_t last = prev_[sentinel];
  prev_[s] = last;
  next_[s] = sentinel;
  next_[last] = s;
  prev_[sentinel] = s;
  linked_[s] = 1;
}

}  // namespace mnemo
