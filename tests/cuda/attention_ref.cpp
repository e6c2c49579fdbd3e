#include "tests/cuda/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

#include "attention/dense.h"
#include "core/dtype.h"

namespace mnemo::test {

float bf16_bits_to_float(uint16_t b) { return bf16_to_float(b); }
uint16_t float_to_bf16_bits(float f) { return float_to_bf16(f); }

namespace {

constexpr uint16_t kBf16Nan = 0x7fc0;
constexpr double kNaiveRmsFactor = 4.0;

float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

int64_t slot_elems(const AttnCase& c) { return int64_t{2} * c.num_kv_heads * c.block_tokens * c.head_dim; }

// Offset of token j, kv head g, K (kv = 0) or V (kv = 1) of sequence b in the arena.
int64_t kv_offset(const AttnCase& c, const AttnData& d, int b, int64_t j, int g, int kv) {
  const int64_t slot = d.block_tables[int64_t{b} * d.table_stride + j / c.block_tokens];
  return slot * slot_elems(c) + ((int64_t{kv} * c.num_kv_heads + g) * c.block_tokens + j % c.block_tokens) *
                                    c.head_dim;
}

}  // namespace

AttnData make_attn_data(const AttnCase& c, bool decode, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  AttnData d;
  d.batch = static_cast<int>(c.kv_lens.size());
  d.kv_lens.assign(c.kv_lens.begin(), c.kv_lens.end());
  d.max_kv_len = *std::max_element(c.kv_lens.begin(), c.kv_lens.end());
  const int64_t D = c.head_dim;
  int64_t total_blocks = 0;
  for (int len : c.kv_lens) {
    const int blocks = (len + c.block_tokens - 1) / c.block_tokens;
    total_blocks += blocks;
    d.table_stride = std::max(d.table_stride, blocks);
  }
  d.table_stride += 1;  // a spare column the kernels must not read
  // Slots in shuffled order with spare (NaN) slots, so the block tables really indirect.
  d.num_slots = total_blocks + 3;
  std::vector<int32_t> slots(d.num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  d.block_tables.assign(size_t(d.batch) * d.table_stride, -1);
  int64_t next = 0;
  for (int b = 0; b < d.batch; ++b) {
    for (int i = 0; i < (c.kv_lens[b] + c.block_tokens - 1) / c.block_tokens; ++i) {
      d.block_tables[size_t(b) * d.table_stride + i] = slots[next++];
    }
  }
  d.arena.assign(size_t(d.num_slots * slot_elems(c)), kBf16Nan);
  for (int b = 0; b < d.batch; ++b) {
    for (int64_t j = 0; j < c.kv_lens[b]; ++j) {
      for (int g = 0; g < c.num_kv_heads; ++g) {
        for (int kv = 0; kv < 2; ++kv) {
          uint16_t* dst = d.arena.data() + kv_offset(c, d, b, j, g, kv);
          for (int64_t e = 0; e < D; ++e) dst[e] = float_to_bf16(normal(rng));
        }
      }
    }
  }
  // Rope table exactly as RopeTable::ensure builds it.
  for (int64_t i = 0; i < D / 2; ++i) d.inv_freq.push_back(float(std::pow(10000.0, -2.0 * double(i) / double(D))));
  d.rope_len = d.max_kv_len + 5;
  d.rope_cos.resize(size_t(d.rope_len * D / 2));
  d.rope_sin.resize(d.rope_cos.size());
  for (int64_t p = 0; p < d.rope_len; ++p) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = double(p) * double(d.inv_freq[i]);
      d.rope_cos[p * D / 2 + i] = float(std::cos(a) * double(c.rope_scale));
      d.rope_sin[p * D / 2 + i] = float(std::sin(a) * double(c.rope_scale));
    }
  }
  d.q_indptr.push_back(0);
  for (int b = 0; b < d.batch; ++b) {
    const int len = c.kv_lens[b];
    const int n = decode ? 1 : std::min(c.num_q[b], len);
    std::vector<int32_t> idx(n);
    if (!decode && c.scattered_q) {
      std::vector<int32_t> all(len);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      std::copy_n(all.begin(), n, idx.begin());  // unsorted on purpose
    } else {
      for (int i = 0; i < n; ++i) idx[i] = len - n + i;
    }
    d.q_index.insert(d.q_index.end(), idx.begin(), idx.end());
    d.q_indptr.push_back(d.q_indptr.back() + n);
    d.max_q_per_seq = std::max(d.max_q_per_seq, n);
  }
  d.total_q = d.q_indptr.back();
  // Queries with std 1.5: scores spread enough that softmax is neither flat nor one-hot.
  d.q.resize(size_t(d.total_q) * c.num_heads * D);
  for (uint16_t& x : d.q) x = float_to_bf16(1.5f * normal(rng));
  d.softmax_scale = 1.0f / std::sqrt(float(D));
  return d;
}

AttnRef attention_reference(const AttnCase& c, const AttnData& d) {
  const int64_t D = c.head_dim, half = D / 2, H = c.num_heads;
  const int group = c.num_heads / c.num_kv_heads;
  AttnRef ref;
  ref.out.assign(size_t(d.total_q * H * D), 0.0);
  ref.lse.assign(size_t(d.total_q * H), 0.0);
  ref.naive_out.assign(ref.out.size(), 0.0f);
  ref.naive_lse.assign(ref.lse.size(), 0.0f);
  for (int b = 0; b < d.batch; ++b) {
    const int64_t len = c.kv_lens[b];
    for (int g = 0; g < c.num_kv_heads; ++g) {
      // Keys rotated exactly (float64 angles) and as the naive path does (float table, bf16 result).
      std::vector<double> k64(size_t(len * D)), v64(size_t(len * D));
      std::vector<float> k_naive(size_t(len * D));
      for (int64_t j = 0; j < len; ++j) {
        const uint16_t* kp = d.arena.data() + kv_offset(c, d, b, j, g, 0);
        const uint16_t* vp = d.arena.data() + kv_offset(c, d, b, j, g, 1);
        for (int64_t e = 0; e < D; ++e) v64[j * D + e] = bf16_to_float(vp[e]);
        for (int64_t i = 0; i < half; ++i) {
          const float x = bf16_to_float(kp[i]), y = bf16_to_float(kp[i + half]);
          if (!c.use_rope) {
            k64[j * D + i] = x, k64[j * D + i + half] = y;
            k_naive[j * D + i] = x, k_naive[j * D + i + half] = y;
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
        const int64_t lo = c.window > 0 ? std::max<int64_t>(0, t - c.window + 1) : 0;
        for (int hh = 0; hh < group; ++hh) {
          const int64_t row = int64_t{qi} * H + g * group + hh;
          const uint16_t* q = d.q.data() + row * D;
          std::vector<double> s64(size_t(t + 1 - lo));
          std::vector<float> s_naive(s64.size());
          double mx = -INFINITY;
          float mx_naive = -INFINITY;
          for (int64_t j = lo; j <= t; ++j) {
            double dot = 0;
            float dot_naive = 0;
            for (int64_t e = 0; e < D; ++e) {
              dot += double(bf16_to_float(q[e])) * k64[j * D + e];
              dot_naive += bf16_to_float(q[e]) * k_naive[j * D + e];
            }
            s64[j - lo] = dot * d.softmax_scale;
            s_naive[j - lo] = round_bf16(dot_naive * d.softmax_scale);
            mx = std::max(mx, s64[j - lo]);
            mx_naive = std::max(mx_naive, s_naive[j - lo]);
          }
          double sum = 0;
          float sum_naive = 0;
          for (size_t j = 0; j < s64.size(); ++j) {
            sum += (s64[j] = std::exp(s64[j] - mx));
            sum_naive += (s_naive[j] = std::exp(s_naive[j] - mx_naive));
          }
          for (int64_t e = 0; e < D; ++e) {
            double acc = 0;
            float acc_naive = 0;
            for (int64_t j = lo; j <= t; ++j) {
              acc += s64[j - lo] * v64[j * D + e];
              acc_naive += round_bf16(s_naive[j - lo] / sum_naive) * float(v64[j * D + e]);
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

  // Cross-check: the CPU op (fp32) computes the same function as the float64 reference above.
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
    const int n = d.q_indptr[b + 1] - d.q_indptr[b];
    std::vector<int64_t> q_index(d.q_index.begin() + d.q_indptr[b], d.q_index.begin() + d.q_indptr[b + 1]);
    DenseAttentionParams p;
    p.q = q_f.data() + int64_t{d.q_indptr[b]} * H * D;
    p.q_index = q_index.data();
    p.num_q = n;
    p.num_heads = c.num_heads;
    p.kv.arena = arena_f.data();
    p.kv.num_kv_heads = c.num_kv_heads;
    p.kv.block_tokens = c.block_tokens;
    p.kv.head_dim = c.head_dim;
    p.kv.block_table = d.block_tables.data() + int64_t{b} * d.table_stride;
    p.kv.num_blocks = (c.kv_lens[b] + c.block_tokens - 1) / c.block_tokens;
    p.kv.kv_len = c.kv_lens[b];
    p.key_rope = c.use_rope ? &table : nullptr;
    p.softmax_scale = d.softmax_scale;
    p.sliding_window = c.window;
    p.out = cpu_out.data() + int64_t{d.q_indptr[b]} * H * D;
    p.lse = cpu_lse.data() + int64_t{d.q_indptr[b]} * H;
    if (!dense_attention_cpu(p).ok()) {
      ref.cpu_op_max_err = INFINITY;
      return ref;
    }
  }
  for (size_t i = 0; i < cpu_out.size(); ++i) {
    const double e = std::fabs(cpu_out[i] - ref.out[i]) / (1 + std::fabs(ref.out[i]));
    ref.cpu_op_max_err = std::max(ref.cpu_op_max_err, std::isnan(e) ? INFINITY : e);
  }
  for (size_t i = 0; i < cpu_lse.size(); ++i) {
    const double e = std::fabs(cpu_lse[i] - ref.lse[i]) / (1 + std::fabs(ref.lse[i]));
    ref.cpu_op_max_err = std::max(ref.cpu_op_max_err, std::isnan(e) ? INFINITY : e);
  }
  return ref;
}

std::string CheckStats::to_string() const {
  std::ostringstream os;
  os << "max_abs_err " << max_abs_err << ", max err/tol " << max_tol_ratio << ", rel_l2 " << rel_l2
     << " (naive bf16 " << naive_rel_l2 << "), lse max err " << lse_max_err << " (err/tol "
     << lse_max_tol_ratio << ")";
  return os.str();
}

::testing::AssertionResult check_attention(const AttnCase& c, const AttnData& d, const AttnRef& ref,
                                           const std::vector<uint16_t>& out, const std::vector<float>& lse,
                                           CheckStats* stats) {
  const int64_t D = c.head_dim;
  const int64_t rows = int64_t{d.total_q} * c.num_heads;
  *stats = CheckStats{};
  // Scale of the naive bf16 path's error over the whole tensor (see the header for why it enters).
  double naive2 = 0, ref2 = 0, naive_lse2 = 0;
  for (size_t i = 0; i < ref.out.size(); ++i) {
    naive2 += (ref.naive_out[i] - ref.out[i]) * (ref.naive_out[i] - ref.out[i]);
    ref2 += ref.out[i] * ref.out[i];
  }
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    naive_lse2 += (ref.naive_lse[i] - ref.lse[i]) * (ref.naive_lse[i] - ref.lse[i]);
  }
  const double naive_rms = std::sqrt(naive2 / double(ref.out.size()));
  const double naive_lse_rms = std::sqrt(naive_lse2 / double(ref.lse.size()));
  double err2 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t e = 0; e < D; ++e) {
      const int64_t i = r * D + e;
      const double got = bf16_to_float(out[i]), want = ref.out[i];
      const double err = std::fabs(got - want), naive = std::fabs(double(ref.naive_out[i]) - want);
      const double tol = 2 * naive + kNaiveRmsFactor * naive_rms + std::ldexp(std::fabs(want), -8);
      if (!(err <= tol)) {  // NaN fails here
        return ::testing::AssertionFailure()
               << c.name << ": out[query " << r / c.num_heads << ", head " << r % c.num_heads << ", " << e
               << "] = " << got << ", reference " << want << ", naive bf16 " << ref.naive_out[i]
               << ", tolerance " << tol << " (naive rms error " << naive_rms << ")";
      }
      stats->max_abs_err = std::max(stats->max_abs_err, err);
      stats->max_tol_ratio = std::max(stats->max_tol_ratio, tol > 0 ? err / tol : 0.0);
      err2 += err * err;
    }
    const double lerr = std::fabs(double(lse[r]) - ref.lse[r]);
    const double ltol = 2 * std::fabs(double(ref.naive_lse[r]) - ref.lse[r]) + kNaiveRmsFactor * naive_lse_rms + 1e-4;
    if (!(lerr <= ltol)) {
      return ::testing::AssertionFailure() << c.name << ": lse[query " << r / c.num_heads << ", head "
                                           << r % c.num_heads << "] = " << lse[r] << ", reference "
                                           << ref.lse[r] << ", tolerance " << ltol;
    }
    stats->lse_max_err = std::max(stats->lse_max_err, lerr);
    stats->lse_max_tol_ratio = std::max(stats->lse_max_tol_ratio, lerr / ltol);
  }
  stats->rel_l2 = std::sqrt(err2 / ref2);
  stats->naive_rel_l2 = std::sqrt(naive2 / ref2);
  if (!(stats->rel_l2 <= 1e-2)) {
    return ::testing::AssertionFailure() << c.name << ": relative L2 error " << stats->rel_l2 << " > 1e-2";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace mnemo::test
