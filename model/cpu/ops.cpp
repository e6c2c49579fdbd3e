#include <cmath>

#include "model/ops.h"

namespace mnemo::cpu {

void linear(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t in, int64_t out) {
  // Tiles of 4 tokens x 4 output rows reuse each loaded row 4 times; the inner dot vectorizes.
  constexpr int64_t kT = 4;
#pragma omp parallel for schedule(static)
  for (int64_t o0 = 0; o0 < out; o0 += 4) {
    const int64_t o1 = o0 + 4 < out ? o0 + 4 : out;
    for (int64_t t0 = 0; t0 < n; t0 += kT) {
      const int64_t t1 = t0 + kT < n ? t0 + kT : n;
      for (int64_t o = o0; o < o1; ++o) {
        const float* wr = w + o * in;
        for (int64_t t = t0; t < t1; ++t) {
          const float* xr = x + t * in;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < in; ++k) acc += xr[k] * wr[k];
          y[t * out + o] = acc + (bias ? bias[o] : 0.0f);
        }
      }
    }
  }
}

void rms_norm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < dim; ++k) ss += xr[k] * xr[k];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int64_t k = 0; k < dim; ++k) y[t * dim + k] = weight[k] * (xr[k] * inv);
  }
}

void silu_mul(float* gate, const float* up, int64_t n, int64_t dim) {
  for (int64_t i = 0; i < n * dim; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace mnemo::cpu
