// TokenStream: a session's generation as an awaitable stream of events (Boost.Asio, any completion
// token: use_awaitable, as_tuple, use_future, deferred or a plain callback).
//
//   asio::awaitable<void> reply(std::shared_ptr<Session> s) {
//     TokenStream stream = generate_stream(co_await asio::this_coro::executor, s, {.max_new_tokens = 64});
//     for (;;) {
//       auto [ec, ev] = co_await stream.async_next(asio::as_tuple(asio::use_awaitable));
//       if (ec) co_return;           // an error: ec.value() is its StatusCode, stream.status() says why
//       std::cout << ev.text;
//       if (ev.last()) co_return;    // *ev.finish says why the generation ended
//     }
//   }
//
// Key decision — backpressure pauses the session: the engine samples a stream's next token only while
// the stream holds fewer than `buffer_events` unread events. A consumer that stops reading costs a
// bounded buffer and no model work; its session keeps its KV and logits and continues exactly where it
// paused once the consumer reads (other sessions run on meanwhile). Greedy tokens are the same as the
// callback API's, read fast or slow.
//
// This header is the Asio face of the runtime and is opt-in: runtime.h stays free of Asio types.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/status.h"
#include "runtime/runtime.h"

namespace mnemo {

struct TokenStreamOptions {
  // Unread token events held for the consumer; at this many the session pauses (see above). Must be
  // >= 1. Default: 64
  int64_t buffer_events = 64;
};

// One event of a stream: a generated token, or the last event of a generation that ended normally.
struct StreamEvent {
  int32_t id = -1;                     // the generated token id; -1 on the last event
  std::string text;                    // text released by this event: complete UTF-8, may be empty. The
                                       // texts of all events concatenate to GenerateResult::text
  std::optional<FinishReason> finish;  // on the last event only: why the generation ended
  bool last() const { return finish.has_value(); }
};

// Error codes of async_next: category "mnemo", value = the StatusCode of the error.
const boost::system::error_category& status_category();
boost::system::error_code make_error_code(StatusCode code);

namespace detail {
class StreamState;  // runtime/token_stream.cpp
// A pending async_next, its handler type erased. complete() posts the handler to its associated
// executor and never runs it inline; it is called exactly once.
class StreamWaiter {
 public:
  virtual ~StreamWaiter() = default;
  virtual void complete(boost::system::error_code ec, StreamEvent event) = 0;
};
void start_next(const std::shared_ptr<StreamState>& state, std::unique_ptr<StreamWaiter> waiter);
// Per-operation cancellation: completes `waiter` with operation_aborted if it is still pending.
void abort_wait(const std::shared_ptr<StreamState>& state, const StreamWaiter* waiter);
}  // namespace detail

// A running generation of one session, read one event at a time.
//
// States: generating -> ended (the generation finished, failed, or was cancelled; the engine sends
// nothing more) -> drained (every buffered event and the end were read; async_next gives eof).
// A stream ends exactly once: with a last event (error_code 0, ev.last()) or with an error.
//
// async_next completes with (error_code, StreamEvent):
//   - 0 and a token event; or 0 and the last event (finish = length, eos, stop, or cancelled after
//     cancel() or Session::cancel());
//   - an error, after every token event generated before it: value() is the StatusCode, category
//     status_category(), status() has the message. kInvalidArgument (bad request, the session is
//     already generating), kNotFound (unknown session id), kCancelled (the session was closed or
//     deleted, or the Runtime was destroyed: "the runtime is shutting down"), or the error that
//     broke the session;
//   - asio::error::eof once the stream is drained; asio::error::operation_aborted when the stream
//     is destroyed while the operation waits, or when the handler's cancellation slot is emitted
//     (any type: a waiting read holds no event, so the stream stays intact and the next read gets
//     the next event — timeouts with awaitable operators `||` or parallel_group work); asio::error::already_started when another async_next
//     is still pending; asio::error::bad_descriptor on a moved-from stream.
//   After an error the stream is drained too: later calls give eof.
// With use_awaitable and no as_tuple, errors throw boost::system::system_error.
//
// Completions: the handler runs on its associated executor (a coroutine's own executor or strand;
// by default the stream's executor), always through post — never inline in async_next and never on
// the engine thread. A pending async_next counts as outstanding work on that executor.
//
// Thread-safety: as an Asio I/O object — one async_next at a time; distinct streams are independent.
// cancel(), status(), buffered() and the destructor may be called from any thread.
//
// Lifetime: the stream keeps its session alive until the generation ends. Destroying the stream
// cancels the generation; the session stays usable (a generate() right away queues behind the
// cancelled one). A stream may outlive its Runtime: ~Runtime ends it with kCancelled. Destroying the
// Runtime concurrently with a call on one of its streams is, as for its sessions, not allowed.
class TokenStream {
 public:
  using executor_type = boost::asio::any_io_executor;

  // A moved-from stream keeps its executor; its async_next completes with bad_descriptor.
  TokenStream(TokenStream&& other) noexcept : executor_(other.executor_), state_(std::move(other.state_)) {}
  TokenStream& operator=(TokenStream&& other) noexcept;  // abandons (cancels) the stream it held
  TokenStream(const TokenStream&) = delete;
  TokenStream& operator=(const TokenStream&) = delete;
  ~TokenStream();  // cancel(), and a pending async_next completes with operation_aborted

  executor_type get_executor() const { return executor_; }

  // Waits for the next event; signature void(boost::system::error_code, StreamEvent).
  template <typename CompletionToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_next(CompletionToken&& token = CompletionToken()) {
    return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, StreamEvent)>(
        [](auto handler, std::shared_ptr<detail::StreamState> state, executor_type io_ex) {
          using Handler = std::decay_t<decltype(handler)>;
          auto waiter = std::make_unique<Waiter<Handler>>(std::move(handler), io_ex);
          if (state) waiter->connect_cancellation(state);
          detail::start_next(state, std::move(waiter));
        },
        token, state_, executor_);
  }

  // Stops the generation: it ends at the engine's next step with a last event whose finish is
  // kCancelled (after the tokens already generated). No-op once the stream has ended.
  void cancel();
  // kOk, or the error that ended the stream.
  Status status() const;
  // Token events generated and not yet read; never more than buffer_events.
  int64_t buffered() const;
  // The most token events the stream ever buffered (for tests and metrics).
  int64_t max_buffered() const;

 private:
  friend TokenStream generate_stream(executor_type, std::shared_ptr<Session>, GenerateRequest,
                                     TokenStreamOptions);
  friend TokenStream generate_stream(executor_type, Runtime&, const std::string&, GenerateRequest,
                                     TokenStreamOptions);
  TokenStream(executor_type ex, std::shared_ptr<detail::StreamState> state)
      : executor_(std::move(ex)), state_(std::move(state)) {}

  template <typename Handler>
  class Waiter final : public detail::StreamWaiter {
   public:
    Waiter(Handler handler, const executor_type& io_ex)
        : work_(boost::asio::prefer(boost::asio::get_associated_executor(handler, io_ex),
                                    boost::asio::execution::outstanding_work.tracked)),
          slot_(boost::asio::get_associated_cancellation_slot(handler)),
          handler_(std::move(handler)) {}
    // Any cancellation type aborts the wait: a pending read has taken no event, so none is lost.
    void connect_cancellation(const std::shared_ptr<detail::StreamState>& state) {
      if (!slot_.is_connected()) return;
      slot_.assign([weak = std::weak_ptr<detail::StreamState>(state), self = this](boost::asio::cancellation_type) {
        if (auto s = weak.lock()) detail::abort_wait(s, self);  // `self` is compared, never dereferenced
      });
    }
    void complete(boost::system::error_code ec, StreamEvent event) override {
      // post, not dispatch: complete() runs on the engine thread or inside async_next. The slot is
      // cleared on the handler's executor, where its signal is emitted.
      auto work = std::move(work_);
      boost::asio::post(work, [slot = slot_, handler = std::move(handler_), ec, event = std::move(event)]() mutable {
        if (slot.is_connected()) slot.clear();
        std::move(handler)(ec, std::move(event));
      });
    }

   private:
    using WorkExecutor = std::decay_t<decltype(boost::asio::prefer(
        std::declval<boost::asio::associated_executor_t<Handler, executor_type>>(),
        boost::asio::execution::outstanding_work.tracked))>;
    WorkExecutor work_;
    boost::asio::associated_cancellation_slot_t<Handler> slot_;
    Handler handler_;
  };

  executor_type executor_;
  std::shared_ptr<detail::StreamState> state_;
};

// Starts a generation on `session` (as Session::generate) and returns its stream; completions go to
// `ex` unless a handler names its own executor. Never blocks. Errors (bad request, busy or closed
// session) do not throw: the stream's first async_next reports them.
TokenStream generate_stream(TokenStream::executor_type ex, std::shared_ptr<Session> session,
                            GenerateRequest request, TokenStreamOptions options = {});
// The same for a session id: Runtime::open_session(id) first (which blocks while a persisted session
// is recovered); an unknown id gives a stream whose first async_next fails with kNotFound.
TokenStream generate_stream(TokenStream::executor_type ex, Runtime& runtime, const std::string& session_id,
                            GenerateRequest request, TokenStreamOptions options = {});

}  // namespace mnemo
