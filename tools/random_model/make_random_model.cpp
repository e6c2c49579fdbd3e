// Writes a checkpoint of deterministic random weights for a config.json, in the Hugging Face layout
// (model.safetensors, bf16 by default). Used for the bundled default model until a trained one
// replaces it, and for benchmarks of shapes without a checkpoint.
//
//   mnemo_make_random_model CONFIG.json OUT_DIR [--seed N] [--std X] [--dtype bf16|f16|f32]
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/file.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

int main(int argc, char** argv) {
  using namespace mnemo;
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CONFIG.json OUT_DIR [--seed N] [--std X] [--dtype bf16|f16|f32]\n", argv[0]);
    return 2;
  }
  const std::string config_path = argv[1], out_dir = argv[2];
  uint64_t seed = 0;
  float std_dev = 0.02f;
  DType dtype = DType::kBF16;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--seed") {
      seed = std::strtoull(value.c_str(), nullptr, 10);
    } else if (flag == "--std") {
      std_dev = std::strtof(value.c_str(), nullptr);
    } else if (flag == "--dtype" && parse_dtype(value, &dtype)) {
    } else {
      std::fprintf(stderr, "unknown flag or value: %s %s\n", flag.c_str(), value.c_str());
      return 2;
    }
  }
  auto text = read_text_file(config_path);
  if (!text.ok()) return std::fprintf(stderr, "%s\n", text.status().to_string().c_str()), 1;
  auto config = parse_model_config(*text, config_path);
  if (!config.ok()) return std::fprintf(stderr, "%s\n", config.status().to_string().c_str()), 1;
  ModelWeights weights = random_model_weights(*config, seed, std_dev);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : named_weights(*config, weights)) {
    auto converted = t.to_dtype(dtype);
    if (!converted.ok()) return std::fprintf(stderr, "%s\n", converted.status().to_string().c_str()), 1;
    tensors.emplace_back(name, std::move(*converted));
  }
  std::filesystem::create_directories(out_dir);
  if (std::filesystem::absolute(config_path) != std::filesystem::absolute(out_dir + "/config.json")) {
    std::filesystem::copy_file(config_path, out_dir + "/config.json",
                               std::filesystem::copy_options::overwrite_existing);
  }
  Status s = write_safetensors(out_dir + "/model.safetensors", tensors,
                               {{"format", "pt"}, {"mnemo", "random weights, seed " + std::to_string(seed)}});
  if (!s.ok()) return std::fprintf(stderr, "%s\n", s.to_string().c_str()), 1;
  std::printf("wrote %s/model.safetensors (%zu tensors, %s, seed %llu)\n", out_dir.c_str(), tensors.size(),
              dtype_name(dtype), static_cast<unsigned long long>(seed));
  return 0;
}
