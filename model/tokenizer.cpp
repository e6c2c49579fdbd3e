// Tokenizer over sentencepiece, and the streaming decoder that replicates sentencepiece's Decode
// (0.1.97, src/sentencepiece_processor.cc) one id at a time:
// - byte tokens collect into runs; a run is cut into characters by sentencepiece's DecodeUTF8
//   rules, and each byte that does not start a valid character becomes one U+FFFD (so E2 82 at the
//   end is two U+FFFD, not one as WHATWG would have it); any non-byte id, controls included, ends a
//   run;
// - the first piece's leading "▁" is dropped (add_dummy_prefix) until some text was produced or a
//   piece had it dropped; controls render "" and <unk> its surface " ⁇ ".
#include "model/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/file.h"
#include "core/log.h"
#include "model/json_util.h"

namespace mnemo {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum class PieceKind : uint8_t { kNormal, kControl, kUnknown, kByte };

bool is_trail(uint8_t b) { return (b & 0xC0) == 0x80; }

// Length of the character starting s[0..n) if sentencepiece's DecodeUTF8 accepts it, else 0
// (overlong forms, surrogates, > U+10FFFF and short input are rejected).
int utf8_char_len(const uint8_t* s, size_t n) {
  const uint8_t b0 = s[0];
  if (b0 < 0x80) return 1;
  const auto valid = [](uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); };
  if ((b0 & 0xE0) == 0xC0) {
    if (n < 2 || !is_trail(s[1])) return 0;
    const uint32_t cp = ((b0 & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    return cp >= 0x80 && valid(cp) ? 2 : 0;
  }
  if ((b0 & 0xF0) == 0xE0) {
    if (n < 3 || !is_trail(s[1]) || !is_trail(s[2])) return 0;
    const uint32_t cp = ((b0 & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    return cp >= 0x800 && valid(cp) ? 3 : 0;
  }
  if ((b0 & 0xF8) == 0xF0) {
    if (n < 4 || !is_trail(s[1]) || !is_trail(s[2]) || !is_trail(s[3])) return 0;
    const uint32_t cp =
        ((b0 & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return cp >= 0x10000 && valid(cp) ? 4 : 0;
  }
  return 0;
}

// Whether s[0..n), shorter than its lead byte announces, can still become a valid character.
// Only the lead and the first trail byte decide the code point's range, so later bytes are
// filled with 0x80 and the first trail byte, if missing, is tried over all 64 values.
bool can_complete(const uint8_t* s, size_t n) {
  const uint8_t b0 = s[0];
  const size_t need = (b0 & 0xE0) == 0xC0   ? 2
                      : (b0 & 0xF0) == 0xE0 ? 3
                      : (b0 & 0xF8) == 0xF0 ? 4
                                            : 0;
  if (n >= need) return false;
  uint8_t buf[4] = {b0, 0x80, 0x80, 0x80};
  for (size_t i = 1; i < n; ++i) {
    if (!is_trail(s[i])) return false;
    buf[i] = s[i];
  }
  if (n >= 2) return utf8_char_len(buf, need) > 0;
  for (int b1 = 0x80; b1 <= 0xBF; ++b1) {
    buf[1] = static_cast<uint8_t>(b1);
    if (utf8_char_len(buf, need) > 0) return true;
  }
  return false;
}

// Walks the top-level protobuf fields of a ModelProto. Truncation at a field boundary leaves a
// message sentencepiece accepts (a file cut before normalizer_spec loads with other defaults:
// extra whitespace removed), so require pieces (1), trainer_spec (2) and normalizer_spec (3),
// which every trainer writes, and well-formed fields up to the last byte.
Status check_model_structure(std::string_view bytes, const std::string& path) {
  const auto varint = [&](size_t* pos, uint64_t* out) {
    *out = 0;
    for (int shift = 0; shift < 64 && *pos < bytes.size(); shift += 7) {
      const uint8_t c = static_cast<uint8_t>(bytes[(*pos)++]);
      *out |= uint64_t{c & 0x7Fu} << shift;
      if (c < 0x80) return true;
    }
    return false;
  };
  bool seen[4] = {false, false, false, false};
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t start = pos;
    uint64_t tag = 0, len = 0;
    bool ok = varint(&pos, &tag) && (tag >> 3) != 0;
    const uint64_t wire = tag & 7;  // 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32
    if (wire == 0 || wire == 2) {
      ok = ok && varint(&pos, &len);
    } else {
      ok = ok && (wire == 1 || wire == 5);
      len = wire == 1 ? 8 : 4;
    }
    if (ok && wire != 0) {  // skip the payload; a varint's value is its own payload
      ok = len <= bytes.size() - pos;
      if (ok) pos += len;
    }
    if (!ok) {
      return corruption(path, ": not a sentencepiece model (malformed or truncated field at byte ",
                        start, " of ", bytes.size(), ")");
    }
    if ((tag >> 3) <= 3) seen[tag >> 3] = true;
  }
  const char* names[4] = {"", "pieces", "trainer_spec", "normalizer_spec"};
  const int missing = !seen[1] ? 1 : !seen[2] ? 2 : !seen[3] ? 3 : 0;
  if (missing == 0) return Status::Ok();
  return corruption(path, ": not a complete sentencepiece model (", bytes.size(), " bytes, no ",
                    names[missing], "; truncated?)");
}

// "<s>" or {"content": "<s>"}; "" when absent or null.
Status read_token_text(const json_util::Fields& f, const char* key, std::string* out) {
  const json_util::json::value* v = f.get(key);
  if (!v) return Status::Ok();
  if (v->is_string()) {
    *out = std::string(v->get_string());
    return Status::Ok();
  }
  if (v->is_object()) return f.nested(v->get_object(), key).read("content", out);
  return f.type_error(key, "string or object", *v);
}

}  // namespace

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
  std::vector<std::string> pieces;    // [vocab] piece text
  std::vector<std::string> surfaces;  // [vocab] normal pieces with "▁" -> ' '
  std::vector<PieceKind> kinds;       // [vocab]
  std::vector<uint8_t> bytes;         // [vocab] value of byte pieces
  std::string unk_surface;            // what sentencepiece renders for <unk>
  std::string unk_piece = "<unk>";
  int32_t bos = -1;
  std::vector<int32_t> eos;
  bool add_bos = true;
  bool strip_first_ws = true;         // add_dummy_prefix: the first piece's "▁" is dropped
  bool strip_all_leading_ws = false;  // remove_extra_whitespaces: every leading "▁" is dropped

  int32_t vocab() const { return static_cast<int32_t>(pieces.size()); }
  bool in_range(int32_t id) const { return id >= 0 && id < vocab(); }
  bool is_eos(int32_t id) const { return std::find(eos.begin(), eos.end(), id) != eos.end(); }
  bool special(int32_t id) const {
    if (!in_range(id)) return false;
    return kinds[id] == PieceKind::kControl || kinds[id] == PieceKind::kUnknown || id == bos ||
           is_eos(id);
  }
  std::string sp_decode(const std::vector<int>& ids) const {
    std::string out;
    sp.Decode(ids, &out).IgnoreError();
    return out;
  }
  Status build_tables();
  Status read_tokenizer_config(const std::string& config_path);
};

Status Tokenizer::Impl::build_tables() {
  const int n = sp.GetPieceSize();
  pieces.resize(n);
  surfaces.resize(n);
  kinds.resize(n);
  bytes.assign(n, 0);
  int32_t ws_piece = -1;  // a normal piece "▁x" (x not "▁") for probing the leading-space rule
  for (int id = 0; id < n; ++id) {
    pieces[id] = sp.IdToPiece(id);
    const std::string& p = pieces[id];
    kinds[id] = sp.IsControl(id)   ? PieceKind::kControl
                : sp.IsUnknown(id) ? PieceKind::kUnknown
                : sp.IsByte(id)    ? PieceKind::kByte
                                   : PieceKind::kNormal;
    if (kinds[id] == PieceKind::kByte) {
      unsigned value = 0;
      if (p.size() != 6 || std::sscanf(p.c_str(), "<0x%2X>", &value) != 1) {
        return corruption(path, ": byte piece ", id, " is '", p, "', expected <0xHH>");
      }
      bytes[id] = static_cast<uint8_t>(value);
    } else if (kinds[id] == PieceKind::kNormal) {
      std::string& s = surfaces[id];
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
          s += ' ';
          i += kSpaceSymbol.size();
        } else {
          s += p[i++];
        }
      }
      if (ws_piece < 0 && s.size() > 1 && s[0] == ' ' && s[1] != ' ') ws_piece = id;
    }
  }
  if (sp.unk_id() >= 0 && sp.unk_id() < n) {
    unk_surface = sp_decode({sp.unk_id()});
    unk_piece = pieces[sp.unk_id()];
  }
  // The normalizer flags are not in the public API; ask Decode how it treats a leading "▁".
  if (ws_piece >= 0) {
    strip_first_ws = !sp_decode({ws_piece}).starts_with(' ');
    const int space = sp.PieceToId(kSpaceSymbol);
    if (strip_first_ws && space >= 0 && pieces[space] == kSpaceSymbol &&
        kinds[space] == PieceKind::kNormal) {
      strip_all_leading_ws = sp_decode({space, ws_piece}) == sp_decode({ws_piece});
    }
  }
  return Status::Ok();
}

Status Tokenizer::Impl::read_tokenizer_config(const std::string& config_path) {
  MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(config_path));
  MNEMO_ASSIGN_OR_RETURN(json_util::json::value root, json_util::parse(text, config_path));
  if (!root.is_object()) return invalid_argument(config_path, ": expected a JSON object");
  const json_util::Fields f(root.get_object(), config_path);
  MNEMO_RETURN_IF_ERROR(f.read("add_bos_token", &add_bos));
  for (const char* key : {"bos_token", "eos_token"}) {
    std::string token;
    MNEMO_RETURN_IF_ERROR(read_token_text(f, key, &token));
    if (token.empty()) continue;
    const int id = sp.PieceToId(token);  // unknown pieces map to unk_id
    if (id < 0 || id >= vocab() || pieces[id] != token) {
      MNEMO_LOG(kWarning) << config_path << ": " << key << " '" << token << "' is not a piece of "
                          << path << "; keeping the model's own";
      continue;
    }
    if (key[0] == 'b') bos = id;
    if (key[0] == 'e') eos = {id};
  }
  return Status::Ok();
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& model_dir_or_file,
                                                   const TokenizerOptions& options) {
  namespace fs = std::filesystem;
  auto impl = std::make_unique<Impl>();
  fs::path dir;
  if (is_directory(model_dir_or_file)) {
    dir = model_dir_or_file;
    impl->path = (dir / "tokenizer.model").string();
  } else {
    impl->path = model_dir_or_file;
    dir = fs::path(model_dir_or_file).parent_path();
  }
  // sentencepiece's Load throws on a directory, so check first.
  if (!file_exists(impl->path) || is_directory(impl->path)) {
    return not_found("tokenizer: no sentencepiece model at '", impl->path, "'");
  }
  MNEMO_ASSIGN_OR_RETURN(std::string bytes, read_text_file(impl->path));
  MNEMO_RETURN_IF_ERROR(check_model_structure(bytes, impl->path));
  const auto st = impl->sp.LoadFromSerializedProto(bytes);
  if (!st.ok()) {
    return corruption(impl->path, ": not a valid sentencepiece model: ", st.ToString());
  }
  MNEMO_RETURN_IF_ERROR(impl->build_tables());

  impl->bos = impl->sp.bos_id();
  if (impl->sp.eos_id() >= 0) impl->eos = {impl->sp.eos_id()};
  const std::string config_path = (dir / "tokenizer_config.json").string();
  if (options.read_tokenizer_config && file_exists(config_path)) {
    MNEMO_RETURN_IF_ERROR(impl->read_tokenizer_config(config_path));
  }
  const int64_t vocab = impl->vocab();
  const auto check = [&](const char* field, int64_t id) {
    if (id >= 0 && id < vocab) return Status::Ok();
    return invalid_argument("tokenizer ", impl->path, ": TokenizerOptions.", field, " = ", id,
                            " is outside the vocabulary [0, ", vocab, ")");
  };
  if (options.bos_id) {
    MNEMO_RETURN_IF_ERROR(check("bos_id", *options.bos_id));
    impl->bos = static_cast<int32_t>(*options.bos_id);
  }
  if (!options.eos_ids.empty()) {
    impl->eos.clear();
    for (int64_t id : options.eos_ids) {
      MNEMO_RETURN_IF_ERROR(check("eos_ids", id));
      impl->eos.push_back(static_cast<int32_t>(id));
    }
  }
  if (options.add_bos) impl->add_bos = *options.add_bos;
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(text, &ids);
  if (!st.ok()) {  // only when no model is loaded, which load() rules out
    MNEMO_LOG(kError) << "tokenizer " << impl_->path << ": encode failed: " << st.ToString();
    ids.clear();
  }
  std::vector<int32_t> out;
  out.reserve(ids.size() + 1);
  if (add_bos && impl_->bos >= 0) out.push_back(impl_->bos);
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& options) const {
  StreamDecoder decoder(*this, options);
  std::string out;
  for (int32_t id : ids) out += decoder.push(id);
  return out + decoder.flush();
}

const std::string& Tokenizer::piece(int32_t id) const {
  static const std::string kEmpty;
  return impl_->in_range(id) ? impl_->pieces[id] : kEmpty;
}

int32_t Tokenizer::piece_to_id(std::string_view piece) const {
  const int id = impl_->sp.PieceToId(piece);
  return impl_->in_range(id) && impl_->pieces[id] == piece ? id : -1;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab(); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos; }
bool Tokenizer::is_eos(int32_t id) const { return impl_->is_eos(id); }
bool Tokenizer::add_bos_default() const { return impl_->add_bos; }
bool Tokenizer::is_special(int32_t id) const { return impl_->special(id); }
bool Tokenizer::is_byte(int32_t id) const {
  return impl_->in_range(id) && impl_->kinds[id] == PieceKind::kByte;
}
const std::string& Tokenizer::model_path() const { return impl_->path; }

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options)
    : tok_(tokenizer.impl_.get()), options_(options) {
  reset();
}

void StreamDecoder::reset() {
  pending_.clear();
  expect_bos_ws_ = !options_.continuation;
  bos_ws_seen_ = false;
  emitted_ = false;
}

std::string StreamDecoder::drain(bool final) {
  std::string out;
  const auto* s = reinterpret_cast<const uint8_t*>(pending_.data());
  size_t pos = 0;
  while (pos < pending_.size()) {
    const size_t left = pending_.size() - pos;
    const int len = utf8_char_len(s + pos, left);
    if (len > 0) {
      out.append(pending_, pos, len);
      pos += len;
    } else if (!final && can_complete(s + pos, left)) {
      break;  // wait for the rest of the character
    } else {
      out += kReplacement;  // one per byte that starts no valid character, as sentencepiece
      ++pos;
    }
  }
  pending_.erase(0, pos);
  emitted_ = emitted_ || !out.empty();
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& t = *tok_;
  const bool in_range = t.in_range(id);
  if (options_.special == SpecialTokens::kSkip && (!in_range || t.special(id))) return "";
  const PieceKind kind = in_range ? t.kinds[id] : PieceKind::kUnknown;
  if (kind == PieceKind::kByte) {
    pending_ += static_cast<char>(t.bytes[id]);
    return drain(false);
  }
  // Any other id ends the run of byte tokens, then follows sentencepiece's is_bos_ws update.
  std::string out = drain(true);
  if (bos_ws_seen_ || emitted_) expect_bos_ws_ = false;
  bos_ws_seen_ = false;
  const bool render = options_.special == SpecialTokens::kRender;
  std::string_view surface;
  if (kind == PieceKind::kControl) {
    surface = render ? std::string_view(t.pieces[id]) : std::string_view();
  } else if (kind == PieceKind::kUnknown) {
    surface = render ? (in_range ? t.pieces[id] : t.unk_piece) : t.unk_surface;
  } else {
    surface = t.surfaces[id];
    if (expect_bos_ws_ && t.strip_first_ws && t.pieces[id].starts_with(kSpaceSymbol)) {
      surface.remove_prefix(1);  // "▁" became one ' '
      bos_ws_seen_ = !t.strip_all_leading_ws;
    }
  }
  out += surface;
  emitted_ = emitted_ || !out.empty();
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = drain(true);
  reset();
  return out;
}

}  // namespace mnemo
