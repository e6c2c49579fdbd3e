// InfLLM-V2 stage 1 (block scores) and top-k selection on CUDA. The math is attention/select.h's:
//   s_h,j   = softmax_scale · <q_i,h, ck_j,g>           tier-1 windows j visible to query i
//   p_j     = Σ_h exp(s_h,j − LSE_h)                     summed over g's GQA group, in head order
//   score_b = max(0, max { p_j : window j overlaps block b })
// LSE_h exact (lse_keys.keys null: a first pass over the tier-1 windows) or approximate (the tier-2
// windows the query sees; a query that sees none falls back to exact, as the CPU does).
//
// Compressed keys live on the device in **bf16** (`[num_kv_heads, capacity, head_dim]`, the CPU table's
// layout): they are tensor-core operands like K, and a representative table is small (1/16 of the keys
// for tier 1). Rounding them to bf16 moves scores by ~2^-9 relative; tests feed the CPU reference the
// same rounded keys, so the kernel is checked for its own arithmetic.
//
// Stage 1 kernel: CTA (tile of whole GQA groups ≤ 64 rows: 4 queries x 16 heads for MiniCPM4, kv head).
// 32 compressed keys at a time go to shared memory; each warp computes its 16 rows' scores on mma.sync.
// The group sum and the max-pool happen in shared memory, 32 windows at a time (with a halo of
// kernel_size / kernel_stride − 1 windows carried from the previous tile): the token x window matrix
// never reaches HBM. Written: block scores [num_q, num_kv_heads, num_blocks] fp32 (1/4 of the window
// count). Needs kernel_stride | kernel_size, kernel_stride | block_size and (block_size / kernel_stride)
// | 32 (MiniCPM4: 32/16/64 → 4 windows per block, halo 1).
//
// Top-k kernel: CTA per (query, kv head). The (chosen)-th best candidate is found by an MSB-first radix
// select over order-preserving 32-bit keys (NaN lowest, −0 = +0), then blocks strictly above it and the
// lowest-index ones equal to it are taken: exactly select_topk_cpu's total order (score descending,
// then block index ascending), so equal inputs give identical ids.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/dense.h"
#include "attention/sparse_params.h"

namespace mnemo::cuda {

struct CompressedKeysBf16 {
  const bf16* keys = nullptr;  // [num_kv_heads, capacity, head_dim]; rows [0, num_compressed) valid
  int64_t head_stride = 0;     // elements between kv heads (capacity · head_dim)
  int64_t num_compressed = 0;  // windows computed so far (host value, the same for the whole call)
  int kernel_size = 0;
  int kernel_stride = 0;
};

// One sequence's queries (a decode token or a prefill chunk).
struct BlockScoreCudaParams {
  const bf16* q = nullptr;           // [num_q, num_heads, head_dim]: rotated, or un-rotated with use_nope
  const int32_t* q_index = nullptr;  // [num_q] stream index of each query (device)
  int num_q = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;                  // 64 or 128
  CompressedKeysBf16 keys;           // tier 1
  CompressedKeysBf16 lse_keys;       // tier 2; keys == null: exact LSE
  int block_size = 64;
  int64_t num_blocks = 0;            // row width; t_i / block_size < num_blocks
  float softmax_scale = 0.0f;
  float* block_scores = nullptr;     // [num_q, num_kv_heads, num_blocks]
  int num_splits = 1;                // window splits per CTA (plan_block_scores); 1: one fused kernel
};

// Window splits so that query tiles x kv heads x splits CTAs fill `num_sms` SMs about twice (a decode
// query spreads its windows over the GPU; a prefill chunk needs none), with at least 2 tiles of 32
// windows per split. Host only.
struct BlockScorePlan {
  int num_splits = 1;
  size_t workspace_bytes = 0;  // (m, l) partials: num_q x num_heads x num_splits x 8 bytes
};
BlockScorePlan plan_block_scores(int num_q, int num_heads, int num_kv_heads, int64_t num_compressed, int num_sms);
size_t block_scores_workspace_bytes(const BlockScoreCudaParams& p);

Status validate(const BlockScoreCudaParams& p);
// num_splits == 1: one kernel. Otherwise a partial-normaliser kernel then the scoring kernel.
Status block_scores_launch(const BlockScoreCudaParams& p, Workspace workspace, cudaStream_t stream);

struct BlockTopkCudaParams {
  const float* block_scores = nullptr;  // [num_q, num_kv_heads, num_blocks]
  const int32_t* q_index = nullptr;     // [num_q] (device); t_i / block_size < num_blocks (trusted)
  int num_q = 0;
  int num_kv_heads = 0;
  int64_t num_blocks = 0;
  SparseParams sparse;                  // block_size, init_blocks, window_size, topk
  int max_selected = 0;                 // row width, >= max_selected_blocks(sparse)
  int32_t* block_ids = nullptr;         // [num_q, num_kv_heads, max_selected] ascending, -1 padded
  int32_t* num_selected = nullptr;      // [num_q, num_kv_heads]; may be null
};

Status validate(const BlockTopkCudaParams& p);
Status select_topk_launch(const BlockTopkCudaParams& p, cudaStream_t stream);

}  // namespace mnemo::cuda
