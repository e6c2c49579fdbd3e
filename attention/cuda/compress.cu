// Key compression on CUDA (attention/cuda/compress.h). One CTA per (window, kv head), one thread per
// head dimension: thread e sums element e of the window's rotated keys. Representatives are 1/16 of
// the keys and computed once per sealed window, so this is simple rather than fast.
#include "attention/cuda/compress.h"

#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

__global__ void compress_keys_kernel(const CompressKeysCudaParams p) {
  const int e = static_cast<int>(threadIdx.x);
  const int d = p.kv.head_dim;
  if (e >= d) return;
  const int half = d / 2;
  const int g = static_cast<int>(blockIdx.y);
  const int64_t j = p.first_window + blockIdx.x;
  const int64_t t0 = j * p.kernel_stride;
  const int64_t head_elems = int64_t{p.kv.block_tokens} * d;
  const int i = e < half ? e : e - half;  // rotation pair index
  float sum = 0.0f;
  for (int64_t t = t0; t < t0 + p.kernel_size; ++t) {
    const int64_t block = t / p.kv.block_tokens, offset = t % p.kv.block_tokens;
    const bf16* k = p.kv.arena + int64_t{p.kv.block_tables[block]} * p.kv.slot_elems() + g * head_elems + offset * d;
    float x;
    if (p.key_rope.cos != nullptr) {
      const float c = p.key_rope.cos[t * half + i], s = p.key_rope.sin[t * half + i];
      const float x0 = __bfloat162float(k[i]), x1 = __bfloat162float(k[i + half]);
      x = e < half ? x0 * c - x1 * s : x1 * c + x0 * s;
    } else {
      x = __bfloat162float(k[e]);
    }
    sum += x;
  }
  p.out[g * p.head_stride + j * d + e] = __float2bfloat16_rn(sum * (1.0f / static_cast<float>(p.kernel_size)));
}

}  // namespace

Status validate(const CompressKeysCudaParams& p) {
  if (p.kernel_size <= 0 || p.kernel_stride <= 0 || p.kernel_stride > p.kernel_size) {
    return invalid_argument("compress_keys: need 0 < kernel_stride <= kernel_size, got kernel_size ", p.kernel_size,
                            ", kernel_stride ", p.kernel_stride);
  }
  if (p.kv.head_dim <= 0 || p.kv.head_dim % 2 != 0 || p.kv.head_dim > 1024) {
    return invalid_argument("compress_keys: kv.head_dim: expected even in [2, 1024], got ", p.kv.head_dim);
  }
  if (p.kv.num_kv_heads <= 0 || p.kv.block_tokens <= 0) {
    return invalid_argument("compress_keys: kv.num_kv_heads (", p.kv.num_kv_heads, ") and kv.block_tokens (",
                            p.kv.block_tokens, ") must be positive");
  }
  if (p.num_windows < 0 || p.first_window < 0) {
    return invalid_argument("compress_keys: first_window (", p.first_window, ") and num_windows (", p.num_windows,
                            ") must be >= 0");
  }
  if (p.num_windows == 0) return Status::Ok();
  if (!p.kv.arena || !p.kv.block_tables || !p.out) return invalid_argument("compress_keys: kv.arena, kv.block_tables and out must be set");
  if (p.head_stride < (p.first_window + p.num_windows) * p.kv.head_dim) {
    return invalid_argument("compress_keys: head_stride: expected >= (first_window + num_windows) x head_dim = ",
                            (p.first_window + p.num_windows) * p.kv.head_dim, ", got ", p.head_stride);
  }
  const int64_t last_token = (p.first_window + p.num_windows - 1) * p.kernel_stride + p.kernel_size;
  if (p.key_rope.cos != nullptr && p.key_rope.len < last_token) {
    return invalid_argument("compress_keys: key_rope.len: expected >= ", last_token, " (the last window's end), got ",
                            p.key_rope.len);
  }
  if (p.num_windows > INT32_MAX) return invalid_argument("compress_keys: num_windows: expected < 2^31, got ", p.num_windows);
  return Status::Ok();
}

Status compress_keys_launch(const CompressKeysCudaParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  if (p.num_windows == 0) return Status::Ok();
  const int threads = (p.kv.head_dim + 31) / 32 * 32;
  const dim3 grid(static_cast<unsigned>(p.num_windows), static_cast<unsigned>(p.kv.num_kv_heads));
  compress_keys_kernel<<<grid, threads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
