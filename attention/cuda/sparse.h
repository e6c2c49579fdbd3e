// InfLLM-V2 stage 2 on CUDA: block-sparse attention over paged bf16 KV, for decode (split over the
// selected blocks + LSE merge) and prefill chunks (64-row tiles walking the union of their rows'
// selections, so queries whose selections overlap share every K/V tile).
//
// CUDA-only header; the CPU contract is attention/sparse.h. For query i (stream index t_i) and head h
// (kv head g = h / group), with S_i,g its selected logical blocks (row i, g of block_ids):
//   keys    K = { j : j / block_tokens ∈ S_i,g, j <= t_i, j < kv_len }  (causal inside the own block)
//   out_i,h = Σ_{j ∈ K} softmax(s)_j v_j,g,   s_j = softmax_scale · <q_i,h, rope(k_j,g, j)>
//   lse_i,h = log Σ_{j ∈ K} exp(s_j)  (natural log);   K empty → out = 0, lse = −inf.
// Keys are stored before RoPE and rotated at their own index j as tiles load (dense.h's tables).
// Heads of a GQA group share their kv head's selection and every K/V tile (they are the M dimension of
// the mma.sync tiles). Softmax and accumulation in fp32; Q, rotated K, P, V enter the tensor cores as
// bf16; the output is rounded once.
//
// block_ids rows are the CPU contract's: ascending logical ids, each <= t_i / block_tokens, −1 entries
// skipped wherever they are (top-k pads at the end). The kernels trust them (validate on the CPU side
// with attention/sparse.h's validate when the ids come from the host; top-k on the GPU produces them).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention/cuda/dense.h"

namespace mnemo::cuda {

struct SparseAttentionCudaParams {
  const bf16* q = nullptr;            // [total_q, num_heads, head_dim], RoPE applied
  const int32_t* q_indptr = nullptr;  // [batch + 1]: queries of sequence b are rows [q_indptr[b], q_indptr[b+1])
  const int32_t* q_index = nullptr;   // [total_q] stream index of each query (< kv_lens of its sequence)
  int batch = 0;
  int total_q = 0;                    // host: q_indptr[batch]
  int max_q_per_seq = 0;              // host: an upper bound of q_indptr[b+1] - q_indptr[b] (prefill grid)
  int num_heads = 0;                  // a multiple of kv.num_kv_heads
  PagedKvBf16 kv;
  RopeTableView key_rope;
  float softmax_scale = 0.0f;
  const int32_t* block_ids = nullptr;  // [total_q, num_kv_heads, max_selected], see the file header
  int max_selected = 0;
  int num_splits = 1;                  // decode: splits of each selection row (plan_sparse_decode); 1: no merge
  bf16* out = nullptr;                 // [total_q, num_heads, head_dim]
  float* lse = nullptr;                // [total_q, num_heads] natural log; may be null
};

struct SparseDecodePlan {
  int num_splits = 1;
  size_t workspace_bytes = 0;
};

// Splits so that total_q x kv heads x head chunks x splits CTAs fill `num_sms` SMs about twice, each
// split at least 128 keys' worth of selection entries (one 32-token tile per warp). Host only.
SparseDecodePlan plan_sparse_decode(int total_q, int num_heads, int num_kv_heads, int head_dim, int block_tokens,
                                    int max_selected, int num_sms);
size_t sparse_decode_workspace_bytes(const SparseAttentionCudaParams& p);
// Shape checks (the message names the field, expected and got). Device-side lists are not read.
Status validate(const SparseAttentionCudaParams& p);

// Decode (or any few queries): CTA (kv head x 16-head chunk, split, query); split s walks selection
// entries [s·per, (s+1)·per), its 4 warps take 32-token tiles round robin; splits merged by LSE.
Status sparse_decode_launch(const SparseAttentionCudaParams& p, Workspace workspace, cudaStream_t stream);

// Prefill chunk: CTA (64 (query, head-of-group) rows, kv head, sequence) walks the ascending union of
// its rows' selections one 64-token tile at a time; each warp skips tiles none of its rows selected.
// No workspace; p.num_splits is ignored.
Status sparse_prefill_launch(const SparseAttentionCudaParams& p, cudaStream_t stream);

}  // namespace mnemo::cuda
