// Rotary position embedding (RoPE), Hugging Face "rotate_half" convention.
//
// For a head vector x of head_dim D (h = D/2) at position p, with angle a_i = p * inv_freq[i]:
//   out[i]     = s * (x[i]     * cos a_i - x[i + h] * sin a_i)
//   out[i + h] = s * (x[i + h] * cos a_i + x[i]     * sin a_i)
// where s is `scale` (1, or the attention factor of longrope/yarn scaling, applied to cos and sin as
// transformers does). Keys are stored un-rotated (DESIGN.md) and rotated as attention loads them, so
// a rope change (dynamic NTK, longrope's long factors, bounded positions) applies to every key.
// Angles are computed in double: at position 1e6 an f32 angle is off by ~0.06 rad.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace mnemo {

struct Rope {
  std::vector<float> inv_freq;  // [head_dim / 2]
  float scale = 1.0f;           // multiplies cos and sin
  int64_t head_dim() const { return static_cast<int64_t>(inv_freq.size()) * 2; }
};

// cos/sin of every position in [0, size()) for one Rope, so hot loops rotate without trigonometry.
// Grown on demand by its owner before parallel regions read it.
class RopeTable {
 public:
  RopeTable() = default;
  explicit RopeTable(Rope rope) : rope_(std::move(rope)) {}
  const Rope& rope() const { return rope_; }
  int64_t size() const { return size_; }
  // Extends the table to cover positions [0, n).
  void ensure(int64_t n);
  // Rotates one head vector in place at `position` (< size()).
  void apply(int64_t position, float* x) const;

 private:
  Rope rope_;
  int64_t size_ = 0;
  std::vector<float> cos_, sin_;  // [size, head_dim / 2], scale folded in
};

// Rotates one head vector in place at `position`.
void rope_apply(const Rope& rope, int64_t position, float* x);
// Rotates `num_heads` contiguous head vectors of one token in place.
void rope_apply_heads(const Rope& rope, int64_t position, int64_t num_heads, float* x);

}  // namespace mnemo
