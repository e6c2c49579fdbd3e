// LSE merge of two partials on CUDA (attention/cuda/merge.h): one thread per 8 elements of a row.
#include "attention/cuda/merge.h"

#include <cmath>

#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void merge_attention_kernel(const MergeAttentionCudaParams p) {
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

}  // namespace

Status validate(const MergeAttentionCudaParams& p) {
  if (p.head_dim <= 0 || p.head_dim % 8 != 0) {
    return invalid_argument("merge_attention: head_dim: expected a positive multiple of 8, got ", p.head_dim);
  }
  if (p.num_rows < 0) return invalid_argument("merge_attention: num_rows: expected >= 0, got ", p.num_rows);
  if (p.num_rows > 0 && (!p.out_a || !p.lse_a || !p.out_b || !p.lse_b || !p.out)) {
    return invalid_argument("merge_attention: out_a, lse_a, out_b, lse_b and out must be set");
  }
  return Status::Ok();
}

Status merge_attention_launch(const MergeAttentionCudaParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return Status::Ok();
  const int64_t items = p.num_rows * (p.head_dim / 8);
  merge_attention_kernel<<<static_cast<unsigned>((items + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
