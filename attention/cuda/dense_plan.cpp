// Host side of the CUDA dense attention ops: shape validation, split planning, workspace sizes.
// Plain C++ (no kernels), so the checks are testable without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/cuda/dense.h"

namespace mnemo::cuda {
namespace {

constexpr int kRowsPerDecodeCta = 16;     // query heads per decode CTA (DecodeConfig::kRows)
constexpr int64_t kMinKeysPerSplit = 128;  // 4 warps x one 32-token tile
constexpr int kMaxSplits = 8192;           // the merge kernel keeps one float per split in shared memory

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks shared by decode and prefill; `op` prefixes every message.
Status validate_common(const char* op, int batch, int num_heads, const PagedKvBf16& kv,
                       const RopeTableView& rope, float softmax_scale, int64_t sliding_window) {
  if (batch <= 0 || batch > 65535) return invalid_argument(op, ": batch: expected in [1, 65535], got ", batch);
  if (kv.num_kv_heads <= 0 || num_heads <= 0 || num_heads % kv.num_kv_heads != 0) {
    return invalid_argument(op, ": num_heads (", num_heads, ") must be a positive multiple of kv.num_kv_heads (",
                            kv.num_kv_heads, ")");
  }
  if (kv.head_dim != 16 && kv.head_dim != 32 && kv.head_dim != 64 && kv.head_dim != 128) {
    return invalid_argument(op, ": kv.head_dim: expected 16, 32, 64 or 128, got ", kv.head_dim);
  }
  if (kv.block_tokens <= 0) return invalid_argument(op, ": kv.block_tokens: expected > 0, got ", kv.block_tokens);
  if (kv.arena == nullptr || kv.block_tables == nullptr || kv.kv_lens == nullptr) {
    return invalid_argument(op, ": kv.arena, kv.block_tables and kv.kv_lens must be set");
  }
  if (!aligned(kv.arena, 16)) return invalid_argument(op, ": kv.arena must be 16-byte aligned");
  if (kv.max_kv_len <= 0) return invalid_argument(op, ": kv.max_kv_len: expected > 0, got ", kv.max_kv_len);
  const int64_t max_blocks = ceil_div(kv.max_kv_len, kv.block_tokens);
  if (kv.block_table_stride < max_blocks) {
    return invalid_argument(op, ": kv.block_table_stride: expected >= ", max_blocks, " (max_kv_len ",
                            kv.max_kv_len, " / block_tokens ", kv.block_tokens, "), got ",
                            kv.block_table_stride);
  }
  if ((rope.cos == nullptr) != (rope.sin == nullptr)) {
    return invalid_argument(op, ": key_rope.cos and key_rope.sin must both be set or both null");
  }
  if (rope.cos != nullptr) {
    if (!aligned(rope.cos, 16) || !aligned(rope.sin, 16)) {
      return invalid_argument(op, ": key_rope.cos and key_rope.sin must be 16-byte aligned");
    }
    if (rope.len < kv.max_kv_len) {
      return invalid_argument(op, ": key_rope.len: expected >= kv.max_kv_len (", kv.max_kv_len, "), got ",
                              rope.len);
    }
  }
  if (!(softmax_scale > 0.0f) || !std::isfinite(softmax_scale)) {
    return invalid_argument(op, ": softmax_scale: expected a positive finite value, got ", softmax_scale);
  }
  if (sliding_window < 0) return invalid_argument(op, ": sliding_window: expected >= 0, got ", sliding_window);
  return Status::Ok();
}

}  // namespace

DenseDecodePlan plan_dense_decode(int batch, int num_heads, int num_kv_heads, int head_dim, int block_tokens,
                                  int64_t max_kv_len, int num_sms) {
  DenseDecodePlan plan;
  if (batch <= 0 || num_kv_heads <= 0 || num_heads <= 0 || block_tokens <= 0 || max_kv_len <= 0) return plan;
  const int64_t group = std::max(1, num_heads / num_kv_heads);
  const int64_t ctas_per_split = int64_t{batch} * num_kv_heads * ceil_div(group, kRowsPerDecodeCta);
  const int64_t target_ctas = 2 * int64_t{std::max(num_sms, 1)};
  const int64_t max_blocks = ceil_div(max_kv_len, block_tokens);
  const int64_t min_blocks_per_split = ceil_div(kMinKeysPerSplit, block_tokens);
  const int64_t by_keys = std::max<int64_t>(1, max_blocks / min_blocks_per_split);
  const int64_t splits = std::clamp<int64_t>(ceil_div(target_ctas, ctas_per_split), 1, std::min<int64_t>(by_keys, kMaxSplits));
  // Splits are whole blocks: drop splits that would be empty for the longest sequence.
  plan.num_splits = static_cast<int>(ceil_div(max_blocks, ceil_div(max_blocks, splits)));
  DenseDecodeParams p;
  p.batch = batch;
  p.num_heads = num_heads;
  p.kv.head_dim = head_dim;
  p.num_splits = plan.num_splits;
  plan.workspace_bytes = dense_decode_workspace_bytes(p);
  return plan;
}

size_t dense_decode_workspace_bytes(const DenseDecodeParams& p) {
  if (p.num_splits <= 1 || p.batch <= 0 || p.num_heads <= 0) return 0;
  const size_t rows = size_t(p.batch) * p.num_heads * p.num_splits;
  const size_t o_bytes = (rows * p.kv.head_dim * sizeof(float) + 255) / 256 * 256;
  return o_bytes + rows * sizeof(float);
}

Status validate(const DenseDecodeParams& p) {
  const char* op = "dense decode";
  MNEMO_RETURN_IF_ERROR(
      validate_common(op, p.batch, p.num_heads, p.kv, p.key_rope, p.softmax_scale, p.sliding_window));
  if (p.q == nullptr || p.out == nullptr) return invalid_argument(op, ": q and out must be set");
  if (!aligned(p.q, 4)) return invalid_argument(op, ": q must be 4-byte aligned");
  if (p.num_splits < 1 || p.num_splits > kMaxSplits) {
    return invalid_argument(op, ": num_splits: expected in [1, ", kMaxSplits, "], got ", p.num_splits);
  }
  return Status::Ok();
}

Status validate(const DensePrefillParams& p) {
  const char* op = "dense prefill";
  MNEMO_RETURN_IF_ERROR(
      validate_common(op, p.batch, p.num_heads, p.kv, p.key_rope, p.softmax_scale, p.sliding_window));
  if (p.q == nullptr || p.out == nullptr || p.q_indptr == nullptr || p.q_index == nullptr) {
    return invalid_argument(op, ": q, q_indptr, q_index and out must be set");
  }
  if (!aligned(p.q, 4) || !aligned(p.out, 4)) return invalid_argument(op, ": q and out must be 4-byte aligned");
  if (p.max_q_per_seq <= 0) return invalid_argument(op, ": max_q_per_seq: expected > 0, got ", p.max_q_per_seq);
  const int64_t row_tiles = ceil_div(int64_t{p.max_q_per_seq} * (p.num_heads / p.kv.num_kv_heads), 64);
  if (row_tiles > INT32_MAX) {
    return invalid_argument(op, ": max_q_per_seq (", p.max_q_per_seq, ") x group needs ", row_tiles,
                            " row tiles, more than a grid holds");
  }
  return Status::Ok();
}

}  // namespace mnemo::cuda
