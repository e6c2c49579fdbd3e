// Status and Result<T>: errors are values the caller must read.
//
// Library code never throws across a folder boundary and never aborts; every fallible call returns a
// Status (or a Result<T> carrying either a value or a Status). Messages name the problem: the file,
// field or tensor, what was expected and what was found.
#pragma once

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

namespace mnemo {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,  // the caller passed something malformed (shapes, flags, JSON, ids)
  kNotFound,         // a file, tensor, session or key that does not exist
  kOutOfBudget,      // a tier's byte budget would be exceeded
  kCorruption,       // stored bytes fail a check (truncated file, bad checksum, bad header)
  kIoError,          // the OS or RocksDB refused a read or write
  kCuda,             // a CUDA / cuBLAS call failed
  kCancelled,        // the operation was cancelled by its owner
  kUnimplemented,    // a valid request this build or version does not support
  kInternal,         // a broken invariant inside mnemo (a bug)
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: config.json: field 'hidden_size' ...".
  std::string to_string() const;

  // Prefixes the message with context ("loading model/x: " + message); keeps the code.
  Status with_context(const std::string& context) const;

  // Spelled-out, greppable way to drop a Status on purpose.
  void permit_unchecked() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

namespace detail {
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Builds a message from any streamable pieces: invalid_argument("field '", name, "': expected ", n).
template <typename... Args>
Status invalid_argument(const Args&... a) { return Status(StatusCode::kInvalidArgument, detail::str_cat(a...)); }
template <typename... Args>
Status not_found(const Args&... a) { return Status(StatusCode::kNotFound, detail::str_cat(a...)); }
template <typename... Args>
Status out_of_budget(const Args&... a) { return Status(StatusCode::kOutOfBudget, detail::str_cat(a...)); }
template <typename... Args>
Status corruption(const Args&... a) { return Status(StatusCode::kCorruption, detail::str_cat(a...)); }
template <typename... Args>
Status io_error(const Args&... a) { return Status(StatusCode::kIoError, detail::str_cat(a...)); }
template <typename... Args>
Status cuda_error(const Args&... a) { return Status(StatusCode::kCuda, detail::str_cat(a...)); }
template <typename... Args>
Status cancelled(const Args&... a) { return Status(StatusCode::kCancelled, detail::str_cat(a...)); }
template <typename... Args>
Status unimplemented(const Args&... a) { return Status(StatusCode::kUnimplemented, detail::str_cat(a...)); }
template <typename... Args>
Status internal_error(const Args&... a) { return Status(StatusCode::kInternal, detail::str_cat(a...)); }

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose, `return value;`
  Result(Status status) : v_(std::move(status)) {  // NOLINT: `return invalid_argument(...);`
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Result built from an OK Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // The error; OK when a value is held.
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

  // Precondition: ok(). Reading the value of an error is a bug, caught by std::get's check.
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace mnemo

#define MNEMO_CONCAT_INNER(a, b) a##b
#define MNEMO_CONCAT(a, b) MNEMO_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define MNEMO_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::mnemo::Status mnemo_status_ = (expr);          \
    if (!mnemo_status_.ok()) return mnemo_status_;   \
  } while (0)

// `MNEMO_ASSIGN_OR_RETURN(auto x, make_x());` declares x from a Result or returns its error.
#define MNEMO_ASSIGN_OR_RETURN(lhs, expr) \
  MNEMO_ASSIGN_OR_RETURN_IMPL(MNEMO_CONCAT(mnemo_result_, __LINE__), lhs, expr)
#define MNEMO_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
