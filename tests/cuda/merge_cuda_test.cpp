// The LSE merge on the GPU (attention/cuda/merge.h) against merge_attention_cpu on fresh random
// partials, empty ones (lse −inf, out NaN) included: out within one bf16 rounding (2^-8 relative
// with fp32 slack), lse within 1e-5, never NaN where the CPU has a number.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention/cuda/merge.h"
#include "attention/merge.h"
#include "core/device.h"
#include "core/dtype.h"
#include "tests/cuda/device_buffer.h"

namespace mnemo {
namespace {

TEST(MergeCuda, MatchesCpuMergeIncludingEmptyPartials) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 3001;
  const int d = 128;
  std::vector<uint16_t> a(rows * d), b(rows * d);
  std::vector<float> fa(rows * d), fb(rows * d), la(rows), lb(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int kind = static_cast<int>(r % 7);  // 5: a empty, 6: both empty
    la[r] = kind >= 5 ? -INFINITY : normal(rng) * 4;
    lb[r] = kind == 6 || kind == 4 ? -INFINITY : normal(rng) * 4;
    for (int e = 0; e < d; ++e) {
      a[r * d + e] = la[r] == -INFINITY ? 0x7fc0 : float_to_bf16(normal(rng));  // empty: NaN, never read
      b[r * d + e] = lb[r] == -INFINITY ? 0x7fc0 : float_to_bf16(normal(rng));
      fa[r * d + e] = bf16_to_float(a[r * d + e]);
      fb[r * d + e] = bf16_to_float(b[r * d + e]);
    }
  }
  std::vector<float> want(rows * d), want_lse(rows);
  AttentionMergeParams cpu;
  cpu.out_a = fa.data();
  cpu.lse_a = la.data();
  cpu.out_b = fb.data();
  cpu.lse_b = lb.data();
  cpu.num_rows = rows;
  cpu.head_dim = d;
  cpu.out = want.data();
  cpu.lse = want_lse.data();
  ASSERT_TRUE(merge_attention_cpu(cpu).ok());

  test::DeviceBuffer<uint16_t> da(a), db(b), dout(rows * d);
  test::DeviceBuffer<float> dla(la), dlb(lb), dlse(rows);
  dout.poison();
  dlse.poison();
  cuda::MergeAttentionCudaParams p;
  p.out_a = reinterpret_cast<const cuda::bf16*>(da.get());
  p.lse_a = dla.get();
  p.out_b = reinterpret_cast<const cuda::bf16*>(db.get());
  p.lse_b = dlb.get();
  p.num_rows = rows;
  p.head_dim = d;
  p.out = reinterpret_cast<cuda::bf16*>(dout.get());
  p.lse = dlse.get();
  ASSERT_TRUE(cuda::merge_attention_launch(p, nullptr).ok());
  const std::vector<uint16_t> got = dout.download();
  const std::vector<float> got_lse = dlse.download();
  for (int64_t r = 0; r < rows; ++r) {
    if (std::isinf(want_lse[r])) {
      ASSERT_TRUE(std::isinf(got_lse[r]) && got_lse[r] < 0) << "row " << r << ": " << got_lse[r];
    } else {
      ASSERT_NEAR(got_lse[r], want_lse[r], 1e-5 * (1 + std::fabs(want_lse[r]))) << "row " << r;
    }
    for (int e = 0; e < d; ++e) {
      const float g = bf16_to_float(got[r * d + e]), w = want[r * d + e];
      ASSERT_FALSE(std::isnan(g)) << "row " << r << " element " << e;
      ASSERT_LE(std::fabs(g - w), std::ldexp(std::fabs(w), -8) + 1e-6) << "row " << r << " element " << e;
    }
  }
}

}  // namespace
}  // namespace mnemo
