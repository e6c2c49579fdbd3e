// Scratch directories for model tests: unique per call, under one per-process root in
// testing::TempDir() that is removed when the test program's tests finish.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace mnemo::testing_util {

inline const std::string& scratch_root() {
  static const std::string root = [] {
    std::string dir = testing::TempDir();
    if (!dir.empty() && dir.back() == '/') dir.pop_back();
    return dir + "/mnemo_model_test_" + std::to_string(getpid());
  }();
  return root;
}

class RemoveScratchRoot : public testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove_all(scratch_root()); }
};

// A fresh, empty directory named after the running test.
inline std::string scratch_dir() {
  static int counter = 0;
  static const bool registered = [] {
    testing::AddGlobalTestEnvironment(new RemoveScratchRoot);  // owned by gtest
    return true;
  }();
  (void)registered;
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = scratch_root() + "/" + info->name() + "_" + std::to_string(++counter);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace mnemo::testing_util
