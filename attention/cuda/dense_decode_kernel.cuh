// Decode attention kernels (see attention/cuda/dense.h): one query token per sequence, split-KV.
//
// Split kernel: CTA (kv head g, head chunk, split, sequence) of 4 warps. The CTA owns the key range
// of its split (whole blocks); its 16 query rows are the query heads chunk*16.. of group g (GQA:
// the group's heads are the M dimension of the tensor-core tiles, so one K/V tile serves them all).
// Each warp walks its own 32-token tiles of the range (warp w takes tiles w, w+4, ...) through a
// private shared-memory tile, so warps never wait on each other until the end, where their
// (max, sum, O) states are merged through shared memory. With one split the CTA writes the final
// bf16 output; otherwise it writes O / l and lse in fp32 and the merge kernel combines splits:
//   lse = log sum_s exp(lse_s),   out = sum_s exp(lse_s - lse) O_s.
#pragma once

#include <cstdint>

#include "attention/cuda/dense_tile.cuh"

namespace mnemo::cuda {

template <int kHeadDim>
struct DecodeConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileTokens = 32;  // per warp per step
  static constexpr int kRows = 16;        // query heads per CTA
  static constexpr int kTileElems = kTileTokens * kTileRowStride<kHeadDim>;
  static constexpr size_t kTileBytes = size_t{kWarps} * 2 * kTileElems * sizeof(bf16);
  // Merge area: per warp 16 x (m, l) then 16 x head_dim partial O, fp32.
  static constexpr size_t kMergeBytes = size_t{kWarps} * kRows * (2 + kHeadDim) * sizeof(float);
  static constexpr size_t kSmemBytes = kTileBytes > kMergeBytes ? kTileBytes : kMergeBytes;
};

// Split outputs in the workspace: o [batch, num_heads, num_splits, head_dim] = O / l of the split,
// lse [batch, num_heads, num_splits] (natural log, -inf for an empty split).
struct DecodePartials {
  float* o = nullptr;
  float* lse = nullptr;
};

template <int kHeadDim>
__global__ void __launch_bounds__(128) dense_decode_split_kernel(const DenseDecodeParams p,
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
  const int b = static_cast<int>(blockIdx.z);
  const int group = p.num_heads / num_kv_heads;

  // This split's keys: blocks [split * per, (split + 1) * per) of the sequence, clipped to kv_len
  // and to the sliding window.
  const int64_t kv_len = p.kv.kv_lens[b];
  const int64_t bt = p.kv.block_tokens;
  const int64_t blocks = (kv_len + bt - 1) / bt;
  const int64_t per_split = (blocks + p.num_splits - 1) / p.num_splits;
  const int64_t window_lo = p.sliding_window > 0 && kv_len > p.sliding_window ? kv_len - p.sliding_window : 0;
  int64_t tok_begin = split * per_split * bt;
  const int64_t split_end = (split + 1) * per_split * bt;
  const int64_t tok_end = split_end < kv_len ? split_end : kv_len;
  if (tok_begin < window_lo) tok_begin = window_lo;

  const int r0 = lane / 4;
  const int hh0 = chunk * Cfg::kRows + r0, hh1 = hh0 + 8;
  const bf16* q_seq = p.q + (int64_t{b} * p.num_heads + int64_t{g} * group) * kHeadDim;
  uint32_t qf[kHeadDim / 16][4];
  load_q_fragments<kHeadDim>(qf, hh0 < group ? q_seq + int64_t{hh0} * kHeadDim : nullptr,
                             hh1 < group ? q_seq + int64_t{hh1} * kHeadDim : nullptr, lane);

  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const KvHeadView kv = make_kv_head_view(p.kv, p.key_rope, b, g);
  bf16* sk = reinterpret_cast<bf16*>(smem) + warp * 2 * Cfg::kTileElems;
  bf16* sv = sk + Cfg::kTileElems;

  for (int64_t j0 = tok_begin + int64_t{warp} * Cfg::kTileTokens; j0 < tok_end;
       j0 += int64_t{Cfg::kWarps} * Cfg::kTileTokens) {
    load_kv_tile<kHeadDim, Cfg::kTileTokens, 32>(kv, j0, tok_begin, tok_end, sk, sv, lane);
    warp_sync();
    float s[kNT][4];
    warp_qk<kHeadDim, kNT>(s, qf, sk, lane);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        s[nt][e] = j < tok_end ? s[nt][e] * scale_log2 : -INFINITY;
      }
    }
    softmax_update<kNT, kDT>(s, o, m, l);
    warp_pv<kHeadDim, kNT>(o, s, sv, lane);
    warp_sync();  // the next tile overwrites sk/sv
  }
  quad_sum(l);

  // Merge the 4 warps' states through shared memory (reusing the tile area).
  cta_sync();
  float* ml = reinterpret_cast<float*>(smem);        // [warp][row][m, l]
  float* os = ml + Cfg::kWarps * Cfg::kRows * 2;     // [warp][row][head_dim]
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
    const int64_t row = int64_t{b} * p.num_heads + int64_t{g} * group + hh;
    if (p.num_splits == 1) {
      p.out[row * kHeadDim + d] = __float2bfloat16_rn(value);
      if (d == 0 && p.lse != nullptr) p.lse[row] = lse;
    } else {
      part.o[(row * p.num_splits + split) * kHeadDim + d] = value;
      if (d == 0) part.lse[row * p.num_splits + split] = lse;
    }
  }
}

// Threads of one merge CTA: a whole number of warps, one per output element (head_dim 16/32 idle some).
template <int kHeadDim>
constexpr int kMergeThreads = kHeadDim < 32 ? 32 : kHeadDim;

// One CTA of kMergeThreads threads per (head, sequence); dynamic shared memory: num_splits floats.
template <int kHeadDim>
__global__ void __launch_bounds__(128) dense_decode_merge_kernel(const DenseDecodeParams p,
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
  for (int s = tid; s < ns; s += kMergeThreads<kHeadDim>) weight[s] = expf(lse[s] - base);
  cta_sync();
  float sum = 0.0f;
  for (int s = 0; s < ns; ++s) sum += weight[s];
  if (tid >= kHeadDim) return;
  const float* o = part.o + row * ns * kHeadDim;
  float acc = 0.0f;
  for (int s = 0; s < ns; ++s) acc += weight[s] * o[int64_t{s} * kHeadDim + tid];
  p.out[row * kHeadDim + tid] = __float2bfloat16_rn(sum > 0.0f ? acc / sum : 0.0f);
  if (tid == 0 && p.lse != nullptr) p.lse[row] = sum > 0.0f ? base + logf(sum) : -INFINITY;
}

}  // namespace mnemo::cuda
