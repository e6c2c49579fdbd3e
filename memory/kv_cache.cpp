#include "memory/kv_cache.h"

#include <algorithm>

namespace mnemo {

Result<std::unique_ptr<KvArena>> KvArena::create(const KvLayout& layout, int64_t num_slots) {
  if (layout.num_layers <= 0 || layout.num_kv_heads <= 0 || layout.block_tokens <= 0 || layout.head_dim <= 0) {
    return invalid_argument("KV layout: layers, kv heads, block_tokens and head_dim must be positive");
  }
  if (layout.dtype != DType::kF32) {
    return invalid_argument("KV arena: layout.dtype must be f32 (the arena hands out float rows), got ",
                            dtype_name(layout.dtype));
  }
  if (num_slots <= 0 || num_slots > INT32_MAX) {
    return invalid_argument("KV arena: num_slots must be in [1, 2^31), got ", num_slots);
  }
  auto arena = std::unique_ptr<KvArena>(new KvArena());
  arena->layout_ = layout;
  arena->num_slots_ = num_slots;
  const int64_t floats = num_slots * layout.slot_floats();
  arena->data_.reset(new (std::nothrow) float[static_cast<size_t>(floats)]);
  if (!arena->data_) {
    return out_of_budget("KV arena: cannot allocate ", num_slots, " slots of ", layout.slot_bytes(), " bytes");
  }
  arena->free_.resize(static_cast<size_t>(num_slots));
  for (int64_t i = 0; i < num_slots; ++i) arena->free_[i] = static_cast<int32_t>(num_slots - 1 - i);
  return arena;
}

int64_t KvArena::slots_for_tokens(const KvLayout& layout, int64_t tokens) {
  return (tokens + layout.block_tokens - 1) / layout.block_tokens * layout.num_layers;
}

Result<int32_t> KvArena::allocate() {
  if (free_.empty()) {
    return out_of_budget("KV arena is full: all ", num_slots_, " slots (", num_slots_ * layout_.slot_bytes(),
                         " bytes) are in use");
  }
  const int32_t s = free_.back();
  free_.pop_back();
  return s;
}

void KvArena::release(int32_t slot) { free_.push_back(slot); }

SequenceKv::SequenceKv(KvArena* arena) : arena_(arena), tables_(arena->layout().num_layers) {}

SequenceKv::~SequenceKv() {
  for (auto& table : tables_) {
    for (int32_t s : table) arena_->release(s);
  }
}

Status SequenceKv::reserve(int64_t tokens) {
  const KvLayout& layout = arena_->layout();
  const int64_t blocks = (tokens + layout.block_tokens - 1) / layout.block_tokens;
  const int64_t have = static_cast<int64_t>(tables_[0].size());
  if (blocks <= have) return Status::Ok();
  const int64_t need = (blocks - have) * layout.num_layers;
  if (need > arena_->free_slots()) {
    return out_of_budget("KV arena: ", tokens, " tokens need ", need, " more slots, ",
                         arena_->free_slots(), " of ", arena_->num_slots(), " are free");
  }
  for (auto& table : tables_) {
    while (static_cast<int64_t>(table.size()) < blocks) table.push_back(*arena_->allocate());
  }
  return Status::Ok();
}

Status SequenceKv::copy_from(const SequenceKv& other) {
  if (other.arena_ != arena_) return invalid_argument("SequenceKv::copy_from: sequences of different arenas");
  MNEMO_RETURN_IF_ERROR(reserve(other.length_));
  const int64_t blocks = (other.length_ + arena_->layout().block_tokens - 1) / arena_->layout().block_tokens;
  for (size_t l = 0; l < tables_.size(); ++l) {
    for (int64_t b = 0; b < blocks; ++b) {
      std::copy_n(other.arena_->slot(other.tables_[l][b]), arena_->layout().slot_floats(), arena_->slot(tables_[l][b]));
    }
  }
  length_ = other.length_;
  return Status::Ok();
}

float* SequenceKv::k_row(int layer, int64_t t, int h) {
  const KvLayout& l = arena_->layout();
  float* slot = arena_->slot(tables_[layer][t / l.block_tokens]);
  return slot + (int64_t{h} * l.block_tokens + t % l.block_tokens) * l.head_dim;
}

float* SequenceKv::v_row(int layer, int64_t t, int h) {
  const KvLayout& l = arena_->layout();
  return k_row(layer, t, h) + int64_t{l.num_kv_heads} * l.block_tokens * l.head_dim;
}

}  // namespace mnemo
