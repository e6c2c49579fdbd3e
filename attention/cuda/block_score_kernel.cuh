// Stage-1 block-score kernel (see attention/cuda/select.h for the math and the design).
//
// CTA (tile of queries, kv head g) of 4 warps; 64 rows = kQueries whole GQA groups (query-major,
// rows beyond kQueries · group are padding). Per row: n1 tier-1 and n2 tier-2 windows visible,
// min(num_windows(t + 1), num_compressed). Pass 1 computes each row's normaliser in log2 units with an
// online max/sum over 32-window tiles (tier 2, or tier 1 for exact rows); pass 2 walks the tier-1
// tiles again: p = exp2(s − lse) per (row, window) into shared memory, summed over each query's group
// in head order, then max-pooled into the blocks whose last window lies in the tile (the first
// `halo` windows of a block come from the previous tile, kept in the pool buffer).
#pragma once

#include <cstdint>

#include "attention/cuda/dense_tile.cuh"
#include "attention/cuda/select.h"

namespace mnemo::cuda {

template <int kHeadDim>
struct BlockScoreConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;
  static constexpr int kWindows = 32;  // compressed keys per tile
  static constexpr int kPStride = kWindows + 1;
  static constexpr size_t kTileBytes = size_t{kWindows} * kTileRowStride<kHeadDim> * sizeof(bf16);
  static constexpr size_t kPOffset = kTileBytes;
  static constexpr size_t kPoolOffset = kPOffset + size_t{kRows} * kPStride * sizeof(float);
  // Plus the pool: queries_per_cta x (halo + kWindows) floats, then kWarps int64 of reductions.
  __host__ __device__ static size_t red_offset(int queries_per_cta, int halo) {
    return (kPoolOffset + size_t(queries_per_cta) * (halo + kWindows) * sizeof(float) + 7) / 8 * 8;
  }
  static size_t smem_bytes(int queries_per_cta, int halo) {
    return red_offset(queries_per_cta, halo) + kWarps * sizeof(int64_t);
  }
};

__device__ __forceinline__ int64_t windows_visible(int64_t t, const CompressedKeysBf16& k) {
  const int64_t n = t + 1 < k.kernel_size ? 0 : (t + 1 - k.kernel_size) / k.kernel_stride + 1;
  return n < k.num_compressed ? n : k.num_compressed;
}

// Loads compressed keys [j0, j0 + 32) of one kv head (rows at or past n: zeros) into a padded tile.
template <int kHeadDim, int kThreads>
__device__ __forceinline__ void load_ck_tile(const bf16* keys, int64_t j0, int64_t n, bf16* sk, int tid) {
  constexpr int kVecs = kHeadDim / 8;
  constexpr int kItems = 32 * kVecs;
  for (int item = tid; item < kItems; item += kThreads) {
    const int r = item / kVecs, vec = item % kVecs;
    const int64_t j = j0 + r;
    const uint4 v = j < n ? load16(keys + j * kHeadDim + vec * 8) : make_uint4(0, 0, 0, 0);
    store16(sk + r * kTileRowStride<kHeadDim> + vec * 8, v);
  }
}

// CTA-wide max of an int64 (every thread passes its value; all get the result). red: kWarps ints.
template <int kWarps>
__device__ __forceinline__ int64_t cta_max(int64_t v, int64_t* red, int warp, int lane) {
#pragma unroll
  for (int mask = 1; mask < 32; mask *= 2) {
    const int64_t o = shfl_xor(v, mask);
    v = o > v ? o : v;
  }
  cta_sync();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  cta_sync();
  int64_t r = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = red[w] > r ? red[w] : r;
  return r;
}

// Modes: kFused (one split: both passes in one kernel), kLsePartial (pass 1 over this split's share of
// the normaliser tiles → (m, l) partials in the workspace), kScoreFromPartials (merge every split's
// partial, then pass 2 over this split's share of the tier-1 tiles). Splits (grid.z) let one decode
// query spread its windows over the GPU; partials: [num_q, num_heads, num_splits] x (m, l), log2 units.
enum BlockScoreMode { kFused = 0, kLsePartial = 1, kScoreFromPartials = 2 };

// kLsePartial returns after pass 1: nvcc would flag pass 2 as unreachable in that instantiation.
#pragma nv_diag_suppress 128
template <int kHeadDim, int kMode>
__global__ void __launch_bounds__(128) block_score_kernel(const BlockScoreCudaParams p, int queries_per_cta,
                                                          int halo, float2* partials) {
  using Cfg = BlockScoreConfig<kHeadDim>;
  constexpr int kNT = Cfg::kWindows / 8;
  constexpr int kW = Cfg::kWindows;
  MNEMO_DYNAMIC_SMEM(smem);
  bf16* sk = reinterpret_cast<bf16*>(smem);
  float* ps = reinterpret_cast<float*>(smem + Cfg::kPOffset);     // [kRows][kPStride]
  float* pool = reinterpret_cast<float*>(smem + Cfg::kPoolOffset);  // [queries][halo + kW]
  int64_t* red = reinterpret_cast<int64_t*>(smem + Cfg::red_offset(queries_per_cta, halo));

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int g = static_cast<int>(blockIdx.y);
  const int group = p.num_heads / p.num_kv_heads;
  const int q0 = static_cast<int>(blockIdx.x) * queries_per_cta;
  const int split = static_cast<int>(blockIdx.z), num_splits = static_cast<int>(gridDim.z);
  const bool approx = p.lse_keys.keys != nullptr;
  const float scale_log2 = p.softmax_scale * kLog2e;

  int64_t n1[2], n_lse1[2], n2[2], part_row[2];
  bool valid[2];
  const bf16* q_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + lane / 4 + 8 * r;
    const int token = q0 + row / group;
    valid[r] = row < queries_per_cta * group && token < p.num_q;
    n1[r] = n_lse1[r] = n2[r] = 0;
    q_row[r] = nullptr;
    part_row[r] = (int64_t{token} * p.num_heads + int64_t{g} * group + row % group) * num_splits;
    if (valid[r]) {
      const int64_t t = p.q_index[token];
      n1[r] = windows_visible(t, p.keys);
      n2[r] = approx ? windows_visible(t, p.lse_keys) : 0;
      n_lse1[r] = n2[r] > 0 ? 0 : n1[r];  // rows that see no tier-2 window normalise exactly
      q_row[r] = p.q + (int64_t{token} * p.num_heads + int64_t{g} * group + row % group) * kHeadDim;
    }
  }
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, q_row[0], q_row[1], lane);
  const int64_t max_n1 = cta_max<Cfg::kWarps>(n1[0] > n1[1] ? n1[0] : n1[1], red, warp, lane);
  const int64_t max_lse1 = cta_max<Cfg::kWarps>(n_lse1[0] > n_lse1[1] ? n_lse1[0] : n_lse1[1], red, warp, lane);
  const int64_t max_n2 = cta_max<Cfg::kWarps>(n2[0] > n2[1] ? n2[0] : n2[1], red, warp, lane);

  // Pass 1: log2-domain normalisers. Tier-1 LSE for exact rows, tier-2 for the others.
  float lse[2];
  {
    float m1[2] = {-INFINITY, -INFINITY}, l1[2] = {0.0f, 0.0f};
    float m2[2] = {-INFINITY, -INFINITY}, l2[2] = {0.0f, 0.0f};
    for (int tier = 0; tier < (kMode == kScoreFromPartials ? 0 : 2); ++tier) {  // partials: pass 1 ran before
      const CompressedKeysBf16& ck = tier == 0 ? p.keys : p.lse_keys;
      const int64_t n_cta = tier == 0 ? max_lse1 : max_n2;
      const int64_t* n_row = tier == 0 ? n_lse1 : n2;
      float* m = tier == 0 ? m1 : m2;
      float* l = tier == 0 ? l1 : l2;
      const bf16* keys = ck.keys + int64_t{g} * ck.head_stride;
      // This split's share of the tiles (all of them when fused).
      const int64_t tiles = (n_cta + kW - 1) / kW;
      const int64_t per = kMode == kFused ? tiles : (tiles + num_splits - 1) / num_splits;
      const int64_t t_begin = kMode == kFused ? 0 : split * per;
      const int64_t t_end = t_begin + per < tiles ? t_begin + per : tiles;
      for (int64_t j0 = t_begin * kW; j0 < t_end * kW; j0 += kW) {
        cta_sync();  // every warp is done with the previous tile
        load_ck_tile<kHeadDim, Cfg::kThreads>(keys, j0, n_cta, sk, tid);
        cta_sync();
        float s[kNT][4];
        warp_qk<kHeadDim, kNT>(s, qf, sk, lane);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
            s[nt][e] = j < n_row[e / 2] ? s[nt][e] * scale_log2 : -INFINITY;
            mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
          mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
          const float base = mx[r] == -INFINITY ? 0.0f : mx[r];
          l[r] *= exp2f(m[r] - base);
          m[r] = mx[r];
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            l[r] += exp2f(s[nt][e] - (m[r] == -INFINITY ? 0.0f : m[r]));
          }
        }
      }
    }
    quad_sum(l1);
    quad_sum(l2);
    if constexpr (kMode == kLsePartial) {
      if (lane % 4 == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (valid[r]) partials[part_row[r] + split] = n2[r] > 0 ? make_float2(m2[r], l2[r]) : make_float2(m1[r], l1[r]);
        }
      }
      return;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if constexpr (kMode == kScoreFromPartials) {
        // Merge the splits' (m, l): M = max m, L = Σ l · exp2(m − M).
        float mm = -INFINITY, ll = 0.0f;
        if (valid[r]) {
          for (int sp = 0; sp < num_splits; ++sp) mm = fmaxf(mm, partials[part_row[r] + sp].x);
          const float base = mm == -INFINITY ? 0.0f : mm;
          for (int sp = 0; sp < num_splits; ++sp) {
            const float2 v = partials[part_row[r] + sp];
            ll += v.y * exp2f(v.x - base);
          }
        }
        lse[r] = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
      } else {
        lse[r] = n2[r] > 0 ? (l2[r] > 0.0f ? m2[r] + log2f(l2[r]) : -INFINITY)
                           : (l1[r] > 0.0f ? m1[r] + log2f(l1[r]) : -INFINITY);
      }
    }
  }

  // Pass 2: p over tier-1 tiles, group sum, max-pool.
  const int windows_per_block = p.block_size / p.keys.kernel_stride;
  const int blocks_per_tile = kW / windows_per_block;
  const int pool_stride = halo + kW;
  for (int idx = tid; idx < queries_per_cta * pool_stride; idx += Cfg::kThreads) pool[idx] = 0.0f;
  const bf16* keys1 = p.keys.keys + int64_t{g} * p.keys.head_stride;
  // Tiles up to the one holding window max_n1 − 1 + halo (a block's halo may reach back into the last
  // visible tile). This split's share: [t_begin, t_end), plus tile t_begin − 1 walked only to fill the halo.
  const int64_t tiles = (max_n1 + halo + kW - 1) / kW;
  const int64_t per = (tiles + num_splits - 1) / num_splits;
  const int64_t t_begin = split * per;
  const int64_t t_end = t_begin + per < tiles ? t_begin + per : tiles;
  int64_t tile = t_begin > 0 && t_begin < t_end ? t_begin - 1 : t_begin;
  for (; tile < t_end; ++tile) {
    const int64_t j0 = tile * kW;
    const bool write_blocks = tile >= t_begin;
    cta_sync();
    load_ck_tile<kHeadDim, Cfg::kThreads>(keys1, j0, max_n1, sk, tid);
    cta_sync();
    float s[kNT][4];
    warp_qk<kHeadDim, kNT>(s, qf, sk, lane);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const int col = nt * 8 + (lane % 4) * 2 + (e & 1);
        const int64_t j = j0 + col;
        const float v = j < n1[r] ? exp2f(s[nt][e] * scale_log2 - lse[r]) : 0.0f;
        ps[(warp * 16 + lane / 4 + 8 * r) * Cfg::kPStride + col] = v;
      }
    }
    cta_sync();
    // Group sum in head order (the CPU's order): window w of query qq.
    for (int idx = tid; idx < queries_per_cta * kW; idx += Cfg::kThreads) {
      const int qq = idx / kW, w = idx % kW;
      float sum = 0.0f;
      for (int hh = 0; hh < group; ++hh) sum += ps[(qq * group + hh) * Cfg::kPStride + w];
      pool[qq * pool_stride + halo + w] = sum;
    }
    cta_sync();
    // Blocks whose last window is in this tile: block b reads windows [b·wpb − halo, (b + 1)·wpb), i.e.
    // pool entries [bb·wpb, bb·wpb + wpb + halo) for bb = b − tile·blocks_per_tile.
    for (int idx = tid; idx < queries_per_cta * blocks_per_tile; idx += Cfg::kThreads) {
      const int qq = idx / blocks_per_tile, bb = idx % blocks_per_tile;
      const int token = q0 + qq;
      const int64_t b = tile * blocks_per_tile + bb;
      if (!write_blocks || token >= p.num_q || b >= p.num_blocks) continue;
      float best = 0.0f;  // windows not visible count as 0; a NaN p leaves best (std::max's order)
      const float* w = pool + qq * pool_stride + bb * windows_per_block;
      for (int i = 0; i < windows_per_block + halo; ++i) best = best < w[i] ? w[i] : best;
      p.block_scores[(int64_t{token} * p.num_kv_heads + g) * p.num_blocks + b] = best;
    }
    cta_sync();
    for (int idx = tid; idx < queries_per_cta * halo; idx += Cfg::kThreads) {
      const int qq = idx / halo, i = idx % halo;
      pool[qq * pool_stride + i] = pool[qq * pool_stride + kW + i];
    }
  }
  // Blocks past the last tile see no visible window: score 0 (written by split 0).
  const int64_t first_zero = tiles * blocks_per_tile;
  if (split == 0 && first_zero < p.num_blocks) {
    const int64_t rest = p.num_blocks - first_zero;
    for (int64_t idx = tid; idx < int64_t{queries_per_cta} * rest; idx += Cfg::kThreads) {
      const int token = q0 + static_cast<int>(idx / rest);
      if (token < p.num_q) {
        p.block_scores[(int64_t{token} * p.num_kv_heads + g) * p.num_blocks + first_zero + idx % rest] = 0.0f;
      }
    }
  }
}

#pragma nv_diag_default 128

}  // namespace mnemo::cuda
