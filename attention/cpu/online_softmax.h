// The online softmax of one (query, head) row, shared by the CPU dense and sparse attention:
// blocks of keys are folded in one at a time with a running max m and sum l (FlashAttention's
// recurrence), so no row of scores longer than a block ever exists. Internal to attention/cpu/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace mnemo::cpu {

struct OnlineSoftmax {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.0f;

  // Folds keys [t0, n) of one block into `out` ([d], the unnormalised weighted sum of values).
  // k and v: [n, d] rows of the block; scores: scratch of at least n floats.
  void add_block(const float* q, const float* k, const float* v, int64_t t0, int64_t n, int64_t d, float scale,
                 float* scores, float* out) {
    float block_max = -std::numeric_limits<float>::infinity();
    for (int64_t t = t0; t < n; ++t) {
      const float* kt = k + t * d;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t e = 0; e < d; ++e) s += q[e] * kt[e];
      s *= scale;
      scores[t] = s;
      block_max = std::max(block_max, s);
    }
    const float m_new = std::max(m, block_max);
    const float correction = std::exp(m - m_new);  // exp(-inf) = 0 on the first block
    l *= correction;
    for (int64_t e = 0; e < d; ++e) out[e] *= correction;
    for (int64_t t = t0; t < n; ++t) {
      const float w = std::exp(scores[t] - m_new);
      l += w;
      const float* vt = v + t * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) out[e] += w * vt[e];
    }
    m = m_new;
  }

  // Normalises `out` and returns the row's log-sum-exp; no keys at all leave out = 0, lse = -inf.
  float finish(float* out, int64_t d) const {
    if (l <= 0.0f) return -std::numeric_limits<float>::infinity();
    const float inv = 1.0f / l;
    for (int64_t e = 0; e < d; ++e) out[e] *= inv;
    return m + std::log(l);
  }
};

}  // namespace mnemo::cpu
