// Files: read-only memory maps (checkpoints), whole-file reads, and .npy arrays (logits in tests and
// `mnemo logits`).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace mnemo {

// A read-only mapping of a whole file. Unmapped when the last shared_ptr goes.
class MappedFile {
 public:
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

Result<std::string> read_text_file(const std::string& path);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);

// Writes a C-order .npy (version 1.0) of an f32 or i32 CPU tensor.
Status write_npy(const std::string& path, const Tensor& t);
// Reads a C-order little-endian .npy of f4/f8/i4/i8 into an f32 (floats) or i32/i64 tensor.
Result<Tensor> read_npy(const std::string& path);

}  // namespace mnemo
