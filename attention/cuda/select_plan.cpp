// Host side of CUDA stage 1 and top-k: shape validation (messages name the field, expected and got).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/cuda/select.h"

namespace mnemo::cuda {
namespace {

Status validate_keys(const CompressedKeysBf16& k, const char* name, bool required) {
  if (k.keys == nullptr) {
    if (required) return invalid_argument("block scores: ", name, ".keys must be set");
    return Status::Ok();
  }
  if (reinterpret_cast<uintptr_t>(k.keys) % 16 != 0) return invalid_argument("block scores: ", name, ".keys must be 16-byte aligned");
  if (k.kernel_size <= 0 || k.kernel_stride <= 0 || k.kernel_stride > k.kernel_size || k.num_compressed < 0) {
    return invalid_argument("block scores: ", name, ": expected 0 < kernel_stride <= kernel_size and num_compressed >= 0, got ",
                            k.kernel_stride, ", ", k.kernel_size, ", ", k.num_compressed);
  }
  return Status::Ok();
}

}  // namespace

BlockScorePlan plan_block_scores(int num_q, int num_heads, int num_kv_heads, int64_t num_compressed, int num_sms) {
  BlockScorePlan plan;
  if (num_q <= 0 || num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) return plan;
  const int64_t group = num_heads / num_kv_heads;
  const int64_t queries_per_cta = group > 64 ? 1 : 64 / group;
  const int64_t ctas = (num_q + queries_per_cta - 1) / queries_per_cta * num_kv_heads;
  const int64_t target = 2 * int64_t{num_sms > 0 ? num_sms : 1};
  const int64_t max_by_tiles = std::max<int64_t>(1, (num_compressed + 63) / 64);  // >= 2 tiles of 32 per split
  plan.num_splits = static_cast<int>(std::clamp<int64_t>((target + ctas - 1) / ctas, 1, std::min<int64_t>(max_by_tiles, 1024)));
  BlockScoreCudaParams p;
  p.num_q = num_q;
  p.num_heads = num_heads;
  p.num_splits = plan.num_splits;
  plan.workspace_bytes = block_scores_workspace_bytes(p);
  return plan;
}

size_t block_scores_workspace_bytes(const BlockScoreCudaParams& p) {
  if (p.num_splits <= 1) return 0;
  return size_t(p.num_q) * p.num_heads * p.num_splits * 2 * sizeof(float);
}

Status validate(const BlockScoreCudaParams& p) {
  if (!p.q || !p.q_index || !p.block_scores) return invalid_argument("block scores: q, q_index and block_scores must be set");
  if (p.num_q <= 0 || p.num_q > (1 << 30)) return invalid_argument("block scores: num_q: expected in [1, 2^30], got ", p.num_q);
  if (p.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % p.num_kv_heads != 0) {
    return invalid_argument("block scores: num_heads (", p.num_heads, ") must be a positive multiple of num_kv_heads (",
                            p.num_kv_heads, ")");
  }
  if (p.num_heads / p.num_kv_heads > 64) {
    return invalid_argument("block scores: GQA group: expected <= 64, got ", p.num_heads / p.num_kv_heads);
  }
  if (p.head_dim != 64 && p.head_dim != 128) return invalid_argument("block scores: head_dim: expected 64 or 128, got ", p.head_dim);
  MNEMO_RETURN_IF_ERROR(validate_keys(p.keys, "keys", true));
  MNEMO_RETURN_IF_ERROR(validate_keys(p.lse_keys, "lse_keys", false));
  const int s = p.keys.kernel_stride;
  if (p.block_size <= 0 || p.block_size % s != 0 || p.keys.kernel_size % s != 0 || 32 % (p.block_size / s) != 0 ||
      p.keys.kernel_size / s - 1 > 32) {
    return invalid_argument("block scores: need kernel_stride | kernel_size, kernel_stride | block_size and (block_size / "
                            "kernel_stride) | 32, got kernel_size ", p.keys.kernel_size, ", kernel_stride ", s,
                            ", block_size ", p.block_size);
  }
  if (p.num_blocks <= 0) return invalid_argument("block scores: num_blocks: expected > 0, got ", p.num_blocks);
  if (p.num_splits < 1 || p.num_splits > 1024) {
    return invalid_argument("block scores: num_splits: expected in [1, 1024], got ", p.num_splits);
  }
  if (!(p.softmax_scale > 0.0f) || !std::isfinite(p.softmax_scale)) {
    return invalid_argument("block scores: softmax_scale: expected a positive finite value, got ", p.softmax_scale);
  }
  return Status::Ok();
}

Status validate(const BlockTopkCudaParams& p) {
  if (!p.block_scores || !p.q_index || !p.block_ids) return invalid_argument("top-k: block_scores, q_index and block_ids must be set");
  if (p.num_q <= 0 || p.num_kv_heads <= 0) {
    return invalid_argument("top-k: num_q and num_kv_heads: expected > 0, got ", p.num_q, ", ", p.num_kv_heads);
  }
  MNEMO_RETURN_IF_ERROR(validate(p.sparse));
  if (p.max_selected < max_selected_blocks(p.sparse)) {
    return invalid_argument("top-k: max_selected: expected >= ", max_selected_blocks(p.sparse), ", got ", p.max_selected);
  }
  if (p.num_blocks <= 0 || p.num_blocks > (int64_t{1} << 19)) {
    return invalid_argument("top-k: num_blocks: expected in [1, 2^19] (shared-memory masks), got ", p.num_blocks);
  }
  return Status::Ok();
}

}  // namespace mnemo::cuda
