// TokenStream's shared state: the bounded event buffer between the engine and the consumer.
//
// Locks: the engine calls has_room() under RuntimeImpl::mu_ (an atomic read, no lock) and on_token /
// on_done without it; the consumer takes StreamState::mu_ and never holds it while calling into the
// session (a cancel may complete another stream's queued generation, whose hooks lock that stream).
// So the two mutexes are never nested and no order between them can deadlock.
#include "runtime/token_stream.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>

#include "runtime/session.h"

namespace mnemo {
namespace {

class StatusCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "mnemo"; }
  std::string message(int value) const override { return status_code_name(static_cast<StatusCode>(value)); }
};

}  // namespace

const boost::system::error_category& status_category() {
  static const StatusCategory category;
  return category;
}

boost::system::error_code make_error_code(StatusCode code) {
  return {static_cast<int>(code), status_category()};
}

namespace detail {

class StreamState {
 public:
  explicit StreamState(int64_t capacity) : capacity_(capacity) {}

  // Engine side. Under RuntimeImpl::mu_: the engine samples only while this holds, and it is the
  // only producer, one token per step, so buffered_ never exceeds capacity_.
  bool has_room() const { return buffered_.load(std::memory_order_acquire) < capacity_; }

  void on_token(const TokenEvent& e) {
    std::unique_ptr<StreamWaiter> waiter;
    StreamEvent ev{e.id, e.text, std::nullopt};
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (abandoned_) return;
      streamed_bytes_ += e.text.size();
      if (!waiter_) {
        events_.push_back(std::move(ev));
        const int64_t n = buffered_.fetch_add(1, std::memory_order_acq_rel) + 1;
        max_buffered_ = std::max(max_buffered_, n);
        return;
      }
      waiter = std::move(waiter_);  // a waiter waits only on an empty buffer: hand the event over
    }
    waiter->complete({}, std::move(ev));
  }

  void on_done(const Result<GenerateResult>& r) {
    std::unique_ptr<StreamWaiter> waiter;
    boost::system::error_code ec;
    StreamEvent ev;
    std::shared_ptr<SessionImpl> session;  // released outside the lock
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = std::move(session_);
      ended_ = true;
      if (r.ok()) {
        StreamEvent last;
        // Text held back (a partial stop string, a pending UTF-8 character) is released at the end.
        if (r->text.size() > streamed_bytes_) last.text = r->text.substr(streamed_bytes_);
        last.finish = r->reason;
        last_ = std::move(last);
      } else {
        error_ = r.status();
      }
      if (!waiter_) return;
      waiter = std::move(waiter_);
      take_end_locked(&ec, &ev);
    }
    waiter->complete(ec, std::move(ev));
  }

  // Consumer side.
  void next(std::unique_ptr<StreamWaiter> waiter) {
    boost::system::error_code ec;
    StreamEvent ev;
    std::shared_ptr<SessionImpl> wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiter_) {
        ec = boost::asio::error::already_started;
      } else if (!events_.empty()) {
        ev = std::move(events_.front());
        events_.pop_front();
        // At capacity the engine may be paused on this stream: the room just made must wake it.
        if (buffered_.fetch_sub(1, std::memory_order_acq_rel) == capacity_ && !ended_) wake = session_;
      } else if (!ended_) {
        waiter_ = std::move(waiter);
        return;
      } else if (drained_) {
        ec = boost::asio::error::eof;
      } else {
        take_end_locked(&ec, &ev);
      }
    }
    if (wake) wake->wake_engine();
    waiter->complete(ec, std::move(ev));
  }

  void cancel() {
    std::shared_ptr<SessionImpl> session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ended_) session = session_;
    }
    if (session) session->cancel_generation(this);
  }

  void abort_wait(const StreamWaiter* which) {
    std::unique_ptr<StreamWaiter> waiter;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!waiter_ || waiter_.get() != which) return;  // completed meanwhile
      waiter = std::move(waiter_);
    }
    waiter->complete(boost::asio::error::operation_aborted, {});
  }

  // The stream object is gone: cancel, drop buffered events, abort a pending async_next.
  void abandon() {
    std::unique_ptr<StreamWaiter> waiter;
    {
      std::lock_guard<std::mutex> lock(mu_);
      abandoned_ = true;
      events_.clear();
      buffered_.store(0, std::memory_order_release);
      waiter = std::move(waiter_);
    }
    cancel();
    if (waiter) waiter->complete(boost::asio::error::operation_aborted, {});
  }

  // The generation could not start.
  void fail(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    session_.reset();
    ended_ = true;
    error_ = std::move(s);
  }

  void set_session(std::shared_ptr<SessionImpl> s) {
    std::lock_guard<std::mutex> lock(mu_);
    session_ = std::move(s);
  }
  Status status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }
  int64_t buffered() const { return buffered_.load(std::memory_order_acquire); }
  int64_t max_buffered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_buffered_;
  }

 private:
  // The end of the stream for the consumer: the last event, or the error. The buffer is empty.
  void take_end_locked(boost::system::error_code* ec, StreamEvent* ev) {
    drained_ = true;
    if (last_) {
      *ev = std::move(*last_);
      last_.reset();
    } else {
      *ec = make_error_code(error_.code());
    }
  }

  const int64_t capacity_;
  std::atomic<int64_t> buffered_{0};  // events_.size(), read by the engine without mu_

  mutable std::mutex mu_;
  std::deque<StreamEvent> events_;             // token events not yet read
  std::optional<StreamEvent> last_;            // the last event, once the generation ended well
  Status error_;                               // ...or the error that ended it
  bool ended_ = false;                         // the engine sends nothing more
  bool drained_ = false;                       // the end went to the consumer: later reads get eof
  bool abandoned_ = false;                     // the TokenStream is gone
  std::unique_ptr<StreamWaiter> waiter_;       // a pending async_next (only while events_ is empty)
  std::shared_ptr<SessionImpl> session_;       // until the generation ends
  size_t streamed_bytes_ = 0;                  // text bytes sent in token events
  int64_t max_buffered_ = 0;
};

void start_next(const std::shared_ptr<StreamState>& state, std::unique_ptr<StreamWaiter> waiter) {
  if (!state) {
    waiter->complete(boost::asio::error::bad_descriptor, {});
    return;
  }
  state->next(std::move(waiter));
}

void abort_wait(const std::shared_ptr<StreamState>& state, const StreamWaiter* waiter) { state->abort_wait(waiter); }

}  // namespace detail

TokenStream& TokenStream::operator=(TokenStream&& other) noexcept {
  if (this != &other) {
    if (state_) state_->abandon();
    executor_ = other.executor_;
    state_ = std::move(other.state_);
  }
  return *this;
}

TokenStream::~TokenStream() {
  if (state_) state_->abandon();
}

void TokenStream::cancel() {
  if (state_) state_->cancel();
}

Status TokenStream::status() const {
  return state_ ? state_->status() : invalid_argument("TokenStream: moved from");
}

int64_t TokenStream::buffered() const { return state_ ? state_->buffered() : 0; }

int64_t TokenStream::max_buffered() const { return state_ ? state_->max_buffered() : 0; }

TokenStream generate_stream(TokenStream::executor_type ex, std::shared_ptr<Session> session, GenerateRequest request,
                            TokenStreamOptions options) {
  auto state = std::make_shared<detail::StreamState>(std::max<int64_t>(1, options.buffer_events));
  if (options.buffer_events < 1) {
    state->fail(invalid_argument("generate_stream: buffer_events must be >= 1, got ", options.buffer_events));
    return TokenStream(std::move(ex), std::move(state));
  }
  auto impl = std::dynamic_pointer_cast<SessionImpl>(session);
  if (!impl) {
    state->fail(invalid_argument("generate_stream: ", session ? "not a session of a mnemo Runtime" : "no session"));
    return TokenStream(std::move(ex), std::move(state));
  }
  auto gen = std::make_unique<Generation>();
  gen->request = std::move(request);
  gen->owner = state.get();
  gen->on_token = [state](const TokenEvent& e) { state->on_token(e); };
  gen->on_done = [state](const Result<GenerateResult>& r) { state->on_done(r); };
  // A raw pointer: the Generation's other hooks keep the state alive as long as it can be called.
  gen->has_room = [raw = state.get()] { return raw->has_room(); };
  state->set_session(impl);  // before the start: on_done may run on the engine thread at once
  Status started = impl->start_generation(gen);
  if (!started.ok()) state->fail(std::move(started));
  return TokenStream(std::move(ex), std::move(state));
}

TokenStream generate_stream(TokenStream::executor_type ex, Runtime& runtime, const std::string& session_id,
                            GenerateRequest request, TokenStreamOptions options) {
  Result<std::shared_ptr<Session>> session = runtime.open_session(session_id);
  if (!session.ok()) {
    auto state = std::make_shared<detail::StreamState>(std::max<int64_t>(1, options.buffer_events));
    state->fail(session.status());
    return TokenStream(std::move(ex), std::move(state));
  }
  return generate_stream(std::move(ex), *session, std::move(request), options);
}

}  // namespace mnemo
