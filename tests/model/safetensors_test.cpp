#include "model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/model/scratch_dir.h"

namespace mnemo {
namespace {

using ::testing::HasSubstr;
using testing_util::scratch_dir;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A safetensors file from a header text and raw data, with the length prefix written by hand.
std::string raw_file(const std::string& header, const std::string& data,
                     uint64_t claimed_len = ~0ull) {
  const uint64_t len = claimed_len == ~0ull ? header.size() : claimed_len;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + header + data;
}

Tensor ramp(Shape shape, float scale) {
  Tensor t = Tensor::zeros(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = scale * static_cast<float>(i) - 1.0f;
  return t;
}

TEST(ModelSafetensors, RoundTripsBf16F16AndF32WithMetadata) {
  const std::string path = scratch_dir() + "/model.safetensors";
  const Tensor a = ramp({3, 5}, 0.25f);  // quarter steps: exact in bf16 and f16
  const Tensor b = ramp({7}, 0.5f);
  const Tensor c = ramp({2, 2, 2}, 0.1f);
  ASSERT_TRUE(write_safetensors(
                  path,
                  {{"a", *a.to_dtype(DType::kBF16)}, {"b", *b.to_dtype(DType::kF16)}, {"c", c}},
                  {{"format", "pt"}})
                  .ok());
  Result<std::shared_ptr<const SafetensorsFile>> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  ASSERT_EQ((*f)->tensors().size(), 3u);
  EXPECT_EQ((*f)->find("a")->dtype_name, "BF16");
  EXPECT_EQ((*f)->find("b")->dtype_name, "F16");
  EXPECT_EQ((*f)->find("c")->shape, (Shape{2, 2, 2}));
  for (const auto& [name, ref] : {std::pair{"a", a}, std::pair{"b", b}, std::pair{"c", c}}) {
    Result<Tensor> t = (*f)->read(name, DType::kF32);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ASSERT_EQ(t->shape(), ref.shape());
    for (int64_t i = 0; i < ref.numel(); ++i)
      EXPECT_EQ(t->data<float>()[i], ref.data<float>()[i]) << name << i;
  }
  Result<Tensor> view = (*f)->view("c");
  ASSERT_TRUE(view.ok()) << view.status().to_string();
  EXPECT_EQ(view->data<float>()[3], c.data<float>()[3]);
  Result<Tensor> as_bf16 = (*f)->read("b", DType::kBF16);
  ASSERT_TRUE(as_bf16.ok());
  EXPECT_EQ(as_bf16->dtype(), DType::kBF16);
  EXPECT_EQ(bf16_to_float(as_bf16->data<uint16_t>()[6]), b.data<float>()[6]);
}

TEST(ModelSafetensors, UnalignedDataIsStillReadCorrectly) {
  const std::string path = scratch_dir() + "/odd.safetensors";
  const std::string header =
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";  // 55 bytes
  ASSERT_NE(header.size() % 4, 0u);
  const float values[2] = {1.5f, -2.25f};
  write_bytes(path, raw_file(header, std::string(reinterpret_cast<const char*>(values), 8)));
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  Result<Tensor> t = (*f)->read("x", DType::kF32);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->data<float>()[0], 1.5f);
  EXPECT_EQ(t->data<float>()[1], -2.25f);
  EXPECT_FALSE((*f)->view("x").ok());  // a zero-copy view would be misaligned
}

TEST(ModelSafetensors, FileShorterThan8BytesIsTruncated) {
  const std::string path = scratch_dir() + "/short.safetensors";
  write_bytes(path, std::string("\x10\x00\x00", 3));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(f.status().message(), HasSubstr(path + ": truncated safetensors file: 3 bytes"));
}

TEST(ModelSafetensors, HeaderLengthPastEndOfFileIsCorruption) {
  const std::string path = scratch_dir() + "/long.safetensors";
  write_bytes(path, raw_file("{}", "", 1000));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(f.status().message(),
              HasSubstr(path + ": header length 1000 runs past the end of the file (10 bytes"));
}

TEST(ModelSafetensors, MalformedHeaderJsonNamesFileAndPosition) {
  const std::string path = scratch_dir() + "/bad.safetensors";
  write_bytes(path,
              raw_file(R"({"x": {"dtype": "F32", "shape": [1] "data_offsets": [0, 4]}})", "abcd"));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(f.status().message(),
              HasSubstr(path + ": header: malformed JSON at line 1, column 37"));
}

TEST(ModelSafetensors, DataOffsetsPastTheDataSectionNameTheTensor) {
  const std::string path = scratch_dir() + "/cut.safetensors";
  write_bytes(path, raw_file(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                             "12345678"));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(
      f.status().message(),
      HasSubstr(
          path +
          ": tensor 'w': data_offsets [0, 16] run past the end of the data section (8 bytes"));
}

TEST(ModelSafetensors, DataOffsetsInconsistentWithShapeNameTheTensor) {
  const std::string path = scratch_dir() + "/size.safetensors";
  write_bytes(path, raw_file(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})",
                             "12345678"));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(
      f.status().message(),
      HasSubstr(path + ": tensor 'w': data_offsets [0, 8] hold 8 bytes, but BF16[2, 3] needs 12"));
}

TEST(ModelSafetensors, UnsupportedDtypeIsNamedWhenRead) {
  const std::string path = scratch_dir() + "/int8.safetensors";
  write_bytes(path,
              raw_file(R"({"q": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})", "abcd"));
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok())
      << f.status().to_string();  // the header is valid; the dtype is refused on read
  Result<Tensor> t = (*f)->read("q", DType::kF32);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(path + ": tensor 'q': unsupported dtype 'I8'"));
}

TEST(ModelSafetensors, MissingFileIsNotFound) {
  auto f = SafetensorsFile::open("/nonexistent/model.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr("/nonexistent/model.safetensors"));
}

TEST(ModelSafetensors, ShardedIndexResolvesTensorsAcrossShards) {
  const std::string dir = scratch_dir();
  ASSERT_TRUE(
      write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", ramp({2}, 1)}}).ok());
  ASSERT_TRUE(
      write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"b", ramp({3}, 1)}}).ok());
  write_bytes(dir + "/model.safetensors.index.json",
              R"({"metadata": {"total_size": 20}, "weight_map": {
    "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  Result<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  EXPECT_TRUE(ckpt->sharded());
  EXPECT_EQ(ckpt->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_THAT(ckpt->find("b").file->path(), HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_EQ(ckpt->find("b").info->shape, (Shape{3}));
  EXPECT_EQ(ckpt->find("c").info, nullptr);
}

TEST(ModelSafetensors, IndexPlacingATensorInTheWrongShardIsCorruption) {
  const std::string dir = scratch_dir();
  ASSERT_TRUE(write_safetensors(dir + "/s1.safetensors", {{"a", ramp({2}, 1)}}).ok());
  write_bytes(dir + "/model.safetensors.index.json",
              R"({"weight_map": {"a": "s1.safetensors", "z": "s1.safetensors"}})");
  Result<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr("weight_map puts tensor 'z' in s1.safetensors, which does not contain it"));

  write_bytes(dir + "/model.safetensors.index.json",
              R"({"weight_map": {"a": "missing.safetensors"}})");
  ckpt = SafetensorsCheckpoint::open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(), HasSubstr("missing.safetensors"));
}

TEST(ModelSafetensors, DirectoryWithoutSafetensorsIsNotFound) {
  const std::string dir = scratch_dir();
  Result<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

}  // namespace
}  // namespace mnemo
