// The f32 residual stream of the CUDA forward (model/cuda/ops.h): embedding into f32, RMSNorm from
// f32 into the bf16 GEMM input, the residual add, and the RoPE table built on the device.
#include <cmath>
#include <cstdint>

#include "core/cuda/check.h"
#include "model/cuda/ops.h"
#include "model/cuda/vec8.cuh"

namespace mnemo::cuda {
namespace {

using namespace vec8;

__global__ void embed_f32_kernel(const EmbedF32Params p) {
  const int vecs = p.hidden / 8;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.n * vecs) return;
  const int64_t row = idx / vecs;
  const int v = static_cast<int>(idx % vecs);
  const int32_t id = p.ids[row];
  float f[8] = {};
  if (id >= 0 && id < p.vocab) {
    unpack8(*reinterpret_cast<const uint4*>(p.table + int64_t{id} * p.hidden + v * 8), f);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] *= p.scale;
  } else if (v == 0 && p.invalid_ids != nullptr) {
    atomicAdd(p.invalid_ids, 1);
  }
  float4* out = reinterpret_cast<float4*>(p.out + row * p.hidden + v * 8);
  out[0] = make_float4(f[0], f[1], f[2], f[3]);
  out[1] = make_float4(f[4], f[5], f[6], f[7]);
}

// One CTA per output row; the f32 row is read twice (the second time from L1/L2).
__global__ void rms_norm_f32_kernel(const RmsNormF32Params p) {
  __shared__ float scratch[kThreads / 32];
  const int64_t r = blockIdx.x;
  const int64_t src = p.rows != nullptr ? p.rows[r] : r;
  const float* x = p.x + src * p.dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) ss += x[i] * x[i];
#pragma unroll
  for (int m = 16; m > 0; m /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, m);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
  const float inv = 1.0f / sqrtf(total / static_cast<float>(p.dim) + p.eps);
  for (int v = threadIdx.x; v < p.dim / 8; v += blockDim.x) {
    float f[8], w[8];
    const float4 a = *reinterpret_cast<const float4*>(x + v * 8);
    const float4 b = *reinterpret_cast<const float4*>(x + v * 8 + 4);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    unpack8(*reinterpret_cast<const uint4*>(p.weight + v * 8), w);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = w[i] * (f[i] * inv) * p.out_scale;
    *reinterpret_cast<uint4*>(p.y + r * p.dim + v * 8) = pack8(f);
  }
}

__global__ void residual_add_kernel(const ResidualAddParams p) {
  const int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (v >= p.n / 8) return;
  float o[8];
  unpack8(*reinterpret_cast<const uint4*>(p.o + v * 8), o);
  float4* x = reinterpret_cast<float4*>(p.x + v * 8);
  float4 a = x[0], b = x[1];
  a.x += p.alpha * o[0], a.y += p.alpha * o[1], a.z += p.alpha * o[2], a.w += p.alpha * o[3];
  b.x += p.alpha * o[4], b.y += p.alpha * o[5], b.z += p.alpha * o[6], b.w += p.alpha * o[7];
  x[0] = a, x[1] = b;
}

__global__ void rope_table_kernel(const RopeTableParams p) {
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= p.len * p.half) return;
  const int64_t pos = idx / p.half;
  const int i = static_cast<int>(idx % p.half);
  const double a = static_cast<double>(pos) * static_cast<double>(p.inv_freq[i]);
  double s, c;
  sincos(a, &s, &c);
  p.cos[idx] = static_cast<float>(c * p.scale);
  p.sin[idx] = static_cast<float>(s * p.scale);
}

__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_normal_bf16_kernel(bf16* out, int64_t n, uint64_t seed, float std) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint64_t r = mix64(seed ^ mix64(static_cast<uint64_t>(i)));
  const float u1 = (static_cast<float>(r >> 40) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
  const float u2 = static_cast<float>((r >> 16) & 0xffffffu) * (1.0f / 16777216.0f);
  out[i] = __float2bfloat16_rn(std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
}

}  // namespace

Status fill_normal_bf16_launch(bf16* out, int64_t n, uint64_t seed, float std, cudaStream_t stream) {
  if (!out) return invalid_argument("fill_normal_bf16: out must be set");
  if (n < 0) return invalid_argument("fill_normal_bf16: n: expected >= 0, got ", n);
  if (n == 0) return Status::Ok();
  fill_normal_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, n, seed, std);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status embed_f32_launch(const EmbedF32Params& p, cudaStream_t stream) {
  if (!p.table || !p.ids || !p.out) return invalid_argument("embed_f32: table, ids and out must be set");
  if (p.hidden <= 0 || p.hidden % 8 != 0) return invalid_argument("embed_f32: hidden: expected a positive multiple of 8, got ", p.hidden);
  if (p.vocab <= 0) return invalid_argument("embed_f32: vocab: expected > 0, got ", p.vocab);
  if (!aligned16(p.table) || !aligned16(p.out)) return invalid_argument("embed_f32: table and out must be 16-byte aligned");
  if (p.n < 0) return invalid_argument("embed_f32: n: expected >= 0, got ", p.n);
  if (p.n == 0) return Status::Ok();
  embed_f32_kernel<<<blocks_for(p.n * (p.hidden / 8)), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status rms_norm_f32_launch(const RmsNormF32Params& p, cudaStream_t stream) {
  if (!p.x || !p.weight || !p.y) return invalid_argument("rms_norm_f32: x, weight and y must be set");
  if (p.dim <= 0 || p.dim % 8 != 0) return invalid_argument("rms_norm_f32: dim: expected a positive multiple of 8, got ", p.dim);
  if (!aligned16(p.x) || !aligned16(p.weight) || !aligned16(p.y)) return invalid_argument("rms_norm_f32: x, weight and y must be 16-byte aligned");
  if (p.n < 0 || p.n > INT32_MAX) return invalid_argument("rms_norm_f32: n: expected in [0, 2^31), got ", p.n);
  if (p.n == 0) return Status::Ok();
  rms_norm_f32_kernel<<<static_cast<unsigned>(p.n), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status residual_add_launch(const ResidualAddParams& p, cudaStream_t stream) {
  if (!p.x || !p.o) return invalid_argument("residual_add: x and o must be set");
  if (p.n < 0 || p.n % 8 != 0) return invalid_argument("residual_add: n: expected a non-negative multiple of 8, got ", p.n);
  if (!aligned16(p.x) || !aligned16(p.o)) return invalid_argument("residual_add: x and o must be 16-byte aligned");
  if (p.n == 0) return Status::Ok();
  residual_add_kernel<<<blocks_for(p.n / 8), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status rope_table_launch(const RopeTableParams& p, cudaStream_t stream) {
  if (!p.inv_freq || !p.cos || !p.sin) return invalid_argument("rope_table: inv_freq, cos and sin must be set");
  if (p.half <= 0) return invalid_argument("rope_table: half: expected > 0, got ", p.half);
  if (p.len < 0) return invalid_argument("rope_table: len: expected >= 0, got ", p.len);
  if (p.len == 0) return Status::Ok();
  rope_table_kernel<<<blocks_for(p.len * p.half), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
