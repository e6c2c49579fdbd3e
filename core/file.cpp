#include "core/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace mnemo {

Result<std::shared_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return not_found(path, ": no such file");
    return io_error(path, ": cannot open: ", std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return io_error(path, ": cannot stat: ", std::strerror(e));
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      return io_error(path, ": mmap failed: ", std::strerror(e));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!file_exists(path)) return not_found(path, ": no such file");
    return io_error(path, ": cannot open for reading");
  }
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) return io_error(path, ": read failed");
  return os.str();
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status write_npy(const std::string& path, const Tensor& t) {
  if (!t.device().is_cpu()) return invalid_argument("write_npy(", path, "): tensor must be on the CPU");
  const char* descr = nullptr;
  if (t.dtype() == DType::kF32) descr = "<f4";
  if (t.dtype() == DType::kI32) descr = "<i4";
  if (!descr) return invalid_argument("write_npy(", path, "): f32 or i32 only, got ", dtype_name(t.dtype()));
  std::ostringstream shape;
  shape << '(';
  for (int i = 0; i < t.ndim(); ++i) shape << t.dim(i) << (t.ndim() == 1 || i + 1 < t.ndim() ? "," : "");
  shape << ')';
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " +
                       shape.str() + ", }";
  // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, ending '\n'.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return io_error(path, ": cannot open for writing");
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&hlen), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  out.flush();
  if (!out) return io_error(path, ": write failed (disk full?)");
  return Status::Ok();
}

Result<Tensor> read_npy(const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(std::string bytes, read_text_file(path));
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    return corruption(path, ": not a .npy file (bad magic)");
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t hlen = 0, hstart = 0;
  if (major == 1) {
    hlen = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    hstart = 10;
  } else {
    if (bytes.size() < 12) return corruption(path, ": truncated .npy header");
    hlen = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8) |
           (static_cast<uint8_t>(bytes[10]) << 16) | (static_cast<size_t>(static_cast<uint8_t>(bytes[11])) << 24);
    hstart = 12;
  }
  if (hstart + hlen > bytes.size()) return corruption(path, ": truncated .npy header");
  const std::string header = bytes.substr(hstart, hlen);
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) return {};
    size_t v = header.find(':', k) + 1;
    while (v < header.size() && header[v] == ' ') ++v;
    size_t e = v;
    if (header[v] == '\'') {
      e = header.find('\'', v + 1);
      return header.substr(v + 1, e - v - 1);
    }
    if (header[v] == '(') return header.substr(v + 1, header.find(')', v) - v - 1);
    e = header.find(',', v);
    return header.substr(v, e - v);
  };
  const std::string descr = field("descr");
  if (field("fortran_order") != "False") return unimplemented(path, ": fortran-order .npy not supported");
  Shape shape;
  std::stringstream ss(field("shape"));
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    shape.push_back(std::stoll(item));
  }
  const int64_t n = shape_numel(shape);
  const char* payload = bytes.data() + hstart + hlen;
  const size_t avail = bytes.size() - hstart - hlen;
  auto need = [&](size_t elem) -> Status {
    if (avail < static_cast<size_t>(n) * elem) {
      return corruption(path, ": expected ", n * elem, " data bytes for shape ", shape_to_string(shape),
                        ", file has ", avail);
    }
    return Status::Ok();
  };
  if (descr == "<f4" || descr == "<f8") {
    Tensor t = Tensor::zeros(shape, DType::kF32);
    if (descr == "<f4") {
      MNEMO_RETURN_IF_ERROR(need(4));
      std::memcpy(t.raw(), payload, static_cast<size_t>(n) * 4);
    } else {
      MNEMO_RETURN_IF_ERROR(need(8));
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, payload + i * 8, 8);
        t.data<float>()[i] = static_cast<float>(d);
      }
    }
    return t;
  }
  if (descr == "<i4" || descr == "<i8") {
    const bool wide = descr == "<i8";
    Tensor t = Tensor::zeros(shape, wide ? DType::kI64 : DType::kI32);
    MNEMO_RETURN_IF_ERROR(need(wide ? 8 : 4));
    std::memcpy(t.raw(), payload, t.nbytes());
    return t;
  }
  return unimplemented(path, ": .npy dtype '", descr, "' not supported (f4, f8, i4, i8)");
}

}  // namespace mnemo
