// TokenStream (runtime/token_stream.h) on the CPU backend with the bundled tiny model: the stream
// yields what the callback API yields, two coroutines read two sessions at once, a slow consumer
// pauses its session at the buffer cap, destroying a stream cancels it, errors arrive as documented.
// Where a test needs the engine to hold still it blocks the engine thread in another session's token
// callback (released by the test), never by sleeping.
#include "runtime/token_stream.h"

#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <future>
#include <thread>

#include "runtime/runtime.h"

namespace mnemo {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;

std::unique_ptr<Runtime> open_runtime() {
  RuntimeOptions options;
  options.model_dir = "models/tiny";
  auto rt = Runtime::open(options);
  EXPECT_TRUE(rt.ok()) << rt.status().to_string();
  return rt.ok() ? std::move(*rt) : nullptr;
}

std::shared_ptr<Session> session_with(Runtime& rt, const std::string& prompt) {
  auto s = rt.create_session();
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  if (!s.ok()) return nullptr;
  EXPECT_TRUE((*s)->append_text(prompt).get().ok());
  return *s;
}

// What the callback API yields for `prompt`.
struct Reference {
  std::vector<int32_t> ids;
  std::vector<std::string> texts;
  GenerateResult result;
};
Reference callback_run(Runtime& rt, const std::string& prompt, const GenerateRequest& req) {
  Reference ref;
  auto s = session_with(rt, prompt);
  auto r = s->generate(req, [&](const TokenEvent& e) {
              ref.ids.push_back(e.id);
              ref.texts.push_back(e.text);
            }).get();
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  if (r.ok()) ref.result = *r;
  return ref;
}

// A stream read to its end.
struct Read {
  std::vector<int32_t> ids;
  std::vector<std::string> texts;
  std::string text;
  std::optional<FinishReason> finish;
  error_code ec;                 // the error that ended it, if any
  bool on_engine_thread = false; // a completion ran somewhere but the consumer's thread
};

asio::awaitable<Read> read_all(TokenStream& stream, int64_t max_buffered_allowed = 1 << 30) {
  Read read;
  const auto me = std::this_thread::get_id();
  for (;;) {
    auto [ec, ev] = co_await stream.async_next(asio::as_tuple(asio::use_awaitable));
    if (std::this_thread::get_id() != me) read.on_engine_thread = true;
    EXPECT_LE(stream.buffered(), max_buffered_allowed);
    if (ec) {
      read.ec = ec;
      co_return read;
    }
    read.text += ev.text;
    if (ev.last()) {
      read.finish = ev.finish;
      co_return read;
    }
    read.ids.push_back(ev.id);
    read.texts.push_back(ev.text);
  }
}

// Runs `aw` on `ioc` from this thread until the io_context runs out of work. A pending async_next
// is outstanding work, so the result must be ready then.
template <typename T>
T run(asio::io_context& ioc, asio::awaitable<T> aw) {
  auto f = asio::co_spawn(ioc, std::move(aw), asio::use_future);
  ioc.restart();
  ioc.run();
  EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready) << "run() returned with a read pending";
  return f.get();
}

// Blocks the engine thread inside a token callback of a throwaway session until release() (or the
// destructor), so the test can act while the engine holds still. Calls that need the engine
// (create_session) must come before it.
class EngineGate {
 public:
  explicit EngineGate(Runtime& rt) : session_(session_with(rt, "Gate")) {
    auto released = released_.get_future().share();
    done_ = session_->generate({.max_new_tokens = 1, .ignore_eos = true},
                               [this, released](const TokenEvent&) {
                                 entered_.set_value();
                                 released.wait();
                               });
    entered_.get_future().wait();
  }
  ~EngineGate() { release(); }
  void release() {
    if (open_) return;
    open_ = true;
    released_.set_value();
    EXPECT_TRUE(done_.get().ok());
  }

 private:
  std::shared_ptr<Session> session_;
  std::promise<void> entered_, released_;
  std::future<Result<GenerateResult>> done_;
  bool open_ = false;
};

const char kPrompt[] = "In the beginning God created the heaven and the earth. And the earth was";

TEST(TokenStream, YieldsExactlyTheTokensOfTheCallbackApi) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  const Reference free_run = callback_run(*rt, kPrompt, {.max_new_tokens = 24, .ignore_eos = true});
  ASSERT_GT(free_run.result.text.size(), 6u);
  // Length-limited, stopped at EOS or not, and cut by a stop string (text held back, then released).
  std::vector<GenerateRequest> requests = {{.max_new_tokens = 24, .ignore_eos = true},
                                           {.max_new_tokens = 24},
                                           {.max_new_tokens = 24, .stop = {free_run.result.text.substr(4, 3)}}};
  asio::io_context ioc;
  for (const GenerateRequest& req : requests) {
    const Reference ref = callback_run(*rt, kPrompt, req);
    auto s = session_with(*rt, kPrompt);
    TokenStream stream = generate_stream(ioc.get_executor(), s, req, {.buffer_events = 3});
    const Read read = run(ioc, read_all(stream, 3));
    EXPECT_FALSE(read.ec) << read.ec.message();
    EXPECT_EQ(read.ids, ref.ids);
    EXPECT_EQ(read.texts, ref.texts);
    EXPECT_EQ(read.ids, ref.result.tokens);
    EXPECT_EQ(read.text, ref.result.text);
    ASSERT_TRUE(read.finish.has_value());
    EXPECT_EQ(*read.finish, ref.result.reason);
    EXPECT_FALSE(read.on_engine_thread);
    // Drained: every later read is eof.
    auto [ec, ev] = run(ioc, stream.async_next(asio::as_tuple(asio::use_awaitable)));
    EXPECT_EQ(ec, asio::error::eof);
  }
}

TEST(TokenStream, CallbackAndFutureTokensCompleteOnTheConsumersExecutor) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  asio::io_context ioc;
  auto work = asio::make_work_guard(ioc);
  std::thread io_thread([&] { ioc.run(); });
  TokenStream stream = generate_stream(ioc.get_executor(), session_with(*rt, kPrompt),
                                       {.max_new_tokens = 4, .ignore_eos = true});
  StreamEvent first = stream.async_next(asio::use_future).get();
  EXPECT_GE(first.id, 0);
  std::promise<std::thread::id> ran_on;
  stream.async_next([&](error_code ec, StreamEvent ev) {
    EXPECT_FALSE(ec);
    EXPECT_GE(ev.id, 0);
    ran_on.set_value(std::this_thread::get_id());
  });
  EXPECT_EQ(ran_on.get_future().get(), io_thread.get_id());
  work.reset();
  io_thread.join();
}

TEST(TokenStream, TwoCoroutinesConsumeTwoSessionsConcurrently) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  const std::string prompt_a = "And God said, Let there be light:";
  const std::string prompt_b = "The words of the prophet are written on the subway walls";
  const GenerateRequest req{.max_new_tokens = 20, .ignore_eos = true};
  const Reference ref_a = callback_run(*rt, prompt_a, req);
  const Reference ref_b = callback_run(*rt, prompt_b, req);

  asio::io_context ioc;
  TokenStream a = generate_stream(ioc.get_executor(), session_with(*rt, prompt_a), req, {.buffer_events = 1});
  TokenStream b = generate_stream(ioc.get_executor(), session_with(*rt, prompt_b), req, {.buffer_events = 1});
  // Each reads one event, then waits for the other to have read one too: both streams are provably
  // mid-generation at the same time before either goes on.
  int arrived = 0;
  asio::steady_timer rendezvous(ioc, asio::steady_timer::time_point::max());
  auto consume = [&](TokenStream& stream) -> asio::awaitable<Read> {
    auto [ec, first] = co_await stream.async_next(asio::as_tuple(asio::use_awaitable));
    EXPECT_FALSE(ec);
    EXPECT_FALSE(first.last());
    if (++arrived == 2) {
      rendezvous.cancel();
    } else {
      auto [wait_ec] = co_await rendezvous.async_wait(asio::as_tuple(asio::use_awaitable));
      EXPECT_EQ(wait_ec, asio::error::operation_aborted);
    }
    Read rest = co_await read_all(stream, 1);
    rest.ids.insert(rest.ids.begin(), first.id);
    rest.texts.insert(rest.texts.begin(), first.text);
    rest.text = first.text + rest.text;
    co_return rest;
  };
  auto fa = asio::co_spawn(ioc, consume(a), asio::use_future);
  auto fb = asio::co_spawn(ioc, consume(b), asio::use_future);
  ioc.run();
  ASSERT_EQ(fa.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  ASSERT_EQ(fb.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  const Read ra = fa.get(), rb = fb.get();
  EXPECT_EQ(arrived, 2);
  EXPECT_EQ(ra.ids, ref_a.result.tokens);
  EXPECT_EQ(rb.ids, ref_b.result.tokens);
  EXPECT_EQ(ra.text, ref_a.result.text);
  EXPECT_EQ(rb.text, ref_b.result.text);
  EXPECT_EQ(ra.finish, FinishReason::kLength);
  EXPECT_EQ(rb.finish, FinishReason::kLength);
}

TEST(TokenStream, SlowConsumerPausesTheSessionAtTheBufferCap) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  const GenerateRequest req{.max_new_tokens = 40, .ignore_eos = true};
  const Reference ref = callback_run(*rt, kPrompt, req);
  auto s = session_with(*rt, kPrompt);
  const int64_t prompt_len = s->info().length;
  constexpr int64_t kCap = 4;
  asio::io_context ioc;
  TokenStream stream = generate_stream(ioc.get_executor(), s, req, {.buffer_events = kCap});
  // Nobody reads: the buffer fills to the cap (a bounded wait on a condition, not a sleep).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (stream.buffered() < kCap && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  ASSERT_EQ(stream.buffered(), kCap);
  // A barrier of engine steps: another session generates 40 tokens; had the paused session kept
  // going it would have sampled in every one of those steps.
  const Reference other = callback_run(*rt, "Another session runs meanwhile", req);
  ASSERT_EQ(other.ids.size(), 40u);
  EXPECT_EQ(stream.buffered(), kCap);
  EXPECT_EQ(stream.max_buffered(), kCap);
  EXPECT_EQ(s->info().length, prompt_len + kCap) << "the paused session sampled past its buffer";
  EXPECT_TRUE(s->info().generating);
  // An event is ready, yet async_next called on the consumer's own executor does not run its handler
  // inline: it is posted (no recursion into the caller, no surprise reentrancy).
  std::optional<StreamEvent> first;
  bool returned = false;
  asio::post(ioc, [&] {
    stream.async_next([&](error_code ec, StreamEvent ev) {
      EXPECT_TRUE(returned) << "the handler ran inside async_next";
      EXPECT_FALSE(ec);
      first = std::move(ev);
    });
    returned = true;
  });
  ioc.run();
  ASSERT_TRUE(first.has_value());
  // Reading resumes it; the buffer never holds more than the cap and the tokens are unchanged.
  Read read = run(ioc, read_all(stream, kCap));
  read.ids.insert(read.ids.begin(), first->id);
  read.text = first->text + read.text;
  EXPECT_FALSE(read.ec) << read.ec.message();
  EXPECT_EQ(read.ids, ref.result.tokens);
  EXPECT_EQ(read.text, ref.result.text);
  EXPECT_EQ(stream.max_buffered(), kCap);
  EXPECT_EQ(s->info().length, prompt_len + 40);
}

TEST(TokenStream, DestroyingTheStreamCancelsAndTheSessionGeneratesAgain) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = session_with(*rt, kPrompt);
  const int64_t prompt_len = s->info().length;
  asio::io_context ioc;
  constexpr int64_t kCap = 4;
  {
    TokenStream stream =
        generate_stream(ioc.get_executor(), s, {.max_new_tokens = 100000, .ignore_eos = true}, {.buffer_events = kCap});
    auto read3 = [&]() -> asio::awaitable<int> {
      for (int i = 0; i < 3; ++i) {
        auto ev = co_await stream.async_next(asio::use_awaitable);  // throws on error
        EXPECT_FALSE(ev.last());
      }
      co_return 3;
    };
    EXPECT_EQ(run(ioc, read3()), 3);
  }  // ~TokenStream: cancels mid-generation
  // At once, without waiting for the engine: the new generation queues behind the cancelled one.
  auto again = s->generate({.max_new_tokens = 4, .ignore_eos = true}).get();
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  ASSERT_EQ(again->tokens.size(), 4u);
  const std::vector<int32_t> all = s->tokens();
  const int64_t cancelled_tokens = static_cast<int64_t>(all.size()) - prompt_len - 4;
  EXPECT_GE(cancelled_tokens, 3);
  EXPECT_LE(cancelled_tokens, 3 + kCap + 2) << "the cancelled generation ran past its buffer";
  // The session continues as a session with that history run from scratch would.
  auto fresh = rt->create_session();
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->append_tokens(std::vector<int32_t>(all.begin(), all.end() - 4)).get().ok());
  auto expect = (*fresh)->generate({.max_new_tokens = 4, .ignore_eos = true}).get();
  ASSERT_TRUE(expect.ok());
  EXPECT_EQ(again->tokens, expect->tokens);
  EXPECT_FALSE(s->info().generating);
  // The ended stream holds no reference to its session: only ours and the runtime's remain (a step
  // in flight holds one more for a moment).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (s.use_count() > 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  EXPECT_EQ(s.use_count(), 2) << "the ended stream still holds its session";
}

TEST(TokenStream, DestroyingTheStreamAbortsAPendingRead) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  auto s = session_with(*rt, kPrompt);
  asio::io_context ioc;
  std::optional<error_code> result;
  {
    EngineGate gate(*rt);  // the engine produces nothing: the read below must wait
    auto stream = std::make_unique<TokenStream>(
        generate_stream(ioc.get_executor(), s, {.max_new_tokens = 100000, .ignore_eos = true}));
    stream->async_next([&](error_code ec, StreamEvent) { result = ec; });
    ioc.poll();
    EXPECT_FALSE(result.has_value()) << "the read completed with the engine held still";
    stream.reset();
    EXPECT_FALSE(result.has_value()) << "completed inline in the destructor";
    ioc.restart();
    ioc.run();
  }
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(*result, asio::error::operation_aborted);
  auto again = s->generate({.max_new_tokens = 2, .ignore_eos = true}).get();
  EXPECT_TRUE(again.ok()) << again.status().to_string();
}

TEST(TokenStream, CancellationSlotAbortsAWaitingReadAndLosesNoEvent) {
  using namespace asio::experimental::awaitable_operators;
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  const GenerateRequest req{.max_new_tokens = 6, .ignore_eos = true};
  const Reference ref = callback_run(*rt, kPrompt, req);
  auto s = session_with(*rt, kPrompt);  // before the gate: create_session needs the engine
  asio::io_context ioc;
  std::optional<TokenStream> stream;
  std::optional<error_code> aborted;
  size_t timeout_won = 0;
  {
    EngineGate gate(*rt);  // nothing arrives while the reads below wait
    stream.emplace(generate_stream(ioc.get_executor(), s, req));
    // A slot emitted by hand.
    asio::cancellation_signal signal;
    stream->async_next(asio::bind_cancellation_slot(signal.slot(), [&](error_code ec, StreamEvent) { aborted = ec; }));
    ioc.restart();
    ioc.poll();
    EXPECT_FALSE(aborted.has_value());
    signal.emit(asio::cancellation_type::terminal);  // posts the completion before it returns
    ioc.restart();
    ioc.poll();
    // A timeout: the read races a timer under awaitable operators, which cancel the loser.
    auto race = [&]() -> asio::awaitable<size_t> {
      asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
      auto either = co_await (stream->async_next(asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
      co_return either.index();
    };
    auto raced = asio::co_spawn(ioc, race(), asio::use_future);
    ioc.restart();
    ioc.run_for(std::chrono::seconds(5));  // a bound for the failure case only: it takes a millisecond
    EXPECT_EQ(raced.wait_for(std::chrono::seconds(0)), std::future_status::ready) << "the timeout did not cancel the read";
    if (raced.wait_for(std::chrono::seconds(0)) == std::future_status::ready) timeout_won = raced.get();
  }
  ASSERT_TRUE(aborted.has_value());
  EXPECT_EQ(*aborted, asio::error::operation_aborted);
  EXPECT_EQ(timeout_won, 1u) << "the read completed with the engine held still";
  // The stream is intact: every event arrives, none was taken by the aborted reads.
  const Read read = run(ioc, read_all(*stream));
  EXPECT_FALSE(read.ec) << read.ec.message();
  EXPECT_EQ(read.ids, ref.result.tokens);
  EXPECT_EQ(read.text, ref.result.text);
}

TEST(TokenStream, CancelEndsWithACancelledLastEvent) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  asio::io_context ioc;
  TokenStream stream = generate_stream(ioc.get_executor(), session_with(*rt, kPrompt),
                                       {.max_new_tokens = 100000, .ignore_eos = true}, {.buffer_events = 2});
  auto first = run(ioc, stream.async_next(asio::use_awaitable));
  EXPECT_FALSE(first.last());
  stream.cancel();
  const Read rest = run(ioc, read_all(stream, 2));
  EXPECT_FALSE(rest.ec) << rest.ec.message();
  EXPECT_EQ(rest.finish, FinishReason::kCancelled);
  EXPECT_LE(rest.ids.size(), 4u);
}

TEST(TokenStream, ErrorsArriveAsDocumented) {
  auto rt = open_runtime();
  ASSERT_TRUE(rt);
  asio::io_context ioc;
  auto ex = ioc.get_executor();
  auto first_error = [&](TokenStream& stream) {
    auto [ec, ev] = run(ioc, stream.async_next(asio::as_tuple(asio::use_awaitable)));
    return ec;
  };
  {  // Unknown id: kNotFound; with use_awaitable alone it throws; then eof.
    TokenStream stream = generate_stream(ex, *rt, "nope", {});
    auto f = asio::co_spawn(ioc, stream.async_next(asio::use_awaitable), asio::use_future);
    ioc.restart();
    ioc.run();
    try {
      f.get();
      ADD_FAILURE() << "no error for an unknown session";
    } catch (const boost::system::system_error& e) {
      EXPECT_EQ(e.code(), make_error_code(StatusCode::kNotFound));
      EXPECT_EQ(e.code().category().name(), std::string("mnemo"));
    }
    EXPECT_EQ(stream.status().code(), StatusCode::kNotFound);
    EXPECT_NE(stream.status().message().find("'nope'"), std::string::npos) << stream.status().message();
    EXPECT_EQ(first_error(stream), asio::error::eof);
    TokenStream moved = std::move(stream);
    EXPECT_EQ(first_error(stream), asio::error::bad_descriptor);  // the moved-from one
    EXPECT_EQ(first_error(moved), asio::error::eof);
  }
  {  // A deleted session: kCancelled.
    auto s = session_with(*rt, "Hello");
    ASSERT_TRUE(rt->delete_session(s->id()).ok());
    TokenStream stream = generate_stream(ex, s, {});
    EXPECT_EQ(first_error(stream), make_error_code(StatusCode::kCancelled));
  }
  {  // A session already generating, and a bad request: kInvalidArgument; the running one is untouched.
    auto s = session_with(*rt, "Hello");
    TokenStream running = generate_stream(ex, s, {.max_new_tokens = 100000, .ignore_eos = true}, {.buffer_events = 1});
    TokenStream second = generate_stream(ex, s, {});
    EXPECT_EQ(first_error(second), make_error_code(StatusCode::kInvalidArgument));
    TokenStream bad = generate_stream(ex, session_with(*rt, "Hi"), {}, {.buffer_events = 0});
    EXPECT_EQ(first_error(bad), make_error_code(StatusCode::kInvalidArgument));
    auto ev = run(ioc, running.async_next(asio::use_awaitable));
    EXPECT_FALSE(ev.last());
  }
  {  // The Runtime is destroyed mid-generation: buffered tokens, then kCancelled, then eof.
    TokenStream stream = generate_stream(ex, session_with(*rt, kPrompt), {.max_new_tokens = 100000, .ignore_eos = true},
                                         {.buffer_events = 4});
    auto ev = run(ioc, stream.async_next(asio::use_awaitable));
    EXPECT_FALSE(ev.last());
    rt.reset();
    const Read rest = run(ioc, read_all(stream, 4));
    EXPECT_LE(rest.ids.size(), 4u);
    EXPECT_EQ(rest.ec, make_error_code(StatusCode::kCancelled));
    EXPECT_NE(stream.status().message().find("shutting down"), std::string::npos) << stream.status().message();
    EXPECT_EQ(first_error(stream), asio::error::eof);
  }  // the stream outlives the Runtime and is destroyed safely
}

}  // namespace
}  // namespace mnemo
