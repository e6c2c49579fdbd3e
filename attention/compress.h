// Key compression: the representatives that stage 1 scores queries against.
//
// For one (sequence, layer, kv head g), compressed key j is the mean of the keys of window j:
//   ck_j,g = (1 / kernel_size) · Σ_{t ∈ [j·stride, j·stride + kernel_size)} key'_t,g
// with key'_t = rope(k_t, t) (the key rotated at its own index) or, with use_nope, the stored
// un-rotated k_t. Only complete windows exist: a sequence of N tokens has
//   num_windows(N) = N < kernel_size ? 0 : (N − kernel_size) / stride + 1.
// Tier 1 (kernel 32, stride 16) is what queries are scored against; tier 2 (kernel 128, stride 64)
// only approximates the softmax normaliser (attention/select.h). Both are a CompressedKeys with
// different sizes.
//
// Incremental: the engine calls append_block() as blocks are sealed; each call computes exactly the
// windows that became complete, reading the keys from the paged KV (a window may straddle two
// blocks). A window is always summed in the same order (token 0 of the window upward), so growing a
// table block by block gives bit-for-bit the table computed in one call.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/paged_kv.h"
#include "attention/rope.h"
#include "core/status.h"

namespace mnemo {

// A read-only view of one (sequence, layer)'s compressed keys, as stage 1 takes them.
struct CompressedKeysView {
  const float* keys = nullptr;  // [num_kv_heads, capacity, head_dim]; rows [0, num_compressed) valid
  int64_t head_stride = 0;      // floats between kv heads (capacity · head_dim)
  int64_t num_compressed = 0;   // windows computed so far
  int num_kv_heads = 0;
  int head_dim = 0;
  int kernel_size = 0;          // tokens per window
  int kernel_stride = 0;        // tokens between windows
  const float* key(int g, int64_t j) const { return keys + g * head_stride + j * head_dim; }
};

// Complete windows among the first num_tokens tokens.
inline int64_t num_windows(int64_t num_tokens, int kernel_size, int kernel_stride) {
  return num_tokens < kernel_size ? 0 : (num_tokens - kernel_size) / kernel_stride + 1;
}

// The growing table of one (sequence, layer). Not thread-safe; views are invalidated by append_block.
class CompressedKeys {
 public:
  CompressedKeys() = default;
  CompressedKeys(int num_kv_heads, int head_dim, int kernel_size, int kernel_stride);

  // Computes every window that is complete within tokens [0, num_tokens) and not computed yet.
  // num_tokens <= kv.kv_len, and never less than a previous call's (tokens are appended, not taken
  // back). key_rope null: un-rotated keys (use_nope); else keys rotated at their index (its size must
  // cover num_tokens). The choice must be the same on every call. On failure nothing changes.
  Status append_block(const PagedKv& kv, int64_t num_tokens, const RopeTable* key_rope);

  int64_t num_compressed() const { return num_compressed_; }
  int64_t num_tokens() const { return num_tokens_; }  // tokens seen by the last append_block
  const float* key(int g, int64_t j) const { return data_.data() + (g * capacity_ + j) * head_dim_; }
  CompressedKeysView view() const;

 private:
  void reserve(int64_t windows);

  int num_kv_heads_ = 0, head_dim_ = 0, kernel_size_ = 0, kernel_stride_ = 0;
  int64_t capacity_ = 0;        // windows of room per kv head
  int64_t num_compressed_ = 0;
  int64_t num_tokens_ = 0;
  int rotated_ = -1;            // -1 before the first append, then 0 (use_nope) or 1 (rotated)
  std::vector<float> data_;     // [num_kv_heads, capacity, head_dim]
};

}  // namespace mnemo
