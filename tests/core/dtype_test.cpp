#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace mnemo {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.00390625f), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
  EXPECT_EQ(float_to_bf16(1.01171875f), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
}

TEST(DType, F16RoundTripsEveryHalfValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    ASSERT_EQ(float_to_f16(f), h) << "half bits " << h;
  }
}

TEST(DType, F16RoundsToNearest) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) {
    const float f = dist(rng) * (i % 2 ? 1e-4f : 1.0f);
    const float r = f16_to_float(float_to_f16(f));
    if (std::fabs(f) >= 65520.0f) {
      EXPECT_TRUE(std::isinf(r));
      continue;
    }
    // |r - f| is at most half an ulp of half precision at f's magnitude (or of the subnormal step).
    const float ulp = std::max(std::ldexp(1.0f, std::ilogb(std::fabs(f)) - 10), std::ldexp(1.0f, -24));
    ASSERT_LE(std::fabs(r - f), ulp / 2) << f;
  }
}

TEST(DType, ParsesSafetensorsNames) {
  DType d;
  ASSERT_TRUE(parse_dtype("BF16", &d));
  EXPECT_EQ(d, DType::kBF16);
  EXPECT_FALSE(parse_dtype("F8_E4M3", &d));
}

}  // namespace
}  // namespace mnemo
