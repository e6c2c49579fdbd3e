// InfLLM-V2 block selection: stage 1 (query × compressed-key scores → block scores) and top-k.
//
// Stage 1, per query token i (stream index t_i) and kv head g, over the query heads h of g's GQA group:
//   s_h,j = softmax_scale · <q_i,h , ck_j,g>       for the tier-1 windows j visible to the query:
//           j·stride + kernel_size − 1 <= t_i (all its tokens at or before the query) and j computed
//   p_j   = Σ_h exp(s_h,j − LSE_h)                 (the group's summed softmax)
//   score_b = max { p_j : window j overlaps block b }, with p_j = 0 for windows not visible
// Decode needs no further mask: the windows computed so far are all complete.
//
// LSE_h, the normaliser — two variants:
//   exact  (lse_keys.keys == null): LSE_h = log Σ_j exp(s_h,j) over the visible tier-1 windows, i.e.
//          p_j sums true softmax probabilities. Needs every head's row before any p_j (two passes).
//   approx (lse_keys = tier 2, kernel 128 / stride 64): LSE_h = log Σ_j' exp(scale · <q_i,h, ck2_j'>)
//          over the visible tier-2 windows — the paper's trick: a 4x shorter pass gives each head's
//          normaliser, then one tier-1 pass normalises and sums the heads (1.25x instead of 2x). Tier-2
//          keys average 4 tier-1 windows, so LSE2 under-counts mass (fewer, smoother terms): the p_j are
//          not probabilities, each head is scaled by exp(LSE_h − LSE2_h), and the heads' relative
//          weights shift; within one head the order of windows is unchanged. With tier 2 equal to tier 1
//          the two variants are the same computation. No visible tier-2 window (t_i < 127): exact.
//
// Window j covers tokens [j·s, j·s + k); block b covers [b·B, (b+1)·B). They overlap iff
//   j·s < (b+1)·B  and  j·s + k > b·B   ⇔   j ∈ [⌊(b·B − k)/s⌋ + 1, ⌈(b+1)·B/s⌉ − 1]
// (see windows_overlapping_block). When s divides B and k, this is the published 1-D max-pool over the
// window scores with kernel (B + k)/s − 1, stride B/s, padding k/s − 1 — kernel 5, stride 4, padding 1
// for k 32, s 16, B 64 (block b reads windows 4b−1 … 4b+3), over a row zero-padded on the right.
//
// Top-k, per (query token, kv head), with b_q = t_i / block_size (see attention/sparse_params.h):
//   forced: blocks [0, init_blocks) and [b_q − window_size/block_size, b_q] that are not in the future;
//   the rest of the budget: the highest-scoring other non-future blocks, ties to the lower block index;
//   never a future block (start > t_i); exactly min(max(budget, |forced|), b_q + 1) blocks;
//   ids ascending, padded with −1. NaN scores rank below every number.
// No N × N matrix: stage 1 works one query row at a time over the compressed keys.
#pragma once

#include <cstdint>

#include "attention/compress.h"
#include "attention/sparse_params.h"
#include "core/status.h"

namespace mnemo {

struct WindowRange {
  int64_t first = 0, last = -1;  // inclusive; empty when last < first
};

// Windows (kernel_size, kernel_stride) whose tokens intersect block b's tokens.
inline WindowRange windows_overlapping_block(int64_t b, int block_size, int kernel_size, int kernel_stride) {
  const int64_t lo = b * block_size - kernel_size;  // j·s > lo
  WindowRange r;
  r.first = lo < 0 ? 0 : lo / kernel_stride + 1;
  r.last = ((b + 1) * block_size - 1) / kernel_stride;  // j·s < (b + 1)·B
  return r;
}

struct BlockScoreParams {
  const float* q = nullptr;          // [num_q, num_heads, head_dim]: rotated, or un-rotated with use_nope
  const int64_t* q_index = nullptr;  // [num_q] stream index of each query
  int64_t num_q = 0;
  int num_heads = 0;                 // a multiple of keys.num_kv_heads
  CompressedKeysView keys;           // tier 1 (kernel 32, stride 16)
  CompressedKeysView lse_keys;       // tier 2 for the approximate normaliser; keys == null: exact
  int block_size = 64;
  int64_t num_blocks = 0;            // blocks of the sequence (row width); t_i / block_size < num_blocks
  float softmax_scale = 0.0f;
  float* block_scores = nullptr;     // [num_q, num_kv_heads, num_blocks]
};

// Stage 1 on the CPU (fp32, OpenMP over query rows and kv heads).
Status block_scores_cpu(const BlockScoreParams& p);
Status validate(const BlockScoreParams& p);

struct BlockTopkParams {
  const float* block_scores = nullptr;  // [num_q, num_kv_heads, num_blocks]
  const int64_t* q_index = nullptr;     // [num_q]
  int64_t num_q = 0;
  int num_kv_heads = 0;
  int64_t num_blocks = 0;               // t_i / block_size < num_blocks
  SparseParams sparse;                  // block_size, init_blocks, window_size, topk
  int max_selected = 0;                 // row width, >= max_selected_blocks(sparse)
  int32_t* block_ids = nullptr;         // [num_q, num_kv_heads, max_selected] ascending, −1 padded
  int32_t* num_selected = nullptr;      // [num_q, num_kv_heads]; may be null
};

Status select_topk_cpu(const BlockTopkParams& p);
Status validate(const BlockTopkParams& p);

// Stage 1 and top-k fused: scores are kept for a tile of queries at a time (score.block_scores is
// ignored; score.block_size must equal sparse.block_size). Same results as the two calls.
struct BlockSelectParams {
  BlockScoreParams score;
  SparseParams sparse;
  int max_selected = 0;
  int32_t* block_ids = nullptr;     // [num_q, num_kv_heads, max_selected]
  int32_t* num_selected = nullptr;  // [num_q, num_kv_heads]; may be null
};

Status select_blocks_cpu(const BlockSelectParams& p);

}  // namespace mnemo
