// CUDA model ops against the CPU references (model/ops.h, attention/rope.h) and float64 on fresh
// random data over awkward row counts, outputs poisoned with NaN first. Rounding ops use the
// per-element rule |cuda - ref64| <= 2 |naive - ref64| + atol (naive = the CPU op, rounded to bf16
// where the output is bf16); data movement ops (gather, KV append, argmax) must match exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "attention/rope.h"
#include "core/device.h"
#include "core/dtype.h"
#include "model/cuda/ops.h"
#include "model/ops.h"
#include "tests/cuda/device_buffer.h"

namespace mnemo::test {
namespace {

using cuda::bf16;

class CudaOps : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }
  std::vector<uint16_t> random_bf16(size_t n, float stddev = 1.0f) {
    std::normal_distribution<float> normal(0.0f, stddev);
    std::vector<uint16_t> v(n);
    for (uint16_t& x : v) x = float_to_bf16(normal(rng_));
    return v;
  }
  static std::vector<float> to_float(const std::vector<uint16_t>& v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = bf16_to_float(v[i]);
    return f;
  }
  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

// |got - ref| <= 2 |naive - ref| + rtol |ref| + atol[i] per element; NaN fails.
::testing::AssertionResult within(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                                  const std::vector<float>& naive, double rtol, const std::vector<double>& atol) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    const double tol = 2 * std::fabs(naive[i] - ref[i]) + rtol * std::fabs(ref[i]) + atol[i];
    if (!(err <= tol)) {
      return ::testing::AssertionFailure() << what << "[" << i << "] = " << got[i] << ", reference " << ref[i]
                                           << ", naive " << naive[i] << ", tolerance " << tol;
    }
    worst = std::max(worst, err);
  }
  std::printf("[ stats    ] %s: max abs err %g over %zu elements\n", what, worst, got.size());
  return ::testing::AssertionSuccess();
}

std::vector<float> round_bf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_float(float_to_bf16(v[i]));
  return r;
}

TEST_P(CudaOps, RmsNormMatchesCpuWithinTwiceItsRounding) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam();
  for (int dim : {128, 4104}) {
    const auto x = random_bf16(size_t(n) * dim, 3.0f), w = random_bf16(dim);
    const auto xf = to_float(x), wf = to_float(w);
    std::vector<float> naive(xf.size());
    cpu::rms_norm(xf.data(), wf.data(), naive.data(), n, dim, 1e-5f);
    std::vector<double> ref(xf.size());
    for (int64_t r = 0; r < n; ++r) {
      double ss = 0;
      for (int k = 0; k < dim; ++k) ss += double(xf[r * dim + k]) * xf[r * dim + k];
      const double inv = 1 / std::sqrt(ss / dim + 1e-5);
      for (int k = 0; k < dim; ++k) ref[r * dim + k] = wf[k] * (xf[r * dim + k] * inv);
    }
    DeviceBuffer<uint16_t> dx(x), dw(w), dy(x.size());
    dy.poison();
    cuda::RmsNormParams p{reinterpret_cast<const bf16*>(dx.get()), reinterpret_cast<const bf16*>(dw.get()),
                          reinterpret_cast<bf16*>(dy.get()), n, dim, 1e-5f};
    ASSERT_TRUE(cuda::rms_norm_launch(p, nullptr).ok());
    EXPECT_TRUE(within("rms_norm", to_float(dy.download()), ref, round_bf16(naive), 0x1p-8,
                       std::vector<double>(ref.size(), 1e-6)));
  }
}

TEST_P(CudaOps, RopeQMatchesRopeTableWithinTwiceItsRounding) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam();
  for (int d : {64, 128}) {
    const int heads = 8;
    Rope rope;
    for (int i = 0; i < d / 2; ++i) rope.inv_freq.push_back(float(std::pow(500000.0, -2.0 * i / d)));
    rope.scale = 1.1f;
    RopeTable table(rope);
    const int64_t rope_len = 70000;
    table.ensure(rope_len);
    std::vector<float> cos(size_t(rope_len) * d / 2), sin(cos.size());
    for (int64_t pos = 0; pos < rope_len; ++pos) {
      for (int i = 0; i < d / 2; ++i) {
        const double a = double(pos) * rope.inv_freq[i];
        cos[pos * d / 2 + i] = float(std::cos(a) * rope.scale);
        sin[pos * d / 2 + i] = float(std::sin(a) * rope.scale);
      }
    }
    std::vector<int32_t> pos(n);
    std::uniform_int_distribution<int32_t> any(0, int32_t(rope_len - 1));
    for (int32_t& p : pos) p = any(rng_);
    const auto q = random_bf16(size_t(n) * heads * d);
    std::vector<float> naive = to_float(q);
    std::vector<double> ref(q.size());
    for (int64_t t = 0; t < n; ++t) {
      for (int h = 0; h < heads; ++h) {
        float* x = naive.data() + (t * heads + h) * d;
        for (int i = 0; i < d / 2; ++i) {
          const double a = double(pos[t]) * rope.inv_freq[i], s = rope.scale;
          ref[(t * heads + h) * d + i] = x[i] * std::cos(a) * s - x[i + d / 2] * std::sin(a) * s;
          ref[(t * heads + h) * d + i + d / 2] = x[i + d / 2] * std::cos(a) * s + x[i] * std::sin(a) * s;
        }
        table.apply(pos[t], x);
      }
    }
    DeviceBuffer<uint16_t> dq(q);
    DeviceBuffer<int32_t> dpos(pos);
    DeviceBuffer<float> dcos(cos), dsin(sin);
    cuda::RopeQParams p{reinterpret_cast<bf16*>(dq.get()), dpos.get(), dcos.get(), dsin.get(), rope_len, n, heads, d};
    ASSERT_TRUE(cuda::rope_q_launch(p, nullptr).ok());
    EXPECT_TRUE(within("rope_q", to_float(dq.download()), ref, round_bf16(naive), 0x1p-8,
                       std::vector<double>(ref.size(), 1e-6)));
  }
}

TEST_P(CudaOps, SiluMulOnFusedGateUpMatchesCpu) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam();
  const int dim = 1368;  // not a power of two
  const auto gate_up = random_bf16(size_t(n) * 2 * dim, 2.0f);
  const auto f = to_float(gate_up);
  std::vector<float> gate(size_t(n) * dim), up(gate.size());
  for (int64_t r = 0; r < n; ++r) {
    std::copy_n(f.begin() + r * 2 * dim, dim, gate.begin() + r * dim);
    std::copy_n(f.begin() + r * 2 * dim + dim, dim, up.begin() + r * dim);
  }
  std::vector<double> ref(gate.size());
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = gate[i] / (1 + std::exp(-double(gate[i]))) * up[i];
  cpu::silu_mul(gate.data(), up.data(), n, dim);
  DeviceBuffer<uint16_t> dgu(gate_up), dout(size_t(n) * dim);
  dout.poison();
  const bf16* base = reinterpret_cast<const bf16*>(dgu.get());
  cuda::SiluMulParams p{base, base + dim, 2 * dim, reinterpret_cast<bf16*>(dout.get()), n, dim};
  ASSERT_TRUE(cuda::silu_mul_launch(p, nullptr).ok());
  EXPECT_TRUE(within("silu_mul", to_float(dout.download()), ref, round_bf16(gate), 0x1p-8,
                     std::vector<double>(ref.size(), 1e-6)));
}

TEST_P(CudaOps, LinearMatchesCpuLinear) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam(), in = 1032, out = 520;
  auto handle = cuda::CublasHandle::create();
  ASSERT_TRUE(handle.ok()) << handle.status().to_string();
  const auto x = random_bf16(size_t(n) * in), w = random_bf16(size_t(out) * in, 0.05f), bias = random_bf16(out);
  const auto xf = to_float(x), wf = to_float(w), bf = to_float(bias);
  DeviceBuffer<uint16_t> dx(x), dw(w), db(bias);
  DeviceBuffer<char> work(32 << 20);
  for (bool with_bias : {false, true}) {
    std::vector<float> naive(size_t(n) * out);
    cpu::linear(xf.data(), wf.data(), with_bias ? bf.data() : nullptr, naive.data(), n, in, out);
    std::vector<double> ref(naive.size()), atol(naive.size());
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t o = 0; o < out; ++o) {
        double acc = with_bias ? bf[o] : 0.0, mag = 0;
        for (int64_t k = 0; k < in; ++k) {
          acc += double(xf[t * in + k]) * wf[o * in + k];
          mag += std::fabs(double(xf[t * in + k]) * wf[o * in + k]);
        }
        ref[t * out + o] = acc;
        atol[t * out + o] = 1e-5 * mag;  // fp32 accumulation in another order
      }
    }
    for (DType y_dtype : {DType::kBF16, DType::kF32}) {
      const bool f32 = y_dtype == DType::kF32;
      DeviceBuffer<float> dy32(naive.size());
      DeviceBuffer<uint16_t> dy16(naive.size());
      dy32.poison();
      dy16.poison();
      cuda::LinearParams p{reinterpret_cast<const bf16*>(dx.get()), reinterpret_cast<const bf16*>(dw.get()),
                           with_bias ? reinterpret_cast<const bf16*>(db.get()) : nullptr,
                           f32 ? static_cast<void*>(dy32.get()) : static_cast<void*>(dy16.get()), y_dtype, n, in, out};
      const Status s = cuda::linear_launch(p, handle->get(), {work.get(), work.size()}, nullptr);
      ASSERT_TRUE(s.ok()) << s.to_string();
      const std::vector<float> got = f32 ? dy32.download() : to_float(dy16.download());
      EXPECT_TRUE(within(f32 ? "linear_f32" : "linear_bf16", got, ref, f32 ? naive : round_bf16(naive),
                         f32 ? 0.0 : 0x1p-8, atol))
          << (with_bias ? "with bias" : "no bias");
    }
  }
}

TEST_P(CudaOps, EmbeddingGathersRowsExactlyAndCountsBadIds) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam(), vocab = 1000;
  const int hidden = 264;
  const auto table = random_bf16(size_t(vocab) * hidden);
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> any(0, int32_t(vocab - 1));
  for (int32_t& id : ids) id = any(rng_);
  int bad = 0;
  if (n > 2) ids[1] = -1, ids[n - 1] = int32_t(vocab), bad = 2;
  DeviceBuffer<uint16_t> dt(table), dout(size_t(n) * hidden);
  DeviceBuffer<int32_t> dids(ids), dbad(std::vector<int32_t>{0});
  dout.poison();
  cuda::EmbeddingParams p{reinterpret_cast<const bf16*>(dt.get()), dids.get(), reinterpret_cast<bf16*>(dout.get()),
                          n, vocab, hidden, dbad.get()};
  ASSERT_TRUE(cuda::embedding_launch(p, nullptr).ok());
  const auto got = dout.download();
  for (int64_t i = 0; i < n; ++i) {
    for (int e = 0; e < hidden; ++e) {
      const uint16_t want = ids[i] >= 0 && ids[i] < vocab ? table[size_t(ids[i]) * hidden + e] : 0;
      ASSERT_EQ(got[size_t(i) * hidden + e], want) << "token " << i << " element " << e;
    }
  }
  EXPECT_EQ(dbad.download()[0], bad);
}

TEST_P(CudaOps, KvAppendWritesExactlyTheMappedPositions) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam();
  const int heads = 2, d = 128, bt = 64;
  const int64_t num_slots = (n + bt - 1) / bt + 2, slot_elems = 2LL * heads * bt * d;
  std::vector<int32_t> positions(num_slots * bt);
  std::iota(positions.begin(), positions.end(), 0);
  std::shuffle(positions.begin(), positions.end(), rng_);
  std::vector<int32_t> mapping(positions.begin(), positions.begin() + n);
  int bad = 0;
  if (n > 2) mapping[0] = -1, mapping[n - 1] = int32_t(num_slots * bt), bad = 1;
  const auto k = random_bf16(size_t(n) * heads * d), v = random_bf16(k.size());
  std::vector<uint16_t> want(size_t(num_slots * slot_elems), 0xffff);
  for (int64_t i = 0; i < n; ++i) {
    if (mapping[i] < 0 || mapping[i] >= num_slots * bt) continue;
    const int64_t slot = mapping[i] / bt, off = mapping[i] % bt;
    for (int h = 0; h < heads; ++h) {
      for (int e = 0; e < d; ++e) {
        want[slot * slot_elems + (h * bt + off) * d + e] = k[(i * heads + h) * d + e];
        want[slot * slot_elems + ((heads + h) * bt + off) * d + e] = v[(i * heads + h) * d + e];
      }
    }
  }
  DeviceBuffer<uint16_t> dk(k), dv(v), arena(want.size());
  DeviceBuffer<int32_t> dmap(mapping), dbad(std::vector<int32_t>{0});
  arena.poison();
  cuda::KvAppendParams p{reinterpret_cast<const bf16*>(dk.get()), reinterpret_cast<const bf16*>(dv.get()),
                         dmap.get(), reinterpret_cast<bf16*>(arena.get()), n, num_slots, heads, bt, d, dbad.get()};
  ASSERT_TRUE(cuda::kv_append_launch(p, nullptr).ok());
  EXPECT_EQ(arena.download(), want);
  EXPECT_EQ(dbad.download()[0], bad);
}

TEST_P(CudaOps, ArgmaxPicksTheFirstMaximumAndNaN) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = GetParam();
  for (int64_t vocab : {int64_t{32000}, int64_t{128257}}) {
    std::normal_distribution<float> normal(0.0f, 4.0f);
    std::vector<float> logits(size_t(n) * vocab);
    for (float& x : logits) x = bf16_to_float(float_to_bf16(normal(rng_)));  // bf16-exact: one input, two dtypes
    std::vector<int32_t> want(n);
    for (int64_t r = 0; r < n; ++r) {
      float* row = logits.data() + r * vocab;
      if (r % 3 == 1) row[vocab - 1] = row[vocab / 3] = 100.0f;  // a tie: the lower index wins
      if (r == n - 1 && n > 1) row[vocab / 2] = NAN;             // NaN wins, like torch.argmax
      want[r] = int32_t(std::max_element(row, row + vocab) - row);
      if (r % 3 == 1) want[r] = int32_t(vocab / 3);
      if (r == n - 1 && n > 1) want[r] = int32_t(vocab / 2);
    }
    std::vector<uint16_t> logits16(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) logits16[i] = float_to_bf16(logits[i]);
    DeviceBuffer<float> d32(logits);
    DeviceBuffer<uint16_t> d16(logits16);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      DeviceBuffer<int32_t> out(n);
      out.poison();
      const void* src = dtype == DType::kF32 ? static_cast<const void*>(d32.get()) : d16.get();
      ASSERT_TRUE(cuda::argmax_launch({src, dtype, out.get(), n, vocab}, nullptr).ok());
      EXPECT_EQ(out.download(), want) << dtype_name(dtype) << " vocab " << vocab;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AwkwardRows, CudaOps, testing::Values(1, 63, 64, 65, 129, 257));

}  // namespace
}  // namespace mnemo::test
