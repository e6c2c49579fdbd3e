// The transformers fixtures (tools/fixtures/make_model_fixtures.py): each folder under a root holds a
// tiny checkpoint and cases.json (token ids and the .npy of transformers' logits). Shared by the CPU
// fixture tests and the CUDA model tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/tensor.h"

namespace mnemo::testing_util {

struct FixtureCase {
  std::vector<int32_t> tokens;
  Tensor logits;  // [T, vocab]
};

// Fixture folders under `root`, sorted; none when the root is missing.
inline std::vector<std::string> fixture_names(const std::string& root) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  if (!fs::is_directory(root)) return names;
  for (const auto& e : fs::directory_iterator(root)) {
    if (fs::exists(e.path() / "cases.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

inline std::vector<FixtureCase> load_cases(const std::string& dir) {
  std::vector<FixtureCase> out;
  Result<std::string> text = read_text_file(dir + "/cases.json");
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  if (!text.ok()) return out;
  boost::json::value root = boost::json::parse(*text);
  for (const auto& c : root.at("cases").as_array()) {
    FixtureCase fc;
    for (const auto& t : c.at("tokens").as_array()) fc.tokens.push_back(static_cast<int32_t>(t.to_number<int64_t>()));
    Result<Tensor> logits = read_npy(dir + "/" + std::string(c.at("logits").as_string()));
    EXPECT_TRUE(logits.ok()) << logits.status().to_string();
    if (!logits.ok()) continue;
    fc.logits = std::move(*logits);
    out.push_back(std::move(fc));
  }
  return out;
}

}  // namespace mnemo::testing_util
