// CPU reference of InfLLM-V2 stage 1 and top-k selection (see attention/select.h).
//
// One (query row, kv head) at a time: the group's tier-1 scores go to a per-thread scratch row
// [group, visible windows] (never query × key), then to the summed p_j, then to block scores. Top-k
// ranks candidates with a total order (score descending, then block index ascending), so the result
// does not depend on the sort algorithm or thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/select.h"

namespace mnemo {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float dot(const float* a, const float* b, int64_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
  return s;
}

// log Σ exp(x) over n values (−inf when n = 0).
float log_sum_exp(const float* x, int64_t n) {
  float m = kNegInf;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  if (n == 0 || m == kNegInf) return kNegInf;
  float l = 0.0f;
  for (int64_t j = 0; j < n; ++j) l += std::exp(x[j] - m);
  return m + std::log(l);
}

Status validate_view(const CompressedKeysView& v, const char* name, int head_dim) {
  if (!v.keys && v.num_compressed > 0) return invalid_argument("block scores: ", name, ".keys must be set");
  if (v.head_dim != head_dim) {
    return invalid_argument("block scores: ", name, ".head_dim: expected ", head_dim, ", got ", v.head_dim);
  }
  if (v.kernel_size <= 0 || v.kernel_stride <= 0 || v.head_stride < v.num_compressed * v.head_dim) {
    return invalid_argument("block scores: ", name, ": kernel_size ", v.kernel_size, ", kernel_stride ",
                            v.kernel_stride, ", head_stride ", v.head_stride, " for ", v.num_compressed,
                            " windows of head_dim ", v.head_dim);
  }
  return Status::Ok();
}

// Block scores of one (query row i, kv head g) into row[num_blocks]; scratch is per thread.
void score_row(const BlockScoreParams& p, int64_t i, int g, std::vector<float>* scratch, float* row) {
  const CompressedKeysView& k1 = p.keys;
  const int64_t d = k1.head_dim;
  const int group = p.num_heads / k1.num_kv_heads;
  const int64_t t = p.q_index[i];
  const int64_t n1 = std::min(num_windows(t + 1, k1.kernel_size, k1.kernel_stride), k1.num_compressed);
  const bool approx = p.lse_keys.keys != nullptr;
  const int64_t n2 = approx ? std::min(num_windows(t + 1, p.lse_keys.kernel_size, p.lse_keys.kernel_stride),
                                       p.lse_keys.num_compressed)
                            : 0;
  scratch->resize(static_cast<size_t>((group + 1) * n1 + n2 + 1));
  float* s = scratch->data();  // [group, n1] tier-1 scores, [n1] summed p_j, [n2] tier-2 scores
  float* pj = s + group * n1;
  float* s2 = pj + n1;
  std::fill(pj, pj + n1, 0.0f);
  for (int hh = 0; hh < group; ++hh) {
    const float* q = p.q + (i * p.num_heads + g * group + hh) * d;
    float* sh = s + hh * n1;
    for (int64_t j = 0; j < n1; ++j) sh[j] = p.softmax_scale * dot(q, k1.key(g, j), d);
    float lse;
    if (n2 > 0) {  // the approximate normaliser, from the tier-2 windows the query sees
      for (int64_t j = 0; j < n2; ++j) s2[j] = p.softmax_scale * dot(q, p.lse_keys.key(g, j), d);
      lse = log_sum_exp(s2, n2);
    } else {
      lse = log_sum_exp(sh, n1);
    }
    for (int64_t j = 0; j < n1; ++j) pj[j] += std::exp(sh[j] - lse);
  }
  for (int64_t b = 0; b < p.num_blocks; ++b) {
    const WindowRange r = windows_overlapping_block(b, p.block_size, k1.kernel_size, k1.kernel_stride);
    float best = 0.0f;  // windows not visible count as probability 0
    for (int64_t j = r.first; j <= std::min(r.last, n1 - 1); ++j) best = std::max(best, pj[j]);
    row[b] = best;
  }
}

// Higher score first; NaN below every number; ties to the lower block index.
bool ranks_before(float sa, int64_t a, float sb, int64_t b) {
  const bool na = std::isnan(sa), nb = std::isnan(sb);
  if (na != nb) return nb;
  if (!na && sa != sb) return sa > sb;
  return a < b;
}

// Selection of one (query row, kv head) from its block scores; candidates is per-thread scratch.
int32_t topk_row(const float* scores, int64_t t, const SparseParams& sp, int max_selected,
                 std::vector<int32_t>* candidates, int32_t* ids) {
  const int64_t bq = t / sp.block_size;
  const int64_t available = bq + 1;
  const int64_t init_end = std::min<int64_t>(sp.init_blocks, available);   // forced [0, init_end)
  const int64_t local_begin = std::max<int64_t>(init_end, bq - local_blocks(sp));  // forced [.., bq]
  const int64_t forced = init_end + (available - local_begin);
  const int64_t count = std::min<int64_t>(std::max<int64_t>(block_budget(sp), forced), available);
  // Candidates: non-forced, non-future blocks [init_end, local_begin).
  candidates->clear();
  for (int64_t b = init_end; b < local_begin; ++b) candidates->push_back(static_cast<int32_t>(b));
  const int64_t chosen = count - forced;
  auto before = [scores](int32_t a, int32_t b) { return ranks_before(scores[a], a, scores[b], b); };
  std::partial_sort(candidates->begin(), candidates->begin() + chosen, candidates->end(), before);
  candidates->resize(static_cast<size_t>(chosen));
  for (int64_t b = 0; b < init_end; ++b) candidates->push_back(static_cast<int32_t>(b));
  for (int64_t b = local_begin; b <= bq; ++b) candidates->push_back(static_cast<int32_t>(b));
  std::sort(candidates->begin(), candidates->end());
  std::copy(candidates->begin(), candidates->end(), ids);
  std::fill(ids + count, ids + max_selected, -1);
  return static_cast<int32_t>(count);
}

Status validate_topk_shape(const SparseParams& sp, const int64_t* q_index, int64_t num_q, int64_t num_blocks,
                           int max_selected, const char* what) {
  MNEMO_RETURN_IF_ERROR(validate(sp));
  if (max_selected < max_selected_blocks(sp)) {
    return invalid_argument(what, ": max_selected: expected >= ", max_selected_blocks(sp), ", got ", max_selected);
  }
  for (int64_t i = 0; i < num_q; ++i) {
    if (q_index[i] < 0 || q_index[i] / sp.block_size >= num_blocks) {
      return invalid_argument(what, ": q_index[", i, "] = ", q_index[i], ": expected in [0, num_blocks ", num_blocks,
                              " x block_size ", sp.block_size, ")");
    }
  }
  return Status::Ok();
}

}  // namespace

Status validate(const BlockScoreParams& p) {
  if (!p.q || !p.q_index || !p.block_scores) return invalid_argument("block scores: q, q_index and block_scores must be set");
  const CompressedKeysView& k1 = p.keys;
  if (k1.num_kv_heads <= 0 || p.num_heads <= 0 || p.num_heads % k1.num_kv_heads != 0) {
    return invalid_argument("block scores: num_heads (", p.num_heads, ") must be a positive multiple of num_kv_heads (",
                            k1.num_kv_heads, ")");
  }
  MNEMO_RETURN_IF_ERROR(validate_view(k1, "keys", k1.head_dim));
  if (p.lse_keys.keys) {
    MNEMO_RETURN_IF_ERROR(validate_view(p.lse_keys, "lse_keys", k1.head_dim));
    if (p.lse_keys.num_kv_heads != k1.num_kv_heads) {
      return invalid_argument("block scores: lse_keys.num_kv_heads: expected ", k1.num_kv_heads, ", got ",
                              p.lse_keys.num_kv_heads);
    }
  }
  if (p.block_size <= 0) return invalid_argument("block scores: block_size must be positive, got ", p.block_size);
  for (int64_t i = 0; i < p.num_q; ++i) {
    if (p.q_index[i] < 0 || p.q_index[i] / p.block_size >= p.num_blocks) {
      return invalid_argument("block scores: q_index[", i, "] = ", p.q_index[i], ": expected in [0, num_blocks ",
                              p.num_blocks, " x block_size ", p.block_size, ")");
    }
  }
  return Status::Ok();
}

Status block_scores_cpu(const BlockScoreParams& p) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const int hkv = p.keys.num_kv_heads;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t i = 0; i < p.num_q; ++i) {
      for (int g = 0; g < hkv; ++g) score_row(p, i, g, &scratch, p.block_scores + (i * hkv + g) * p.num_blocks);
    }
  }
  return Status::Ok();
}

Status validate(const BlockTopkParams& p) {
  if (!p.block_scores || !p.q_index || !p.block_ids) return invalid_argument("top-k: block_scores, q_index and block_ids must be set");
  if (p.num_kv_heads <= 0) return invalid_argument("top-k: num_kv_heads must be positive, got ", p.num_kv_heads);
  return validate_topk_shape(p.sparse, p.q_index, p.num_q, p.num_blocks, p.max_selected, "top-k");
}

Status select_topk_cpu(const BlockTopkParams& p) {
  MNEMO_RETURN_IF_ERROR(validate(p));
#pragma omp parallel
  {
    std::vector<int32_t> candidates;
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < p.num_q; ++i) {
      for (int g = 0; g < p.num_kv_heads; ++g) {
        const int64_t row = i * p.num_kv_heads + g;
        const int32_t n = topk_row(p.block_scores + row * p.num_blocks, p.q_index[i], p.sparse, p.max_selected,
                                   &candidates, p.block_ids + row * p.max_selected);
        if (p.num_selected) p.num_selected[row] = n;
      }
    }
  }
  return Status::Ok();
}

Status select_blocks_cpu(const BlockSelectParams& p) {
  BlockScoreParams sp = p.score;
  std::vector<float> tile_scores(1);
  sp.block_scores = tile_scores.data();  // validated below with the real tile buffer
  MNEMO_RETURN_IF_ERROR(validate(sp));
  if (!p.block_ids) return invalid_argument("select blocks: block_ids must be set");
  if (sp.block_size != p.sparse.block_size) {
    return invalid_argument("select blocks: score.block_size: expected sparse.block_size ", p.sparse.block_size,
                            ", got ", sp.block_size);
  }
  MNEMO_RETURN_IF_ERROR(validate_topk_shape(p.sparse, sp.q_index, sp.num_q, sp.num_blocks, p.max_selected, "select blocks"));
  const int hkv = sp.keys.num_kv_heads;
  const int64_t tile = 64;  // query rows whose scores are held at once
  tile_scores.resize(static_cast<size_t>(tile * hkv * sp.num_blocks));
  for (int64_t i0 = 0; i0 < sp.num_q; i0 += tile) {
    BlockScoreParams ts = sp;
    ts.q = sp.q + i0 * sp.num_heads * sp.keys.head_dim;
    ts.q_index = sp.q_index + i0;
    ts.num_q = std::min(tile, sp.num_q - i0);
    ts.block_scores = tile_scores.data();
    MNEMO_RETURN_IF_ERROR(block_scores_cpu(ts));
    BlockTopkParams tp;
    tp.block_scores = tile_scores.data();
    tp.q_index = ts.q_index;
    tp.num_q = ts.num_q;
    tp.num_kv_heads = hkv;
    tp.num_blocks = sp.num_blocks;
    tp.sparse = p.sparse;
    tp.max_selected = p.max_selected;
    tp.block_ids = p.block_ids + i0 * hkv * p.max_selected;
    tp.num_selected = p.num_selected ? p.num_selected + i0 * hkv : nullptr;
    MNEMO_RETURN_IF_ERROR(select_topk_cpu(tp));
  }
  return Status::Ok();
}

}  // namespace mnemo
