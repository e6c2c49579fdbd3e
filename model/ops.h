// Dense model ops on the CPU backend (fp32): the reference the CUDA kernels are checked against.
#pragma once

#include <cstdint>

namespace mnemo::cpu {

// y[n, out] = x[n, in] . w[out, in]^T (+ bias[out] when non-null). PyTorch's Linear layout.
void linear(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t in, int64_t out);

// y[n, dim] = x / sqrt(mean(x^2) + eps) * weight (Llama RMSNorm, computed in fp32 as transformers).
void rms_norm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps);

// gate[n, dim] = silu(gate) * up  (SwiGLU), in place.
void silu_mul(float* gate, const float* up, int64_t n, int64_t dim);

}  // namespace mnemo::cpu
