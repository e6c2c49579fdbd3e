// `mnemo ingest`, `mnemo sessions` and `mnemo run --session`, called in-process on models/tiny: an
// ingested file's tokens equal the encoding of the whole text, a second run resumes without
// duplicating (also after a crash between an append and its record), a different input is refused,
// and errors name the flag, the path or the session.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/file.h"
#include "model/tokenizer.h"
#include "runtime/cli/commands.h"
#include "runtime/runtime.h"

namespace mnemo::cli {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/mnemo_session_cli_" + name + "_" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// ~3 KB (well under the tiny model's 2,048 positions): spaces, double spaces, newlines, UTF-8.
std::string sample_text(int repeats = 12) {
  std::string text;
  for (int i = 0; i < repeats; ++i) {
    text += "In the beginning God created the heaven and the earth.  And the earth was without form, and void;\n"
            "and darkness was upon the face of the deep. Caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 line " +
            std::to_string(i) + ".\n";
  }
  return text;
}

// The runtime's view of the data dir, opened after a command has closed its own.
struct Store {
  explicit Store(const std::string& dir) {
    RuntimeOptions o;
    o.model_dir = "models/tiny";
    o.data_dir = dir;
    auto r = Runtime::open(o);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    if (r.ok()) rt = std::move(*r);
  }
  std::vector<int32_t> tokens(const std::string& id) {
    auto s = rt->open_session(id);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    return s.ok() ? (*s)->tokens() : std::vector<int32_t>{};
  }
  std::unique_ptr<Runtime> rt;
};

std::vector<int32_t> whole_encoding(const std::string& text) {
  auto tok = Tokenizer::load("models/tiny");
  EXPECT_TRUE(tok.ok());
  return (*tok)->encode(text, /*add_bos=*/true);
}

Status ingest(const std::string& dir, const std::string& id, const std::string& file,
              std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--model", "models/tiny", "--data-dir", dir, "--session", id, "--quiet", file};
  args.insert(args.end(), extra.begin(), extra.end());
  return ingest_command(args);
}

std::string captured(const std::function<Status()>& command, Status* status) {
  testing::internal::CaptureStdout();
  *status = command();
  return testing::internal::GetCapturedStdout();
}

TEST(SessionCli, IngestedTokensEqualTheWholeTextsEncoding) {
  const std::string dir = fresh_dir("whole");
  const std::string text = sample_text();
  const std::string file = write_file(dir + "/in.txt", text);
  Status s = ingest(dir, "doc", file, {"--chunk-bytes", "200"});  // ~16 chunks, cut before spaces
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(file_exists(dir + "/ingest/doc.offset"));
  Store store(dir);
  EXPECT_EQ(store.tokens("doc"), whole_encoding(text));
}

TEST(SessionCli, SecondRunResumesWithoutDuplicating) {
  const std::string dir = fresh_dir("resume");
  const std::string text = sample_text();
  const std::string file = write_file(dir + "/in.txt", text);
  const std::vector<int32_t> want = whole_encoding(text);
  ASSERT_TRUE(ingest(dir, "doc", file, {"--chunk-bytes", "256", "--max-bytes", "700", "--no-wait"}).ok());
  {
    Store store(dir);
    const auto part = store.tokens("doc");
    ASSERT_GT(part.size(), 1u);
    ASSERT_LT(part.size(), want.size());
    EXPECT_EQ(part, std::vector<int32_t>(want.begin(), want.begin() + part.size()));
  }
  ASSERT_TRUE(ingest(dir, "doc", file, {"--chunk-bytes", "256"}).ok());
  Status s;
  const std::string out = captured([&] { return ingest(dir, "doc", file); }, &s);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_NE(out.find(" 0 tokens from 0 bytes"), std::string::npos) << out;
  Store store(dir);
  EXPECT_EQ(store.tokens("doc"), want);
}

TEST(SessionCli, ChunkAppendedBeforeItsRecordIsNotAppendedAgain) {
  // A crash after an acknowledged append but before the record's rename: restore the older record.
  const std::string dir = fresh_dir("crash");
  const std::string text = sample_text();
  const std::string file = write_file(dir + "/in.txt", text);
  const std::string record = dir + "/ingest/doc.offset";
  ASSERT_TRUE(ingest(dir, "doc", file, {"--chunk-bytes", "256", "--max-bytes", "500", "--no-wait"}).ok());
  auto older = read_text_file(record);
  ASSERT_TRUE(older.ok());
  ASSERT_TRUE(ingest(dir, "doc", file, {"--chunk-bytes", "256", "--max-bytes", "1", "--no-wait"}).ok());
  ASSERT_NE(*read_text_file(record), *older);
  write_file(record, *older);
  Status s = ingest(dir, "doc", file, {"--chunk-bytes", "256"});
  ASSERT_TRUE(s.ok()) << s.to_string();
  Store store(dir);
  EXPECT_EQ(store.tokens("doc"), whole_encoding(text));
}

TEST(SessionCli, ADifferentInputForTheSameSessionIsRefused) {
  const std::string dir = fresh_dir("different");
  const std::string a = write_file(dir + "/a.txt", sample_text());
  const std::string b = write_file(dir + "/b.txt", sample_text(11));
  ASSERT_TRUE(ingest(dir, "doc", a, {"--chunk-bytes", "256", "--max-bytes", "500", "--no-wait"}).ok());
  Status s = ingest(dir, "doc", b);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("different input"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(b), std::string::npos) << s.message();
}

TEST(SessionCli, IngestPastMaxPositionsStopsKeepingWhatWasIngested) {
  const std::string dir = fresh_dir("positions");
  const std::string file = write_file(dir + "/long.txt", sample_text(60));  // > 2,048 tokens
  Status s = ingest(dir, "doc", file, {"--chunk-bytes", "2000", "--no-wait"});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfBudget);
  EXPECT_NE(s.message().find("max_position_embeddings"), std::string::npos) << s.message();
  size_t kept = 0;
  {
    Store store(dir);
    kept = store.tokens("doc").size();
    EXPECT_GT(kept, 1000u);
    EXPECT_LE(kept, 2048u);
  }
  EXPECT_EQ(ingest(dir, "doc", file, {"--chunk-bytes", "2000", "--no-wait"}).code(), StatusCode::kOutOfBudget);
  Store store(dir);
  EXPECT_EQ(store.tokens("doc").size(), kept);
}

TEST(SessionCli, ErrorsNameTheFlagThePathAndTheSession) {
  const std::string dir = fresh_dir("errors");
  const std::string file = write_file(dir + "/in.txt", "hello");
  Status s = ingest_command({"--data-dir", dir, file});
  EXPECT_NE(s.message().find("--session"), std::string::npos) << s.message();
  s = ingest_command({"--session", "x", file});
  EXPECT_NE(s.message().find("--data-dir"), std::string::npos) << s.message();
  s = ingest(dir, "x", dir + "/missing.txt");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find(dir + "/missing.txt"), std::string::npos) << s.message();
  s = sessions_command({"--data-dir", dir, "show", "nobody"});
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("'nobody'"), std::string::npos) << s.message();
  s = sessions_command({"--data-dir", dir, "delete", "nobody"});
  EXPECT_NE(s.message().find("'nobody'"), std::string::npos) << s.message();
  s = sessions_command({"show", "x"});
  EXPECT_NE(s.message().find("--data-dir"), std::string::npos) << s.message();
  s = run_command({"--session", "x", "--prompt", "hi"});
  EXPECT_NE(s.message().find("--data-dir"), std::string::npos) << s.message();
}

TEST(SessionCli, SessionsListShowAndDelete) {
  const std::string dir = fresh_dir("sessions");
  const std::string text = sample_text(3);
  ASSERT_TRUE(ingest(dir, "alpha", write_file(dir + "/in.txt", text)).ok());
  {
    Store store(dir);
    auto alpha = store.rt->open_session("alpha");
    ASSERT_TRUE(alpha.ok());
    ASSERT_TRUE((*alpha)->fork("beta").get().ok());
  }
  Status s;
  std::string out = captured([&] { return sessions_command({"--data-dir", dir}); }, &s);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_NE(out.find("ID"), std::string::npos) << out;
  EXPECT_NE(out.find("alpha"), std::string::npos) << out;
  EXPECT_NE(out.find("beta"), std::string::npos) << out;
  const std::string length = std::to_string(whole_encoding(text).size());
  EXPECT_NE(out.find(length + "  alpha"), std::string::npos) << out;  // beta's parent column

  out = captured([&] { return sessions_command({"--data-dir", dir, "show", "alpha"}); }, &s);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_NE(out.find("tokens   " + length), std::string::npos) << out;
  EXPECT_NE(out.find(text.substr(text.size() - 150)), std::string::npos) << out;  // the tail of the text

  out = captured([&] { return sessions_command({"--data-dir", dir, "delete", "alpha"}); }, &s);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_NE(out.find("deleted session 'alpha'"), std::string::npos) << out;
  EXPECT_FALSE(file_exists(dir + "/ingest/alpha.offset"));
  out = captured([&] { return sessions_command({"--data-dir", dir, "list"}); }, &s);
  EXPECT_EQ(out.find("alpha "), std::string::npos) << out;
  EXPECT_NE(out.find("beta"), std::string::npos) << out;
}

TEST(SessionCli, RunContinuesAPersistedSession) {
  const std::string dir = fresh_dir("run");
  const std::string prompt = " And God said, Let there be light";
  ASSERT_TRUE(ingest(dir, "chat", write_file(dir + "/in.txt", sample_text(2))).ok());
  std::vector<int32_t> before;
  {
    Store store(dir);
    before = store.tokens("chat");
  }
  Status s;
  const std::string out = captured(
      [&] {
        return run_command({"--model", "models/tiny", "--data-dir", dir, "--session", "chat", "--prompt", prompt,
                            "-n", "6", "--ignore-eos"});
      },
      &s);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_FALSE(out.empty());
  auto tok = Tokenizer::load("models/tiny");
  ASSERT_TRUE(tok.ok());
  Store store(dir);
  const auto after = store.tokens("chat");
  EXPECT_EQ(after.size(), before.size() + (*tok)->encode(prompt, false).size() + 6);
  EXPECT_EQ(std::vector<int32_t>(after.begin(), after.begin() + before.size()), before);
}

}  // namespace
}  // namespace mnemo::cli
