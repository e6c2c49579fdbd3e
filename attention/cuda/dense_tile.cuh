// The pieces the attention kernels are built from: loading a K/V tile of one kv head from paged bf16
// slots (rotating K as it lands), one warp's S = Q K^T over the tile, the online-softmax update and
// O += P V; and the split-K variants of the prefill kernels (rotated K kept to ~16 bits as hi + lo
// bf16 tiles, RoPE by angle addition, P rounded once for both P V and the row sum). One warp owns 16
// query rows; a tile row in shared memory is kRowStride bf16 (head_dim + 8: the 16-byte pad puts the
// 8 rows one ldmatrix reads in 8 different bank groups).
#pragma once

#include <cstdint>

#include "attention/cuda/dense.h"
#include "attention/cuda/warp_mma.cuh"

namespace mnemo::cuda {

template <int kHeadDim>
constexpr int kTileRowStride = kHeadDim + 8;

// One sequence's view of one kv head.
struct KvHeadView {
  const bf16* arena;
  const int32_t* table;  // this sequence's block table
  int64_t slot_elems;    // 2 * num_kv_heads * block_tokens * head_dim
  int64_t k_offset;      // kv_head * block_tokens * head_dim
  int64_t v_offset;      // num_kv_heads * block_tokens * head_dim (V of a slot after all K heads)
  int block_tokens;
  const float* rope_cos;  // [len, head_dim / 2] or null
  const float* rope_sin;
};

__device__ __forceinline__ KvHeadView make_kv_head_view(const PagedKvBf16& kv, const RopeTableView& rope,
                                                        int seq, int kv_head) {
  KvHeadView v;
  v.arena = kv.arena;
  v.table = kv.block_tables + int64_t{seq} * kv.block_table_stride;
  v.slot_elems = kv.slot_elems();
  v.k_offset = int64_t{kv_head} * kv.block_tokens * kv.head_dim;
  v.v_offset = int64_t{kv.num_kv_heads} * kv.block_tokens * kv.head_dim;
  v.block_tokens = kv.block_tokens;
  v.rope_cos = rope.cos;
  v.rope_sin = rope.sin;
  return v;
}

__device__ __forceinline__ uint4 load16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void store16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// x' = x c - y s, y' = y c + x s on 8 bf16 pairs (x from the first half of the head, y the second).
__device__ __forceinline__ void rotate8(uint4& x, uint4& y, float4 c0, float4 c1, float4 s0, float4 s1) {
  const float c[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
  const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
  uint32_t xw[4] = {x.x, x.y, x.z, x.w};
  uint32_t yw[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float x0 = bf16_lo(xw[w]), x1 = bf16_hi(xw[w]);
    const float y0 = bf16_lo(yw[w]), y1 = bf16_hi(yw[w]);
    const int e = 2 * w;
    xw[w] = pack_bf16x2(x0 * c[e] - y0 * s[e], x1 * c[e + 1] - y1 * s[e + 1]);
    yw[w] = pack_bf16x2(y0 * c[e] + x0 * s[e], y1 * c[e + 1] + x1 * s[e + 1]);
  }
  x = make_uint4(xw[0], xw[1], xw[2], xw[3]);
  y = make_uint4(yw[0], yw[1], yw[2], yw[3]);
}

// Loads tokens [j0, j0 + kTokens) of one kv head into shared K (rotated at index j) and V tiles of
// kTokens rows. Tokens outside [lo, hi) are written as zeros: they are never read from memory, and
// their masked probability 0 times a zero V row stays 0 (a NaN-poisoned slot tail cannot leak in).
// kThreads threads call this together, `tid` in [0, kThreads); work item = (token, 16-byte vector of
// the first half of the head) so 8 consecutive threads read 128 contiguous bytes of one row.
template <int kHeadDim, int kTokens, int kThreads>
__device__ __forceinline__ void load_kv_tile(const KvHeadView& kv, int64_t j0, int64_t lo, int64_t hi,
                                             bf16* sk, bf16* sv, int tid) {
  constexpr int kHalf = kHeadDim / 2;
  constexpr int kVecs = kHalf / 8;  // 16-byte vectors per half row
  constexpr int kItems = kTokens * kVecs;
  // Small heads (head_dim 16 in a 64-token tile of 128 threads) leave some threads without work.
  static_assert(kItems % kThreads == 0 || kItems < kThreads, "tile work must split evenly over the threads");
  constexpr int kPerThread = (kItems + kThreads - 1) / kThreads;
  constexpr int kBatch = kPerThread < 2 ? kPerThread : 2;  // loads in flight per thread before use
  constexpr int kStride = kTileRowStride<kHeadDim>;
#pragma unroll 1  // keep kBatch items of loads in flight, not all of them (registers)
  for (int it0 = 0; it0 < kPerThread; it0 += kBatch) {
    uint4 k0[kBatch] = {}, k1[kBatch] = {}, v0[kBatch] = {}, v1[kBatch] = {};
    float4 c[kBatch][2] = {}, s[kBatch][2] = {};
    bool valid[kBatch] = {};
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int item = (it0 + u) * kThreads + tid;
      const int t = item / kVecs, vec = item % kVecs;
      const int64_t j = j0 + t;
      valid[u] = j >= lo && j < hi && (kItems >= kThreads || item < kItems);
      if (valid[u]) {
        // Token indices fit 32 bits (kv lengths are int32): a 32-bit division is far cheaper.
        const uint32_t block = static_cast<uint32_t>(j) / static_cast<uint32_t>(kv.block_tokens);
        const uint32_t offset = static_cast<uint32_t>(j) - block * static_cast<uint32_t>(kv.block_tokens);
        const bf16* kp = kv.arena + int64_t{kv.table[block]} * kv.slot_elems + kv.k_offset +
                         int64_t{offset} * kHeadDim + vec * 8;
        k0[u] = load16(kp);
        k1[u] = load16(kp + kHalf);
        v0[u] = load16(kp + kv.v_offset);
        v1[u] = load16(kp + kv.v_offset + kHalf);
        if (kv.rope_cos != nullptr) {
          const float* cp = kv.rope_cos + j * kHalf + vec * 8;
          const float* sp = kv.rope_sin + j * kHalf + vec * 8;
          c[u][0] = *reinterpret_cast<const float4*>(cp);
          c[u][1] = *reinterpret_cast<const float4*>(cp + 4);
          s[u][0] = *reinterpret_cast<const float4*>(sp);
          s[u][1] = *reinterpret_cast<const float4*>(sp + 4);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int item = (it0 + u) * kThreads + tid;
      if (kItems < kThreads && item >= kItems) continue;
      const int t = item / kVecs, vec = item % kVecs;
      bf16* kd = sk + t * kStride + vec * 8;
      bf16* vd = sv + t * kStride + vec * 8;
      if (valid[u]) {
        if (kv.rope_cos != nullptr) rotate8(k0[u], k1[u], c[u][0], c[u][1], s[u][0], s[u][1]);
      } else {
        k0[u] = k1[u] = v0[u] = v1[u] = make_uint4(0, 0, 0, 0);
      }
      store16(kd, k0[u]);
      store16(kd + kHalf, k1[u]);
      store16(vd, v0[u]);
      store16(vd + kHalf, v1[u]);
    }
  }
}

// A fragments of 16 query rows: row0 (this lane's row g) and row1 (g + 8) point at head vectors, or
// are null for padding rows (zeros).
template <int kHeadDim>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[kHeadDim / 16][4], const bf16* row0,
                                                 const bf16* row1, int lane) {
  const int c = (lane % 4) * 2;
#pragma unroll
  for (int kc = 0; kc < kHeadDim / 16; ++kc) {
    const int e = kc * 16 + c;
    qf[kc][0] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + e) : 0u;
    qf[kc][1] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + e) : 0u;
    qf[kc][2] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + e + 8) : 0u;
    qf[kc][3] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + e + 8) : 0u;
  }
}

// s[nt] = Q K^T for the warp's 16 rows and tile tokens [8 nt, 8 nt + 8), nt < kNT.
template <int kHeadDim, int kNT>
__device__ __forceinline__ void warp_qk(float (&s)[kNT][4], const uint32_t (&qf)[kHeadDim / 16][4],
                                        const bf16* sk, int lane) {
  static_assert(kNT % 2 == 0, "ldmatrix.x4 loads two 8-token n-tiles at once");
  constexpr int kStride = kTileRowStride<kHeadDim>;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
  // Lane L addresses token 8 nt + L % 8 (+ 8 for lanes 16..31), columns +8 for lanes 8..15, 24..31:
  // matrices (nt, k lo), (nt, k hi), (nt + 1, k lo), (nt + 1, k hi) = b0, b1 of n-tiles nt and nt + 1.
  const bf16* base = sk + ((lane % 8) + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kc = 0; kc < kHeadDim / 16; ++kc) {
#pragma unroll
    for (int nt = 0; nt < kNT; nt += 2) {
      uint32_t kf[4];
      ldmatrix_x4(kf, base + nt * 8 * kStride + kc * 16);
      mma_bf16_16816(s[nt], qf[kc], kf[0], kf[1]);
      mma_bf16_16816(s[nt + 1], qf[kc], kf[2], kf[3]);
    }
  }
}

// Online softmax over one tile, scores in log2 units (already scaled by softmax_scale * log2 e,
// masked entries -inf). m: running max of rows g and g + 8; l: this lane's partial row sums (the
// quad's four partials are added at the end); o rescaled by exp2(m_old - m_new). Scores become P.
template <int kNT, int kDT>
__device__ __forceinline__ void softmax_update(float (&s)[kNT][4], float (&o)[kDT][4], float (&m)[2],
                                               float (&l)[2]) {
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float base[2], alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));  // the 4 lanes of a quad hold one row
    mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
    // A row with every key masked so far keeps max -inf; exponentiate against 0 so that
    // exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
    base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
    alpha[r] = exp2f(m[r] - base[r]);
    m[r] = mx[r];
    l[r] *= alpha[r];
  }
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    s[nt][0] = exp2f(s[nt][0] - base[0]);
    s[nt][1] = exp2f(s[nt][1] - base[0]);
    s[nt][2] = exp2f(s[nt][2] - base[1]);
    s[nt][3] = exp2f(s[nt][3] - base[1]);
    l[0] += s[nt][0] + s[nt][1];
    l[1] += s[nt][2] + s[nt][3];
  }
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    o[dt][0] *= alpha[0];
    o[dt][1] *= alpha[0];
    o[dt][2] *= alpha[1];
    o[dt][3] *= alpha[1];
  }
}

// o += P V over the tile: P's accumulator layout of n-tiles 2k, 2k + 1 is exactly the A fragment of
// k-chunk k (FlashAttention-2's register reuse); V's B fragments come from ldmatrix.trans.
template <int kHeadDim, int kNT>
__device__ __forceinline__ void warp_pv(float (&o)[kHeadDim / 8][4], const float (&p)[kNT][4],
                                        const bf16* sv, int lane) {
  constexpr int kStride = kTileRowStride<kHeadDim>;
  // Lane L addresses token L % 8 (+ 8 for lanes 8..15, 24..31), columns +8 for lanes 16..31:
  // matrices (tokens lo, d), (tokens hi, d), (tokens lo, d + 8), (tokens hi, d + 8).
  const bf16* base = sv + ((lane % 8) + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8;
#pragma unroll
  for (int kc = 0; kc < kNT / 2; ++kc) {
    const uint32_t a[4] = {pack_bf16x2(p[2 * kc][0], p[2 * kc][1]), pack_bf16x2(p[2 * kc][2], p[2 * kc][3]),
                           pack_bf16x2(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                           pack_bf16x2(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
    for (int dt = 0; dt < kHeadDim / 8; dt += 2) {
      uint32_t vf[4];
      ldmatrix_x4_trans(vf, base + kc * 16 * kStride + dt * 8);
      mma_bf16_16816(o[dt], a, vf[0], vf[1]);
      mma_bf16_16816(o[dt + 1], a, vf[2], vf[3]);
    }
  }
}

// ---- Split-K tiles (prefill kernels) ----------------------------------------------------------------
// Rotated K rounded to one bf16 puts an error of about 2^-9 |q| |k| into every score: the largest
// part of a bf16 kernel's error, and one the "twice the naive bf16 error" test rule cannot absorb
// where the naive path's own errors cancel (issue #4). Prefill kernels keep rotated K as two bf16
// tiles, hi = bf16(k) and lo = bf16(k - hi) (about 16 bits), and compute S = Q lo^T + Q hi^T;
// without RoPE K is exact in bf16 and lo is skipped. P is rounded to bf16 once and the row sum adds
// the rounded values (softmax_update_bf16p). RoPE goes by angle addition from a shared-memory copy of
// the table's rows 0..kTokens-1 over row 0 (the pair's amplitude a; row 0 is (a, 0)) and one table row
// j0 per tile: a cos((j0 + t) w) = a cos(j0 w) cos(t w) - a sin(j0 w) sin(t w), so a tile reads
// 512 B of table instead of 64 rows of it. Kernels that must agree bit for bit (sparse with every
// block selected == dense) share these functions and the tile starts j0.

// rope_t[0 .. kTokens * head_dim / 2): cos rows 0..kTokens-1 over row 0; then the sin rows. Rows past
// the table's end (only tokens past kv_len would use them, and those are never rotated) are zeros.
// `threads` threads call this together; a barrier must follow before rope_t is read.
template <int kHeadDim, int kTokens>
__device__ __forceinline__ void load_rope_rows(float* rope_t, const RopeTableView& rope, int tid, int threads) {
  constexpr int kHalf = kHeadDim / 2;
  for (int i = tid; i < kTokens * kHalf; i += threads) {
    const int t = i / kHalf, pair = i % kHalf;
    const float amp = rope.cos[pair];
    const bool ok = t < rope.len && amp != 0.0f;
    rope_t[i] = ok ? rope.cos[i] / amp : 0.0f;
    rope_t[kTokens * kHalf + i] = ok ? rope.sin[i] / amp : 0.0f;
  }
}

// cos / sin of token j0 + t for the 8 pairs [8 vec, 8 vec + 8): row0 = the table's row j0 at those
// pairs (cos then sin, 2 float4 each), rope_t from load_rope_rows.
template <int kHeadDim, int kTokens>
__device__ __forceinline__ void compose_rope8(const float4 (&c0)[2], const float4 (&s0)[2], const float* rope_t,
                                              int t, int vec, float (&c)[8], float (&s)[8]) {
  constexpr int kHalf = kHeadDim / 2;
  const float* ct = rope_t + t * kHalf + vec * 8;
  const float* st = ct + kTokens * kHalf;
  const float4 ct0 = *reinterpret_cast<const float4*>(ct), ct1 = *reinterpret_cast<const float4*>(ct + 4);
  const float4 st0 = *reinterpret_cast<const float4*>(st), st1 = *reinterpret_cast<const float4*>(st + 4);
  const float a[8] = {c0[0].x, c0[0].y, c0[0].z, c0[0].w, c0[1].x, c0[1].y, c0[1].z, c0[1].w};
  const float b[8] = {s0[0].x, s0[0].y, s0[0].z, s0[0].w, s0[1].x, s0[1].y, s0[1].z, s0[1].w};
  const float tc[8] = {ct0.x, ct0.y, ct0.z, ct0.w, ct1.x, ct1.y, ct1.z, ct1.w};
  const float ts[8] = {st0.x, st0.y, st0.z, st0.w, st1.x, st1.y, st1.z, st1.w};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    c[e] = a[e] * tc[e] - b[e] * ts[e];
    s[e] = b[e] * tc[e] + a[e] * ts[e];
  }
}

// Row j0 of the table at pairs [8 vec, 8 vec + 8); j0 < the table's length.
__device__ __forceinline__ void load_rope_row8(const KvHeadView& kv, int64_t j0, int half, int vec, float4 (&c0)[2],
                                               float4 (&s0)[2]) {
  const float* cp = kv.rope_cos + j0 * half + vec * 8;
  const float* sp = kv.rope_sin + j0 * half + vec * 8;
  c0[0] = *reinterpret_cast<const float4*>(cp);
  c0[1] = *reinterpret_cast<const float4*>(cp + 4);
  s0[0] = *reinterpret_cast<const float4*>(sp);
  s0[1] = *reinterpret_cast<const float4*>(sp + 4);
}

// x' = x c - y s, y' = y c + x s on 8 bf16 pairs in fp32, each result split into hi = bf16(r) (x, y)
// and lo = bf16(r - hi) (x_lo, y_lo); r - hi is exact in fp32.
__device__ __forceinline__ void split_rotate8(uint4& x, uint4& y, uint4& x_lo, uint4& y_lo, const float (&c)[8],
                                              const float (&s)[8]) {
  uint32_t xw[4] = {x.x, x.y, x.z, x.w}, yw[4] = {y.x, y.y, y.z, y.w};
  uint32_t xl[4], yl[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float x0 = bf16_lo(xw[w]), x1 = bf16_hi(xw[w]);
    const float y0 = bf16_lo(yw[w]), y1 = bf16_hi(yw[w]);
    const int e = 2 * w;
    const float rx0 = x0 * c[e] - y0 * s[e], rx1 = x1 * c[e + 1] - y1 * s[e + 1];
    const float ry0 = y0 * c[e] + x0 * s[e], ry1 = y1 * c[e + 1] + x1 * s[e + 1];
    xw[w] = pack_bf16x2(rx0, rx1);
    yw[w] = pack_bf16x2(ry0, ry1);
    xl[w] = pack_bf16x2(rx0 - bf16_lo(xw[w]), rx1 - bf16_hi(xw[w]));  // exact differences
    yl[w] = pack_bf16x2(ry0 - bf16_lo(yw[w]), ry1 - bf16_hi(yw[w]));
  }
  x = make_uint4(xw[0], xw[1], xw[2], xw[3]);
  y = make_uint4(yw[0], yw[1], yw[2], yw[3]);
  x_lo = make_uint4(xl[0], xl[1], xl[2], xl[3]);
  y_lo = make_uint4(yl[0], yl[1], yl[2], yl[3]);
}

// rope_t: the shared rows 0..63 of the table over row 0 (cos, then sin at + 64 * head_dim / 2).
// Rotated K item (token t of the tile, pairs of vector vec) from raw halves x, y into the split
// tiles; invalid items are zeros (lo is written only with RoPE: without it the kernels never read lo).
template <int kHeadDim, int kTokens>
__device__ __forceinline__ void store_split_k(const KvHeadView& kv, const float* rope_t, const float4 (&c0)[2],
                                              const float4 (&s0)[2], bool valid, uint4 x, uint4 y, int t, int vec,
                                              bf16* sk, bf16* sk_lo) {
  constexpr int kHalf = kHeadDim / 2;
  uint4 x_lo = make_uint4(0, 0, 0, 0), y_lo = x_lo;
  if (valid) {
    if (kv.rope_cos != nullptr) {
      float c[8], s[8];
      compose_rope8<kHeadDim, kTokens>(c0, s0, rope_t, t, vec, c, s);
      split_rotate8(x, y, x_lo, y_lo, c, s);
    }
  } else {
    x = y = x_lo;
  }
  const int at = t * kTileRowStride<kHeadDim> + vec * 8;
  store16(sk + at, x);
  store16(sk + at + kHalf, y);
  if (kv.rope_cos != nullptr) {
    store16(sk_lo + at, x_lo);
    store16(sk_lo + at + kHalf, y_lo);
  }
}

// load_kv_tile for split-K kernels, synchronous (the same K bits as a kernel staging through
// store_split_k): tokens [j0, j0 + kTokens) into sk / sk_lo (rotated) and sv; zeros outside [lo, hi).
template <int kHeadDim, int kTokens, int kThreads>
__device__ __forceinline__ void load_kv_tile_split(const KvHeadView& kv, const float* rope_t, int64_t j0, int64_t lo,
                                                   int64_t hi, bf16* sk, bf16* sk_lo, bf16* sv, int tid) {
  constexpr int kHalf = kHeadDim / 2;
  constexpr int kVecs = kHalf / 8;
  constexpr int kItems = kTokens * kVecs;
  static_assert(kItems % kThreads == 0 || kItems < kThreads, "tile work must split evenly over the threads");
  constexpr int kPerThread = (kItems + kThreads - 1) / kThreads;
  constexpr int kStride = kTileRowStride<kHeadDim>;
#pragma unroll 2
  for (int it = 0; it < kPerThread; ++it) {
    const int item = it * kThreads + tid;
    if (kItems < kThreads && item >= kItems) continue;
    const int t = item / kVecs, vec = item % kVecs;
    const int64_t j = j0 + t;
    const bool valid = j >= lo && j < hi;
    uint4 x = make_uint4(0, 0, 0, 0), y = x, v0 = x, v1 = x;
    float4 c0[2] = {}, s0[2] = {};
    if (valid) {
      const uint32_t block = static_cast<uint32_t>(j) / static_cast<uint32_t>(kv.block_tokens);
      const uint32_t offset = static_cast<uint32_t>(j) - block * static_cast<uint32_t>(kv.block_tokens);
      const bf16* kp = kv.arena + int64_t{kv.table[block]} * kv.slot_elems + kv.k_offset +
                       int64_t{offset} * kHeadDim + vec * 8;
      x = load16(kp);
      y = load16(kp + kHalf);
      v0 = load16(kp + kv.v_offset);
      v1 = load16(kp + kv.v_offset + kHalf);
      if (kv.rope_cos != nullptr) load_rope_row8(kv, j0, kHalf, vec, c0, s0);
    }
    store_split_k<kHeadDim, kTokens>(kv, rope_t, c0, s0, valid, x, y, t, vec, sk, sk_lo);
    store16(sv + t * kStride + vec * 8, v0);
    store16(sv + t * kStride + vec * 8 + kHalf, v1);
  }
}

// s = Q K^T for the warp's 16 rows over the tile with K = hi + lo (lo only when `with_lo`); the
// ldmatrix addressing is warp_qk's.
template <int kHeadDim, int kNT>
__device__ __forceinline__ void warp_qk_split(float (&s)[kNT][4], const uint32_t (&qf)[kHeadDim / 16][4],
                                           const bf16* sk, const bf16* sk_lo, bool with_lo, int lane) {
  constexpr int kStride = kTileRowStride<kHeadDim>;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
  const int at = ((lane % 8) + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8;
  if (with_lo) {
#pragma unroll
    for (int kc = 0; kc < kHeadDim / 16; ++kc) {
#pragma unroll
      for (int nt = 0; nt < kNT; nt += 2) {
        uint32_t kf[4];
        ldmatrix_x4(kf, sk_lo + at + nt * 8 * kStride + kc * 16);
        mma_bf16_16816(s[nt], qf[kc], kf[0], kf[1]);
        mma_bf16_16816(s[nt + 1], qf[kc], kf[2], kf[3]);
      }
    }
  }
#pragma unroll
  for (int kc = 0; kc < kHeadDim / 16; ++kc) {
#pragma unroll
    for (int nt = 0; nt < kNT; nt += 2) {
      uint32_t kf[4];
      ldmatrix_x4(kf, sk + at + nt * 8 * kStride + kc * 16);
      mma_bf16_16816(s[nt], qf[kc], kf[0], kf[1]);
      mma_bf16_16816(s[nt + 1], qf[kc], kf[2], kf[3]);
    }
  }
}

// Online softmax over one tile with P rounded to bf16 once: pa[nt] = {P(g, 2 cols), P(g + 8, 2 cols)}
// packed, and l adds exactly those rounded values, so the weights the output is normalised by are the
// weights applied. Otherwise as softmax_update (scores in log2 units, masked entries -inf).
template <int kNT, int kDT>
__device__ __forceinline__ void softmax_update_bf16p(const float (&s)[kNT][4], uint32_t (&pa)[kNT][2],
                                                float (&o)[kDT][4], float (&m)[2], float (&l)[2]) {
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float base[2], alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));  // the 4 lanes of a quad hold one row
    mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
    // A row with every key masked so far keeps max -inf: exponentiate against 0 so that
    // exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
    base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
    alpha[r] = exp2f(m[r] - base[r]);
    m[r] = mx[r];
    l[r] *= alpha[r];
  }
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint32_t packed = pack_bf16x2(exp2f(s[nt][2 * r] - base[r]), exp2f(s[nt][2 * r + 1] - base[r]));
      pa[nt][r] = packed;
      l[r] += bf16_lo(packed) + bf16_hi(packed);
    }
  }
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    o[dt][0] *= alpha[0];
    o[dt][1] *= alpha[0];
    o[dt][2] *= alpha[1];
    o[dt][3] *= alpha[1];
  }
}

// o += P V over the tile from the packed P (the accumulator layout of n-tiles 2k, 2k + 1 is the A
// fragment of k-chunk k); V's B fragments by ldmatrix.trans as in warp_pv.
template <int kHeadDim, int kNT>
__device__ __forceinline__ void warp_pv_bf16p(float (&o)[kHeadDim / 8][4], const uint32_t (&pa)[kNT][2],
                                           const bf16* sv, int lane) {
  constexpr int kStride = kTileRowStride<kHeadDim>;
  const bf16* base = sv + ((lane % 8) + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8;
#pragma unroll
  for (int kc = 0; kc < kNT / 2; ++kc) {
    const uint32_t a[4] = {pa[2 * kc][0], pa[2 * kc][1], pa[2 * kc + 1][0], pa[2 * kc + 1][1]};
#pragma unroll
    for (int dt = 0; dt < kHeadDim / 8; dt += 2) {
      uint32_t vf[4];
      ldmatrix_x4_trans(vf, base + kc * 16 * kStride + dt * 8);
      mma_bf16_16816(o[dt], a, vf[0], vf[1]);
      mma_bf16_16816(o[dt + 1], a, vf[2], vf[3]);
    }
  }
}

// Adds the partial row sums of a quad so every lane holds the full l of rows g and g + 8.
__device__ __forceinline__ void quad_sum(float (&l)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += shfl_xor(l[r], 1);
    l[r] += shfl_xor(l[r], 2);
  }
}

}  // namespace mnemo::cuda
