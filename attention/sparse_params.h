// SparseParams: the numbers of InfLLM-V2 block-sparse attention, as attention/ sees them.
//
// The model's SparseConfig (MiniCPM4's `sparse_config`) is mapped onto this by model/; attention/ does
// not include model/. Defaults are MiniCPM4's (DESIGN.md, "Numbers that define the shapes").
//
// Block budget per query token and kv head (the published implementation's "topk + local blocks"):
//   budget = topk + window_size / block_size                      (64 + 32 = 96 blocks by default)
//   forced = blocks [0, init_blocks) ∪ [b_q - window_size / block_size, b_q]   (1 + 33 = 34)
// where b_q = t / block_size is the query's own block; the remaining budget − |forced| blocks (62)
// are chosen by stage-1 score. A query at stream index t has b_q + 1 available (non-future) blocks
// and gets exactly min(max(budget, |forced|), b_q + 1) of them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/status.h"

namespace mnemo {

struct SparseParams {
  int kernel_size = 32;     // tokens per tier-1 compressed key (mean of kernel_size keys)
  int kernel_stride = 16;   // tokens between consecutive tier-1 compressed keys
  int block_size = 64;      // tokens per selection block (= KV block)
  int init_blocks = 1;      // leading blocks always selected
  int window_size = 2048;   // tokens of the local window; window_size / block_size blocks before the
                            // query's own block are always selected
  int topk = 64;            // blocks chosen by score on top of the local window (see budget above)
  int64_t dense_len = 8192; // contexts shorter than this run dense; -1 forces sparse
  bool use_nope = false;    // stage 1 scores un-rotated queries against un-rotated compressed keys
};

// Blocks before the query's own block that are always selected (32 by default).
inline int local_blocks(const SparseParams& p) { return p.window_size / p.block_size; }
// Blocks selected per query token when enough are available (96 by default).
inline int block_budget(const SparseParams& p) { return p.topk + local_blocks(p); }
// Width of a selection row: the budget, or the forced blocks if a config forces more than it.
inline int max_selected_blocks(const SparseParams& p) {
  return std::max(block_budget(p), p.init_blocks + local_blocks(p) + 1);
}
// Tier 2 compresses 4x coarser (kernel 128, stride 64 by default); it only approximates each head's
// softmax normaliser in stage 1.
inline int lse_kernel_size(const SparseParams& p) { return 4 * p.kernel_size; }
inline int lse_kernel_stride(const SparseParams& p) { return 4 * p.kernel_stride; }

// The dense/sparse switch: sparse once the context reaches dense_len tokens; dense_len = -1 (any
// negative value) forces sparse at every length.
inline bool use_sparse(int64_t context_len, const SparseParams& p) {
  return p.dense_len < 0 || context_len >= p.dense_len;
}

// Checks the numbers are usable: positive sizes, stride <= kernel (windows leave no gaps).
inline Status validate(const SparseParams& p) {
  if (p.kernel_size <= 0 || p.kernel_stride <= 0 || p.kernel_stride > p.kernel_size) {
    return invalid_argument("sparse params: need 0 < kernel_stride <= kernel_size, got kernel_size ",
                            p.kernel_size, ", kernel_stride ", p.kernel_stride);
  }
  if (p.block_size <= 0) return invalid_argument("sparse params: block_size must be positive, got ", p.block_size);
  if (p.init_blocks < 0 || p.window_size < 0 || p.topk < 0) {
    return invalid_argument("sparse params: init_blocks, window_size and topk must be >= 0, got ",
                            p.init_blocks, ", ", p.window_size, ", ", p.topk);
  }
  return Status::Ok();
}

}  // namespace mnemo
