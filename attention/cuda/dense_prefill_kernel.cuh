// Causal prefill attention kernel (see attention/cuda/dense.h), FlashAttention-2 style on mma.sync.
//
// CTA (row tile, kv head g, sequence) of 8 warps; a row tile is 128 rows of the sequence's
// (query, head of group g) pairs, query-major, so a GQA group's heads share every K/V tile. The CTA
// walks 64-token K/V tiles over the union of its rows' visible ranges; each warp runs S = Q K^T, the
// online softmax and O += P V for its 16 rows on bf16 tensor cores, skipping tiles none of its rows
// can see and the mask where every one of its rows sees the whole tile.
// Tiles are double-buffered with one barrier per tile: V of tile i + 1 streams into the other buffer
// by cp.async, and K of tile i + 1 is loaded into registers before tile i's math and rotated into the
// other buffer after it (RoPE needs the values in registers; the loads' latency hides behind the math).
// K is kept as hi + lo bf16 tiles and RoPE goes by angle addition (dense_tile.cuh, "Split-K tiles"):
// per tile a thread reads one table row for its 8 pairs instead of a row per token (the table's fp32
// rows were half of the kernel's L2 traffic).
// Row tiles are scheduled last-first: the latest queries see the most keys.
//
// Precision (issue #4): the single bf16 rounding of rotated K was the largest error of the old kernel
// and put rare elements 1.03-1.32x past the test's tolerance; with hi + lo K the worst element of the
// sim cases is ~0.3-0.45 of it (a numerics model of the kernel: 0.96-0.98 -> 0.43). Summing the
// rounded P into l alone did not fix it (0.96 -> 0.92 in the model) but keeps the normalisation exact.
#pragma once

#include <cstdint>

#include "attention/cuda/dense_tile.cuh"

namespace mnemo::cuda {

template <int kHeadDim>
struct PrefillConfig {
  static constexpr int kWarps = 8;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;  // rows per CTA
  static constexpr int kTileTokens = 64;
  static constexpr int kTileElems = kTileTokens * kTileRowStride<kHeadDim>;
  // Shared memory: two stages of [K hi, K lo, V] tiles; rows 0..63 of the rope table over row 0
  // (load_rope_rows: cos [64][head_dim / 2], then sin, fp32); the warps' key ranges.
  static constexpr int kStageElems = 3 * kTileElems;
  static constexpr size_t kRopeOffset = size_t{2} * kStageElems * sizeof(bf16);
  static constexpr size_t kRangeOffset = kRopeOffset + size_t{2} * kTileTokens * (kHeadDim / 2) * sizeof(float);
  static constexpr size_t kSmemBytes = kRangeOffset + size_t{kWarps} * 2 * sizeof(int64_t);
  // K work items: (token, 16-byte vector of the first half of the head); V: (token, 16-byte vector).
  static constexpr int kKItems = kTileTokens * kHeadDim / 16;
  static constexpr int kKPerThread = (kKItems + kThreads - 1) / kThreads;
  static constexpr int kVItems = kTileTokens * kHeadDim / 8;
  static constexpr int kVPerThread = (kVItems + kThreads - 1) / kThreads;
};

// Raw K of this thread's items of the next tile, held in registers while the current tile computes.
// Every item of a thread has the same 8 pairs (vec = tid % vectors per half head: kThreads is a
// multiple of it), so one row of the table serves them all.
template <int kHeadDim>
struct KStage {
  static constexpr int kN = PrefillConfig<kHeadDim>::kKPerThread;
  uint4 x[kN], y[kN];  // first and second half-head vectors (the RoPE pairs)
  float4 c0[2], s0[2];  // table row j0 (the tile's first token) at the thread's 8 pairs
  bool valid[kN];
};

// Issues the global loads of tile [j0, j0 + 64) K items; tokens outside [lo, hi) are marked invalid
// (never read; stored as zeros).
template <int kHeadDim>
__device__ __forceinline__ void prefill_load_k(KStage<kHeadDim>& st, const KvHeadView& kv, int64_t j0,
                                               int64_t lo, int64_t hi, int tid) {
  using Cfg = PrefillConfig<kHeadDim>;
  constexpr int kHalf = kHeadDim / 2, kVecs = kHalf / 8;
  static_assert(Cfg::kThreads % kVecs == 0, "a thread's items must share their pairs");
  // j0 < hi <= kv_len <= the table's length.
  if (kv.rope_cos != nullptr) load_rope_row8(kv, j0, kHalf, tid % kVecs, st.c0, st.s0);
#pragma unroll
  for (int u = 0; u < KStage<kHeadDim>::kN; ++u) {
    const int item = u * Cfg::kThreads + tid;
    const int t = item / kVecs, vec = item % kVecs;
    const int64_t j = j0 + t;
    st.valid[u] = item < Cfg::kKItems && j >= lo && j < hi;
    if (st.valid[u]) {
      // Token indices fit 32 bits (kv lengths are int32): a 32-bit division is far cheaper.
      const uint32_t block = static_cast<uint32_t>(j) / static_cast<uint32_t>(kv.block_tokens);
      const uint32_t offset = static_cast<uint32_t>(j) - block * static_cast<uint32_t>(kv.block_tokens);
      const bf16* kp = kv.arena + int64_t{kv.table[block]} * kv.slot_elems + kv.k_offset +
                       int64_t{offset} * kHeadDim + vec * 8;
      st.x[u] = load16(kp);
      st.y[u] = load16(kp + kHalf);
    }
  }
}

// Rotates the staged K into the split tiles (store_split_k: the same bits as load_kv_tile_split).
template <int kHeadDim>
__device__ __forceinline__ void prefill_store_k(const KStage<kHeadDim>& st, const KvHeadView& kv, const float* rope_t,
                                                bf16* sk, bf16* sk_lo, int tid) {
  using Cfg = PrefillConfig<kHeadDim>;
  constexpr int kVecs = kHeadDim / 16;
#pragma unroll
  for (int u = 0; u < KStage<kHeadDim>::kN; ++u) {
    const int item = u * Cfg::kThreads + tid;
    if (Cfg::kKItems % Cfg::kThreads != 0 && item >= Cfg::kKItems) continue;
    store_split_k<kHeadDim, Cfg::kTileTokens>(kv, rope_t, st.c0, st.s0, st.valid[u], st.x[u], st.y[u], item / kVecs,
                                              item % kVecs, sk, sk_lo);
  }
}

// Streams V of tile [j0, j0 + 64) into shared memory by cp.async (zeros outside [lo, hi), so a masked
// probability 0 times a NaN-poisoned slot tail stays 0).
template <int kHeadDim>
__device__ __forceinline__ void prefill_load_v(const KvHeadView& kv, int64_t j0, int64_t lo, int64_t hi, bf16* sv,
                                               int tid) {
  using Cfg = PrefillConfig<kHeadDim>;
  constexpr int kVecs = kHeadDim / 8;
  constexpr int kStride = kTileRowStride<kHeadDim>;
#pragma unroll
  for (int u = 0; u < Cfg::kVPerThread; ++u) {
    const int item = u * Cfg::kThreads + tid;
    if (Cfg::kVItems % Cfg::kThreads != 0 && item >= Cfg::kVItems) continue;
    const int t = item / kVecs, vec = item % kVecs;
    const int64_t j = j0 + t;
    const bool valid = j >= lo && j < hi;
    const bf16* src = kv.arena;  // a mapped address for the zero fill
    if (valid) {
      const uint32_t block = static_cast<uint32_t>(j) / static_cast<uint32_t>(kv.block_tokens);
      const uint32_t offset = static_cast<uint32_t>(j) - block * static_cast<uint32_t>(kv.block_tokens);
      src = kv.arena + int64_t{kv.table[block]} * kv.slot_elems + kv.k_offset + kv.v_offset +
            int64_t{offset} * kHeadDim + vec * 8;
    }
    cp_async16(sv + t * kStride + vec * 8, src, valid);
  }
  cp_async_commit();
}

template <int kHeadDim>
__global__ void __launch_bounds__(PrefillConfig<kHeadDim>::kThreads, 1)
    dense_prefill_kernel(const DensePrefillParams p) {
  using Cfg = PrefillConfig<kHeadDim>;
  constexpr int kNT = Cfg::kTileTokens / 8;
  constexpr int kDT = kHeadDim / 8;
  constexpr int64_t kNone = INT64_MAX;
  MNEMO_DYNAMIC_SMEM(smem);
  bf16* tiles = reinterpret_cast<bf16*>(smem);  // stage s at s * kStageElems: K hi, K lo, V
  float* rope_t = reinterpret_cast<float*>(smem + Cfg::kRopeOffset);
  int64_t* range = reinterpret_cast<int64_t*>(smem + Cfg::kRangeOffset);  // [warp][lo, hi)

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int g = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int group = p.num_heads / p.kv.num_kv_heads;
  const int q_begin = p.q_indptr[b];
  const int64_t rows = int64_t{p.q_indptr[b + 1] - q_begin} * group;
  const int64_t tile = int64_t{gridDim.x} - 1 - blockIdx.x;
  if (tile * Cfg::kRows >= rows) return;  // CTA-uniform: this sequence has fewer row tiles
  const int64_t kv_len = p.kv.kv_lens[b];

  // This lane's two rows (g8 = lane / 4 and g8 + 8 of the warp's 16): visible keys [lo, hi).
  // full_lo / full_hi: the same range with padding rows neutral, for the warp's no-mask test.
  int64_t lo[2], hi[2], out_row[2], full_lo[2], full_hi[2];
  const bf16* q_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = tile * Cfg::kRows + warp * 16 + lane / 4 + 8 * r;
    if (row < rows) {
      const int64_t token = q_begin + row / group;
      const int64_t head = int64_t{g} * group + row % group;
      const int64_t t = p.q_index[token];
      lo[r] = p.sliding_window > 0 && t - p.sliding_window + 1 > 0 ? t - p.sliding_window + 1 : 0;
      hi[r] = t + 1 < kv_len ? t + 1 : kv_len;
      if (hi[r] < 0) hi[r] = 0;
      out_row[r] = token * p.num_heads + head;
      q_row[r] = p.q + out_row[r] * kHeadDim;
      full_lo[r] = lo[r];
      full_hi[r] = hi[r];
    } else {
      lo[r] = kNone;  // padding row: sees nothing, written nowhere
      hi[r] = 0;
      out_row[r] = -1;
      q_row[r] = nullptr;
      full_lo[r] = INT64_MIN;  // its scores (Q = 0) are finite and never written
      full_hi[r] = INT64_MAX;
    }
  }
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, q_row[0], q_row[1], lane);

  // Key range of the warp (the union of its rows' ranges, and their intersection), then of the CTA.
  int64_t warp_lo = lo[0] < lo[1] ? lo[0] : lo[1];
  int64_t warp_hi = hi[0] > hi[1] ? hi[0] : hi[1];
  int64_t all_lo = full_lo[0] > full_lo[1] ? full_lo[0] : full_lo[1];
  int64_t all_hi = full_hi[0] < full_hi[1] ? full_hi[0] : full_hi[1];
#pragma unroll
  for (int mask = 1; mask < 32; mask *= 2) {
    const int64_t other_lo = shfl_xor(warp_lo, mask);
    const int64_t other_hi = shfl_xor(warp_hi, mask);
    const int64_t other_all_lo = shfl_xor(all_lo, mask);
    const int64_t other_all_hi = shfl_xor(all_hi, mask);
    warp_lo = other_lo < warp_lo ? other_lo : warp_lo;
    warp_hi = other_hi > warp_hi ? other_hi : warp_hi;
    all_lo = other_all_lo > all_lo ? other_all_lo : all_lo;
    all_hi = other_all_hi < all_hi ? other_all_hi : all_hi;
  }
  if (lane == 0) {
    range[warp * 2 + 0] = warp_lo;
    range[warp * 2 + 1] = warp_hi;
  }
  if (p.key_rope.cos != nullptr) load_rope_rows<kHeadDim, Cfg::kTileTokens>(rope_t, p.key_rope, tid, Cfg::kThreads);
  cta_sync();
  int64_t cta_lo = kNone, cta_hi = 0;
#pragma unroll
  for (int w = 0; w < Cfg::kWarps; ++w) {
    cta_lo = range[w * 2] < cta_lo ? range[w * 2] : cta_lo;
    cta_hi = range[w * 2 + 1] > cta_hi ? range[w * 2 + 1] : cta_hi;
  }

  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const KvHeadView kv = make_kv_head_view(p.kv, p.key_rope, b, g);
  const bool with_lo = kv.rope_cos != nullptr;

  if (cta_lo < cta_hi) {
    const int64_t j_first = cta_lo / Cfg::kTileTokens * Cfg::kTileTokens;
    KStage<kHeadDim> st{};
    // Prologue: tile 0 into stage 0.
    prefill_load_v<kHeadDim>(kv, j_first, cta_lo, cta_hi, tiles + 2 * Cfg::kTileElems, tid);
    prefill_load_k<kHeadDim>(st, kv, j_first, cta_lo, cta_hi, tid);
    prefill_store_k<kHeadDim>(st, kv, rope_t, tiles, tiles + Cfg::kTileElems, tid);
    int stage = 0;
    for (int64_t j0 = j_first; j0 < cta_hi; j0 += Cfg::kTileTokens, stage ^= 1) {
      const bf16* sk = tiles + stage * Cfg::kStageElems;
      const bf16* sv = sk + 2 * Cfg::kTileElems;
      bf16* next_k = tiles + (stage ^ 1) * Cfg::kStageElems;
      // Tile j0 is in `stage` (its K stores and V copies done); every warp is past tile j0 - 64, so
      // the other stage is free.
      cp_async_wait_all();
      cta_sync();
      const int64_t j1 = j0 + Cfg::kTileTokens;
      const bool has_next = j1 < cta_hi;  // CTA-uniform
      if (has_next) {
        prefill_load_v<kHeadDim>(kv, j1, cta_lo, cta_hi, next_k + 2 * Cfg::kTileElems, tid);
        prefill_load_k<kHeadDim>(st, kv, j1, cta_lo, cta_hi, tid);
      }
      if (j0 < warp_hi && j1 > warp_lo) {  // warp-uniform: some row of the warp sees this tile
        float s[kNT][4];
        warp_qk_split<kHeadDim, kNT>(s, qf, sk, sk + Cfg::kTileElems, with_lo, lane);
        if (j0 >= all_lo && j1 <= all_hi) {  // warp-uniform: every row sees every key of the tile
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int r = e / 2;
              const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
              s[nt][e] = j >= lo[r] && j < hi[r] ? s[nt][e] * scale_log2 : -INFINITY;
            }
          }
        }
        uint32_t pa[kNT][2];
        softmax_update_bf16p<kNT, kDT>(s, pa, o, m, l);
        warp_pv_bf16p<kHeadDim, kNT>(o, pa, sv, lane);
      }
      if (has_next) prefill_store_k<kHeadDim>(st, kv, rope_t, next_k, next_k + Cfg::kTileElems, tid);
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
