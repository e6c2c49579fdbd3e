// Causal prefill attention kernel (see attention/cuda/dense.h), FlashAttention-2 style.
//
// CTA (row tile, kv head g, sequence) of 4 warps; a row tile is 64 rows of the sequence's
// (query, head of group g) pairs, query-major, so a GQA group's heads share every K/V tile. The CTA
// walks 64-token K/V tiles over the union of its rows' visible ranges; each tile is loaded once by
// all 128 threads (K rotated as it lands) and each warp runs S = Q K^T, the online softmax and
// O += P V for its 16 rows on mma.sync bf16 tensor cores, skipping tiles none of its rows can see.
// Row tiles are scheduled last-first: the latest queries see the most keys.
#pragma once

#include <cstdint>

#include "attention/cuda/dense_tile.cuh"

namespace mnemo::cuda {

template <int kHeadDim>
struct PrefillConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;  // rows per CTA
  static constexpr int kTileTokens = 64;
  static constexpr int kTileElems = kTileTokens * kTileRowStride<kHeadDim>;
  static constexpr size_t kRangeOffset = size_t{2} * kTileElems * sizeof(bf16);
  static constexpr size_t kSmemBytes = kRangeOffset + size_t{kWarps} * 2 * sizeof(int64_t);
};

template <int kHeadDim>
__global__ void __launch_bounds__(128) dense_prefill_kernel(const DensePrefillParams p) {
  using Cfg = PrefillConfig<kHeadDim>;
  constexpr int kNT = Cfg::kTileTokens / 8;
  constexpr int kDT = kHeadDim / 8;
  constexpr int64_t kNone = INT64_MAX;
  MNEMO_DYNAMIC_SMEM(smem);
  bf16* sk = reinterpret_cast<bf16*>(smem);
  bf16* sv = sk + Cfg::kTileElems;
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
  int64_t lo[2], hi[2], out_row[2];
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
    } else {
      lo[r] = kNone;  // padding row: sees nothing, written nowhere
      hi[r] = 0;
      out_row[r] = -1;
      q_row[r] = nullptr;
    }
  }
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, q_row[0], q_row[1], lane);

  // Key range of the warp, then of the CTA.
  int64_t warp_lo = lo[0] < lo[1] ? lo[0] : lo[1];
  int64_t warp_hi = hi[0] > hi[1] ? hi[0] : hi[1];
#pragma unroll
  for (int mask = 1; mask < 32; mask *= 2) {
    const int64_t other_lo = shfl_xor(warp_lo, mask);
    const int64_t other_hi = shfl_xor(warp_hi, mask);
    warp_lo = other_lo < warp_lo ? other_lo : warp_lo;
    warp_hi = other_hi > warp_hi ? other_hi : warp_hi;
  }
  if (lane == 0) {
    range[warp * 2 + 0] = warp_lo;
    range[warp * 2 + 1] = warp_hi;
  }
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

  if (cta_lo < cta_hi) {
    for (int64_t j0 = cta_lo / Cfg::kTileTokens * Cfg::kTileTokens; j0 < cta_hi; j0 += Cfg::kTileTokens) {
      cta_sync();  // every warp is done with the previous tile
      load_kv_tile<kHeadDim, Cfg::kTileTokens, Cfg::kThreads>(kv, j0, cta_lo, cta_hi, sk, sv, tid);
      cta_sync();
      if (j0 >= warp_hi || j0 + Cfg::kTileTokens <= warp_lo) continue;  // warp-uniform
      float s[kNT][4];
      warp_qk<kHeadDim, kNT>(s, qf, sk, lane);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          s[nt][e] = j >= lo[r] && j < hi[r] ? s[nt][e] * scale_log2 : -INFINITY;
        }
      }
      softmax_update<kNT, kDT>(s, o, m, l);
      warp_pv<kHeadDim, kNT>(o, s, sv, lane);
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
