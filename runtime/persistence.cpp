#include "runtime/persistence.h"

#include <cstdio>
#include <cstring>

namespace mnemo::persist {
namespace {

std::string session_key(const std::string& id) { return "s/" + id; }
std::string tokens_prefix(const std::string& id) { return "t/" + id + "/"; }
std::string logits_key(const std::string& id) { return "l/" + id; }

std::string hex16(int64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

Status validate_session_id(const std::string& id) {
  if (id.empty() || id.size() > 128) {
    return invalid_argument("session id '", id, "': expected 1 to 128 characters, got ", id.size());
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == ':' || c == '-';
    if (!ok) return invalid_argument("session id '", id, "': only letters, digits and . _ : - are allowed");
  }
  return Status::Ok();
}

Result<SequenceId> next_sequence_id(KvStore& store) {
  SequenceId next = 1;
  Result<std::string> v = store.get_meta("n");
  if (v.ok()) next = std::strtoull(v->c_str(), nullptr, 10);
  MNEMO_RETURN_IF_ERROR(store.put_meta("n", std::to_string(next + 1), /*sync=*/true));
  return next;
}

Status write_session(KvStore& store, const SessionRecord& r) {
  return store.put_meta(session_key(r.id), "seq=" + std::to_string(r.seq) + ";parent=" + r.parent, /*sync=*/true);
}

namespace {
Result<SessionRecord> parse_session(const std::string& id, const std::string& value) {
  SessionRecord r;
  r.id = id;
  const size_t semi = value.find(';');
  if (value.rfind("seq=", 0) != 0 || semi == std::string::npos || value.compare(semi + 1, 7, "parent=") != 0) {
    return corruption("session '", id, "': malformed record '", value, "'");
  }
  r.seq = std::strtoull(value.c_str() + 4, nullptr, 10);
  r.parent = value.substr(semi + 8);
  return r;
}
}  // namespace

Result<SessionRecord> read_session(const KvStore& store, const std::string& id) {
  Result<std::string> v = store.get_meta(session_key(id));
  if (!v.ok()) {
    if (v.status().code() == StatusCode::kNotFound) return not_found("unknown session '", id, "'");
    return v.status();
  }
  return parse_session(id, *v);
}

Result<std::vector<SessionRecord>> list_sessions(const KvStore& store) {
  std::vector<SessionRecord> out;
  Status bad;
  MNEMO_RETURN_IF_ERROR(store.scan_meta("s/", [&](const std::string& key, const std::string& value) {
    Result<SessionRecord> r = parse_session(key.substr(2), value);
    if (r.ok()) {
      out.push_back(*r);
    } else if (bad.ok()) {
      bad = r.status();
    }
  }));
  MNEMO_RETURN_IF_ERROR(bad);
  return out;
}

Status delete_session(KvStore& store, const std::string& id) {
  std::vector<std::string> keys;
  MNEMO_RETURN_IF_ERROR(
      store.scan_meta(tokens_prefix(id), [&](const std::string& key, const std::string&) { keys.push_back(key); }));
  for (const std::string& k : keys) MNEMO_RETURN_IF_ERROR(store.delete_meta(k));
  MNEMO_RETURN_IF_ERROR(store.delete_meta(logits_key(id)));
  return store.delete_meta(session_key(id));
}

Status append_tokens(KvStore& store, const std::string& id, int64_t offset, const std::vector<int32_t>& ids,
                     bool sync) {
  if (ids.empty()) return Status::Ok();
  std::string value(ids.size() * 4, '\0');
  std::memcpy(value.data(), ids.data(), value.size());  // little-endian hosts only (x86-64, arm64)
  return store.put_meta(tokens_prefix(id) + hex16(offset), value, sync);
}

Result<std::vector<int32_t>> read_tokens(const KvStore& store, const std::string& id) {
  std::vector<int32_t> out;
  Status bad;
  const std::string prefix = tokens_prefix(id);
  MNEMO_RETURN_IF_ERROR(store.scan_meta(prefix, [&](const std::string& key, const std::string& value) {
    const int64_t offset = static_cast<int64_t>(std::strtoull(key.c_str() + prefix.size(), nullptr, 16));
    if (!bad.ok()) return;
    if (offset != static_cast<int64_t>(out.size()) || value.size() % 4 != 0) {
      bad = corruption("session '", id, "': token log record at offset ", offset, " does not follow the ",
                       out.size(), " tokens before it");
      return;
    }
    const size_t n = value.size() / 4;
    out.resize(out.size() + n);
    std::memcpy(out.data() + out.size() - n, value.data(), value.size());
  }));
  MNEMO_RETURN_IF_ERROR(bad);
  return out;
}

Status write_logits(KvStore& store, const std::string& id, int64_t length, const Tensor& logits) {
  std::string value = std::to_string(length) + ":";
  const size_t head = value.size();
  value.resize(head + logits.nbytes());
  std::memcpy(value.data() + head, logits.raw(), logits.nbytes());
  return store.put_meta(logits_key(id), value, /*sync=*/false);
}

Tensor read_logits(const KvStore& store, const std::string& id, int64_t length) {
  Result<std::string> v = store.get_meta(logits_key(id));
  if (!v.ok()) return Tensor();
  const size_t colon = v->find(':');
  if (colon == std::string::npos || std::strtoll(v->c_str(), nullptr, 10) != length) return Tensor();
  const size_t bytes = v->size() - colon - 1;
  if (bytes % 4 != 0 || bytes == 0) return Tensor();
  Tensor t = Tensor::zeros({1, static_cast<int64_t>(bytes / 4)});
  std::memcpy(t.raw(), v->data() + colon + 1, bytes);
  return t;
}

}  // namespace mnemo::persist
