// Elementwise and row-wise model ops on CUDA (see model/cuda/ops.h): RMSNorm, RoPE on Q, SwiGLU,
// embedding gather, KV append, argmax. Memory-bound: each thread moves 16-byte vectors (8 bf16);
// launchers check that rows are whole vectors and pointers 16-byte aligned.
#include <cmath>
#include <cstdint>

#include "core/cuda/check.h"
#include "model/cuda/ops.h"
#include "model/cuda/vec8.cuh"

namespace mnemo::cuda {
namespace {

using namespace vec8;

__device__ __forceinline__ uint4 ld16(const bf16* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void st16(bf16* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// Sum over the CTA; every thread gets the total. `scratch` holds one float per warp.
__device__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
  return total;
}

// One CTA per row; the row is read twice (the second time from L1/L2).
__global__ void rms_norm_kernel(const RmsNormParams p) {
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x;
  const bf16* x = p.x + row * p.dim;
  const int vecs = p.dim / 8;
  float ss = 0.0f;
  for (int v = threadIdx.x; v < vecs; v += blockDim.x) {
    float f[8];
    unpack8(ld16(x + v * 8), f);
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(p.dim) + p.eps);
  for (int v = threadIdx.x; v < vecs; v += blockDim.x) {
    float f[8], w[8];
    unpack8(ld16(x + v * 8), f);
    unpack8(ld16(p.weight + v * 8), w);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = w[i] * (f[i] * inv);
    st16(p.y + row * p.dim + v * 8, pack8(f));
  }
}

// One thread per (token, head, pair index i): rotates elements i and i + half.
__global__ void rope_q_kernel(const RopeQParams p) {
  const int half = p.head_dim / 2;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.n * p.num_heads * half) return;
  const int i = static_cast<int>(idx % half);
  const int64_t head_row = idx / half;  // token * num_heads + head
  const int64_t token = head_row / p.num_heads;
  bf16* x = p.q + head_row * p.head_dim;
  const int32_t pos = p.positions[token];
  if (pos < 0 || pos >= p.rope_len) {
    x[i] = x[i + half] = __float2bfloat16_rn(NAN);
    return;
  }
  const float c = p.cos[int64_t{pos} * half + i], s = p.sin[int64_t{pos} * half + i];
  const float x0 = __bfloat162float(x[i]), x1 = __bfloat162float(x[i + half]);
  x[i] = __float2bfloat16_rn(x0 * c - x1 * s);
  x[i + half] = __float2bfloat16_rn(x1 * c + x0 * s);
}

__global__ void silu_mul_kernel(const SiluMulParams p) {
  const int vecs = p.dim / 8;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.n * vecs) return;
  const int64_t row = idx / vecs;
  const int v = static_cast<int>(idx % vecs);
  float g[8], u[8];
  unpack8(ld16(p.gate + row * p.in_stride + v * 8), g);
  unpack8(ld16(p.up + row * p.in_stride + v * 8), u);
#pragma unroll
  for (int i = 0; i < 8; ++i) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
  st16(p.out + row * p.dim + v * 8, pack8(g));
}

__global__ void embedding_kernel(const EmbeddingParams p) {
  const int vecs = p.hidden / 8;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.n * vecs) return;
  const int64_t row = idx / vecs;
  const int v = static_cast<int>(idx % vecs);
  const int32_t id = p.ids[row];
  uint4 value = make_uint4(0, 0, 0, 0);
  if (id >= 0 && id < p.vocab) {
    value = ld16(p.table + int64_t{id} * p.hidden + v * 8);
  } else if (v == 0 && p.invalid_ids != nullptr) {
    atomicAdd(p.invalid_ids, 1);
  }
  st16(p.out + row * p.hidden + v * 8, value);
}

// One thread per (token, kv head, 16-byte vector): copies K and V.
__global__ void kv_append_kernel(const KvAppendParams p) {
  const int vecs = p.head_dim / 8;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.n * p.num_kv_heads * vecs) return;
  const int v = static_cast<int>(idx % vecs);
  const int64_t head_row = idx / vecs;  // token * num_kv_heads + head
  const int h = static_cast<int>(head_row % p.num_kv_heads);
  const int64_t token = head_row / p.num_kv_heads;
  const int32_t mapping = p.slot_mapping[token];
  if (mapping < 0) return;
  if (int64_t{mapping} >= p.num_slots * p.block_tokens) {
    if (h == 0 && v == 0 && p.invalid_slots != nullptr) atomicAdd(p.invalid_slots, 1);
    return;
  }
  const int64_t slot = mapping / p.block_tokens, offset = mapping % p.block_tokens;
  const int64_t head_elems = int64_t{p.block_tokens} * p.head_dim;
  bf16* k_dst = p.arena + slot * 2 * p.num_kv_heads * head_elems + h * head_elems + offset * p.head_dim + v * 8;
  st16(k_dst, ld16(p.k + head_row * p.head_dim + v * 8));
  st16(k_dst + p.num_kv_heads * head_elems, ld16(p.v + head_row * p.head_dim + v * 8));
}

// a beats b: NaN first, then larger, then the lower index.
__device__ __forceinline__ bool argmax_better(float a, int64_t ia, float b, int64_t ib) {
  const bool an = isnan(a), bn = isnan(b);
  if (an != bn) return an;
  if (an || a == b) return ia < ib;
  return a > b;
}

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<bf16>(bf16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void argmax_kernel(const ArgmaxParams p) {
  __shared__ float best_value[kThreads / 32];
  __shared__ int64_t best_index[kThreads / 32];
  const T* row = static_cast<const T*>(p.logits) + int64_t{blockIdx.x} * p.vocab;
  float value = -INFINITY;
  int64_t index = INT64_MAX;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float x = to_float<T>(row[j]);
    if (argmax_better(x, j, value, index)) value = x, index = j;
  }
#pragma unroll
  for (int m = 16; m > 0; m /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, value, m);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, static_cast<long long>(index), m);
    if (argmax_better(ov, oi, value, index)) value = ov, index = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) best_value[warp] = value, best_index[warp] = index;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
      if (argmax_better(best_value[w], best_index[w], value, index)) value = best_value[w], index = best_index[w];
    }
    p.out[blockIdx.x] = static_cast<int32_t>(index);
  }
}

}  // namespace

Status rms_norm_launch(const RmsNormParams& p, cudaStream_t stream) {
  if (!p.x || !p.weight || !p.y) return invalid_argument("rms_norm: x, weight and y must be set");
  if (p.dim <= 0 || p.dim % 8 != 0) return invalid_argument("rms_norm: dim: expected a positive multiple of 8, got ", p.dim);
  if (!aligned16(p.x) || !aligned16(p.weight) || !aligned16(p.y)) return invalid_argument("rms_norm: x, weight and y must be 16-byte aligned");
  if (p.n < 0 || p.n > INT32_MAX) return invalid_argument("rms_norm: n: expected in [0, 2^31), got ", p.n);
  if (p.n == 0) return Status::Ok();
  rms_norm_kernel<<<static_cast<unsigned>(p.n), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status rope_q_launch(const RopeQParams& p, cudaStream_t stream) {
  if (!p.q || !p.positions || !p.cos || !p.sin) return invalid_argument("rope_q: q, positions, cos and sin must be set");
  if (p.head_dim <= 0 || p.head_dim % 2 != 0) return invalid_argument("rope_q: head_dim: expected positive and even, got ", p.head_dim);
  if (p.num_heads <= 0) return invalid_argument("rope_q: num_heads: expected > 0, got ", p.num_heads);
  if (p.n < 0) return invalid_argument("rope_q: n: expected >= 0, got ", p.n);
  if (p.n == 0) return Status::Ok();
  rope_q_kernel<<<blocks_for(p.n * p.num_heads * (p.head_dim / 2)), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status silu_mul_launch(const SiluMulParams& p, cudaStream_t stream) {
  if (!p.gate || !p.up || !p.out) return invalid_argument("silu_mul: gate, up and out must be set");
  if (p.dim <= 0 || p.dim % 8 != 0) return invalid_argument("silu_mul: dim: expected a positive multiple of 8, got ", p.dim);
  if (p.in_stride < p.dim || p.in_stride % 8 != 0) {
    return invalid_argument("silu_mul: in_stride: expected a multiple of 8 >= dim (", p.dim, "), got ", p.in_stride);
  }
  if (!aligned16(p.gate) || !aligned16(p.up) || !aligned16(p.out)) return invalid_argument("silu_mul: gate, up and out must be 16-byte aligned");
  if (p.out == p.gate && p.in_stride != p.dim) return invalid_argument("silu_mul: out may alias gate only when in_stride == dim");
  if (p.n < 0) return invalid_argument("silu_mul: n: expected >= 0, got ", p.n);
  if (p.n == 0) return Status::Ok();
  silu_mul_kernel<<<blocks_for(p.n * (p.dim / 8)), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status embedding_launch(const EmbeddingParams& p, cudaStream_t stream) {
  if (!p.table || !p.ids || !p.out) return invalid_argument("embedding: table, ids and out must be set");
  if (p.hidden <= 0 || p.hidden % 8 != 0) return invalid_argument("embedding: hidden: expected a positive multiple of 8, got ", p.hidden);
  if (p.vocab <= 0) return invalid_argument("embedding: vocab: expected > 0, got ", p.vocab);
  if (!aligned16(p.table) || !aligned16(p.out)) return invalid_argument("embedding: table and out must be 16-byte aligned");
  if (p.n < 0) return invalid_argument("embedding: n: expected >= 0, got ", p.n);
  if (p.n == 0) return Status::Ok();
  embedding_kernel<<<blocks_for(p.n * (p.hidden / 8)), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status kv_append_launch(const KvAppendParams& p, cudaStream_t stream) {
  if (!p.k || !p.v || !p.slot_mapping || !p.arena) return invalid_argument("kv_append: k, v, slot_mapping and arena must be set");
  if (p.head_dim <= 0 || p.head_dim % 8 != 0) return invalid_argument("kv_append: head_dim: expected a positive multiple of 8, got ", p.head_dim);
  if (p.num_kv_heads <= 0 || p.block_tokens <= 0 || p.num_slots <= 0) {
    return invalid_argument("kv_append: num_kv_heads (", p.num_kv_heads, "), block_tokens (", p.block_tokens,
                            ") and num_slots (", p.num_slots, ") must be positive");
  }
  if (p.num_slots * p.block_tokens > INT32_MAX) {
    return invalid_argument("kv_append: num_slots x block_tokens = ", p.num_slots * p.block_tokens,
                            " does not fit the int32 slot_mapping");
  }
  if (!aligned16(p.k) || !aligned16(p.v) || !aligned16(p.arena)) return invalid_argument("kv_append: k, v and arena must be 16-byte aligned");
  if (p.n < 0) return invalid_argument("kv_append: n: expected >= 0, got ", p.n);
  if (p.n == 0) return Status::Ok();
  kv_append_kernel<<<blocks_for(p.n * p.num_kv_heads * (p.head_dim / 8)), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status argmax_launch(const ArgmaxParams& p, cudaStream_t stream) {
  if (!p.logits || !p.out) return invalid_argument("argmax: logits and out must be set");
  if (p.vocab <= 0 || p.vocab > INT32_MAX) return invalid_argument("argmax: vocab: expected in [1, 2^31), got ", p.vocab);
  if (p.n < 0 || p.n > INT32_MAX) return invalid_argument("argmax: n: expected in [0, 2^31), got ", p.n);
  if (p.n == 0) return Status::Ok();
  if (p.logits_dtype == DType::kF32) {
    argmax_kernel<float><<<static_cast<unsigned>(p.n), kThreads, 0, stream>>>(p);
  } else if (p.logits_dtype == DType::kBF16) {
    argmax_kernel<bf16><<<static_cast<unsigned>(p.n), kThreads, 0, stream>>>(p);
  } else {
    return invalid_argument("argmax: logits_dtype: expected f32 or bf16, got ", dtype_name(p.logits_dtype));
  }
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
