// The LSE-merge kernel (attention/cuda/merge.h), in a header so the CPU warp simulator runs the same
// source in CI. One thread per 8 elements of a row.
#pragma once

#include <cmath>

#include "attention/cuda/merge.h"

namespace mnemo::cuda {

// Internal linkage: the simulator test links the library that holds the device build of this source.
static __global__ void merge_attention_kernel(const MergeAttentionCudaParams p) {
  const int vecs = p.head_dim / 8;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.num_rows * vecs) return;
  const int64_t row = idx / vecs;
  const int v = static_cast<int>(idx % vecs);
  const float la = p.lse_a[row], lb = p.lse_b[row];
  const float m = fmaxf(la, lb);
  float wa = 0.0f, wb = 0.0f, lse = -INFINITY;
  if (m != -INFINITY) {
    const float ea = la == -INFINITY ? 0.0f : expf(la - m), eb = lb == -INFINITY ? 0.0f : expf(lb - m);
    const float sum = ea + eb;
    lse = m + logf(sum);
    wa = ea / sum;
    wb = eb / sum;
  }
  float o[8];
  const uint4 a = *reinterpret_cast<const uint4*>(p.out_a + row * p.head_dim + v * 8);
  const uint4 b = *reinterpret_cast<const uint4*>(p.out_b + row * p.head_dim + v * 8);
  const __nv_bfloat162* ha = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* hb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(ha[i]), fb = __bfloat1622float2(hb[i]);
    // A partial with weight 0 is never read: its out may be anything, NaN included.
    o[2 * i] = (wa > 0.0f ? wa * fa.x : 0.0f) + (wb > 0.0f ? wb * fb.x : 0.0f);
    o[2 * i + 1] = (wa > 0.0f ? wa * fa.y : 0.0f) + (wb > 0.0f ? wb * fb.y : 0.0f);
  }
  uint4 r;
  __nv_bfloat162* hr = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) hr[i] = __floats2bfloat162_rn(o[2 * i], o[2 * i + 1]);
  *reinterpret_cast<uint4*>(p.out + row * p.head_dim + v * 8) = r;
  if (p.lse != nullptr && v == 0) p.lse[row] = lse;
}

}  // namespace mnemo::cuda
