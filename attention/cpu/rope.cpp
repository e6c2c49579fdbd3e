#include <algorithm>
#include <cmath>

#include "attention/rope.h"

namespace mnemo {

void rope_apply(const Rope& rope, int64_t position, float* x) {
  const int64_t half = static_cast<int64_t>(rope.inv_freq.size());
  const double s = rope.scale;
  for (int64_t i = 0; i < half; ++i) {
    const double a = static_cast<double>(position) * static_cast<double>(rope.inv_freq[i]);
    const float c = static_cast<float>(std::cos(a) * s);
    const float sn = static_cast<float>(std::sin(a) * s);
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * sn;
    x[i + half] = x1 * c + x0 * sn;
  }
}

void rope_apply_heads(const Rope& rope, int64_t position, int64_t num_heads, float* x) {
  const int64_t d = rope.head_dim();
  for (int64_t h = 0; h < num_heads; ++h) rope_apply(rope, position, x + h * d);
}

}  // namespace mnemo

namespace mnemo {

void RopeTable::ensure(int64_t n) {
  if (n <= size_) return;
  const int64_t half = static_cast<int64_t>(rope_.inv_freq.size());
  int64_t cap = std::max<int64_t>(n, size_ * 2);
  cos_.resize(static_cast<size_t>(cap * half));
  sin_.resize(static_cast<size_t>(cap * half));
#pragma omp parallel for if (cap - size_ > 4096)
  for (int64_t p = size_; p < cap; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * static_cast<double>(rope_.inv_freq[i]);
      cos_[p * half + i] = static_cast<float>(std::cos(a) * rope_.scale);
      sin_[p * half + i] = static_cast<float>(std::sin(a) * rope_.scale);
    }
  }
  size_ = cap;
}

void RopeTable::apply(int64_t position, float* x) const {
  const int64_t half = static_cast<int64_t>(rope_.inv_freq.size());
  const float* c = cos_.data() + position * half;
  const float* s = sin_.data() + position * half;
  for (int64_t i = 0; i < half; ++i) {
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c[i] - x1 * s[i];
    x[i + half] = x1 * c[i] + x0 * s[i];
  }
}

}  // namespace mnemo
