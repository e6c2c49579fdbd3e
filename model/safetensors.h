// safetensors: memory-mapped reading (single files and sharded checkpoints) and writing.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON
//   {"NAME": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__":
//   {..}}
// then the data section; offsets are relative to its start. Opening validates the whole header
// (every range inside the data section and matching shape x dtype size), so later reads trust it.
// Every error names the file, and the tensor when there is one.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/file.h"
#include "core/tensor.h"

namespace mnemo {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype_name;      // as written: "BF16", "F32", "I64", "F8_E4M3", ...
  std::optional<DType> dtype;  // mnemo's type for it; nullopt for F64, I8, F8_*, BOOL, ...
  Shape shape;
  uint64_t data_begin = 0;  // byte range in the data section, end exclusive
  uint64_t data_end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`: Corruption for a truncated file, a header length past the end, a
  // malformed header or offsets that disagree with shapes; NotFound when the file does not exist.
  static Result<std::shared_ptr<const SafetensorsFile>> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }  // header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const SafetensorsTensorInfo* find(std::string_view name) const;
  // The tensor's bytes inside the mapping (not necessarily aligned).
  const uint8_t* bytes(const SafetensorsTensorInfo& info) const { return data_ + info.data_begin; }

  // Zero-copy CPU view that keeps the mapping alive. Errors: absent tensor; a dtype mnemo has no
  // type for; data not aligned to its element size (use read()).
  Result<Tensor> view(std::string_view name) const;
  // A fresh CPU tensor converted to `dtype`. Sources and targets: F32, F16, BF16; any other source
  // is "unsupported dtype" naming the tensor. Conversion runs in parallel chunks (OpenMP).
  Result<Tensor> read(std::string_view name, DType dtype) const;
  Result<Tensor> read(const SafetensorsTensorInfo& info, DType dtype) const;

 private:
  SafetensorsFile() = default;
  std::shared_ptr<MappedFile> file_;
  const uint8_t* data_ = nullptr;  // start of the data section
  uint64_t data_size_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// The safetensors of one model directory: DIR/model.safetensors, or the shards named by
// DIR/model.safetensors.index.json's weight_map (which wins when both exist).
class SafetensorsCheckpoint {
 public:
  // NotFound when the directory or both files are missing; shards listed in the index must exist
  // and hold the tensors the index places in them (else Corruption naming index, shard and tensor).
  static Result<SafetensorsCheckpoint> open(const std::string& model_dir);

  struct Entry {
    const SafetensorsFile* file = nullptr;
    const SafetensorsTensorInfo* info = nullptr;
  };
  // {nullptr, nullptr} when absent.
  Entry find(std::string_view name) const;
  // Every tensor, sorted by name.
  std::vector<std::string> names() const;
  // What a missing tensor's error names: the single file, or the index.
  const std::string& source() const { return source_; }
  bool sharded() const { return sharded_; }
  const std::vector<std::shared_ptr<const SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::string source_;
  bool sharded_ = false;
};

// Writes CPU tensors (any mnemo dtype) to `path` in the order given, header padded to 8 bytes as
// the reference implementation does. For tests, tools and exporting random weights.
Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace mnemo
