// Key compression on CUDA (attention/cuda/compress.h). One CTA per (window, kv head), one thread per
// head dimension: thread e sums element e of the window's rotated keys. Representatives are 1/16 of
// the keys and computed once per sealed window, so this is simple rather than fast.
#include "attention/cuda/compress.h"

#include "attention/cuda/compress_kernel.cuh"

#include "core/cuda/check.h"

namespace mnemo::cuda {

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
