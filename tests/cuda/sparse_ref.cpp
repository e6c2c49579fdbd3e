#include "tests/cuda/sparse_ref.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "attention/sparse.h"
#include "core/dtype.h"

namespace mnemo::test {
namespace {

float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

int64_t kv_offset(const AttnCase& c, const AttnData& d, int b, int64_t j, int g, int kv) {
  const int64_t slot_elems = int64_t{2} * c.num_kv_heads * c.block_tokens * c.head_dim;
  const int64_t slot = d.block_tables[int64_t{b} * d.table_stride + j / c.block_tokens];
  return slot * slot_elems + ((int64_t{kv} * c.num_kv_heads + g) * c.block_tokens + j % c.block_tokens) * c.head_dim;
}

bool row_empty(const AttnCase& c, const AttnData& d, const Selection& sel, int64_t qi, int g) {
  const int32_t* ids = sel.ids.data() + (qi * c.num_kv_heads + g) * sel.max_selected;
  return std::none_of(ids, ids + sel.max_selected, [](int32_t b) { return b >= 0; }) || d.q_index[qi] < 0;
}

}  // namespace

Selection make_selection(const AttnCase& c, const AttnData& d, uint32_t seed, double density, bool full) {
  std::mt19937 rng(seed ^ 0x5eedu);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Selection sel;
  int max_blocks = 0;
  for (int len : c.kv_lens) max_blocks = std::max(max_blocks, (len + c.block_tokens - 1) / c.block_tokens);
  sel.max_selected = max_blocks + 2;  // room for -1 entries between ids
  sel.ids.assign(size_t(d.total_q) * c.num_kv_heads * sel.max_selected, -1);
  for (int qi = 0; qi < d.total_q; ++qi) {
    const int bq = d.q_index[qi] / c.block_tokens;
    for (int g = 0; g < c.num_kv_heads; ++g) {
      int32_t* row = sel.ids.data() + (int64_t{qi} * c.num_kv_heads + g) * sel.max_selected;
      const double r = u(rng);
      if (!full && r < 0.05) continue;  // an empty selection
      int n = 0;
      for (int b = 0; b <= bq; ++b) {
        const bool take = full || (b == bq ? u(rng) < 0.8 : u(rng) < density);
        if (!take) continue;
        if (!full && n + 1 < sel.max_selected && u(rng) < 0.1) row[n++] = -1;  // padding between ids
        if (n < sel.max_selected) row[n++] = b;
      }
    }
  }
  return sel;
}

AttnRef sparse_reference(const AttnCase& c, const AttnData& d, const Selection& sel) {
  const int64_t D = c.head_dim, half = D / 2, H = c.num_heads, bt = c.block_tokens;
  const int group = c.num_heads / c.num_kv_heads;
  AttnRef ref;
  ref.out.assign(size_t(d.total_q * H * D), 0.0);
  ref.lse.assign(size_t(d.total_q * H), 0.0);
  ref.naive_out.assign(ref.out.size(), 0.0f);
  ref.naive_lse.assign(ref.lse.size(), 0.0f);
  for (int b = 0; b < d.batch; ++b) {
    const int64_t len = c.kv_lens[b];
    for (int g = 0; g < c.num_kv_heads; ++g) {
      std::vector<double> k64(size_t(len * D)), v64(size_t(len * D));
      std::vector<float> k_naive(size_t(len * D));
      for (int64_t j = 0; j < len; ++j) {
        const uint16_t* kp = d.arena.data() + kv_offset(c, d, b, j, g, 0);
        const uint16_t* vp = d.arena.data() + kv_offset(c, d, b, j, g, 1);
        for (int64_t e = 0; e < D; ++e) v64[j * D + e] = bf16_to_float(vp[e]);
        for (int64_t i = 0; i < half; ++i) {
          const float x = bf16_to_float(kp[i]), y = bf16_to_float(kp[i + half]);
          if (!c.use_rope) {
            k64[j * D + i] = k_naive[j * D + i] = x;
            k64[j * D + i + half] = k_naive[j * D + i + half] = y;
            continue;
          }
          const double a = double(j) * double(d.inv_freq[i]), s = c.rope_scale;
          k64[j * D + i] = x * std::cos(a) * s - y * std::sin(a) * s;
          k64[j * D + i + half] = y * std::cos(a) * s + x * std::sin(a) * s;
          const float cf = d.rope_cos[j * half + i], sf = d.rope_sin[j * half + i];
          k_naive[j * D + i] = round_bf16(x * cf - y * sf);
          k_naive[j * D + i + half] = round_bf16(y * cf + x * sf);
        }
      }
#pragma omp parallel for schedule(dynamic)
      for (int qi = d.q_indptr[b]; qi < d.q_indptr[b + 1]; ++qi) {
        const int64_t t = d.q_index[qi];
        std::vector<int64_t> keys;  // the selected keys, ascending
        const int32_t* ids = sel.ids.data() + (int64_t{qi} * c.num_kv_heads + g) * sel.max_selected;
        for (int s = 0; s < sel.max_selected; ++s) {
          if (ids[s] < 0) continue;
          for (int64_t j = ids[s] * bt; j < std::min({(ids[s] + 1) * bt, t + 1, len}); ++j) keys.push_back(j);
        }
        for (int hh = 0; hh < group; ++hh) {
          const int64_t row = int64_t{qi} * H + g * group + hh;
          if (keys.empty()) continue;  // out 0; check_sparse checks lse -inf itself
          const uint16_t* q = d.q.data() + row * D;
          std::vector<double> s64(keys.size());
          std::vector<float> s_naive(keys.size());
          double mx = -INFINITY;
          float mx_naive = -INFINITY;
          for (size_t k = 0; k < keys.size(); ++k) {
            const int64_t j = keys[k];
            double dot = 0;
            float dot_naive = 0;
            for (int64_t e = 0; e < D; ++e) {
              dot += double(bf16_to_float(q[e])) * k64[j * D + e];
              dot_naive += bf16_to_float(q[e]) * k_naive[j * D + e];
            }
            s64[k] = dot * d.softmax_scale;
            s_naive[k] = round_bf16(dot_naive * d.softmax_scale);
            mx = std::max(mx, s64[k]);
            mx_naive = std::max(mx_naive, s_naive[k]);
          }
          double sum = 0;
          float sum_naive = 0;
          for (size_t k = 0; k < keys.size(); ++k) {
            sum += (s64[k] = std::exp(s64[k] - mx));
            sum_naive += (s_naive[k] = std::exp(s_naive[k] - mx_naive));
          }
          for (int64_t e = 0; e < D; ++e) {
            double acc = 0;
            float acc_naive = 0;
            for (size_t k = 0; k < keys.size(); ++k) {
              acc += s64[k] * v64[keys[k] * D + e];
              acc_naive += round_bf16(s_naive[k] / sum_naive) * float(v64[keys[k] * D + e]);
            }
            ref.out[row * D + e] = acc / sum;
            ref.naive_out[row * D + e] = round_bf16(acc_naive);
          }
          ref.lse[row] = mx + std::log(sum);
          ref.naive_lse[row] = mx_naive + std::log(sum_naive);
        }
      }
    }
  }

  // Cross-check: the CPU op (attention/sparse.h, fp32) computes the same function.
  std::vector<float> arena_f(d.arena.size()), q_f(d.q.size());
  for (size_t i = 0; i < d.arena.size(); ++i) arena_f[i] = bf16_to_float(d.arena[i]);
  for (size_t i = 0; i < d.q.size(); ++i) q_f[i] = bf16_to_float(d.q[i]);
  Rope rope;
  rope.inv_freq = d.inv_freq;
  rope.scale = c.rope_scale;
  RopeTable table(rope);
  table.ensure(d.max_kv_len);
  std::vector<float> cpu_out(ref.out.size()), cpu_lse(ref.lse.size());
  for (int b = 0; b < d.batch; ++b) {
    std::vector<int64_t> q_index(d.q_index.begin() + d.q_indptr[b], d.q_index.begin() + d.q_indptr[b + 1]);
    SparseAttentionParams p;
    p.q = q_f.data() + int64_t{d.q_indptr[b]} * H * D;
    p.q_index = q_index.data();
    p.num_q = d.q_indptr[b + 1] - d.q_indptr[b];
    p.num_heads = c.num_heads;
    p.kv.arena = arena_f.data();
    p.kv.num_kv_heads = c.num_kv_heads;
    p.kv.block_tokens = c.block_tokens;
    p.kv.head_dim = c.head_dim;
    p.kv.block_table = d.block_tables.data() + int64_t{b} * d.table_stride;
    p.kv.num_blocks = (c.kv_lens[b] + bt - 1) / bt;
    p.kv.kv_len = c.kv_lens[b];
    p.key_rope = c.use_rope ? &table : nullptr;
    p.softmax_scale = d.softmax_scale;
    p.block_ids = sel.ids.data() + int64_t{d.q_indptr[b]} * c.num_kv_heads * sel.max_selected;
    p.max_selected = sel.max_selected;
    p.out = cpu_out.data() + int64_t{d.q_indptr[b]} * H * D;
    p.lse = cpu_lse.data() + int64_t{d.q_indptr[b]} * H;
    if (!sparse_attention_cpu(p).ok()) {
      ref.cpu_op_max_err = INFINITY;
      return ref;
    }
  }
  for (int64_t r = 0; r < int64_t{d.total_q} * H; ++r) {
    if (row_empty(c, d, sel, r / H, int(r % H) / group)) {
      const bool ok = cpu_lse[r] == -INFINITY && std::all_of(&cpu_out[r * D], &cpu_out[r * D] + D,
                                                             [](float x) { return x == 0.0f; });
      if (!ok) ref.cpu_op_max_err = INFINITY;
      continue;
    }
    for (int64_t e = 0; e < D; ++e) {
      const double err = std::fabs(cpu_out[r * D + e] - ref.out[r * D + e]) / (1 + std::fabs(ref.out[r * D + e]));
      ref.cpu_op_max_err = std::max(ref.cpu_op_max_err, std::isnan(err) ? INFINITY : err);
    }
    const double err = std::fabs(cpu_lse[r] - ref.lse[r]) / (1 + std::fabs(ref.lse[r]));
    ref.cpu_op_max_err = std::max(ref.cpu_op_max_err, std::isnan(err) ? INFINITY : err);
  }
  return ref;
}

::testing::AssertionResult check_sparse(const AttnCase& c, const AttnData& d, const Selection& sel,
                                        const AttnRef& ref, const std::vector<uint16_t>& out,
                                        const std::vector<float>& lse, CheckStats* stats) {
  const int64_t D = c.head_dim, H = c.num_heads;
  const int group = c.num_heads / c.num_kv_heads;
  std::vector<float> lse_checked = lse;
  int64_t empty_rows = 0;
  for (int64_t r = 0; r < int64_t{d.total_q} * H; ++r) {
    if (!row_empty(c, d, sel, r / H, int(r % H) / group)) continue;
    ++empty_rows;
    for (int64_t e = 0; e < D; ++e) {
      if (bf16_to_float(out[r * D + e]) != 0.0f) {  // NaN fails too
        return ::testing::AssertionFailure() << c.name << ": empty selection, out[query " << r / H << ", head "
                                             << r % H << ", " << e << "]: expected 0, got "
                                             << bf16_to_float(out[r * D + e]);
      }
    }
    if (lse[r] != -INFINITY) {
      return ::testing::AssertionFailure() << c.name << ": empty selection, lse[query " << r / H << ", head "
                                           << r % H << "]: expected -inf, got " << lse[r];
    }
    lse_checked[r] = 0.0f;  // the reference holds 0 for empty rows
  }
  std::printf("[ rows     ] %s: %lld of %lld (query, head) rows with an empty selection\n", c.name.c_str(),
              static_cast<long long>(empty_rows), static_cast<long long>(int64_t{d.total_q} * H));
  return check_attention(c, d, ref, out, lse_checked, stats);
}

}  // namespace mnemo::test
