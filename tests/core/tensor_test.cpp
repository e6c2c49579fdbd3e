#include "core/tensor.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "core/file.h"

namespace mnemo {
namespace {

TEST(Tensor, RowsIsAViewAndReshapeChecksNumel) {
  Tensor t = Tensor::zeros({4, 3});
  for (int i = 0; i < 12; ++i) t.data<float>()[i] = float(i);
  Tensor r = t.rows(1, 3);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_EQ(r.data<float>()[0], 3.0f);
  r.data<float>()[0] = -1;
  EXPECT_EQ(t.data<float>()[3], -1.0f);
  EXPECT_FALSE(t.reshape({5, 2}).ok());
  EXPECT_TRUE(t.reshape({2, 6}).ok());
}

TEST(Tensor, CheckShapeNamesExpectedAndGot) {
  Tensor t = Tensor::zeros({2, 3});
  Status s = check_shape(t, {3, 2}, "q_proj.weight");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "q_proj.weight: expected shape [3, 2], got [2, 3]");
}

TEST(Tensor, NpyRoundTrip) {
  Tensor t = Tensor::zeros({2, 5});
  for (int i = 0; i < 10; ++i) t.data<float>()[i] = 0.5f * float(i) - 1.0f;
  const std::string path = testing::TempDir() + "/t.npy";
  ASSERT_TRUE(write_npy(path, t).ok());
  Result<Tensor> back = read_npy(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->shape(), t.shape());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(back->data<float>()[i], t.data<float>()[i]);
  std::remove(path.c_str());
}

TEST(Tensor, ToDtypeConvertsThroughF32) {
  Tensor t = Tensor::zeros({3});
  t.data<float>()[0] = 1.0f;
  t.data<float>()[1] = -2.5f;
  t.data<float>()[2] = 1.00390625f;
  Result<Tensor> b = t.to_dtype(DType::kBF16);
  ASSERT_TRUE(b.ok());
  Result<Tensor> f = b->to_dtype(DType::kF32);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->data<float>()[1], -2.5f);
  EXPECT_EQ(f->data<float>()[2], 1.0f);
}

}  // namespace
}  // namespace mnemo
