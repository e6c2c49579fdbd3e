#include "memory/checksum.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mnemo {
namespace {

TEST(Checksum, Crc32cMatchesTheStandardCheckValue) {
  const std::string check = "123456789";
  EXPECT_EQ(crc32c(check.data(), check.size()), 0xE3069283u);
  EXPECT_EQ(crc32c_extend_portable(0, check.data(), check.size()), 0xE3069283u);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

TEST(Checksum, HardwareAndPortablePathsAgreeAndExtendInPieces) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(4099);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{63}, size_t{4099}}) {
    const uint32_t whole = crc32c(data.data(), n);
    EXPECT_EQ(whole, crc32c_extend_portable(0, data.data(), n)) << n;
    const size_t half = n / 2;
    EXPECT_EQ(whole, crc32c_extend(crc32c(data.data(), half), data.data() + half, n - half)) << n;
  }
}

}  // namespace
}  // namespace mnemo
