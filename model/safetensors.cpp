#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "model/json_util.h"

namespace mnemo {
namespace {

namespace json = boost::json;

struct DtypeEntry {
  std::string_view name;
  size_t size;
  std::optional<DType> dtype;
};

// Every dtype the safetensors spec names (sub-byte F4/F6 types excepted: their offsets go
// unchecked).
constexpr DtypeEntry kDtypes[] = {
    {"F32", 4, DType::kF32},      {"F16", 2, DType::kF16},      {"BF16", 2, DType::kBF16},
    {"I32", 4, DType::kI32},      {"I64", 8, DType::kI64},      {"U8", 1, DType::kU8},
    {"F64", 8, std::nullopt},     {"I8", 1, std::nullopt},      {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},     {"U32", 4, std::nullopt},     {"U64", 8, std::nullopt},
    {"BOOL", 1, std::nullopt},    {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
    {"F8_E8M0", 1, std::nullopt}, {"C64", 8, std::nullopt},
};

const DtypeEntry* find_dtype(std::string_view name) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const char* safetensors_dtype_name(DType d) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == d) return e.name.data();  // the names are string literals: NUL-terminated
  }
  return "?";
}

bool is_float(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Converts n elements between float dtypes in parallel chunks. The source may be unaligned (an
// mmap'd file whose header length is not a multiple of the element size), so each chunk is copied
// first.
void convert_elements(const uint8_t* src, DType from, uint8_t* dst, DType to, size_t n) {
  constexpr size_t kChunk = 4096;
  const size_t from_size = dtype_size(from), to_size = dtype_size(to);
  const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (n > 4 * kChunk)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t begin = static_cast<size_t>(c) * kChunk;
    const size_t count = std::min(kChunk, n - begin);
    if (from == to) {
      std::memcpy(dst + begin * to_size, src + begin * from_size, count * from_size);
      continue;
    }
    alignas(64) uint8_t staged[kChunk * 4];
    alignas(64) float f32[kChunk];
    std::memcpy(staged, src + begin * from_size, count * from_size);
    convert_to_f32(staged, from, f32, count);
    convert_from_f32(f32, dst + begin * to_size, to, count);
  }
}

// Parses one header entry; `file` and `name` only name it in messages.
Status parse_entry(const std::string& file, const std::string& name, const json::value& v,
                   uint64_t data_size, SafetensorsTensorInfo* out) {
  auto bad = [&](const std::string& what) {
    return corruption(file, ": tensor '", name, "': ", what);
  };
  const json::object* obj = v.if_object();
  if (!obj)
    return bad("expected an object with dtype, shape and data_offsets, got " +
               json_util::describe(v));
  const json::value* dtype = obj->if_contains("dtype");
  const json::value* shape = obj->if_contains("shape");
  const json::value* offsets = obj->if_contains("data_offsets");
  if (!dtype || !dtype->is_string()) return bad("missing or non-string 'dtype'");
  if (!shape || !shape->is_array()) return bad("missing or non-array 'shape'");
  if (!offsets || !offsets->is_array() || offsets->get_array().size() != 2) {
    return bad("'data_offsets' must be an array [begin, end]");
  }
  out->name = name;
  out->dtype_name = std::string(dtype->get_string());
  const DtypeEntry* entry = find_dtype(out->dtype_name);
  out->dtype = entry ? entry->dtype : std::nullopt;
  uint64_t numel = 1;
  bool overflow = false;
  for (const json::value& d : shape->get_array()) {
    int64_t dim = 0;
    if (!json_util::as_int64(d, &dim) || dim < 0)
      return bad("shape entries must be non-negative integers");
    out->shape.push_back(dim);
    if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(dim))
      overflow = true;
    numel *= static_cast<uint64_t>(dim);
  }
  int64_t begin = 0, end = 0;
  if (!json_util::as_int64(offsets->get_array()[0], &begin) ||
      !json_util::as_int64(offsets->get_array()[1], &end) || begin < 0 || end < begin) {
    return bad("data_offsets " + json::serialize(*offsets) +
               " must be integers with 0 <= begin <= end");
  }
  out->data_begin = static_cast<uint64_t>(begin);
  out->data_end = static_cast<uint64_t>(end);
  const std::string range = detail::str_cat("data_offsets [", begin, ", ", end, "]");
  if (out->data_end > data_size) {
    return bad(detail::str_cat(range, " run past the end of the data section (", data_size,
                               " bytes; file truncated?)"));
  }
  if (entry) {
    const uint64_t held = out->data_end - out->data_begin;
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / entry->size ||
        numel * entry->size != held) {
      return bad(detail::str_cat(range, " hold ", held, " bytes, but ", out->dtype_name,
                                 shape_to_string(out->shape), " needs ",
                                 overflow ? 0 : numel * entry->size));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mapped, MappedFile::open(path));
  const size_t size = mapped->size();
  if (size < 8) {
    return corruption(path, ": truncated safetensors file: ", size,
                      " bytes, but the header length alone is 8");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | mapped->data()[i];  // little-endian
  if (header_len > size - 8) {
    return corruption(path, ": header length ", header_len, " runs past the end of the file (",
                      size, " bytes; truncated or not a safetensors file)");
  }
  const std::string_view header_text(reinterpret_cast<const char*>(mapped->data() + 8), header_len);
  MNEMO_ASSIGN_OR_RETURN(json::value header,
                         json_util::parse(header_text, path + ": header", StatusCode::kCorruption));
  if (!header.is_object()) {
    return corruption(path, ": header must be a JSON object, got ", json_util::describe(header));
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = std::move(mapped);
  f->data_ = f->file_->data() + 8 + header_len;
  f->data_size_ = size - 8 - header_len;
  for (const auto& [key, value] : header.get_object()) {
    const std::string name(key);
    if (name == "__metadata__") {
      const json::object* meta = value.if_object();
      if (!meta)
        return corruption(path, ": __metadata__ must be an object, got ",
                          json_util::describe(value));
      for (const auto& [mk, mv] : *meta) {
        f->metadata_[std::string(mk)] =
            mv.is_string() ? std::string(mv.get_string()) : json::serialize(mv);
      }
      continue;
    }
    SafetensorsTensorInfo info;
    MNEMO_RETURN_IF_ERROR(parse_entry(path, name, value, f->data_size_, &info));
    f->index_[name] = f->tensors_.size();
    f->tensors_.push_back(std::move(info));
  }
  return std::shared_ptr<const SafetensorsFile>(std::move(f));
}

const SafetensorsTensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Result<Tensor> SafetensorsFile::view(std::string_view name) const {
  const SafetensorsTensorInfo* info = find(name);
  if (!info) return not_found(path(), ": no tensor '", name, "'");
  if (!info->dtype) {
    return unimplemented(path(), ": tensor '", name, "': unsupported dtype '", info->dtype_name,
                         "'");
  }
  const uint8_t* p = bytes(*info);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(*info->dtype) != 0) {
    return unimplemented(path(), ": tensor '", name,
                         "': data is not aligned for a zero-copy view; use read()");
  }
  // PROT_READ mapping: the view must not be written through.
  return Tensor::wrap(const_cast<uint8_t*>(p), info->shape, *info->dtype, Device::cpu(), file_);
}

Result<Tensor> SafetensorsFile::read(std::string_view name, DType dtype) const {
  const SafetensorsTensorInfo* info = find(name);
  if (!info) return not_found(path(), ": no tensor '", name, "'");
  return read(*info, dtype);
}

Result<Tensor> SafetensorsFile::read(const SafetensorsTensorInfo& info, DType dtype) const {
  if (!info.dtype || !is_float(*info.dtype)) {
    return unimplemented(path(), ": tensor '", info.name, "': unsupported dtype '", info.dtype_name,
                         "' (supported: BF16, F16, F32)");
  }
  if (!is_float(dtype)) {
    return invalid_argument(path(), ": tensor '", info.name, "': cannot convert to ",
                            dtype_name(dtype), " (f32, f16, bf16 only)");
  }
  MNEMO_ASSIGN_OR_RETURN(Tensor out, Tensor::empty(info.shape, dtype));
  convert_elements(bytes(info), *info.dtype, static_cast<uint8_t*>(out.raw()), dtype,
                   static_cast<size_t>(out.numel()));
  return out;
}

Result<SafetensorsCheckpoint> SafetensorsCheckpoint::open(const std::string& model_dir) {
  if (!is_directory(model_dir))
    return not_found("model directory '", model_dir, "' does not exist");
  SafetensorsCheckpoint ckpt;
  const std::string index_path = join_path(model_dir, "model.safetensors.index.json");
  const std::string single_path = join_path(model_dir, "model.safetensors");
  if (!file_exists(index_path)) {
    if (!file_exists(single_path)) {
      return not_found(model_dir, ": no model.safetensors or model.safetensors.index.json");
    }
    MNEMO_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(single_path));
    for (const SafetensorsTensorInfo& info : file->tensors())
      ckpt.entries_[info.name] = {file.get(), &info};
    ckpt.files_.push_back(std::move(file));
    ckpt.source_ = single_path;
    return ckpt;
  }
  ckpt.sharded_ = true;
  ckpt.source_ = index_path;
  MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
  MNEMO_ASSIGN_OR_RETURN(json::value index,
                         json_util::parse(text, index_path, StatusCode::kCorruption));
  const json::object* root = index.if_object();
  const json::value* map = root ? root->if_contains("weight_map") : nullptr;
  if (!map || !map->is_object()) {
    return corruption(index_path, ": expected an object with a 'weight_map' object");
  }
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [tensor, shard_value] : map->get_object()) {
    if (!shard_value.is_string()) {
      return corruption(index_path, ": weight_map['", std::string(tensor),
                        "']: expected a file name, got ", json_util::describe(shard_value));
    }
    const std::string shard(shard_value.get_string());
    auto it = shards.find(shard);
    if (it == shards.end()) {
      MNEMO_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(join_path(model_dir, shard)));
      it = shards.emplace(shard, file.get()).first;
      ckpt.files_.push_back(std::move(file));
    }
    const SafetensorsTensorInfo* info = it->second->find(tensor);
    if (!info) {
      return corruption(index_path, ": weight_map puts tensor '", std::string(tensor), "' in ",
                        shard, ", which does not contain it");
    }
    ckpt.entries_[std::string(tensor)] = {it->second, info};
  }
  // Tensors a shard holds but the index does not list still count (as extras, when unexpected).
  for (const auto& file : ckpt.files_) {
    for (const SafetensorsTensorInfo& info : file->tensors())
      ckpt.entries_.emplace(info.name, Entry{file.get(), &info});
  }
  return ckpt;
}

SafetensorsCheckpoint::Entry SafetensorsCheckpoint::find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? Entry{} : it->second;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  json::object header;
  if (!metadata.empty()) {
    json::object meta;
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!seen.insert(name).second)
      return invalid_argument(path, ": tensor '", name, "' given twice");
    if (!t.device().is_cpu())
      return invalid_argument(path, ": tensor '", name, "' is not on the CPU");
    json::array shape;
    for (int64_t d : t.shape()) shape.push_back(d);
    header[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                    {"shape", std::move(shape)},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = json::serialize(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return io_error(path, ": cannot open for writing");
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : tensors) {
    out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  }
  out.flush();
  if (!out) return io_error(path, ": write failed (disk full?)");
  return Status::Ok();
}

}  // namespace mnemo
