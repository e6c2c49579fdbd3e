// Dense attention over paged bf16 KV on CUDA: decode (one query per sequence, split-KV + LSE merge)
// and causal prefill (FlashAttention-2 style tiles on mma.sync bf16 tensor cores).
//
// CUDA-only header (CUDA types in the launcher signatures); CPU code includes attention/dense.h.
// The math is the CPU reference's (attention/dense.h): for a query at stream index t and head h
// (kv head g = h / (num_heads / num_kv_heads)),
//   s_j = softmax_scale * <q_h, rope(k_j,g, j)>   for lo <= j <= t   (lo = t - sliding_window + 1, or 0)
//   out_h = sum_j softmax(s)_j v_j,g,   lse_h = log sum_j exp(s_j)   (natural log; -inf when empty)
// Keys are stored before RoPE and rotated at their own index j as a tile is loaded (cos/sin from a
// float table, scale folded in, RopeTable's layout). Queries arrive rotated. Softmax and accumulation
// run in fp32; Q, rotated K, P and V enter the tensor cores as bf16; outputs are rounded once.
//
// All pointers are device pointers. Sizes used to shape the grid or check the rope table are host
// values (`max_kv_len`, `max_q_per_seq`); per-sequence values the kernels read (`kv_lens`,
// `q_indptr`, `q_index`) live on the device and are trusted: keys at or beyond kv_lens[b] are never
// read, a query whose index is negative gets out = 0 and lse = -inf.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention/cuda/workspace.h"
#include "core/status.h"

namespace mnemo::cuda {

using bf16 = __nv_bfloat16;

// A batch of sequences' KV in one arena of slots (attention/paged_kv.h's layout, bf16).
struct PagedKvBf16 {
  const bf16* arena = nullptr;  // [num_slots, 2, num_kv_heads, block_tokens, head_dim], 16-B aligned
  int num_kv_heads = 0;
  int block_tokens = 0;          // tokens per block (any positive count)
  int head_dim = 0;              // 64 or 128
  const int32_t* block_tables = nullptr;  // [batch, block_table_stride]: slot of logical block j of b
  int block_table_stride = 0;    // row stride of block_tables; >= blocks of the longest sequence
  const int32_t* kv_lens = nullptr;       // [batch] valid tokens of each sequence (>= 1)
  int64_t max_kv_len = 0;        // host: an upper bound of kv_lens (plans splits, checks the table)

  __host__ __device__ int64_t slot_elems() const { return int64_t{2} * num_kv_heads * block_tokens * head_dim; }
};

// cos/sin of every position, scale folded in: RopeTable's layout. cos == nullptr: keys used as stored.
struct RopeTableView {
  const float* cos = nullptr;  // [len, head_dim / 2], 16-B aligned
  const float* sin = nullptr;  // [len, head_dim / 2], 16-B aligned
  int64_t len = 0;             // positions covered; must be >= kv.max_kv_len
};

struct DenseDecodeParams {
  const bf16* q = nullptr;  // [batch, num_heads, head_dim], RoPE applied; query b sits at kv_lens[b]-1
  int batch = 0;
  int num_heads = 0;        // a multiple of kv.num_kv_heads (any group size)
  PagedKvBf16 kv;
  RopeTableView key_rope;
  float softmax_scale = 0.0f;
  int64_t sliding_window = 0;  // > 0: the query sees keys j >= kv_len - sliding_window
  int num_splits = 1;          // KV splits per sequence, from plan_dense_decode(); 1 skips the merge
  bf16* out = nullptr;         // [batch, num_heads, head_dim]
  float* lse = nullptr;        // [batch, num_heads], natural log; may be null
};

// Split-KV plan for one decode step: the same for every layer of the step.
struct DenseDecodePlan {
  int num_splits = 1;
  size_t workspace_bytes = 0;  // for dense_decode_launch with this plan
};

// Chooses num_splits so that batch x kv heads x splits CTAs fill `num_sms` SMs about twice, with at
// least 128 keys (one tile per warp) per split. Host arithmetic only; no device calls.
DenseDecodePlan plan_dense_decode(int batch, int num_heads, int num_kv_heads, int head_dim,
                                  int block_tokens, int64_t max_kv_len, int num_sms);
// Bytes of workspace dense_decode_launch needs for `p` (0 when p.num_splits == 1).
size_t dense_decode_workspace_bytes(const DenseDecodeParams& p);
// Shape checks; the message names the field, expected and got.
Status validate(const DenseDecodeParams& p);

// Decode attention: split kernel (grid kv_heads x head chunks, splits, batch) then, when
// num_splits > 1, the LSE-merge kernel. On failure nothing was launched (validation) or the CUDA
// error of the launch is returned; outputs are then unspecified.
Status dense_decode_launch(const DenseDecodeParams& p, Workspace workspace, cudaStream_t stream);

struct DensePrefillParams {
  const bf16* q = nullptr;           // [total_q, num_heads, head_dim], RoPE applied
  const int32_t* q_indptr = nullptr;  // [batch + 1]: queries of sequence b are rows [q_indptr[b], q_indptr[b+1])
  const int32_t* q_index = nullptr;   // [total_q] stream index of each query (causal bound, inclusive)
  int batch = 0;
  int max_q_per_seq = 0;             // host: an upper bound of q_indptr[b+1] - q_indptr[b]
  int num_heads = 0;
  PagedKvBf16 kv;
  // Keys rotated on load; a rotation table (RopeTable's): cos[p][i] = a_i cos(p w_i) and
  // sin[p][i] = a_i sin(p w_i), since the kernel builds rows j0 + t from rows j0 and t (angle addition).
  RopeTableView key_rope;
  float softmax_scale = 0.0f;
  int64_t sliding_window = 0;        // > 0: query t sees keys j > t - sliding_window
  bf16* out = nullptr;               // [total_q, num_heads, head_dim]
  float* lse = nullptr;              // [total_q, num_heads], natural log; may be null
};

Status validate(const DensePrefillParams& p);

// Causal prefill: grid (row tiles, kv heads, batch); a tile is 128 (query, head-of-group) rows, so the
// heads of a GQA group share every K/V tile; 8 warps, double-buffered K/V tiles, ~137 KB of shared
// memory at head_dim 128. No workspace.
Status dense_prefill_launch(const DensePrefillParams& p, cudaStream_t stream);

}  // namespace mnemo::cuda
