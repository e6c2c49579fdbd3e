#include "core/status.h"

#include <gtest/gtest.h>

namespace mnemo {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("value: expected > 0, got ", v);
  return v;
}

Result<int> doubled(int v) {
  MNEMO_ASSIGN_OR_RETURN(int x, parse_positive(v));
  return 2 * x;
}

TEST(Status, ErrorCarriesCodeAndMessage) {
  Status s = invalid_argument("field 'x': expected ", 3, ", got ", 4);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.to_string(), "InvalidArgument: field 'x': expected 3, got 4");
  EXPECT_EQ(s.with_context("config.json").message(), "config.json: field 'x': expected 3, got 4");
}

TEST(Status, AssignOrReturnPropagatesErrors) {
  ASSERT_TRUE(doubled(4).ok());
  EXPECT_EQ(*doubled(4), 8);
  Result<int> bad = doubled(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("got -1"), std::string::npos);
}

TEST(Status, ResultFromOkStatusIsAnInternalError) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace mnemo
