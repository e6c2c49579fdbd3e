// `mnemo ingest`, `mnemo sessions` and `mnemo run --session`: the CLI over persistent sessions.
//
// Key decisions:
// - ingest tokenizes the text itself and appends ids (append_tokens) chunk by chunk, so it knows
//   exactly what each acknowledged append holds. A chunk ends before a space or newline in the last
//   half of its window: sentencepiece pieces never span a "▁", so the chunks' ids concatenate to the
//   encoding of the whole text once a chunk that continues the text drops the dummy-prefix "▁" the
//   tokenizer puts before its leading space. A window with no space or newline there ends at a UTF-8
//   character boundary (the only place the ids can differ from the whole text's).
// - Resume: the runtime keeps no user metadata, so progress lives beside the store in
//   DATA_DIR/ingest/ID.offset, rewritten (tmp + fsync + rename) after every acknowledged append:
//   input bytes consumed, the session length after them, and the input's size and crc32c of its
//   first 64 KiB, so a different input is refused. A crash between an append and the record shows
//   as the session holding exactly the next chunk's ids past the recorded length: that chunk is
//   counted as done, never appended twice.
#include "runtime/cli/session_commands.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <sstream>
#include <thread>

#include "core/file.h"
#include "memory/checksum.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/model_flags.h"
#include "runtime/runtime.h"

namespace mnemo::cli {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kHeadBytes = 64 << 10;  // input bytes hashed to recognise the same input again

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- Runtime options shared by ingest and sessions (run --session reads run's own flags) ----

std::vector<FlagSpec> runtime_flag_specs(std::vector<FlagSpec> specs) {
  specs.insert(specs.end(), {
      {"data-dir", "DIR", "folder of the persistent sessions (created if missing)", ""},
      {"model", "DIR", "Hugging Face model folder (the one the data dir was made with)", "the bundled models/tiny"},
      {"device", "NAME", "cpu or cuda[:N] (a data dir keeps the KV of the device it was made on)", "cpu"},
      {"sparse-config", "FILE.json", "InfLLM-V2 sparse attention (MiniCPM4 sparse_config keys)", "the model's own"},
      {"positions", "POLICY", "exact, or bounded (InfLLM: streams past the model's context); same on every run",
       "exact"},
      {"kv-budget-tokens", "N", "KV tokens on the compute device; more spill to host memory", "1 GiB worth"},
      {"host-kv-budget-mib", "MIB", "KV in host memory before blocks spill to disk", "4096"},
      {"chunk-tokens", "N", "largest prefill chunk of one session per step", "2048"},
      {"max-batch-tokens", "N", "tokens per engine step", "4096"},
      {"help", "", "show this help", ""},
  });
  return specs;
}

Result<RuntimeOptions> runtime_options_from_flags(const Flags& f, const std::string& command) {
  if (!f.has("data-dir")) return invalid_argument("mnemo ", command, ": --data-dir DIR is required (where sessions live)");
  RuntimeOptions o;
  o.data_dir = f.get("data-dir");
  o.model_dir = f.get("model", default_model_dir());
  if (!is_directory(o.model_dir)) return not_found("model directory '", o.model_dir, "' does not exist");
  o.sparse_config_path = f.get("sparse-config");
  MNEMO_ASSIGN_OR_RETURN(o.device, parse_device(f.get("device", "cpu")));
  const std::string positions = f.get("positions", "exact");  // run --session: run's --positions, if it has one
  if (positions != "exact" && positions != "bounded") {
    return invalid_argument("mnemo ", command, ": --positions: expected 'exact' or 'bounded', got '", positions, "'");
  }
  o.positions = positions == "bounded" ? PositionPolicy::kBounded : PositionPolicy::kExact;
  MNEMO_ASSIGN_OR_RETURN(o.chunk_tokens, f.get_int("chunk-tokens", o.chunk_tokens, 1, int64_t{1} << 30));
  MNEMO_ASSIGN_OR_RETURN(o.max_batch_tokens, f.get_int("max-batch-tokens", o.max_batch_tokens, 1, int64_t{1} << 30));
  MNEMO_ASSIGN_OR_RETURN(int64_t host_mib, f.get_int("host-kv-budget-mib", o.host_kv_budget_bytes >> 20, 0, int64_t{1} << 30));
  o.host_kv_budget_bytes = host_mib << 20;
  if (f.has("kv-budget-tokens")) {
    MNEMO_ASSIGN_OR_RETURN(int64_t tokens, f.get_int("kv-budget-tokens", 0, 64, int64_t{1} << 40));
    MNEMO_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(o.model_dir));
    // Runtime::open turns bytes back into tokens with the same size: K and V in f32 (CPU) or bf16.
    o.gpu_kv_budget_bytes = tokens * 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim *
                            (o.device.is_cpu() ? 4 : 2);
  }
  return o;
}

// ---- The ingest record: DATA_DIR/ingest/ID.offset ----

struct IngestRecord {
  int64_t input_bytes = -1;     // size of the input; -1: not known (a pipe)
  int64_t head_bytes = 0;       // input bytes hashed: min(64 KiB, input)
  uint32_t head_crc32c = 0;     // crc32c of those bytes
  int64_t chunk_bytes = 0;      // --chunk-bytes of the run that wrote the record
  int64_t offset = 0;           // input bytes whose tokens the session holds (acknowledged appends)
  int64_t session_tokens = 0;   // the session's length right after them
};

std::string record_path(const std::string& data_dir, const std::string& id) {
  return data_dir + "/ingest/" + id + ".offset";
}

Result<IngestRecord> read_record(const std::string& path) {
  MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  std::istringstream in(text);
  std::string magic, key;
  IngestRecord r;
  int fields = 0;
  if (!(in >> magic) || magic != "mnemo-ingest-v1") return corruption("ingest record ", path, ": not a mnemo-ingest-v1 file");
  int64_t value = 0;
  while (in >> key >> value) {
    if (key == "input_bytes") r.input_bytes = value;
    else if (key == "head_bytes") r.head_bytes = value;
    else if (key == "head_crc32c") r.head_crc32c = static_cast<uint32_t>(value);
    else if (key == "chunk_bytes") r.chunk_bytes = value;
    else if (key == "offset") r.offset = value;
    else if (key == "session_tokens") r.session_tokens = value;
    else return corruption("ingest record ", path, ": unknown field '", key, "'");
    ++fields;
  }
  if (fields != 6 || !in.eof()) return corruption("ingest record ", path, ": expected 6 fields, got ", fields);
  return r;
}

Status write_all(int fd, const std::string& text, const std::string& path) {
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return io_error("writing ", path, ": ", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Atomic replace: a crash leaves the old record or the new one, never a torn one.
Status write_record(const std::string& path, const IngestRecord& r) {
  std::ostringstream os;
  os << "mnemo-ingest-v1\ninput_bytes " << r.input_bytes << "\nhead_bytes " << r.head_bytes << "\nhead_crc32c "
     << r.head_crc32c << "\nchunk_bytes " << r.chunk_bytes << "\noffset " << r.offset << "\nsession_tokens "
     << r.session_tokens << "\n";
  const std::string dir = std::filesystem::path(path).parent_path().string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return io_error("cannot create ", dir, ": ", ec.message());
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_error("cannot write ", tmp, ": ", std::strerror(errno));
  Status s = write_all(fd, os.str(), tmp);
  if (s.ok() && ::fsync(fd) != 0) s = io_error("fsync ", tmp, ": ", std::strerror(errno));
  ::close(fd);
  MNEMO_RETURN_IF_ERROR(s);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return io_error("rename ", tmp, ": ", std::strerror(errno));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // make the rename durable
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status::Ok();
}

// ---- Input: a file or stdin, read forward through a buffer ----

class Input {
 public:
  Input() = default;
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;
  ~Input() {
    if (fd_ > 0) ::close(fd_);
  }

  Status open(const std::string& path) {
    name_ = path == "-" ? "stdin" : path;
    fd_ = path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int err = errno;
      if (err == ENOENT) return not_found("cannot read input '", path, "': ", std::strerror(err));
      return io_error("cannot read input '", path, "': ", std::strerror(err));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return io_error("cannot read input '", path, "': ", std::strerror(errno));
    if (S_ISDIR(st.st_mode)) return invalid_argument("input '", path, "' is a directory, not a text file");
    regular_ = S_ISREG(st.st_mode);
    size_ = regular_ ? static_cast<int64_t>(st.st_size) : -1;
    return Status::Ok();
  }

  // Reads until `bytes` are buffered or the input ends.
  Status fill(size_t bytes) {
    char block[1 << 16];
    while (!eof_ && buf_.size() < bytes) {
      const ssize_t n = ::read(fd_, block, std::min(sizeof block, bytes - buf_.size()));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return io_error("reading input '", name_, "': ", std::strerror(errno));
      if (n == 0) eof_ = true;
      buf_.append(block, static_cast<size_t>(n));
    }
    return Status::Ok();
  }
  void consume(size_t n) {
    buf_.erase(0, n);
    offset_ += static_cast<int64_t>(n);
  }
  // Moves forward to input byte `offset` (a pipe is read and dropped up to there).
  Status skip_to(int64_t offset) {
    const int64_t in_buf = std::min<int64_t>(offset - offset_, static_cast<int64_t>(buf_.size()));
    consume(static_cast<size_t>(in_buf));
    if (offset_ == offset) return Status::Ok();
    if (regular_ && ::lseek(fd_, offset, SEEK_SET) == offset) {
      offset_ = offset;
      return Status::Ok();
    }
    while (offset_ < offset) {
      MNEMO_RETURN_IF_ERROR(fill(static_cast<size_t>(std::min<int64_t>(offset - offset_, 1 << 20))));
      if (buf_.empty()) return invalid_argument("input '", name_, "' ends at byte ", offset_, ", before byte ", offset,
                                                " where the previous ingest stopped: a different input");
      consume(std::min(buf_.size(), static_cast<size_t>(offset - offset_)));
    }
    return Status::Ok();
  }

  std::string_view data() const { return buf_; }
  bool at_end() const { return eof_; }
  int64_t offset() const { return offset_; }  // input byte of data()[0]
  int64_t size() const { return size_; }      // -1: not known
  const std::string& name() const { return name_; }

 private:
  int fd_ = -1;
  bool regular_ = false, eof_ = false;
  int64_t size_ = -1, offset_ = 0;
  std::string buf_, name_;
};

// Bytes of the next chunk of `text` (buffered input; `at_end`: nothing follows it): at most
// `chunk_bytes`, ending before a space or newline when one is in the last half (see the file header).
size_t chunk_end(std::string_view text, size_t chunk_bytes, bool at_end) {
  if (text.size() <= chunk_bytes && at_end) return text.size();
  const size_t limit = std::min(chunk_bytes, text.size() - 1);  // text[limit] exists: the next chunk's start
  for (size_t p = limit; p > limit / 2; --p) {
    if (text[p] == ' ' || text[p] == '\n') return p;
  }
  size_t p = limit;  // not before a UTF-8 continuation byte (10xxxxxx)
  while (p > 1 && (static_cast<uint8_t>(text[p]) & 0xC0) == 0x80 && limit - p < 3) --p;
  return p;
}

// Token ids of one chunk as ingest appends them.
class ChunkEncoder {
 public:
  explicit ChunkEncoder(const Tokenizer& tok) : tok_(tok), space_id_(tok.piece_to_id("\xE2\x96\x81")) {
    const auto a = tok.encode("a", false), spaced = tok.encode(" a", false);
    dummy_prefix_ = space_id_ >= 0 && spaced.size() == a.size() + 1 && spaced[0] == space_id_ &&
                    std::equal(a.begin(), a.end(), spaced.begin() + 1);
  }
  // `stream_start`: the session is empty (BOS first, as append_text does). `continues`: the chunk
  // continues input text already appended.
  std::vector<int32_t> encode(std::string_view text, bool stream_start, bool continues) const {
    std::vector<int32_t> ids = tok_.encode(text, false);
    if (stream_start && tok_.bos_id() >= 0 && tok_.add_bos_default()) ids.insert(ids.begin(), tok_.bos_id());
    const bool leading_ws = !text.empty() && (text[0] == ' ' || text[0] == '\n');
    if (!stream_start && continues && dummy_prefix_ && leading_ws && !ids.empty() && ids[0] == space_id_) {
      ids.erase(ids.begin());  // the dummy prefix: the previous chunk's text already separates
    }
    return ids;
  }

 private:
  const Tokenizer& tok_;
  int32_t space_id_;
  bool dummy_prefix_ = false;  // encode(" a") == {"▁"} + encode("a")
};

// ---- Progress on stderr: redrawn in place on a terminal, else a line every few seconds ----

// "gpu 12.0 host 3.5 disk 40.1 MiB" from gauges mnemo_kv_bytes{tier="..."} when the runtime has them.
std::string kv_tiers(const std::string& metrics) {
  std::istringstream in(metrics);
  std::string line, out;
  while (std::getline(in, line)) {
    const std::string prefix = "mnemo_kv_bytes{tier=\"";
    if (line.rfind(prefix, 0) != 0) continue;
    const size_t q = line.find('"', prefix.size()), sp = line.rfind(' ');
    if (q == std::string::npos || sp == std::string::npos) continue;
    char mib[32];
    std::snprintf(mib, sizeof mib, " %.1f", std::atof(line.c_str() + sp + 1) / (1 << 20));
    out += (out.empty() ? "" : " ") + line.substr(prefix.size(), q - prefix.size()) + mib;
  }
  return out.empty() ? out : "kv " + out + " MiB";
}

std::string human_bytes(int64_t bytes) {
  char text[32];
  if (bytes < (1 << 20)) {
    std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024.0);
  } else if (bytes < (int64_t{1} << 30)) {
    std::snprintf(text, sizeof text, "%.1f MiB", bytes / 1048576.0);
  } else {
    std::snprintf(text, sizeof text, "%.2f GiB", bytes / 1073741824.0);
  }
  return text;
}

double metric(const std::string& metrics, const std::string& name) {
  const size_t p = metrics.find("\n" + name + " ");
  return p == std::string::npos ? 0.0 : std::atof(metrics.c_str() + p + name.size() + 2);
}

class Progress {
 public:
  Progress(Runtime& rt, Session& s, int64_t total_bytes, bool quiet)
      : rt_(rt), s_(s), quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0), total_bytes_(total_bytes) {
    const SessionInfo i = s.info();
    prefilled0_ = i.length - i.pending_tokens;
  }

  void update(int64_t bytes, int64_t appended, bool force = false) {
    if (quiet_) return;
    const double since_draw = seconds_since(last_draw_);
    if (!force && since_draw < (tty_ ? 0.1 : 5.0)) return;
    last_draw_ = Clock::now();
    const SessionInfo i = s_.info();
    const double rate = (i.length - i.pending_tokens - prefilled0_) / std::max(1e-9, seconds_since(start_));
    const std::string metrics = rt_.metrics_text();
    std::string kv = kv_tiers(metrics);
    if (kv.empty()) kv = "steps " + std::to_string(static_cast<int64_t>(metric(metrics, "mnemo_steps_total")));
    char done[64];
    if (total_bytes_ > 0) {
      std::snprintf(done, sizeof done, "%5.1f%% %s / %s", 100.0 * bytes / total_bytes_, human_bytes(bytes).c_str(),
                    human_bytes(total_bytes_).c_str());
    } else {
      std::snprintf(done, sizeof done, "%s", human_bytes(bytes).c_str());
    }
    std::fprintf(stderr, "%s%s | +%lld tokens | %.0f tokens/s prefill | position %lld (%lld pending) | %s%s",
                 tty_ ? "\r" : "mnemo ingest: ", done, static_cast<long long>(appended), rate,
                 static_cast<long long>(i.length), static_cast<long long>(i.pending_tokens), kv.c_str(),
                 tty_ ? "\x1b[K" : "\n");
    drawn_ = true;
  }
  void finish() {
    if (drawn_ && tty_) std::fputc('\n', stderr);
  }
  double prefill_rate() const {
    const SessionInfo i = s_.info();
    return (i.length - i.pending_tokens - prefilled0_) / std::max(1e-9, seconds_since(start_));
  }

 private:
  Runtime& rt_;
  Session& s_;
  bool quiet_, tty_, drawn_ = false;
  int64_t total_bytes_, prefilled0_ = 0;
  Clock::time_point start_ = Clock::now(), last_draw_{};
};

// Session `id`, opened, or created when `create` and it does not exist (`*created` says which).
Result<std::shared_ptr<Session>> open_or_create(Runtime& rt, const std::string& id, bool* created) {
  auto s = rt.open_session(id);
  *created = false;
  if (s.ok() || s.status().code() != StatusCode::kNotFound) return s;
  *created = true;
  return rt.create_session(id);
}

// Where ingest resumes: the recorded offset, checked against the input and the session. May advance
// `r` past a chunk appended just before a crash (the session already holds it).
Status check_resume(IngestRecord& r, Input& in, const std::string& record, const std::string& id, Session& s,
                    const ChunkEncoder& enc) {
  const int64_t head = static_cast<int64_t>(std::min(kHeadBytes, in.data().size()));
  const uint32_t crc = crc32c(in.data().data(), static_cast<size_t>(head));
  const bool size_differs = r.input_bytes >= 0 && in.size() >= 0 && r.input_bytes != in.size();
  if (size_differs || r.head_bytes != head || r.head_crc32c != crc) {
    return invalid_argument("session '", id, "' is being ingested from a different input (", record, ": ",
                            r.input_bytes, " bytes, crc32c of the first ", r.head_bytes, " bytes ", r.head_crc32c,
                            "; '", in.name(), "': ", in.size(), " bytes, crc32c ", crc,
                            "). Give the same input to resume, or delete the session to start over");
  }
  const std::vector<int32_t> tokens = s.tokens();
  const int64_t length = static_cast<int64_t>(tokens.size());
  if (length < r.session_tokens) {
    return corruption("session '", id, "' has ", length, " tokens but ", record, " recorded ", r.session_tokens,
                      " after byte ", r.offset, "; remove the record to ingest from the start");
  }
  MNEMO_RETURN_IF_ERROR(in.skip_to(r.offset));
  MNEMO_RETURN_IF_ERROR(in.fill(static_cast<size_t>(r.chunk_bytes) + 1));
  // All ingested (the session may have grown since, by run --session): nothing to check.
  if (length == r.session_tokens || (in.data().empty() && in.at_end())) return Status::Ok();
  // Longer: the next chunk may have been acknowledged without its record (a crash in between).
  const size_t n = chunk_end(in.data(), static_cast<size_t>(r.chunk_bytes), in.at_end());
  const auto ids = enc.encode(in.data().substr(0, n), r.session_tokens == 0, r.offset > 0);
  if (length == r.session_tokens + static_cast<int64_t>(ids.size()) &&
      std::equal(ids.begin(), ids.end(), tokens.begin() + r.session_tokens)) {
    in.consume(n);
    r.offset += static_cast<int64_t>(n);
    r.session_tokens = length;
    return Status::Ok();
  }
  return invalid_argument("session '", id, "' grew from ", r.session_tokens, " to ", length,
                          " tokens since ingest stopped at byte ", r.offset, " (other appends or generation); ",
                          "resuming would interleave the input with them");
}

// Waits for `f` while redrawing progress.
Status wait_drawing(std::future<Status> f, Progress& progress, int64_t bytes, int64_t appended) {
  while (f.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) progress.update(bytes, appended);
  return f.get();
}

}  // namespace

Status ingest_command(const std::vector<std::string>& args) {
  const auto specs = runtime_flag_specs({
      {"session", "ID", "the session to append to (created if missing)", ""},
      {"chunk-bytes", "N", "input bytes per append (cut before a space or newline)", "16384"},
      {"max-bytes", "N", "stop after about N input bytes this run (a later run resumes)", "all"},
      {"max-pending-tokens", "N", "pause reading while this many tokens wait for prefill", "65536"},
      {"wait", "", "wait until every token is prefilled before exiting (the default)", ""},
      {"no-wait", "", "exit once the tokens are durable; prefill continues on the next open", ""},
      {"quiet", "", "no progress on stderr", ""},
  });
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("ingest", specs, args));
  if (f.has("help")) {
    std::fputs(usage("ingest FILE|-",
                     "Streams a text file (or stdin) into a persistent session, resuming where a previous run "
                     "stopped (progress in DATA_DIR/ingest/ID.offset).",
                     specs)
                   .c_str(),
               stdout);
    return Status::Ok();
  }
  if (f.positional().size() != 1) {
    return invalid_argument("mnemo ingest: expected one input FILE (or - for stdin), got ", f.positional().size());
  }
  if (!f.has("session")) return invalid_argument("mnemo ingest: --session ID is required");
  if (f.has("wait") && f.has("no-wait")) return invalid_argument("mnemo ingest: --wait and --no-wait contradict");
  MNEMO_ASSIGN_OR_RETURN(RuntimeOptions options, runtime_options_from_flags(f, "ingest"));
  MNEMO_ASSIGN_OR_RETURN(int64_t chunk_bytes, f.get_int("chunk-bytes", 16384, 16, int64_t{1} << 30));
  MNEMO_ASSIGN_OR_RETURN(int64_t max_bytes, f.get_int("max-bytes", INT64_MAX, 1, INT64_MAX));
  MNEMO_ASSIGN_OR_RETURN(int64_t max_pending, f.get_int("max-pending-tokens", 65536, 1, int64_t{1} << 40));
  const std::string id = f.get("session");
  const bool wait = !f.has("no-wait");

  Input in;  // opened before the model loads: a bad path fails fast
  MNEMO_RETURN_IF_ERROR(in.open(f.positional()[0]));
  MNEMO_RETURN_IF_ERROR(in.fill(kHeadBytes));
  MNEMO_ASSIGN_OR_RETURN(auto rt, Runtime::open(options));
  bool created = false;
  MNEMO_ASSIGN_OR_RETURN(auto session, open_or_create(*rt, id, &created));
  const ChunkEncoder enc(rt->tokenizer());
  const std::string record = record_path(options.data_dir, id);

  IngestRecord r;
  if (!created && file_exists(record)) {
    MNEMO_ASSIGN_OR_RETURN(r, read_record(record));
    MNEMO_RETURN_IF_ERROR(check_resume(r, in, record, id, *session, enc));
  } else {
    // A new session, or one that never ingested: a record left by a deleted session is stale.
    r.head_bytes = static_cast<int64_t>(std::min(kHeadBytes, in.data().size()));
    r.head_crc32c = crc32c(in.data().data(), static_cast<size_t>(r.head_bytes));
    r.session_tokens = session->info().length;
  }
  if (r.input_bytes < 0) r.input_bytes = in.size();  // a pipe resuming a file's ingest keeps its size
  r.chunk_bytes = chunk_bytes;
  MNEMO_RETURN_IF_ERROR(write_record(record, r));
  const int64_t start = r.offset;
  if (!f.has("quiet") && start > 0) {
    std::fprintf(stderr, "mnemo ingest: resuming session '%s' at byte %lld of %s\n", id.c_str(),
                 static_cast<long long>(start), in.name().c_str());
  }

  Progress progress(*rt, *session, in.size(), f.has("quiet"));
  int64_t appended = 0;
  Status stopped;
  while (stopped.ok() && r.offset - start < max_bytes) {
    MNEMO_RETURN_IF_ERROR(in.fill(static_cast<size_t>(chunk_bytes) + 1));
    if (in.data().empty()) break;
    const size_t n = chunk_end(in.data(), static_cast<size_t>(chunk_bytes), in.at_end());
    const std::vector<int32_t> ids = enc.encode(in.data().substr(0, n), r.session_tokens == 0, r.offset > 0);
    // Backpressure: reading far ahead of the model only grows the pending queue.
    while (session->info().pending_tokens > max_pending) {
      progress.update(r.offset, appended);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!ids.empty()) {
      stopped = session->append_tokens(ids).get();
      if (!stopped.ok()) break;
    }
    in.consume(n);
    r.offset += static_cast<int64_t>(n);
    r.session_tokens = session->info().length;
    appended += static_cast<int64_t>(ids.size());
    MNEMO_RETURN_IF_ERROR(write_record(record, r));
    progress.update(r.offset, appended);
  }
  if (wait) {
    Status prefilled = wait_drawing(session->wait_prefilled(), progress, r.offset, appended);
    if (stopped.ok()) stopped = prefilled;
  }
  progress.update(r.offset, appended, /*force=*/true);
  progress.finish();
  const SessionInfo info = session->info();
  if (!stopped.ok()) {
    return stopped.with_context("stopped at byte " + std::to_string(r.offset) + " of " + in.name() +
                                ", the session keeps the " + std::to_string(info.length) +
                                " tokens before it");
  }
  const bool done = in.data().empty() && in.at_end();
  std::printf("mnemo ingest: session '%s': %s%lld tokens from %lld bytes of %s (%s); %lld tokens in all%s\n",
              id.c_str(), created ? "created, " : "", static_cast<long long>(appended),
              static_cast<long long>(r.offset - start), in.name().c_str(),
              done ? "all ingested" : ("stopped at byte " + std::to_string(r.offset) + ", run again to resume").c_str(),
              static_cast<long long>(info.length),
              wait ? (", " + std::to_string(static_cast<int64_t>(progress.prefill_rate())) + " tokens/s prefill").c_str()
                   : "");
  std::fflush(stdout);
  return Status::Ok();
}

Status sessions_command(const std::vector<std::string>& args) {
  const auto specs = runtime_flag_specs({});
  MNEMO_ASSIGN_OR_RETURN(Flags f, Flags::parse("sessions", specs, args));
  if (f.has("help")) {
    std::fputs(usage("sessions [list | show ID | delete ID]",
                     "Lists, shows or deletes the persistent sessions of a data dir.", specs)
                   .c_str(),
               stdout);
    return Status::Ok();
  }
  const auto& pos = f.positional();
  const std::string action = pos.empty() ? "list" : pos[0];
  const size_t want = action == "list" ? 1 : 2;
  if (action != "list" && action != "show" && action != "delete") {
    return invalid_argument("mnemo sessions: unknown action '", action, "' (expected list, show ID or delete ID)");
  }
  if (pos.size() > want || (action != "list" && pos.size() < want)) {
    return invalid_argument("mnemo sessions: expected '", action, action == "list" ? "'" : " ID'", ", got ",
                            pos.size(), " arguments");
  }
  MNEMO_ASSIGN_OR_RETURN(RuntimeOptions options, runtime_options_from_flags(f, "sessions"));
  MNEMO_ASSIGN_OR_RETURN(auto rt, Runtime::open(options));
  const std::vector<SessionInfo> all = rt->list_sessions();
  if (action == "list") {
    if (all.empty()) std::printf("no sessions in %s\n", options.data_dir.c_str());
    size_t w = 2;
    for (const auto& s : all) w = std::max(w, s.id.size());
    if (!all.empty()) std::printf("%-*s  %10s  %s\n", static_cast<int>(w), "ID", "TOKENS", "PARENT");
    for (const auto& s : all) {
      std::printf("%-*s  %10lld  %s\n", static_cast<int>(w), s.id.c_str(), static_cast<long long>(s.length),
                  s.parent.empty() ? "-" : s.parent.c_str());
    }
    std::fflush(stdout);
    return Status::Ok();
  }
  const std::string& id = pos[1];
  auto it = std::find_if(all.begin(), all.end(), [&](const SessionInfo& s) { return s.id == id; });
  if (it == all.end()) return not_found("no session '", id, "' in ", options.data_dir);
  const std::string record = record_path(options.data_dir, id);
  if (action == "delete") {
    MNEMO_RETURN_IF_ERROR(rt->delete_session(id));
    std::error_code ec;
    const bool had_record = std::filesystem::remove(record, ec);
    std::filesystem::remove(record + ".tmp", ec);
    std::printf("deleted session '%s' (%lld tokens)%s\n", id.c_str(), static_cast<long long>(it->length),
                had_record ? " and its ingest record" : "");
    std::fflush(stdout);
    return Status::Ok();
  }
  MNEMO_ASSIGN_OR_RETURN(auto s, rt->open_session(id));
  const SessionInfo info = s->info();
  const std::vector<int32_t> tokens = s->tokens();
  std::printf("session  %s\ntokens   %lld (%lld waiting for prefill)\nparent   %s\n", id.c_str(),
              static_cast<long long>(info.length), static_cast<long long>(info.pending_tokens),
              info.parent.empty() ? "-" : info.parent.c_str());
  if (auto rec = read_record(record); rec.ok()) {
    std::printf("ingest   %lld of %s input bytes (%s)\n", static_cast<long long>(rec->offset),
                rec->input_bytes < 0 ? "?" : std::to_string(rec->input_bytes).c_str(), record.c_str());
  }
  // The last 200 characters: decode enough trailing tokens (a character is at most 4 byte tokens).
  const size_t from = tokens.size() - std::min<size_t>(tokens.size(), 800);
  std::string text = rt->tokenizer().decode(std::span(tokens).subspan(from), {.continuation = from > 0});
  size_t cut = text.size();
  for (int chars = 0; cut > 0 && chars < 200;) {
    if ((static_cast<uint8_t>(text[--cut]) & 0xC0) != 0x80) ++chars;
  }
  std::printf("--- last %s characters ---\n%s\n", cut > 0 ? "200" : "(all)", text.c_str() + cut);
  std::fflush(stdout);
  return Status::Ok();
}

Status run_session_command(const Flags& f, const GenerateOptions& options) {
  for (const char* flag : {"random-weights", "seed-weights", "tokenizer", "no-bos", "bounded-window"}) {
    if (f.has(flag)) {
      return invalid_argument("mnemo run: --", flag, " does not apply with --session (the session's runtime ",
                              "loads --model with its own tokenizer and BOS)");
    }
  }
  if (!f.has("session")) return invalid_argument("mnemo run: --session ID is required with --data-dir");
  MNEMO_ASSIGN_OR_RETURN(RuntimeOptions runtime_options, runtime_options_from_flags(f, "run"));
  const std::string id = f.get("session");
  MNEMO_ASSIGN_OR_RETURN(auto rt, Runtime::open(runtime_options));
  bool created = false;
  MNEMO_ASSIGN_OR_RETURN(auto s, open_or_create(*rt, id, &created));
  if (created) std::fprintf(stderr, "mnemo run: created session '%s'\n", id.c_str());
  const int64_t before = s->info().length;
  MNEMO_RETURN_IF_ERROR(s->append_text(f.get("prompt")).get());
  const int64_t after_prompt = s->info().length;
  GenerateRequest request;
  request.max_new_tokens = options.max_new_tokens;
  request.sampling = options.sampling;
  request.ignore_eos = f.has("ignore-eos");
  const auto t0 = Clock::now();
  auto result = s->generate(request, [](const TokenEvent& e) {
                   std::fwrite(e.text.data(), 1, e.text.size(), stdout);
                   std::fflush(stdout);
                 }).get();
  std::fputc('\n', stdout);
  std::fflush(stdout);
  MNEMO_RETURN_IF_ERROR(result.status());
  if (f.has("stats")) {
    std::fprintf(stderr, "mnemo run: session '%s': %lld prompt tokens, %zu generated (%s) in %.3f s; %lld -> %lld tokens\n",
                 id.c_str(), static_cast<long long>(after_prompt - before), result->tokens.size(),
                 finish_reason_name(result->reason), seconds_since(t0), static_cast<long long>(before),
                 static_cast<long long>(s->info().length));
  }
  return Status::Ok();
}

}  // namespace mnemo::cli
