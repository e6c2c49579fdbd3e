// Sessions on disk: they survive a restart and reopen by id, forks and deletes persist, and an
// acknowledged append survives kill -9 at any point (the child process is killed at random times).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "model/tokenizer.h"
#include "runtime/runtime.h"

namespace mnemo {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/mnemo_persist_" + name + "_" + std::to_string(getpid());
  fs::remove_all(dir);
  return dir;
}

std::unique_ptr<Runtime> open_runtime(const std::string& data_dir) {
  RuntimeOptions o;
  o.model_dir = "models/tiny";
  o.data_dir = data_dir;
  o.gpu_kv_budget_bytes = int64_t{64} << 20;
  o.host_kv_budget_bytes = int64_t{64} << 20;
  o.chunk_tokens = 128;
  auto rt = Runtime::open(o);
  EXPECT_TRUE(rt.ok()) << rt.status().to_string();
  return rt.ok() ? std::move(*rt) : nullptr;
}

GenerateRequest greedy(int64_t n) {
  GenerateRequest r;
  r.max_new_tokens = n;
  r.ignore_eos = true;
  return r;
}

std::vector<int32_t> generate(Session& s, int64_t n) {
  auto r = s.generate(greedy(n)).get();
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? r->tokens : std::vector<int32_t>{};
}

const char* kText =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.";

TEST(Persistence, SessionSurvivesARestartAndContinuesLikeAnUninterruptedRun) {
  // Uninterrupted reference, in memory.
  auto mem = open_runtime("");
  ASSERT_TRUE(mem);
  auto ref = mem->create_session("ref");
  ASSERT_TRUE(ref.ok());
  ASSERT_TRUE((*ref)->append_text(kText).get().ok());
  const auto first = generate(**ref, 10);
  const auto after_first = (*ref)->tokens();
  const auto second = generate(**ref, 10);

  const std::string dir = fresh_dir("restart");
  {
    auto rt = open_runtime(dir);
    ASSERT_TRUE(rt);
    auto s = rt->create_session("chat");
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    ASSERT_TRUE((*s)->append_text(kText).get().ok());
    EXPECT_EQ(generate(**s, 10), first);
  }
  auto rt = open_runtime(dir);
  ASSERT_TRUE(rt);
  auto listed = rt->list_sessions();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id, "chat");
  auto s = rt->open_session("chat");
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ((*s)->tokens(), after_first);
  EXPECT_EQ(generate(**s, 10), second);
  fs::remove_all(dir);
}

TEST(Persistence, ForksAndDeletesPersist) {
  const std::string dir = fresh_dir("fork");
  {
    auto rt = open_runtime(dir);
    ASSERT_TRUE(rt);
    auto s = rt->create_session("parent");
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->append_text(kText).get().ok());
    auto child = (*s)->fork("child").get();
    ASSERT_TRUE(child.ok()) << child.status().to_string();
    ASSERT_TRUE((*child)->append_text(" And God said, Let there be light").get().ok());
    ASSERT_TRUE(rt->create_session("doomed").ok());
    ASSERT_TRUE(rt->delete_session("doomed").ok());
  }
  auto rt = open_runtime(dir);
  ASSERT_TRUE(rt);
  auto child = rt->open_session("child");
  ASSERT_TRUE(child.ok()) << child.status().to_string();
  EXPECT_EQ((*child)->info().parent, "parent");
  EXPECT_EQ(rt->open_session("doomed").status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(rt->delete_session("parent").ok());  // not open: deleted from disk
  auto child_tokens = (*child)->tokens();
  EXPECT_EQ(generate(**child, 4).size(), 4u);       // the child's shared blocks outlive the parent
  EXPECT_EQ(rt->list_sessions().size(), 1u);
  fs::remove_all(dir);
}

TEST(Persistence, UnknownAndMalformedSessionIdsAreClearErrors) {
  const std::string dir = fresh_dir("ids");
  auto rt = open_runtime(dir);
  ASSERT_TRUE(rt);
  EXPECT_EQ(rt->open_session("nobody").status().code(), StatusCode::kNotFound);
  auto bad = rt->create_session("has space");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("has space"), std::string::npos);
  ASSERT_TRUE(rt->create_session("twice").ok());
  EXPECT_EQ(rt->create_session("twice").status().code(), StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

std::vector<int32_t> ingest_tokens(Runtime& rt) {
  std::string text;
  for (int i = 0; i < 35; ++i) text += kText;  // ~1,800 tokens (< 2,048 positions): many kill points
  return rt.tokenizer().encode(text, true);
}

// The child appends the text in chunks and reports each acknowledged length through a pipe.
[[noreturn]] void ingest_child(const std::string& dir, int fd) {
  auto rt = open_runtime(dir);
  if (!rt) _exit(3);
  const std::vector<int32_t> all = ingest_tokens(*rt);
  auto s = rt->open_session("ingest");
  if (!s.ok()) s = rt->create_session("ingest");
  if (!s.ok()) _exit(4);
  const int64_t ready = -1;  // the session is open: the parent starts its kill timer now
  if (write(fd, &ready, sizeof ready) != sizeof ready) _exit(6);
  size_t have = (*s)->tokens().size();
  while (have < all.size()) {
    const size_t n = std::min<size_t>(7, all.size() - have);
    if (!(*s)->append_tokens(std::vector<int32_t>(all.begin() + have, all.begin() + have + n)).get().ok()) _exit(5);
    have += n;
    const int64_t acked = static_cast<int64_t>(have);
    if (write(fd, &acked, sizeof acked) != sizeof acked) _exit(6);
  }
  if (!(*s)->wait_prefilled().get().ok()) _exit(7);
  _exit(0);
}

TEST(Persistence, AcknowledgedAppendsSurviveKillNine) {
  const std::string dir = fresh_dir("kill");
  std::vector<int32_t> all;
  {
    auto mem = open_runtime("");
    ASSERT_TRUE(mem);
    all = ingest_tokens(*mem);
  }
  std::mt19937 rng(std::random_device{}());
  int64_t acked = 0;
  int kills = 0;
  for (int round = 0; round < 40 && kills < 12; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // A fresh process image (OpenMP's thread pool does not survive fork): this test binary again,
      // running only the child test below.
      close(fds[0]);
      setenv("MNEMO_TEST_INGEST_DIR", dir.c_str(), 1);
      setenv("MNEMO_TEST_INGEST_FD", std::to_string(fds[1]).c_str(), 1);
      execl("/proc/self/exe", "persistence_test", "--gtest_filter=PersistenceChild.Ingest", nullptr);
      _exit(9);
    }
    close(fds[1]);
    // Once it is up, let it run a random while, reading its acknowledgements, then kill -9.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool exited = false, started = false;
    while (std::chrono::steady_clock::now() < deadline) {
      int64_t v;
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fds[0], &set);
      timeval tv{0, 5000};
      if (select(fds[0] + 1, &set, nullptr, nullptr, &tv) > 0) {
        if (read(fds[0], &v, sizeof v) == sizeof v) {
          if (v < 0 && !started) {
            started = true;
            deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(2 + rng() % 40);
          }
          acked = std::max(acked, v);
        } else {
          exited = true;
          break;
        }
      }
    }
    if (!exited) {
      kill(pid, SIGKILL);
      ++kills;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    close(fds[0]);
    // Every acknowledged token is there, in order.
    auto rt = open_runtime(dir);
    ASSERT_TRUE(rt);
    auto s = rt->open_session("ingest");
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    const auto tokens = (*s)->tokens();
    ASSERT_GE(static_cast<int64_t>(tokens.size()), acked) << "round " << round;
    ASSERT_EQ(tokens, std::vector<int32_t>(all.begin(), all.begin() + tokens.size())) << "round " << round;
    if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 0 && tokens.size() == all.size()) break;
  }
  EXPECT_GE(kills, 10);
  // Finish the ingest, then the greedy continuation equals an uninterrupted run's.
  std::vector<int32_t> continued;
  {
    auto rt = open_runtime(dir);
    ASSERT_TRUE(rt);
    auto s = rt->open_session("ingest");
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    const auto have = (*s)->tokens();
    if (have.size() < all.size()) {
      ASSERT_TRUE((*s)->append_tokens(std::vector<int32_t>(all.begin() + have.size(), all.end())).get().ok());
    }
    continued = generate(**s, 12);
  }
  auto mem = open_runtime("");
  auto ref = mem->create_session();
  ASSERT_TRUE((*ref)->append_tokens(all).get().ok());
  EXPECT_EQ(continued, generate(**ref, 12));
  std::printf("[ info     ] %d kills, %lld tokens acknowledged before the last kill\n", kills,
              static_cast<long long>(acked));
  fs::remove_all(dir);
}

// Not a test on its own: the child process of AcknowledgedAppendsSurviveKillNine.
TEST(PersistenceChild, Ingest) {
  const char* dir = std::getenv("MNEMO_TEST_INGEST_DIR");
  const char* fd = std::getenv("MNEMO_TEST_INGEST_FD");
  if (!dir || !fd) GTEST_SKIP() << "runs only as the child of Persistence.AcknowledgedAppendsSurviveKillNine";
  ingest_child(dir, std::atoi(fd));
}

}  // namespace
}  // namespace mnemo
