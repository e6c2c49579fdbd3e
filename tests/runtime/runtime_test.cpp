// The session runtime on the CPU backend with the bundled tiny model: interleaving, forks, cancel,
// errors. Every expectation compares against a session run alone, so the tests hold for any weights.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <chrono>
#include <thread>

#include "model/config.h"
#include "model/tokenizer.h"
#include "runtime/runtime.h"

namespace mnemo {
namespace {

double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
}

std::unique_ptr<Runtime> open_runtime(RuntimeOptions options = {}) {
  options.model_dir = "models/tiny";
  auto rt = Runtime::open(options);
  EXPECT_TRUE(rt.ok()) << rt.status().to_string();
  return rt.ok() ? std::move(*rt) : nullptr;
}

std::vector<int32_t> run_alone_tokens(Runtime& rt, const std::vector<int32_t>& prompt, int64_t n) {
  auto s = rt.create_session();
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE((*s)->append_tokens(prompt).get().ok());
  GenerateRequest req;
  req.max_new_tokens = n;
  req.ignore_eos = true;
  auto r = (*s)->generate(req).get();
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? r->tokens : std::vector<int32_t>{};
}

std::vector<int32_t> run_alone(Runtime& rt, const std::string& prompt, int64_t n) {
  auto s = rt.create_session();
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE((*s)->append_text(prompt).get().ok());
  GenerateRequest req;
  req.max_new_tokens = n;
  req.ignore_eos = true;
  auto r = (*s)->generate(req).get();
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? r->tokens : std::vector<int32_t>{};
}

TEST(Runtime, ThirtyTwoInterleavedSessionsProduceWhatEachProducesAlone) {
  RuntimeOptions options;
  options.chunk_tokens = 16;       // small chunks so prefills of different sessions interleave
  options.max_batch_tokens = 40;
  auto rt = open_runtime(options);
  ASSERT_TRUE(rt);
  const int kSessions = 32;
  std::vector<std::string> prompts;
  for (int i = 0; i < kSessions; ++i) {
    std::string p = "Session " + std::to_string(i) + ":";
    for (int k = 0; k < i % 5; ++k) p += " and the word of the day is number " + std::to_string(i * 7 + k) + ".";
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> alone;
  for (int i = 0; i < kSessions; ++i) alone.push_back(run_alone(*rt, prompts[i], 6 + i % 4));

  auto rt2 = open_runtime(options);
  ASSERT_TRUE(rt2);
  std::vector<std::shared_ptr<Session>> sessions;
  std::vector<std::future<Result<GenerateResult>>> results;
  for (int i = 0; i < kSessions; ++i) {
    auto s = rt2->create_session();
    ASSERT_TRUE(s.ok());
    sessions.push_back(*s);
  }
  for (int i = 0; i < kSessions; ++i) {
    ASSERT_TRUE(sessions[i]->append_text(prompts[i]).get().ok());
    GenerateRequest req;
    req.max_new_tokens = 6 + i % 4;
    req.ignore_eos = true;
    results.push_back(sessions[i]->generate(req));
  }
  for (int i = 0; i < kSessions; ++i) {
    auto r = results[i].get();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->tokens, alone[i]) << "session " << i;
  }
}

TEST(Runtime, ForkContinuesLikeARunFromScratch) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session();
  ASSERT_TRUE(s.ok());
  // Long enough to seal blocks: a fork shares them instead of copying.
  std::string prefix;
  for (int i = 0; i < 12; ++i) prefix += "In the beginning God created the heaven and the earth. ";
  ASSERT_TRUE((*s)->append_text(prefix + "In the beginning God created").get().ok());
  ASSERT_TRUE((*s)->wait_prefilled().get().ok());
  const std::string before = rt->metrics_text();
  auto child = (*s)->fork().get();
  ASSERT_TRUE(child.ok()) << child.status().to_string();
  const std::string after = rt->metrics_text();
  const int64_t sealed = static_cast<int64_t>((*s)->tokens().size()) / 64 * rt->model_config().num_hidden_layers;
  ASSERT_GT(sealed, 0);
  EXPECT_EQ(metric(after, "mnemo_kv_shared_blocks"), sealed) << "every sealed block is shared, none copied";
  // Only the open blocks (one per layer) were copied for the child.
  EXPECT_EQ(metric(after, "mnemo_kv_blocks") - metric(before, "mnemo_kv_blocks"),
            rt->model_config().num_hidden_layers);
  const std::vector<int32_t> common = (*s)->tokens();
  ASSERT_EQ((*child)->tokens(), common);
  const std::vector<int32_t> heaven = rt->tokenizer().encode(" the heaven", false);
  const std::vector<int32_t> earth = rt->tokenizer().encode(" the earth", false);
  ASSERT_TRUE((*s)->append_tokens(heaven).get().ok());
  ASSERT_TRUE((*child)->append_tokens(earth).get().ok());
  GenerateRequest req;
  req.max_new_tokens = 8;
  req.ignore_eos = true;
  auto a = (*s)->generate(req).get();
  auto b = (*child)->generate(req).get();
  ASSERT_TRUE(a.ok() && b.ok());
  auto concat = [&](std::vector<int32_t> x) {
    std::vector<int32_t> all = common;
    all.insert(all.end(), x.begin(), x.end());
    return all;
  };
  EXPECT_EQ(a->tokens, run_alone_tokens(*rt, concat(heaven), 8));
  EXPECT_EQ(b->tokens, run_alone_tokens(*rt, concat(earth), 8));
}

TEST(Runtime, CancelStopsAGenerationMidway) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->append_text("And God said").get().ok());
  std::atomic<int> seen{0};
  std::shared_ptr<Session> session = *s;
  GenerateRequest req;
  req.max_new_tokens = 100000;
  req.ignore_eos = true;
  auto f = session->generate(req, [&](const TokenEvent&) {
    if (++seen == 5) session->cancel();  // from the engine thread: must not deadlock
  });
  auto r = f.get();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->reason, FinishReason::kCancelled);
  EXPECT_GE(r->tokens.size(), 5u);
  EXPECT_LT(r->tokens.size(), 100u);
  // The session stays usable: the generated tokens are part of its stream.
  EXPECT_EQ(session->info().length, static_cast<int64_t>(session->tokens().size()));
  auto again = session->generate({.max_new_tokens = 2, .ignore_eos = true}).get();
  EXPECT_TRUE(again.ok());
}

TEST(Runtime, UnknownSessionIsNotFound) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->open_session("nope");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("'nope'"), std::string::npos);
  EXPECT_EQ(rt->delete_session("nope").code(), StatusCode::kNotFound);
}

TEST(Runtime, SecondGenerationOnOneSessionIsRefused) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session();
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->append_text("Hello").get().ok());
  auto first = (*s)->generate({.max_new_tokens = 50, .ignore_eos = true});
  auto second = (*s)->generate({.max_new_tokens = 5}).get();
  EXPECT_FALSE(second.ok());
  EXPECT_TRUE(first.get().ok());
}

TEST(Runtime, ConcurrentAppendsToOneSessionAllLand) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session();
  ASSERT_TRUE(s.ok());
  std::shared_ptr<Session> session = *s;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) EXPECT_TRUE(session->append_tokens({int32_t(100 + t), int32_t(200 + i)}).get().ok());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(session->wait_prefilled().get().ok());
  EXPECT_EQ(session->tokens().size(), 80u);
  EXPECT_EQ(session->info().pending_tokens, 0);
}

TEST(Runtime, ExactPolicyRefusesPastMaxPositionEmbeddings) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session();
  ASSERT_TRUE(s.ok());
  const int64_t limit = rt->model_config().max_position_embeddings;
  Status st = (*s)->append_tokens(std::vector<int32_t>(limit + 1, 5)).get();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kOutOfBudget);
  EXPECT_NE(st.message().find("max_position_embeddings"), std::string::npos) << st.message();
}

TEST(Runtime, DeletingASessionWithWorkInFlightFailsItsFutures) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = rt->create_session("victim");
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->append_text("The words of the prophet").get().ok());
  auto gen = (*s)->generate({.max_new_tokens = 100000, .ignore_eos = true});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(rt->delete_session("victim").ok());
  auto r = gen.get();
  // Either it finished as cancelled or failed as cancelled; it never hangs.
  if (r.ok()) {
    EXPECT_EQ(r->reason, FinishReason::kCancelled);
  } else {
    EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  }
  EXPECT_EQ((*s)->append_text("more").get().code(), StatusCode::kCancelled);
  EXPECT_EQ(rt->open_session("victim").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace mnemo

namespace mnemo {
namespace {

TEST(RuntimeBounded, StreamsPastMaxPositionEmbeddingsWithinTierBudgets) {
  const std::string dir = testing::TempDir() + "/mnemo_bounded_stream";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string sparse = dir + "/sparse.json";
  std::ofstream(sparse) << R"({"window_size": 256, "topk": 4, "dense_len": 512, "use_nope": true})";
  RuntimeOptions o;
  o.model_dir = "models/tiny";
  o.positions = PositionPolicy::kBounded;
  o.sparse_config_path = sparse;
  o.data_dir = dir + "/data";
  o.chunk_tokens = 64;
  o.gpu_kv_budget_bytes = int64_t{32} * 64 * 1024;   // 32 slots of 64 KiB: a step's blocks, not the stream
  o.host_kv_budget_bytes = int64_t{48} * 64 * 1024;  // 48 slots: the rest only on disk
  auto rt = Runtime::open(o);
  ASSERT_TRUE(rt.ok()) << rt.status().to_string();
  auto s = (*rt)->create_session("long");
  ASSERT_TRUE(s.ok());
  const int64_t limit = (*rt)->model_config().max_position_embeddings;
  std::mt19937 rng(5);
  int64_t appended = 0;
  while (appended < 2 * limit + 500) {
    std::vector<int32_t> chunk(200);
    for (auto& x : chunk) x = int32_t(3 + rng() % 4000);
    ASSERT_TRUE((*s)->append_tokens(chunk).get().ok());
    appended += 200;
  }
  const Status prefilled = (*s)->wait_prefilled().get();
  ASSERT_TRUE(prefilled.ok()) << prefilled.to_string();
  auto r = (*s)->generate({.max_new_tokens = 8, .ignore_eos = true}).get();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->tokens.size(), 8u);
  EXPECT_GT((*s)->info().length, 2 * limit);
  const std::string m = (*rt)->metrics_text();
  EXPECT_LE(metric(m, "mnemo_kv_gpu_slots_used"), metric(m, "mnemo_kv_gpu_slots_total"));
  EXPECT_LE(metric(m, "mnemo_kv_host_slots_used"), metric(m, "mnemo_kv_host_slots_total"));
  EXPECT_LE(metric(m, "mnemo_kv_gpu_slots_total"), 32);  // whole blocks within the byte budget
  EXPECT_GT(metric(m, "mnemo_kv_gpu_evictions_total"), 0);
  EXPECT_GT(metric(m, "mnemo_kv_disk_reads_total") + metric(m, "mnemo_kv_host_hits_total"), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mnemo
