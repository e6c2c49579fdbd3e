// Host side of CUDA stage-2 sparse attention: shape validation, split planning, workspace sizes.
// Plain C++ (no kernels), so the checks are testable without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/cuda/sparse.h"

namespace mnemo::cuda {
namespace {

constexpr int kRowsPerDecodeCta = 16;      // DecodeConfig::kRows
constexpr int64_t kMinKeysPerSplit = 128;  // 4 warps x one 32-token tile
constexpr int kMaxSplits = 8192;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

SparseDecodePlan plan_sparse_decode(int total_q, int num_heads, int num_kv_heads, int head_dim, int block_tokens,
                                    int max_selected, int num_sms) {
  SparseDecodePlan plan;
  if (total_q <= 0 || num_kv_heads <= 0 || num_heads <= 0 || block_tokens <= 0 || max_selected <= 0) return plan;
  const int64_t group = std::max(1, num_heads / num_kv_heads);
  const int64_t ctas_per_split = int64_t{total_q} * num_kv_heads * ceil_div(group, kRowsPerDecodeCta);
  const int64_t target_ctas = 2 * int64_t{std::max(num_sms, 1)};
  const int64_t min_entries = ceil_div(kMinKeysPerSplit, block_tokens);
  const int64_t by_entries = std::max<int64_t>(1, max_selected / min_entries);
  const int64_t splits =
      std::clamp<int64_t>(ceil_div(target_ctas, ctas_per_split), 1, std::min<int64_t>(by_entries, kMaxSplits));
  // Whole entries per split, none empty.
  plan.num_splits = static_cast<int>(ceil_div(max_selected, ceil_div(max_selected, splits)));
  SparseAttentionCudaParams p;
  p.total_q = total_q;
  p.num_heads = num_heads;
  p.kv.head_dim = head_dim;
  p.num_splits = plan.num_splits;
  plan.workspace_bytes = sparse_decode_workspace_bytes(p);
  return plan;
}

size_t sparse_decode_workspace_bytes(const SparseAttentionCudaParams& p) {
  if (p.num_splits <= 1 || p.total_q <= 0 || p.num_heads <= 0) return 0;
  const size_t rows = size_t(p.total_q) * p.num_heads * p.num_splits;
  const size_t o_bytes = (rows * p.kv.head_dim * sizeof(float) + 255) / 256 * 256;
  return o_bytes + rows * sizeof(float);
}

Status validate(const SparseAttentionCudaParams& p) {
  const char* op = "sparse attention";
  const PagedKvBf16& kv = p.kv;
  if (p.batch <= 0 || p.batch > 65535) return invalid_argument(op, ": batch: expected in [1, 65535], got ", p.batch);
  if (p.total_q <= 0 || p.total_q > 65535 * 1024) {
    return invalid_argument(op, ": total_q: expected in [1, ", 65535 * 1024, "], got ", p.total_q);
  }
  if (kv.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % kv.num_kv_heads != 0) {
    return invalid_argument(op, ": num_heads (", p.num_heads, ") must be a positive multiple of kv.num_kv_heads (",
                            kv.num_kv_heads, ")");
  }
  if (kv.head_dim != 64 && kv.head_dim != 128) {
    return invalid_argument(op, ": kv.head_dim: expected 64 or 128, got ", kv.head_dim);
  }
  if (kv.block_tokens <= 0) return invalid_argument(op, ": kv.block_tokens: expected > 0, got ", kv.block_tokens);
  if (!kv.arena || !kv.block_tables || !kv.kv_lens) {
    return invalid_argument(op, ": kv.arena, kv.block_tables and kv.kv_lens must be set");
  }
  if (!aligned(kv.arena, 16)) return invalid_argument(op, ": kv.arena must be 16-byte aligned");
  if (kv.max_kv_len <= 0) return invalid_argument(op, ": kv.max_kv_len: expected > 0, got ", kv.max_kv_len);
  const int64_t max_blocks = ceil_div(kv.max_kv_len, kv.block_tokens);
  if (kv.block_table_stride < max_blocks) {
    return invalid_argument(op, ": kv.block_table_stride: expected >= ", max_blocks, ", got ", kv.block_table_stride);
  }
  const RopeTableView& rope = p.key_rope;
  if ((rope.cos == nullptr) != (rope.sin == nullptr)) {
    return invalid_argument(op, ": key_rope.cos and key_rope.sin must both be set or both null");
  }
  if (rope.cos != nullptr) {
    if (!aligned(rope.cos, 16) || !aligned(rope.sin, 16)) {
      return invalid_argument(op, ": key_rope.cos and key_rope.sin must be 16-byte aligned");
    }
    if (rope.len < kv.max_kv_len) {
      return invalid_argument(op, ": key_rope.len: expected >= kv.max_kv_len (", kv.max_kv_len, "), got ", rope.len);
    }
  }
  if (!(p.softmax_scale > 0.0f) || !std::isfinite(p.softmax_scale)) {
    return invalid_argument(op, ": softmax_scale: expected a positive finite value, got ", p.softmax_scale);
  }
  if (!p.q || !p.out || !p.q_indptr || !p.q_index || !p.block_ids) {
    return invalid_argument(op, ": q, q_indptr, q_index, block_ids and out must be set");
  }
  if (!aligned(p.q, 4) || !aligned(p.out, 4)) return invalid_argument(op, ": q and out must be 4-byte aligned");
  if (p.max_selected <= 0) return invalid_argument(op, ": max_selected: expected > 0, got ", p.max_selected);
  if (p.num_splits < 1 || p.num_splits > std::min(p.max_selected, kMaxSplits)) {
    return invalid_argument(op, ": num_splits: expected in [1, min(max_selected, ", kMaxSplits, ")], got ",
                            p.num_splits);
  }
  return Status::Ok();
}

}  // namespace mnemo::cuda
