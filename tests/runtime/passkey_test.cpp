// Passkey evaluation: the prompt builder (length, needle placement, determinism), scoring, and
// `mnemo eval passkey` end to end on models/tiny (random weights for now: only that it runs and
// reports sensibly, not its accuracy) and its flag errors.
#include "runtime/eval/passkey.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "core/file.h"
#include "runtime/cli/commands.h"

namespace mnemo::eval {
namespace {

const char* kTinyModel = "models/tiny";

const Tokenizer& tiny_tokenizer() {
  static std::unique_ptr<Tokenizer> tok = [] {
    auto t = Tokenizer::load(kTinyModel);
    EXPECT_TRUE(t.ok()) << t.status().to_string();
    return t.ok() ? std::move(t).value() : nullptr;
  }();
  return *tok;
}

int64_t longest_filler_sentence_tokens(const Tokenizer& tok) {
  int64_t n = 0;
  for (std::string_view s : kRepeatSentences) n = std::max<int64_t>(n, tok.encode(s, false).size());
  return n;
}

size_t count_occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string scratch_path(const std::string& name) {
  return ::testing::TempDir() + "mnemo_passkey_" + std::to_string(::getpid()) + "_" + name;
}

TEST(PasskeyPrompt, FillsTheTargetToWithinOneSentence) {
  const Tokenizer& tok = tiny_tokenizer();
  const int64_t slack = longest_filler_sentence_tokens(tok);
  for (int64_t target : {96, 128, 255, 256, 1000, 2048, 4097}) {
    auto p = build_passkey_prompt(tok, target, 0.5, "48213");
    ASSERT_TRUE(p.ok()) << "target " << target << ": " << p.status().to_string();
    const int64_t total = static_cast<int64_t>(p->ids.size()) + p->key_tokens;
    EXPECT_LE(total, target) << "target " << target;
    EXPECT_GT(total, target - slack) << "target " << target;
    EXPECT_EQ(p->key_tokens, 6);  // "▁" + 5 single-digit pieces
  }
}

TEST(PasskeyPrompt, IdsAreBosThenTheEncodedText) {
  const Tokenizer& tok = tiny_tokenizer();
  auto p = build_passkey_prompt(tok, 300, 0.25, "10000");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->ids, tok.encode(p->text, /*add_bos=*/true));
  EXPECT_EQ(p->ids.front(), tok.bos_id());
  EXPECT_EQ(p->text.rfind(std::string(kPasskeyIntro) + " ", 0), 0u);
  const std::string question(kPasskeyQuestion);
  EXPECT_EQ(p->text.substr(p->text.size() - question.size()), question);
}

// tools/train/tasks.py's passkey_prompt(tok, 128, 0.5, 48213), verbatim (117 ids with BOS). The C++
// builder was also checked against it on 120 (target, depth, key) cases up to 8192 tokens: same ids.
TEST(PasskeyPrompt, MatchesTheTrainingPipelinesPrompt) {
  auto p = build_passkey_prompt(tiny_tokenizer(), 128, 0.5, "48213");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->text,
            "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. I will "
            "quiz you about the pass key. The grass is green. The sky is blue. The sun is yellow. The pass key is "
            "48213. Remember it. 48213 is the pass key. Here we go. There and back again. The grass is green. What "
            "is the pass key? The pass key is");
  EXPECT_EQ(p->ids.size(), 117u);
}

TEST(PasskeyPrompt, NeedleAppearsOnceAtTheRequestedDepth) {
  const Tokenizer& tok = tiny_tokenizer();
  for (double depth : {0.0, 0.1, 0.5, 0.77, 1.0}) {
    auto p = build_passkey_prompt(tok, 1024, depth, "48213");
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    const std::string needle = passkey_needle("48213");
    EXPECT_EQ(needle, "The pass key is 48213. Remember it. 48213 is the pass key.");
    ASSERT_EQ(count_occurrences(p->text, needle), 1u) << "depth " << depth;
    EXPECT_EQ(count_occurrences(p->text, "48213"), 2u);  // the needle's two mentions, nothing else
    // Filler sentences before the needle: round(depth * n), as tasks.py.
    const std::string before = p->text.substr(0, p->text.find(needle));
    int64_t sentences_before = 0;
    for (std::string_view s : kRepeatSentences) sentences_before += count_occurrences(before, std::string(s));
    EXPECT_EQ(sentences_before, p->needle_sentence) << "depth " << depth;
    EXPECT_GT(p->filler_sentences, 50);
    EXPECT_NEAR(static_cast<double>(p->needle_sentence) / p->filler_sentences, depth, 0.5 / p->filler_sentences + 1e-12);
  }
}

TEST(PasskeyPrompt, DepthRoundsHalfToEvenAsPython) {
  const Tokenizer& tok = tiny_tokenizer();
  auto p = build_passkey_prompt(tok, 512, 0.5, "48213");
  ASSERT_TRUE(p.ok());
  const double n = static_cast<double>(p->filler_sentences);
  // Find a depth that lands exactly on .5 of a sentence: (k + 0.5) / n with k even and odd.
  for (int64_t k : {10, 11}) {
    auto q = build_passkey_prompt(tok, 512, (static_cast<double>(k) + 0.5) / n, "48213");
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(q->needle_sentence, k % 2 == 0 ? k : k + 1) << "k " << k;
  }
}

TEST(PasskeyPrompt, TooShortATargetIsAnErrorGivingTheMinimum) {
  auto p = build_passkey_prompt(tiny_tokenizer(), 40, 0.5, "48213");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("needs at least"), std::string::npos) << p.status().message();
}

TEST(PasskeyTrials, AreDeterministicPerSeedAndInRange) {
  const auto a = passkey_trial_specs(7, 50);
  const auto b = passkey_trial_specs(7, 50);
  const auto c = passkey_trial_specs(8, 50);
  ASSERT_EQ(a.size(), 50u);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].key, b[i].key);
    EXPECT_EQ(a[i].depth, b[i].depth);
    differs |= a[i].key != c[i].key;
    ASSERT_EQ(a[i].key.size(), 5u);
    EXPECT_GE(std::stoi(a[i].key), 10000);
    EXPECT_GE(a[i].depth, 0.0);
    EXPECT_LT(a[i].depth, 1.0);
  }
  EXPECT_TRUE(differs);
  // Same seed, same prompts.
  auto p = build_passkey_prompt(tiny_tokenizer(), 700, a[3].depth, a[3].key);
  auto q = build_passkey_prompt(tiny_tokenizer(), 700, b[3].depth, b[3].key);
  ASSERT_TRUE(p.ok() && q.ok());
  EXPECT_EQ(p->ids, q->ids);
}

TEST(PasskeyScore, ComparesTheLeadingDigitsWithSpacesStripped) {
  EXPECT_TRUE(passkey_answer_correct("48213", "48213"));
  EXPECT_TRUE(passkey_answer_correct(" 48213.", "48213"));
  EXPECT_TRUE(passkey_answer_correct("4 8 2 1 3", "48213"));
  EXPECT_TRUE(passkey_answer_correct("482130", "48213"));  // eval_passkey.py: first 5 of the run
  EXPECT_FALSE(passkey_answer_correct("4821", "48213"));
  EXPECT_FALSE(passkey_answer_correct("4821.3", "48213"));
  EXPECT_FALSE(passkey_answer_correct("48214", "48213"));
  EXPECT_FALSE(passkey_answer_correct("x48213", "48213"));
  EXPECT_FALSE(passkey_answer_correct("", "48213"));
}

// ------------------------------------------------------------------ the command

boost::json::value read_json(const std::string& path) {
  auto text = read_text_file(path);
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(text.ok() ? *text : "", ec);
  EXPECT_FALSE(ec) << path << ": " << ec.message();
  return v;
}

TEST(EvalPasskeyCommand, RunsOnTinyAndWritesAValidReport) {
  const std::string out = scratch_path("tiny.json");
  Status s = cli::eval_command({"passkey", "--model", kTinyModel, "--context", "256", "--trials", "2", "--seed", "3",
                                "--json", out});
  ASSERT_TRUE(s.ok()) << s.to_string();
  const boost::json::value v = read_json(out);
  ASSERT_TRUE(v.is_object());
  const auto& o = v.as_object();
  EXPECT_EQ(o.at("context").as_int64(), 256);
  EXPECT_EQ(o.at("trials").as_int64(), 2);
  EXPECT_EQ(o.at("seed").as_int64(), 3);
  EXPECT_EQ(o.at("model").as_string(), kTinyModel);
  const double accuracy = o.at("accuracy").to_number<double>();
  EXPECT_GE(accuracy, 0.0);
  EXPECT_LE(accuracy, 1.0);
  EXPECT_GT(o.at("prefill_tokens_per_s").to_number<double>(), 0.0);
  const auto& results = o.at("results").as_array();
  ASSERT_EQ(results.size(), 2u);
  const auto specs = passkey_trial_specs(3, 2);
  int correct = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i].as_object();
    EXPECT_EQ(r.at("key").as_string(), specs[i].key);
    EXPECT_NEAR(r.at("depth").to_number<double>(), specs[i].depth, 1e-6);
    EXPECT_TRUE(r.at("answer").is_string());
    correct += r.at("correct").as_bool() ? 1 : 0;
    EXPECT_LE(r.at("prompt_tokens").as_int64() + 6, 256);
  }
  EXPECT_DOUBLE_EQ(accuracy, correct / 2.0);
  std::remove(out.c_str());
}

TEST(EvalPasskeyCommand, RunsPastTheModelsTrainedLength) {
  // A one-layer model with vocab 4096 (the tiny tokenizer's) trained to 128 positions, asked for 300.
  const std::string config = scratch_path("short_config.json");
  std::ofstream(config) << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2})";
  const std::string out = scratch_path("short.json");
  Status s = cli::eval_command({"passkey", "--random-weights", config, "--tokenizer", kTinyModel, "--context", "300",
                                "--trials", "1", "--json", out});
  ASSERT_TRUE(s.ok()) << s.to_string();
  const boost::json::value v = read_json(out);
  EXPECT_EQ(v.at("max_position_embeddings").as_int64(), 128);
  EXPECT_EQ(v.at("results").as_array().size(), 1u);
  std::remove(config.c_str());
  std::remove(out.c_str());
}

Status eval(std::vector<std::string> args) {
  args.insert(args.begin(), "passkey");
  return cli::eval_command(args);
}

void expect_error_naming(const Status& s, const std::string& what) {
  ASSERT_FALSE(s.ok()) << "expected an error naming " << what;
  EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
}

TEST(EvalPasskeyCommand, BadFlagsAreNamed) {
  expect_error_naming(eval({"--context", "0", "--trials", "2"}), "--context");
  expect_error_naming(eval({"--context", "-5", "--trials", "2"}), "--context");
  expect_error_naming(eval({"--context", "256", "--trials", "0"}), "--trials");
  expect_error_naming(eval({"--context", "256", "--trials", "x"}), "--trials");
  expect_error_naming(eval({"--trials", "2"}), "--context");
  expect_error_naming(eval({"--context", "256"}), "--trials");
  expect_error_naming(eval({"--context", "256", "--trials", "2", "--filler", "text"}), "--filler");
  expect_error_naming(eval({"--context", "256", "--trials", "2", "--kv-budget-tokens", "128"}), "--kv-budget-tokens");
  expect_error_naming(eval({"--context", "20", "--trials", "1"}), "needs at least");
  EXPECT_EQ(eval({"--context", "0", "--trials", "2"}).code(), StatusCode::kInvalidArgument);
  expect_error_naming(cli::eval_command({"passkeys"}), "unknown task 'passkeys'");
  expect_error_naming(cli::eval_command({}), "name a task");
}

TEST(EvalPasskeyCommand, SparseConfigWithAFullBudgetAnswersLikeDense) {
  expect_error_naming(eval({"--context", "256", "--trials", "1", "--sparse-config", "/nonexistent/sparse.json"}),
                      "/nonexistent/sparse.json");
  // Sparse from the first token, but topk + window cover all 7 blocks of a 400-token prompt.
  const std::string path = scratch_path("sparse.json");
  std::ofstream(path) << R"({"block_size": 64, "topk": 16, "window_size": 128, "dense_len": -1})";
  const std::string dense_out = scratch_path("dense.json"), sparse_out = scratch_path("sparse_out.json");
  ASSERT_TRUE(eval({"--context", "400", "--trials", "2", "--json", dense_out}).ok());
  Status s = eval({"--context", "400", "--trials", "2", "--sparse-config", path, "--json", sparse_out});
  ASSERT_TRUE(s.ok()) << s.to_string();
  const auto dense = read_json(dense_out).as_object().at("results").as_array();
  const auto sparse = read_json(sparse_out).as_object().at("results").as_array();
  ASSERT_EQ(dense.size(), sparse.size());
  for (size_t i = 0; i < dense.size(); ++i) {
    EXPECT_EQ(dense[i].as_object().at("answer"), sparse[i].as_object().at("answer")) << "trial " << i;
  }
  for (const std::string& f : {path, dense_out, sparse_out}) std::remove(f.c_str());
}

}  // namespace
}  // namespace mnemo::eval
