// The bundled trained model (models/tiny) against what transformers computed from the same
// checkpoint (models/tiny/reference.json, made by tools/train/train.py): logits of one prompt and the
// greedy continuations of three prompts, token for token.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>

#include "core/file.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace mnemo {
namespace {

const char* kDir = "models/tiny";

boost::json::object reference() {
  auto text = read_text_file(std::string(kDir) + "/reference.json");
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  return text.ok() ? boost::json::parse(*text).as_object() : boost::json::object{};
}

std::vector<int32_t> ids_of(const boost::json::value& v) {
  std::vector<int32_t> out;
  for (const auto& x : v.as_array()) out.push_back(static_cast<int32_t>(x.to_number<int64_t>()));
  return out;
}

TEST(TinyModel, LogitsMatchTransformers) {
  const auto ref = reference();
  ASSERT_TRUE(ref.contains("logits"));
  const auto& lg = ref.at("logits").as_object();
  const std::vector<int32_t> ids = ids_of(lg.at("ids"));
  auto want = read_npy(std::string(kDir) + "/" + std::string(lg.at("file").as_string()));
  ASSERT_TRUE(want.ok()) << want.status().to_string();
  auto model = LlamaModel::load(kDir);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto seq = (*model)->new_sequence();
  Tensor got;
  ASSERT_TRUE((*model)->forward(**seq, ids, &got, true).ok());
  ASSERT_EQ(got.shape(), want->shape());
  const int64_t vocab = got.dim(1);
  for (int64_t t = 0; t < got.dim(0); ++t) {
    double err = 0, scale = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double a = got.data<float>()[t * vocab + v], b = want->data<float>()[t * vocab + v];
      ASSERT_FALSE(std::isnan(a));
      err = std::max(err, std::fabs(a - b));
      scale = std::max(scale, std::fabs(b));
    }
    ASSERT_LE(err / scale, 1e-4) << "position " << t;
  }
}

TEST(TinyModel, TokenizerAndGreedyContinuationsMatchTransformers) {
  const auto ref = reference();
  auto model = LlamaModel::load(kDir);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto tok = Tokenizer::load(kDir);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  const auto& cases = ref.at("greedy").as_array();
  ASSERT_EQ(cases.size(), 3u);
  for (const auto& cv : cases) {
    const auto& c = cv.as_object();
    const std::vector<int32_t> prompt = ids_of(c.at("ids"));
    EXPECT_EQ((*tok)->encode(std::string(c.at("text").as_string()), true), prompt);
    const std::vector<int32_t> want = ids_of(c.at("greedy_ids"));
    auto seq = (*model)->new_sequence();
    Tensor logits;
    ASSERT_TRUE((*model)->forward(**seq, prompt, &logits).ok());
    std::vector<int32_t> got;
    for (size_t i = 0; i < want.size(); ++i) {
      const float* l = logits.data<float>();
      const int32_t next = static_cast<int32_t>(std::max_element(l, l + logits.dim(1)) - l);
      got.push_back(next);
      const int32_t one[1] = {next};
      ASSERT_TRUE((*model)->forward(**seq, one, &logits).ok());
    }
    EXPECT_EQ(got, want) << "prompt: " << c.at("text").as_string();
  }
}

}  // namespace
}  // namespace mnemo

namespace mnemo {
namespace {

// --device cuda where there is no usable GPU (CI: a CPU build, or no device): a clear error naming
// the device and the reason, before anything is allocated.
TEST(TinyModel, CudaDeviceWithoutAGpuIsAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: tests/cuda/model_cuda_test.cpp covers the CUDA forward";
  ModelOptions options;
  options.device = Device::cuda(0);
  auto model = LlamaModel::load("models/tiny", options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument) << model.status().to_string();
  EXPECT_NE(model.status().message().find("cuda:0"), std::string::npos) << model.status().message();
}

}  // namespace
}  // namespace mnemo
