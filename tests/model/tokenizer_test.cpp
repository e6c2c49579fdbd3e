// Tokenizer tests against the real Llama 2 tokenizer.model: golden ids (tests/data and inline ids
// checked with spm_encode), decode and the stream decoder against sentencepiece's own Decode,
// special-token options, BOS/EOS sources, and missing or corrupt files.
#include "model/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/file.h"
#include "tests/model/scratch_dir.h"

namespace mnemo {
namespace {

namespace fs = std::filesystem;
using testing_util::scratch_dir;

const std::string kModelPath = "../shared/models/llama2-tokenizer/tokenizer.model";
const std::string kGoldenPath = "tests/data/tokenizer/llama2_golden.json";
constexpr int32_t kByte0 = 3;  // id of <0x00>

std::unique_ptr<Tokenizer> load_llama2(const TokenizerOptions& options = {}) {
  auto t = Tokenizer::load(kModelPath, options);
  EXPECT_TRUE(t.ok()) << "the Llama 2 tokenizer is needed at " << fs::absolute(kModelPath)
                      << " (relative to the project root, the test's cwd): "
                      << t.status().to_string();
  return t.ok() ? std::move(t).value() : nullptr;
}

// Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<uint8_t>(s[i]);
    const size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : b & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return false;
    i += n;
  }
  return true;
}

// Streams `ids` one at a time; every chunk must be valid UTF-8. Returns the concatenation.
std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids,
                          DecodeOptions options = {}) {
  StreamDecoder decoder(tok, options);
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string chunk = decoder.push(ids[i]);
    EXPECT_TRUE(valid_utf8(chunk)) << "chunk after id #" << i << " (" << ids[i] << ")";
    out += chunk;
  }
  const std::string tail = decoder.flush();
  EXPECT_TRUE(valid_utf8(tail)) << "flush";
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  return out + tail;
}

std::string sp_decode(const std::vector<int32_t>& ids) {
  static sentencepiece::SentencePieceProcessor* sp = [] {
    auto* p = new sentencepiece::SentencePieceProcessor;
    EXPECT_TRUE(p->Load(kModelPath).ok());
    return p;
  }();
  std::string out;
  EXPECT_TRUE(sp->Decode(std::vector<int>(ids.begin(), ids.end()), &out).ok());
  return out;
}

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(Tokenizer, LoadsLlama2WithItsSpecialTokens) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
  EXPECT_TRUE(tok->add_bos_default());
  EXPECT_EQ(tok->piece(1), "<s>");
  EXPECT_EQ(tok->piece(29871), "\xE2\x96\x81");
  EXPECT_EQ(tok->piece(-1), "");
  EXPECT_EQ(tok->piece(32000), "");
  EXPECT_EQ(tok->piece_to_id("</s>"), 2);
  EXPECT_EQ(tok->piece_to_id("no such piece"), -1);
  EXPECT_TRUE(tok->is_special(0) && tok->is_special(1) && tok->is_special(2));
  EXPECT_FALSE(tok->is_special(450) || tok->is_special(32000));
  EXPECT_TRUE(tok->is_byte(kByte0 + 0x41) && !tok->is_byte(450));
}

// Ids checked with spm_encode --model=../shared/models/llama2-tokenizer/tokenizer.model.
TEST(Tokenizer, EncodesInlineCasesLikeSpmEncode) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"Once upon a time", {9038, 2501, 263, 931}},
      {"Hello 世界 🚀 €5", {15043, 29871, 30793, 30967, 29871, 243, 162, 157, 131, 25540, 29945}},
      {"I paid 1999 dollars in 2024",
       {306, 12530, 29871, 29896, 29929, 29929, 29929, 17208, 297, 29871, 29906, 29900, 29906,
        29946}},
      {"a  b   c    d", {263, 29871, 289, 259, 274, 1678, 270}},
      {"<s>hi</s>", {529, 29879, 29958, 2918, 829, 29879, 29958}},
      {"ǅ𝔘ℕ", {29871, 202, 136, 243, 160, 151, 155, 30347}},
      {"line\n\ttab\r\n", {1196, 13, 12, 3891, 30004, 13}},  // python sentencepiece 0.1.97
      {"", {}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(tok->encode(text, false), ids) << text;
    EXPECT_EQ(tok->decode(ids), text);
  }
  std::vector<int32_t> with_bos = {1, 9038, 2501, 263, 931};
  EXPECT_EQ(tok->encode("Once upon a time", true), with_bos);
  EXPECT_EQ(tok->encode("Once upon a time"), with_bos);  // add_bos_token defaults to true
  EXPECT_EQ(tok->encode("", true), std::vector<int32_t>{1});
}

TEST(Tokenizer, MatchesEveryGoldenEntryAndRoundTrips) {
  if (!file_exists(kGoldenPath)) GTEST_SKIP() << kGoldenPath << " not present";
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  auto text = read_text_file(kGoldenPath);
  ASSERT_TRUE(text.ok()) << text.status().to_string();
  const boost::json::array entries = boost::json::parse(*text).as_array();
  ASSERT_GT(entries.size(), 10u);
  for (const auto& e : entries) {
    const std::string s(e.at("text").as_string());
    std::vector<int32_t> want;
    for (const auto& id : e.at("ids").as_array())
      want.push_back(static_cast<int32_t>(id.as_int64()));
    const std::vector<int32_t> got = tok->encode(s, false);
    EXPECT_EQ(got, want) << "text: " << s;
    // "▁" in the input is the space symbol itself: it comes back as ' '.
    std::string expect;
    for (size_t i = 0; i < s.size(); ++i) {
      const bool space_symbol = s.compare(i, 3, "\xE2\x96\x81") == 0;
      expect += space_symbol ? ' ' : s[i];
      if (space_symbol) i += 2;
    }
    EXPECT_EQ(tok->decode(got), expect);
    EXPECT_EQ(tok->decode(got), sp_decode(got));
    EXPECT_EQ(stream_decode(*tok, got), expect) << "text: " << s;
  }
}

// Byte tokens arrive one per id; a character is only returned when complete.
TEST(StreamDecoder, HoldsBackPartialCharacters) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  StreamDecoder d(*tok);
  EXPECT_EQ(d.push(450), "The");  // "▁The": the leading space is dropped at the start
  EXPECT_EQ(d.push(kByte0 + 0xE2), "");
  EXPECT_EQ(d.push(kByte0 + 0x82), "");
  EXPECT_EQ(d.pending_bytes(), 2u);
  EXPECT_EQ(d.push(kByte0 + 0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(d.push(kByte0 + 0xF0), "");
  EXPECT_EQ(d.push(450), "\xEF\xBF\xBD The");  // an unfinished character ends as U+FFFD
  EXPECT_EQ(d.flush(), "");
  EXPECT_EQ(d.push(450), "The");  // flush started a new stream
}

// sentencepiece writes one U+FFFD per byte that starts no valid character (E2 82 -> two).
TEST(StreamDecoder, InvalidBytesBecomeReplacementCharactersLikeSentencepiece) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const std::vector<std::vector<int>> byte_runs = {{0xE2, 0x82},
                                                   {0x82},
                                                   {0x82, 0x41},
                                                   {0xE2, 0x82, 0x41},
                                                   {0xC0, 0x80},
                                                   {0xED, 0xA0, 0x80},
                                                   {0xF4, 0x90, 0x80, 0x80},
                                                   {0xF8},
                                                   {0xFF, 0xE2, 0x82, 0xAC},
                                                   {0xF0, 0x9F, 0x9A},
                                                   {0xE0, 0x9F},
                                                   {0xEF, 0xBF, 0xBD}};
  for (const auto& run : byte_runs) {
    std::vector<int32_t> ids;
    for (int b : run) ids.push_back(kByte0 + b);
    for (const auto& wrap : {std::vector<int32_t>{}, std::vector<int32_t>{450}}) {
      std::vector<int32_t> all = ids;
      all.insert(all.end(), wrap.begin(), wrap.end());
      const std::string want = sp_decode(all);
      EXPECT_EQ(tok->decode(all), want) << "bytes starting " << run[0];
      EXPECT_EQ(stream_decode(*tok, all), want) << "bytes starting " << run[0];
    }
  }
  const std::vector<int32_t> e2_82 = {kByte0 + 0xE2, kByte0 + 0x82};
  EXPECT_EQ(tok->decode(e2_82), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

// Random id sequences rich in byte tokens, controls, <unk> and lone "▁": the one-shot decode and
// the stream both equal sentencepiece's Decode.
TEST(StreamDecoder, ConcatenationEqualsDecodeOnRandomIds) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  std::mt19937 rng(1234);
  const int32_t specials[] = {0, 1, 2, 29871, 259, 13, 450, 30004};
  const int lead_bytes[] = {0xC3, 0xE2, 0xE4, 0xF0, 0xF4, 0xED, 0xE0, 0xC0, 0xF5};
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<int32_t> ids(rng() % 24);
    for (int32_t& id : ids) {
      const unsigned r = rng() % 10;
      if (r < 3)
        id = kByte0 + 0x80 + static_cast<int32_t>(rng() % 64);  // continuation byte
      else if (r < 5)
        id = kByte0 + lead_bytes[rng() % 9];
      else if (r < 6)
        id = kByte0 + static_cast<int32_t>(rng() % 256);
      else if (r < 8)
        id = specials[rng() % 8];
      else
        id = static_cast<int32_t>(rng() % 32000);
    }
    const std::string want = sp_decode(ids);
    ASSERT_EQ(tok->decode(ids), want) << "trial " << trial;
    ASSERT_EQ(stream_decode(*tok, ids), want) << "trial " << trial;
  }
}

// Tiny models trained here with each leading-space setting: decode() must find the rule by itself
// and still equal sentencepiece's Decode.
TEST(StreamDecoder, MatchesSentencepieceForEveryWhitespaceSetting) {
  const std::string dir = scratch_dir();
  std::string corpus;
  for (int i = 0; i < 200; ++i) {
    corpus += "  the quick brown fox " + std::to_string(i * 7919 % 1000) +
              " jumps over   the lazy dog, café naïve " + std::to_string(i) + "\n";
  }
  write_file(dir + "/corpus.txt", corpus);
  for (const bool dummy : {true, false}) {
    for (const bool remove_ws : {true, false}) {
      const std::string prefix = dir + "/m" + std::to_string(dummy) + std::to_string(remove_ws);
      const auto trained = sentencepiece::SentencePieceTrainer::Train(
          "--input=" + dir + "/corpus.txt --model_prefix=" + prefix +
          " --vocab_size=320 --model_type=bpe --byte_fallback=true --minloglevel=2"
          " --add_dummy_prefix=" +
          (dummy ? "true" : "false") +
          " --remove_extra_whitespaces=" + (remove_ws ? "true" : "false"));
      ASSERT_TRUE(trained.ok()) << trained.ToString();
      auto tok = Tokenizer::load(prefix + ".model");
      ASSERT_TRUE(tok.ok()) << tok.status().to_string();
      sentencepiece::SentencePieceProcessor sp;
      ASSERT_TRUE(sp.Load(prefix + ".model").ok());
      std::mt19937 rng(dummy * 2 + remove_ws);
      const int32_t space = (*tok)->piece_to_id("\xE2\x96\x81");
      for (int trial = 0; trial < 500; ++trial) {
        std::vector<int32_t> ids(rng() % 12);
        for (int32_t& id : ids) {
          id = rng() % 4 == 0 && space >= 0 ? space : static_cast<int32_t>(rng() % 320);
        }
        std::string want;
        ASSERT_TRUE(sp.Decode(std::vector<int>(ids.begin(), ids.end()), &want).ok());
        ASSERT_EQ((*tok)->decode(ids), want) << "dummy " << dummy << " remove_ws " << remove_ws;
        ASSERT_EQ(stream_decode(**tok, ids), want);
      }
    }
  }
}

TEST(StreamDecoder, StreamsEncodedTextsExactly) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const std::vector<std::string> texts = {"€ and 🦙🦙 and 日本語 and 𓀀",
                                          " leading",
                                          "\n\n  x",
                                          "  ",
                                          "ǅ𝔘ℕ — “quoted”",
                                          "family: 👨\u200d👩\u200d👧",
                                          "tab\there\r\n",
                                          "\x01\x02\x7f",
                                          "a"};
  for (const auto& text : texts) {
    const auto ids = tok->encode(text, true);
    EXPECT_EQ(stream_decode(*tok, ids), text);
    EXPECT_EQ(tok->decode(ids), text);
  }
}

TEST(Tokenizer, DecodeOptionsForSpecialTokens) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const std::vector<int32_t> ids = {1, 450, 0, 2};  // <s> ▁The <unk> </s>
  EXPECT_EQ(tok->decode(ids), sp_decode(ids));
  EXPECT_EQ(tok->decode(ids), "The \xE2\x81\x87 ");
  EXPECT_EQ(tok->decode(ids, {.special = SpecialTokens::kSkip}), "The");
  // Rendered, "<s>" is text, so the space of "▁The" is no longer at the start (as transformers).
  EXPECT_EQ(tok->decode(ids, {.special = SpecialTokens::kRender}), "<s> The<unk></s>");
  // A control token ends a run of byte tokens unless it is skipped.
  const std::vector<int32_t> split = {kByte0 + 0xE2, kByte0 + 0x82, 2, kByte0 + 0xAC};
  EXPECT_EQ(tok->decode(split), sp_decode(split));
  EXPECT_EQ(tok->decode(split, {.special = SpecialTokens::kSkip}), "\xE2\x82\xAC");
  // Ids outside the vocabulary render like <unk> instead of reaching sentencepiece (it aborts).
  EXPECT_EQ(tok->decode(std::vector<int32_t>{450, 32000, -5}), "The \xE2\x81\x87  \xE2\x81\x87 ");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{450, 32000}, {.special = SpecialTokens::kSkip}),
            "The");
}

TEST(Tokenizer, ContinuationKeepsTheLeadingSpace) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const std::vector<int32_t> ids = {931, 29889};  // "▁time" "."
  EXPECT_EQ(tok->decode(ids), "time.");
  EXPECT_EQ(tok->decode(ids, {.continuation = true}), " time.");
  EXPECT_EQ(stream_decode(*tok, ids, {.continuation = true}), " time.");
}

TEST(Tokenizer, InvalidUtf8InputDoesNotBreakEncoding) {
  auto tok = load_llama2();
  ASSERT_TRUE(tok);
  const auto ids = tok->encode("ok \xFF\xE2\x82 end", false);
  EXPECT_FALSE(ids.empty());
  EXPECT_TRUE(valid_utf8(tok->decode(ids)));
  EXPECT_EQ(tok->decode(ids), sp_decode(ids));
}

TEST(Tokenizer, ReadsSpecialTokensFromTokenizerConfig) {
  const std::string dir = scratch_dir();
  fs::copy_file(kModelPath, dir + "/tokenizer.model");
  write_file(dir + "/tokenizer_config.json",
             R"({"add_bos_token": false, "bos_token": {"content": "</s>", "lstrip": false},
                 "eos_token": "<0x0A>", "unk_token": "<unk>"})");
  auto tok = Tokenizer::load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->bos_id(), 2);
  EXPECT_EQ((*tok)->eos_ids(), std::vector<int32_t>{13});
  EXPECT_TRUE((*tok)->is_eos(13));
  EXPECT_FALSE((*tok)->add_bos_default());
  EXPECT_EQ((*tok)->encode("Hi"), (*tok)->encode("Hi", false));

  // The caller's ids (config.json) win over tokenizer_config.json.
  auto over = Tokenizer::load(dir + "/tokenizer.model",
                              {.bos_id = 1, .eos_ids = {2, 32001 - 2}, .add_bos = true});
  ASSERT_TRUE(over.ok()) << over.status().to_string();
  EXPECT_EQ((*over)->bos_id(), 1);
  EXPECT_EQ((*over)->eos_ids(), (std::vector<int32_t>{2, 31999}));
  EXPECT_TRUE((*over)->add_bos_default());

  auto ignored = Tokenizer::load(dir, {.read_tokenizer_config = false});
  ASSERT_TRUE(ignored.ok());
  EXPECT_EQ((*ignored)->bos_id(), 1);

  // A token text the vocabulary lacks keeps the model's own id (with a warning).
  write_file(dir + "/tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  auto unknown = Tokenizer::load(dir);
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ((*unknown)->eos_ids(), std::vector<int32_t>{2});
}

TEST(Tokenizer, RejectsBadOptionsAndConfig) {
  const std::string dir = scratch_dir();
  fs::copy_file(kModelPath, dir + "/tokenizer.model");
  auto bad_bos = Tokenizer::load(dir, {.bos_id = 32000});
  ASSERT_FALSE(bad_bos.ok());
  EXPECT_EQ(bad_bos.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_bos.status().message().find("bos_id = 32000"), std::string::npos);
  EXPECT_FALSE(Tokenizer::load(dir, {.eos_ids = {2, -1}}).ok());

  write_file(dir + "/tokenizer_config.json", R"({"bos_token": "<s>", )");
  auto malformed = Tokenizer::load(dir);
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(malformed.status().message().find("tokenizer_config.json"), std::string::npos);
  write_file(dir + "/tokenizer_config.json", R"({"add_bos_token": "yes"})");
  EXPECT_FALSE(Tokenizer::load(dir).ok());
}

TEST(Tokenizer, MissingModelIsNotFoundNamingThePath) {
  const std::string dir = scratch_dir();
  for (const std::string& path : {dir, dir + "/nope.model"}) {
    auto t = Tokenizer::load(path);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
    const std::string looked_at = path == dir ? dir + "/tokenizer.model" : path;
    EXPECT_NE(t.status().message().find(looked_at), std::string::npos) << t.status().to_string();
  }
}

TEST(Tokenizer, CorruptModelIsCorruptionNamingTheFile) {
  auto bytes = read_text_file(kModelPath);
  ASSERT_TRUE(bytes.ok()) << "needs " << kModelPath;
  std::string garbage(4096, '\0');
  std::mt19937 rng(7);
  for (char& c : garbage) c = static_cast<char>(rng());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"half", bytes->substr(0, bytes->size() / 2)},
      {"minus_one_byte", bytes->substr(0, bytes->size() - 1)},
      // Cut exactly before normalizer_spec (the last 20 bytes): sentencepiece itself loads this.
      {"no_normalizer", bytes->substr(0, bytes->size() - 20)},
      {"garbage", garbage},
      {"text", "this is not a model\n"},
  };
  const std::string dir = scratch_dir();
  for (const auto& [name, content] : cases) {
    const std::string path = dir + "/" + name + ".model";
    write_file(path, content);
    auto t = Tokenizer::load(path);
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_EQ(t.status().code(), StatusCode::kCorruption) << name << ": " << t.status().to_string();
    EXPECT_NE(t.status().message().find(path), std::string::npos) << t.status().to_string();
  }
}

}  // namespace
}  // namespace mnemo
