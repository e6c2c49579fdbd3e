// Stage-2 decode kernels (see attention/cuda/sparse.h): split over the selected blocks, LSE merge.
//
// Split kernel: CTA (kv head g, 16-head chunk, split, query) of 4 warps, DecodeConfig's shape. Split s
// owns selection entries [s·per, (s+1)·per) of the query's row; each entry is a block of
// ceil(block_tokens / 32) 32-token tiles, and the warps take the (entry, tile) items round robin, each
// through its private shared-memory tile (no CTA barrier until the end). With MiniCPM4's 96 blocks and
// 2 kv heads, 48 splits of 2 blocks give 96 CTAs of 4 tiles (one per warp): a 1-query decode fills the
// GPU. The warps' (m, l, O) states are merged in shared memory; one split writes bf16 out, more write
// O / l and lse to the workspace and sparse_decode_merge_kernel combines them.
#pragma once

#include <cstdint>

#include "attention/cuda/dense_decode_kernel.cuh"
#include "attention/cuda/sparse.h"

namespace mnemo::cuda {

// Sequence of query row qi: the largest b with q_indptr[b] <= qi.
__device__ __forceinline__ int sequence_of(const int32_t* q_indptr, int batch, int qi) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (q_indptr[mid] <= qi) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <int kHeadDim>
__global__ void __launch_bounds__(128) sparse_decode_split_kernel(const SparseAttentionCudaParams p,
                                                                  const DecodePartials part) {
  using Cfg = DecodeConfig<kHeadDim>;
  constexpr int kNT = Cfg::kTileTokens / 8;
  constexpr int kDT = kHeadDim / 8;
  MNEMO_DYNAMIC_SMEM(smem);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int num_kv_heads = p.kv.num_kv_heads;
  const int g = static_cast<int>(blockIdx.x) % num_kv_heads;
  const int chunk = static_cast<int>(blockIdx.x) / num_kv_heads;
  const int split = static_cast<int>(blockIdx.y);
  const int qi = static_cast<int>(blockIdx.z);
  const int group = p.num_heads / num_kv_heads;
  const int seq = sequence_of(p.q_indptr, p.batch, qi);

  const int64_t bt = p.kv.block_tokens;
  const int64_t t = p.q_index[qi];
  const int64_t kv_len = p.kv.kv_lens[seq];
  const int64_t visible_end = t + 1 < kv_len ? t + 1 : kv_len;  // keys j < visible_end (causal, in range)
  const int32_t* ids = p.block_ids + (int64_t{qi} * num_kv_heads + g) * p.max_selected;
  const int per_split = (p.max_selected + p.num_splits - 1) / p.num_splits;
  const int e_begin = split * per_split;
  const int e_end = e_begin + per_split < p.max_selected ? e_begin + per_split : p.max_selected;
  const int tiles_per_block = static_cast<int>((bt + Cfg::kTileTokens - 1) / Cfg::kTileTokens);
  const int items = e_end > e_begin ? (e_end - e_begin) * tiles_per_block : 0;

  const int r0 = lane / 4;
  const int hh0 = chunk * Cfg::kRows + r0, hh1 = hh0 + 8;
  const bf16* q_row = p.q + (int64_t{qi} * p.num_heads + int64_t{g} * group) * kHeadDim;
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, hh0 < group ? q_row + int64_t{hh0} * kHeadDim : nullptr,
                             hh1 < group ? q_row + int64_t{hh1} * kHeadDim : nullptr, lane);

  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const KvHeadView kv = make_kv_head_view(p.kv, p.key_rope, seq, g);
  bf16* sk = reinterpret_cast<bf16*>(smem) + warp * 2 * Cfg::kTileElems;
  bf16* sv = sk + Cfg::kTileElems;

  for (int it = warp; it < items; it += Cfg::kWarps) {
    const int32_t block = ids[e_begin + it / tiles_per_block];  // the same for every lane: warp-uniform
    if (block < 0) continue;                                     // padding
    const int64_t lo = int64_t{block} * bt;
    const int64_t block_end = lo + bt;
    const int64_t hi = block_end < visible_end ? block_end : visible_end;
    const int64_t j0 = lo + int64_t{it % tiles_per_block} * Cfg::kTileTokens;
    if (j0 >= hi) continue;  // the causal tail of the query's own block
    load_kv_tile<kHeadDim, Cfg::kTileTokens, 32>(kv, j0, lo, hi, sk, sv, lane);
    warp_sync();
    float s[kNT][4];
    warp_qk<kHeadDim, kNT>(s, qf, sk, lane);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        s[nt][e] = j < hi ? s[nt][e] * scale_log2 : -INFINITY;
      }
    }
    softmax_update<kNT, kDT>(s, o, m, l);
    warp_pv<kHeadDim, kNT>(o, s, sv, lane);
    warp_sync();  // the next tile overwrites sk/sv
  }
  quad_sum(l);

  // Merge the 4 warps' states through shared memory (reusing the tile area), as the dense kernel does.
  cta_sync();
  float* ml = reinterpret_cast<float*>(smem);     // [warp][row][m, l]
  float* os = ml + Cfg::kWarps * Cfg::kRows * 2;  // [warp][row][head_dim]
  const int c0 = (lane % 4) * 2;
  if (lane % 4 == 0) {
    ml[(warp * Cfg::kRows + r0) * 2 + 0] = m[0];
    ml[(warp * Cfg::kRows + r0) * 2 + 1] = l[0];
    ml[(warp * Cfg::kRows + r0 + 8) * 2 + 0] = m[1];
    ml[(warp * Cfg::kRows + r0 + 8) * 2 + 1] = l[1];
  }
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    float* row0 = os + (warp * Cfg::kRows + r0) * kHeadDim + dt * 8 + c0;
    float* row1 = row0 + 8 * kHeadDim;
    row0[0] = o[dt][0];
    row0[1] = o[dt][1];
    row1[0] = o[dt][2];
    row1[1] = o[dt][3];
  }
  cta_sync();
  for (int idx = tid; idx < Cfg::kRows * kHeadDim; idx += Cfg::kThreads) {
    const int r = idx / kHeadDim, d = idx % kHeadDim;
    const int hh = chunk * Cfg::kRows + r;
    if (hh >= group) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < Cfg::kWarps; ++w) mx = fmaxf(mx, ml[(w * Cfg::kRows + r) * 2]);
    const float base = mx == -INFINITY ? 0.0f : mx;  // every warp empty: all weights exp2(-inf) = 0
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < Cfg::kWarps; ++w) {
      const float wt = exp2f(ml[(w * Cfg::kRows + r) * 2] - base);
      sum += wt * ml[(w * Cfg::kRows + r) * 2 + 1];
      acc += wt * os[(w * Cfg::kRows + r) * kHeadDim + d];
    }
    const float value = sum > 0.0f ? acc / sum : 0.0f;
    const float lse = sum > 0.0f ? (base + log2f(sum)) * kLn2 : -INFINITY;
    const int64_t row = int64_t{qi} * p.num_heads + int64_t{g} * group + hh;
    if (p.num_splits == 1) {
      p.out[row * kHeadDim + d] = __float2bfloat16_rn(value);
      if (d == 0 && p.lse != nullptr) p.lse[row] = lse;
    } else {
      part.o[(row * p.num_splits + split) * kHeadDim + d] = value;
      if (d == 0) part.lse[row * p.num_splits + split] = lse;
    }
  }
}

// One CTA of kHeadDim threads per (head, query): lse = log Σ_s exp(lse_s), out = Σ_s exp(lse_s − lse) O_s.
// Dynamic shared memory: num_splits floats. Every split empty → out 0, lse −inf.
template <int kHeadDim>
__global__ void __launch_bounds__(128) sparse_decode_merge_kernel(const SparseAttentionCudaParams p,
                                                                  const DecodePartials part) {
  MNEMO_DYNAMIC_SMEM(smem);
  float* weight = reinterpret_cast<float*>(smem);  // [num_splits]
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = int64_t{blockIdx.y} * p.num_heads + blockIdx.x;
  const int ns = p.num_splits;
  const float* lse = part.lse + row * ns;
  float mx = -INFINITY;
  for (int s = 0; s < ns; ++s) mx = fmaxf(mx, lse[s]);
  const float base = mx == -INFINITY ? 0.0f : mx;  // empty splits have lse -inf: weight 0
  for (int s = tid; s < ns; s += kHeadDim) weight[s] = expf(lse[s] - base);
  cta_sync();
  float sum = 0.0f;
  for (int s = 0; s < ns; ++s) sum += weight[s];
  const float* o = part.o + row * ns * kHeadDim;
  float acc = 0.0f;
  for (int s = 0; s < ns; ++s) {
    if (weight[s] > 0.0f) acc += weight[s] * o[int64_t{s} * kHeadDim + tid];  // an empty split's O is never read
  }
  p.out[row * kHeadDim + tid] = __float2bfloat16_rn(sum > 0.0f ? acc / sum : 0.0f);
  if (tid == 0 && p.lse != nullptr) p.lse[row] = sum > 0.0f ? base + logf(sum) : -INFINITY;
}

}  // namespace mnemo::cuda
