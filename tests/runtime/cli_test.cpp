// The CLI's flag handling and commands, called in-process: bad flags and values give errors that name
// the flag, and `logits` writes what the forward pass computes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/file.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/flags.h"

namespace mnemo::cli {
namespace {

const std::vector<FlagSpec> kSpecs = {
    {"prompt", "TEXT", "", "", 'p'}, {"n-predict", "N", "", "", 'n'}, {"temperature", "T", "", ""}, {"stats", "", "", ""}};

TEST(CliFlags, ParsesLongShortAndInlineForms) {
  auto f = Flags::parse("run", kSpecs, {"--prompt", "hi there", "-n", "5", "--temperature=0.5", "--stats"});
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->get("prompt"), "hi there");
  EXPECT_EQ(*f->get_int("n-predict", 0, 0, 100), 5);
  EXPECT_DOUBLE_EQ(*f->get_double("temperature", 0, 0, 10), 0.5);
  EXPECT_TRUE(f->has("stats"));
}

TEST(CliFlags, UnknownFlagIsNamed) {
  auto f = Flags::parse("run", kSpecs, {"--promtp", "x"});
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("unknown flag '--promtp'"), std::string::npos) << f.status().message();
}

TEST(CliFlags, MissingValueIsNamed) {
  auto f = Flags::parse("run", kSpecs, {"--prompt"});
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'--prompt' needs a value"), std::string::npos) << f.status().message();
}

TEST(CliFlags, BadNumbersNameFlagExpectedAndGot) {
  auto f = Flags::parse("run", kSpecs, {"-n", "five", "--temperature", "-1"});
  ASSERT_TRUE(f.ok());
  auto n = f->get_int("n-predict", 0, 0, 100);
  ASSERT_FALSE(n.ok());
  EXPECT_NE(n.status().message().find("--n-predict: expected an integer, got 'five'"), std::string::npos);
  auto t = f->get_double("temperature", 0, 0, 10);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("--temperature: expected a number in [0, 10], got -1"), std::string::npos)
      << t.status().message();
}

TEST(CliFlags, SwitchRejectsAValue) {
  auto f = Flags::parse("run", kSpecs, {"--stats=yes"});
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("takes no value"), std::string::npos);
}

TEST(CliCommands, RunRejectsMissingModelDirectoryByName) {
  Status s = run_command({"--model", "/nonexistent/model", "--prompt", "x"});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("/nonexistent/model"), std::string::npos) << s.message();
}

TEST(CliCommands, RunRejectsBadSamplingValues) {
  Status s = run_command({"--model", "tests/data/fixtures/llama_gqa_tied", "--prompt", "x", "--top-p", "1.5"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--top-p"), std::string::npos) << s.message();
}

TEST(CliCommands, RunRequiresAPrompt) {
  Status s = run_command({});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--prompt"), std::string::npos) << s.message();
}

TEST(CliCommands, LogitsRejectsBothTextAndTokens) {
  Status s = logits_command({"--model", "tests/data/fixtures/llama_gqa_tied", "--text", "a", "--tokens", "1",
                             "--out", "/tmp/x.npy"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("exactly one of --text or --tokens"), std::string::npos) << s.message();
}

TEST(CliCommands, LogitsRejectsMalformedTokenIds) {
  Status s = logits_command({"--model", "tests/data/fixtures/llama_gqa_tied", "--tokens", "1,2,x", "--out", "/tmp/x.npy"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("got 'x'"), std::string::npos) << s.message();
}

TEST(CliCommands, LogitsRejectsTokenOutsideVocabulary) {
  Status s = logits_command({"--model", "tests/data/fixtures/llama_gqa_tied", "--tokens", "1 5000", "--out", "/tmp/x.npy"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("5000"), std::string::npos) << s.message();
}

TEST(CliCommands, LogitsWritesTheFixtureLogits) {
  // llama_gqa_tied ships transformers' logits for its cases; the CLI must reproduce case 1.
  const std::string out = testing::TempDir() + "/cli_logits.npy";
  auto want = read_npy("tests/data/fixtures/llama_gqa_tied/logits_1.npy");
  ASSERT_TRUE(want.ok()) << want.status().to_string();
  auto cases = read_text_file("tests/data/fixtures/llama_gqa_tied/cases.json");
  ASSERT_TRUE(cases.ok());
  // Pull the token list of case 1 out of cases.json without a JSON dependency in this test.
  size_t pos = cases->find("\"tokens\"");
  pos = cases->find("\"tokens\"", pos + 1);
  const size_t b = cases->find('[', pos), e = cases->find(']', b);
  const std::string tokens = cases->substr(b + 1, e - b - 1);
  Status s = logits_command({"--model", "tests/data/fixtures/llama_gqa_tied", "--tokens", tokens, "--out", out});
  ASSERT_TRUE(s.ok()) << s.to_string();
  auto got = read_npy(out);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->shape(), want->shape());
  for (int64_t i = 0; i < got->numel(); ++i) {
    ASSERT_NEAR(got->data<float>()[i], want->data<float>()[i], 1e-4 * (1 + std::fabs(want->data<float>()[i])));
  }
  std::remove(out.c_str());
}

}  // namespace
}  // namespace mnemo::cli
