// KV blocks in an arena of fixed-size slots, and the per-sequence block tables that reach them.
//
// One slot holds one block of one layer: K and V of `block_tokens` tokens for all kv heads,
// laid out [2, num_kv_heads, block_tokens, head_dim] of `dtype` (attention/paged_kv.h reads the same
// layout). The CPU backend uses f32; the CUDA store also holds bf16 (slot_bytes() counts either).
// The arena has a fixed number of slots (its byte budget); running out is a kOutOfBudget error the
// caller sees, never an OOM. Tiering (host, disk) builds on this in later work (DESIGN.md).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace mnemo {

struct KvLayout {
  int num_layers = 0;
  int num_kv_heads = 0;
  int block_tokens = 64;
  int head_dim = 0;
  DType dtype = DType::kF32;  // element type of K and V: kF32 or kBF16 (the CUDA store). Default: kF32

  // Elements of one slot: [2, num_kv_heads, block_tokens, head_dim].
  int64_t slot_elems() const { return int64_t{2} * num_kv_heads * block_tokens * head_dim; }
  // == slot_elems(); the name f32 code (KvArena, the CPU model) reads slots by.
  int64_t slot_floats() const { return slot_elems(); }
  // Bytes of one slot in `dtype`: what budgets, the host tier, disk values, checksums and the
  // gather count in.
  int64_t slot_bytes() const { return slot_elems() * static_cast<int64_t>(dtype_size(dtype)); }
};

class KvArena {
 public:
  // An arena of `num_slots` f32 slots (the CPU backend); kInvalidArgument for another dtype.
  static Result<std::unique_ptr<KvArena>> create(const KvLayout& layout, int64_t num_slots);
  // Slots needed to hold `tokens` tokens of one sequence in every layer.
  static int64_t slots_for_tokens(const KvLayout& layout, int64_t tokens);

  const KvLayout& layout() const { return layout_; }
  int64_t num_slots() const { return num_slots_; }
  int64_t free_slots() const { return static_cast<int64_t>(free_.size()); }

  // Takes a free slot; kOutOfBudget when none is left.
  Result<int32_t> allocate();
  void release(int32_t slot);

  float* slot(int32_t s) { return data_.get() + s * layout_.slot_floats(); }
  const float* data() const { return data_.get(); }

 private:
  KvLayout layout_;
  int64_t num_slots_ = 0;
  std::unique_ptr<float[]> data_;
  std::vector<int32_t> free_;  // stack of free slots, lowest id on top
};

// The KV of one sequence: a block table per layer over a shared arena. Slots are released when the
// sequence is destroyed.
class SequenceKv {
 public:
  explicit SequenceKv(KvArena* arena);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;

  // Ensures blocks exist for tokens [0, tokens) in every layer. All-or-nothing: on kOutOfBudget no
  // slot was taken and the sequence is unchanged.
  Status reserve(int64_t tokens);
  // Makes this (empty) sequence a copy of `other`: same length, blocks copied into new slots.
  // All-or-nothing on kOutOfBudget.
  Status copy_from(const SequenceKv& other);
  // Number of tokens whose K/V are written (set by the model after a forward).
  int64_t length() const { return length_; }
  void set_length(int64_t tokens) { length_ = tokens; }

  const std::vector<int32_t>& block_table(int layer) const { return tables_[layer]; }
  // K / V row of token `t`, kv head `h`, in `layer`: [head_dim] floats.
  float* k_row(int layer, int64_t t, int h);
  float* v_row(int layer, int64_t t, int h);
  KvArena* arena() const { return arena_; }

 private:
  KvArena* arena_;
  std::vector<std::vector<int32_t>> tables_;  // [num_layers][num_blocks]
  int64_t length_ = 0;
};

}  // namespace mnemo
