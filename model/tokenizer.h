// Tokenizer: sentencepiece models (tokenizer.model: Llama 1/2, Mistral, MiniCPM) and a streaming
// decoder for generated tokens.
//
// Key decisions:
// - Encoding is sentencepiece's own. Decoding is ours (StreamDecoder; decode() is one stream run)
//   so that the stream and the one-shot result agree by construction; tests check both against
//   sentencepiece's Decode on golden texts and random id sequences (byte tokens, controls, <unk>).
// - Ids outside [0, vocab_size()) never reach sentencepiece (it aborts on them); they render like
//   <unk>.
// - BOS/EOS: the caller's TokenizerOptions, else tokenizer_config.json next to the model, else the
//   sentencepiece model.
// No sentencepiece types in this header (pimpl).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mnemo {

// Where BOS/EOS and the add-BOS default come from. Empty fields defer to tokenizer_config.json
// (bos_token/eos_token text looked up in the vocabulary, add_bos_token), then to the model.
struct TokenizerOptions {
  // BOS id, e.g. ModelConfig::bos_token_ids[0]; must be in [0, vocab). Default: none (defer).
  std::optional<int64_t> bos_id = std::nullopt;
  // EOS ids, e.g. ModelConfig::eos_token_ids; each in [0, vocab). Default: empty (defer).
  std::vector<int64_t> eos_ids = {};
  // Whether encode(text) prepends BOS. Default: none (tokenizer_config.json, else true).
  std::optional<bool> add_bos = std::nullopt;
  // Read tokenizer_config.json from the model's directory when it exists. Default: true.
  bool read_tokenizer_config = true;
};

// How decoding renders special tokens (control pieces such as <s> and </s>, and <unk>).
enum class SpecialTokens : uint8_t {
  kInvisible,  // as sentencepiece: controls render nothing (but still end a run of byte tokens),
               // <unk> renders " ⁇ "
  kSkip,       // controls, <unk>, BOS and EOS are dropped before decoding, as if never produced
  kRender,     // controls and <unk> render their piece text, which counts as text before a
               // leading space: {<s>, ▁Hi} -> "<s> Hi" (as transformers' decode)
};

struct DecodeOptions {
  SpecialTokens special = SpecialTokens::kInvisible;  // Default: kInvisible
  // The ids continue text shown earlier, so a leading "▁" on the first piece is a real space.
  // Default: false (sentencepiece drops it: decode({"▁Hello"}) == "Hello").
  bool continuation = false;
};

// Immutable after load(): const methods may be called from several threads at once.
class Tokenizer {
 public:
  // `model_dir_or_file`: a directory holding tokenizer.model, or the .model file itself (its
  // directory is searched for tokenizer_config.json). Errors: NotFound naming the path looked at;
  // Corruption naming the file when it is not a complete sentencepiece model; InvalidArgument for
  // out-of-range option ids or a malformed tokenizer_config.json.
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& model_dir_or_file,
                                                 const TokenizerOptions& options = {});
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text` (any bytes; invalid UTF-8 is encoded as sentencepiece does). Text that
  // looks like a special token ("<s>") is plain text: control ids are never produced. add_bos
  // prepends bos_id() when there is one.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  std::vector<int32_t> encode(std::string_view text) const {
    return encode(text, add_bos_default());
  }

  // Text of `ids`. With default options equal to sentencepiece's Decode (for in-range ids).
  std::string decode(std::span<const int32_t> ids, const DecodeOptions& options = {}) const;

  // The piece text ("▁Hello", "<0x0A>", "</s>"); "" for an id outside [0, vocab_size()).
  const std::string& piece(int32_t id) const;
  // The id of a piece, or -1 when the vocabulary has no such piece.
  int32_t piece_to_id(std::string_view piece) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;                       // -1: none
  const std::vector<int32_t>& eos_ids() const;  // may be empty
  bool is_eos(int32_t id) const;
  bool add_bos_default() const;
  // Control pieces, <unk>, and the BOS/EOS ids. False outside the vocabulary.
  bool is_special(int32_t id) const;
  // Byte-fallback pieces <0x00>..<0xFF>.
  bool is_byte(int32_t id) const;
  const std::string& model_path() const;

 private:
  friend class StreamDecoder;
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns generated ids into text as it becomes complete. Every returned chunk is valid UTF-8 and no
// character is split across chunks (byte tokens <0xE2><0x82><0xAC> yield "" "" "€"). The
// concatenation of every push() and the final flush() equals tokenizer.decode(ids, options).
// The tokenizer must outlive the decoder. Not thread-safe; one decoder per stream.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options = {});

  // Text completed by `id` (often "", e.g. inside a multi-byte character).
  std::string push(int32_t id);
  // Ends the stream: bytes of an unfinished character become U+FFFD each (as sentencepiece does),
  // and the decoder is reset for a new stream.
  std::string flush();
  // Drops pending bytes and starts a new stream.
  void reset();
  // Bytes held back waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  std::string drain(bool final);

  const Tokenizer::Impl* tok_;
  DecodeOptions options_;
  std::string pending_;        // bytes of byte tokens not yet emitted
  bool expect_bos_ws_ = true;  // sentencepiece's is_bos_ws: the next "▁" at the start is dropped
  bool bos_ws_seen_ = false;   // the last piece had its leading "▁" dropped
  bool emitted_ = false;       // any text returned since the stream started
};

}  // namespace mnemo
