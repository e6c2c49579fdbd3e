// Internal: how sessions live in the store's `meta` column family (with a data_dir).
//
//   s/<id>                 → "seq=<N>;parent=<id>"      the session and its KV sequence id
//   t/<id>/<offset:016x>   → int32 little-endian ids   the token log, one record per append / step
//   l/<id>                 → "<length>:" + f32 logits  the last logits, written when the session idles
//   n                      → next sequence id
// An append is acknowledged once its token record is written with sync (WAL fsync): after kill -9
// the log has every acknowledged token, and KV not yet durable is recomputed from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "memory/store.h"

namespace mnemo::persist {

struct SessionRecord {
  std::string id;
  SequenceId seq = 0;
  std::string parent;
};

// Session ids: 1–128 characters of [A-Za-z0-9._:-] (they are parts of store keys and URLs).
Status validate_session_id(const std::string& id);

Result<SequenceId> next_sequence_id(KvStore& store);
Status write_session(KvStore& store, const SessionRecord& record);
Result<SessionRecord> read_session(const KvStore& store, const std::string& id);  // kNotFound
Result<std::vector<SessionRecord>> list_sessions(const KvStore& store);
// Deletes the session's record, token log and logits (not its KV: drop the sequence for that).
Status delete_session(KvStore& store, const std::string& id);

Status append_tokens(KvStore& store, const std::string& id, int64_t offset, const std::vector<int32_t>& ids,
                     bool sync);
// The whole log in order; a gap or overlap between records is kCorruption naming the offset.
Result<std::vector<int32_t>> read_tokens(const KvStore& store, const std::string& id);

Status write_logits(KvStore& store, const std::string& id, int64_t length, const Tensor& logits);
// Logits stored for exactly `length` tokens, or an undefined Tensor when none match.
Tensor read_logits(const KvStore& store, const std::string& id, int64_t length);

}  // namespace mnemo::persist
