// Stage-2 prefill kernel (see attention/cuda/sparse.h): 64-row tiles over the union of the selections.
//
// CTA (row tile, kv head g, sequence) of 4 warps; a row tile is 64 of the sequence's (query, head of
// group g) pairs, query-major (the dense prefill kernel's rows), so with MiniCPM4's group of 16 a warp
// is one query's 16 heads and a CTA 4 consecutive queries. Each row keeps a cursor into its query's
// ascending selection; every step the CTA takes the smallest next block over its rows (warp shuffles,
// then shared memory), loads its 64-token tiles once (K rotated as it lands) and each warp runs
// S = Q K^T, the online softmax and O += P V for its 16 rows, with the rows that did not select the
// block (or see only its causal head) masked; a warp none of whose rows selected it skips it. Queries
// of one block select almost the same blocks, so a tile serves about 4 queries instead of one.
// Tiles and numerics are the dense prefill kernel's split-K pieces (dense_tile.cuh: K as hi + lo bf16,
// RoPE by angle addition, P rounded once), so with every block selected the result is bit-identical.
#pragma once

#include <climits>
#include <cstdint>

#include "attention/cuda/dense_tile.cuh"
#include "attention/cuda/sparse.h"

namespace mnemo::cuda {

template <int kHeadDim>
struct SparsePrefillConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;
  static constexpr int kTileTokens = 64;
  static constexpr int kTileElems = kTileTokens * kTileRowStride<kHeadDim>;
  // K hi, K lo, V tiles; then the rope table's rows 0..63 over row 0 (load_rope_rows), fp32.
  static constexpr size_t kRopeOffset = size_t{3} * kTileElems * sizeof(bf16);
  static constexpr size_t kMinOffset = kRopeOffset + size_t{2} * kTileTokens * (kHeadDim / 2) * sizeof(float);
  static constexpr size_t kSmemBytes = kMinOffset + size_t{2} * kWarps * sizeof(int32_t);
};

// Next selected block at or after entry *cursor of a row (skipping −1 padding); INT_MAX when done.
__device__ __forceinline__ int32_t next_selected(const int32_t* ids, int max_selected, int* cursor) {
  while (*cursor < max_selected && ids[*cursor] < 0) ++*cursor;
  return *cursor < max_selected ? ids[*cursor] : INT_MAX;
}

template <int kHeadDim>
__global__ void __launch_bounds__(128) sparse_prefill_kernel(const SparseAttentionCudaParams p) {
  using Cfg = SparsePrefillConfig<kHeadDim>;
  constexpr int kNT = Cfg::kTileTokens / 8;
  constexpr int kDT = kHeadDim / 8;
  MNEMO_DYNAMIC_SMEM(smem);
  bf16* sk = reinterpret_cast<bf16*>(smem);
  bf16* sk_lo = sk + Cfg::kTileElems;
  bf16* sv = sk_lo + Cfg::kTileElems;
  float* rope_t = reinterpret_cast<float*>(smem + Cfg::kRopeOffset);
  int32_t* warp_min = reinterpret_cast<int32_t*>(smem + Cfg::kMinOffset);  // [2 (parity)][warp]

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int g = static_cast<int>(blockIdx.y);
  const int seq = static_cast<int>(blockIdx.z);
  const int num_kv_heads = p.kv.num_kv_heads;
  const int group = p.num_heads / num_kv_heads;
  const int q_begin = p.q_indptr[seq];
  const int64_t rows = int64_t{p.q_indptr[seq + 1] - q_begin} * group;
  const int64_t tile = blockIdx.x;
  if (tile * Cfg::kRows >= rows) return;  // CTA-uniform: this sequence has fewer row tiles
  const int64_t kv_len = p.kv.kv_lens[seq];
  const int64_t bt = p.kv.block_tokens;

  // This lane's two rows (lane / 4 and lane / 4 + 8 of the warp's 16).
  int64_t end[2], out_row[2];  // keys j < end[r] are causal and in range
  const int32_t* ids[2];
  int cursor[2] = {0, 0};
  int32_t next[2];
  const bf16* q_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = tile * Cfg::kRows + warp * 16 + lane / 4 + 8 * r;
    if (row < rows) {
      const int64_t token = q_begin + row / group;
      const int64_t head = int64_t{g} * group + row % group;
      const int64_t t = p.q_index[token];
      end[r] = t + 1 < kv_len ? t + 1 : kv_len;
      out_row[r] = token * p.num_heads + head;
      q_row[r] = p.q + out_row[r] * kHeadDim;
      ids[r] = p.block_ids + (token * num_kv_heads + g) * p.max_selected;
      next[r] = next_selected(ids[r], p.max_selected, &cursor[r]);
    } else {
      end[r] = 0;
      out_row[r] = -1;
      q_row[r] = nullptr;
      ids[r] = nullptr;
      next[r] = INT_MAX;  // padding row: selects nothing, written nowhere
    }
  }
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, q_row[0], q_row[1], lane);

  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const KvHeadView kv = make_kv_head_view(p.kv, p.key_rope, seq, g);
  const bool with_lo = kv.rope_cos != nullptr;
  // Read after the first step's barrier.
  if (with_lo) load_rope_rows<kHeadDim, Cfg::kTileTokens>(rope_t, p.key_rope, tid, Cfg::kThreads);
  for (int parity = 0;; parity ^= 1) {
    // The CTA's next block: min over its rows. The parity buffer lets a warp write the next step's
    // minimum while a slower one still reads this step's (a tile's barriers separate steps k, k + 2).
    int32_t wmin = next[0] < next[1] ? next[0] : next[1];
#pragma unroll
    for (int mask = 1; mask < 32; mask *= 2) {
      const int other = shfl_xor(static_cast<int>(wmin), mask);
      wmin = other < wmin ? other : wmin;
    }
    if (lane == 0) warp_min[parity * Cfg::kWarps + warp] = wmin;
    // Also: every warp is done with the previous tile.
    cta_sync();
    int32_t block = INT_MAX;
#pragma unroll
    for (int w = 0; w < Cfg::kWarps; ++w) {
      const int32_t v = warp_min[parity * Cfg::kWarps + w];
      block = v < block ? v : block;
    }
    if (block == INT_MAX) break;  // CTA-uniform

    const int64_t lo = int64_t{block} * bt;
    const int64_t block_end = lo + bt;
    // The whole block up to kv_len: the same for every warp (rows mask their causal tails).
    const int64_t load_end = block_end < kv_len ? block_end : kv_len;
    // Rows that selected this block see keys [lo, row_end); the others none.
    int64_t row_end[2];
    bool any = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_end[r] = next[r] == block ? (block_end < end[r] ? block_end : end[r]) : lo;
      any = any || row_end[r] > lo;
    }
    int any_warp = any ? 1 : 0;
#pragma unroll
    for (int mask = 1; mask < 32; mask *= 2) any_warp |= shfl_xor(any_warp, mask);

    for (int64_t j0 = lo; j0 < load_end; j0 += Cfg::kTileTokens) {
      if (j0 > lo) cta_sync();  // every warp is done with the block's previous tile
      load_kv_tile_split<kHeadDim, Cfg::kTileTokens, Cfg::kThreads>(kv, rope_t, j0, lo, load_end, sk, sk_lo, sv, tid);
      cta_sync();
      if (!any_warp) continue;  // warp-uniform
      float s[kNT][4];
      warp_qk_split<kHeadDim, kNT>(s, qf, sk, sk_lo, with_lo, lane);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          s[nt][e] = j < row_end[e / 2] ? s[nt][e] * scale_log2 : -INFINITY;
        }
      }
      uint32_t pa[kNT][2];
      softmax_update_bf16p<kNT, kDT>(s, pa, o, m, l);
      warp_pv_bf16p<kHeadDim, kNT>(o, pa, sv, lane);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (next[r] == block) {
        ++cursor[r];
        next[r] = next_selected(ids[r], p.max_selected, &cursor[r]);
      }
    }
  }
  quad_sum(l);

  const int c0 = (lane % 4) * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (out_row[r] < 0) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    bf16* out = p.out + out_row[r] * kHeadDim + c0;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      *reinterpret_cast<uint32_t*>(out + dt * 8) = pack_bf16x2(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
    if (lane % 4 == 0 && p.lse != nullptr) {
      p.lse[out_row[r]] = l[r] > 0.0f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
    }
  }
}

}  // namespace mnemo::cuda
