// The Asio/Beast half of the server (server.h): the listener, one coroutine per connection, SSE
// streaming, helper threads for calls that block on the runtime, and shutdown. Everything Asio lives
// in this one translation unit (the slow one to compile); what each route does is in api.cpp.
//
// Key decisions:
// - One I/O thread. Connections only parse, route and write; waiting on the runtime happens on
//   helper threads (the runtime hands out std::futures), so a slow fork never stalls a token stream.
// - A streamed generation is a TokenStream (runtime/token_stream.h) read by the connection's
//   coroutine, one SSE chunk per token. Backpressure end to end: while a chunk is being written the
//   stream's bounded buffer fills and the engine pauses that session, so a slow client costs at most
//   kSseBufferEvents events and no model work (until write_timeout_ms cancels it).
// - While a request runs, a second coroutine reads the socket: EOF or an error means the client went
//   away, and its generation is cancelled (streamed or not).
// - g++ 12 destroys some temporaries of a full-expression holding co_await twice (capturing lambdas,
//   by-value parameters of the awaited call): every awaited operation here is first built into a
//   named variable, then awaited.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <csignal>
#include <set>
#include <thread>

#include "core/log.h"
#include "runtime/server/api.h"
#include "runtime/server/helper_threads.h"
#include "runtime/server/server.h"
#include "runtime/token_stream.h"

namespace mnemo::server {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using boost::system::error_code;
using namespace asio::experimental::awaitable_operators;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

namespace {

// Token events a streamed generation may buffer while its client's socket is slow.
constexpr int64_t kSseBufferEvents = 64;

struct Connection {
  explicit Connection(tcp::socket s) : stream(std::move(s)) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;  // bytes read and not yet parsed (possibly a pipelined request)
};

void log_exception(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    MNEMO_LOG(kError) << "mnemo server: " << x.what();
  }
}

}  // namespace

class Server::Impl {
 public:
  Impl(Runtime& runtime, const ServerOptions& options)
      : options_(options), api_(runtime, options_, metrics_), acceptor_(ioc_), signals_(ioc_) {}

  Status listen();
  void launch();
  void stop();
  void wait();
  uint16_t port() const { return port_; }

 private:
  awaitable<void> accept_loop();
  awaitable<void> wait_for_signal();
  awaitable<void> serve(tcp::socket socket);
  awaitable<void> serve_requests(Connection& c);
  awaitable<bool> respond(Connection& c, Plan& plan, unsigned version, bool keep_alive);
  awaitable<bool> stream_generation(Connection& c, Plan& plan, unsigned version, bool keep_alive);
  awaitable<void> pump_stream(Connection& c, std::shared_ptr<GenerationJob> job, TokenStream* stream,
                              unsigned version, bool keep_alive, bool& client_ok);
  awaitable<void> blocking_then_stop_watch(Connection& c, std::function<HttpReply()> fn, HttpReply& out);
  awaitable<void> watch_disconnect(Connection& c, std::function<void()> on_disconnect);
  awaitable<bool> write_reply(Connection& c, const HttpReply& reply, unsigned version, bool keep_alive);
  awaitable<void> linger_close(Connection& c);
  void begin_shutdown();

  // Runs fn() on a helper thread; resumes with its value (or rethrows what it threw).
  template <typename T>
  awaitable<T> run_blocking(std::function<T()> fn) {
    auto executor = co_await asio::this_coro::executor;
    auto op = asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
        [this, executor](auto handler, std::function<T()> f) {
          auto work = asio::make_work_guard(executor);
          helpers_.spawn([handler = std::move(handler), f = std::move(f), work = std::move(work)]() mutable {
            std::exception_ptr error;
            T value{};
            try {
              value = f();
            } catch (...) {
              error = std::current_exception();
            }
            asio::post(work.get_executor(), [handler = std::move(handler), error, value = std::move(value)]() mutable {
              std::move(handler)(error, std::move(value));
            });
          });
        },
        asio::use_awaitable, std::move(fn));
    co_return co_await std::move(op);
  }

  const ServerOptions options_;
  HttpMetrics metrics_;
  Api api_;
  asio::io_context ioc_;  // run by io_thread_ alone; helpers and the engine post to it
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  uint16_t port_ = 0;
  // I/O thread only.
  std::set<Connection*> connections_;
  bool stopping_ = false;

  HelperThreads helpers_;
  std::thread io_thread_;
  std::mutex stop_mu_;
  bool stopped_ = false;
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  bool done_ = false;  // the I/O thread has returned
};

Status Server::Impl::listen() {
  if (options_.max_body_bytes <= 0 || options_.read_timeout_ms <= 0 || options_.write_timeout_ms <= 0 ||
      options_.max_connections <= 0) {
    return invalid_argument("ServerOptions: max_body_bytes, timeouts and max_connections must be positive");
  }
  error_code ec;
  tcp::resolver resolver(ioc_);
  auto endpoints = resolver.resolve(options_.host, std::to_string(options_.port), tcp::resolver::passive, ec);
  if (ec || endpoints.empty()) return invalid_argument("--host: cannot resolve '", options_.host, "': ", ec.message());
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  if (acceptor_.open(endpoint.protocol(), ec); !ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return io_error("cannot listen on ", options_.host, ":", options_.port, ": ", ec.message());
  port_ = acceptor_.local_endpoint().port();
  return Status::Ok();
}

void Server::Impl::launch() {
  asio::co_spawn(ioc_, accept_loop(), log_exception);
  if (options_.handle_signals) {
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    asio::co_spawn(ioc_, wait_for_signal(), log_exception);
  }
  io_thread_ = std::thread([this] {
    ioc_.run();  // returns when every connection, stream and helper completion has finished
    std::lock_guard<std::mutex> lock(done_mu_);
    done_ = true;
    done_cv_.notify_all();
  });
}

void Server::Impl::stop() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (stopped_) return;
  asio::post(ioc_, [this] { begin_shutdown(); });
  if (io_thread_.joinable()) io_thread_.join();
  helpers_.join_all();
  stopped_ = true;
}

void Server::Impl::wait() {
  {
    std::unique_lock<std::mutex> lock(done_mu_);
    done_cv_.wait(lock, [&] { return done_; });
  }
  stop();
}

// I/O thread. Generations are cancelled, the listener closes, idle connections see their read
// aborted; busy ones finish their (cancelled) response and close, as keep-alive is now off.
void Server::Impl::begin_shutdown() {
  if (stopping_) return;
  stopping_ = true;
  error_code ec;
  acceptor_.close(ec);
  signals_.cancel(ec);
  api_.shutdown();
  for (Connection* c : connections_) c->stream.socket().cancel(ec);
}

awaitable<void> Server::Impl::wait_for_signal() {
  auto [ec, signal] = co_await signals_.async_wait(kTuple);
  if (ec) co_return;
  MNEMO_LOG(kWarning) << "mnemo server: signal " << signal << ", shutting down";
  begin_shutdown();
}

awaitable<void> Server::Impl::accept_loop() {
  asio::steady_timer backoff(ioc_);
  while (!stopping_) {
    auto [ec, socket] = co_await acceptor_.async_accept(kTuple);
    if (stopping_ || ec == asio::error::operation_aborted) break;
    if (ec) {  // out of descriptors, say: wait a little rather than spin
      MNEMO_LOG(kWarning) << "mnemo server: accept: " << ec.message();
      backoff.expires_after(std::chrono::milliseconds(50));
      co_await backoff.async_wait(kTuple);
      continue;
    }
    asio::co_spawn(ioc_, serve(std::move(socket)), log_exception);
  }
}

awaitable<void> Server::Impl::serve(tcp::socket socket) {
  Connection c(std::move(socket));
  connections_.insert(&c);
  metrics_.connection_opened();
  std::exception_ptr error;
  try {
    co_await serve_requests(c);
  } catch (...) {
    error = std::current_exception();
  }
  log_exception(error);
  connections_.erase(&c);
  metrics_.connection_closed();
  error_code ec;
  c.stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  c.stream.close();
}

awaitable<void> Server::Impl::serve_requests(Connection& c) {
  if (stopping_) co_return;
  if (static_cast<int64_t>(connections_.size()) > options_.max_connections) {
    const HttpReply busy = error_reply(make_error(503, "too_many_connections", "too many open connections"));
    co_await write_reply(c, busy, 11, false);
    co_return;
  }
  while (!stopping_) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(static_cast<uint64_t>(options_.max_body_bytes));
    parser.header_limit(64 * 1024);
    c.stream.expires_after(std::chrono::milliseconds(options_.read_timeout_ms));
    auto [ec, bytes] = co_await http::async_read_header(c.stream, c.buffer, parser, kTuple);
    if (!ec && parser.get()[http::field::expect] == "100-continue") {  // curl asks before large bodies
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      std::tie(ec, bytes) = co_await asio::async_write(c.stream, asio::buffer(kContinue), kTuple);
    }
    if (!ec) std::tie(ec, bytes) = co_await http::async_read(c.stream, c.buffer, parser, kTuple);
    if (stopping_ || ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
        ec == beast::error::timeout) {
      co_return;
    }
    if (ec == http::error::body_limit) {
      metrics_.count_request("other", 413);
      const HttpReply too_large = error_reply(
          make_error(413, "body_too_large",
                     detail::str_cat("request body larger than the limit of ", options_.max_body_bytes, " bytes")));
      co_await write_reply(c, too_large, 11, false);
      co_await linger_close(c);
      co_return;
    }
    if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
      metrics_.count_request("other", 400);
      const HttpReply bad = error_reply(make_error(400, "bad_http", "malformed HTTP request: " + ec.message()));
      co_await write_reply(c, bad, 11, false);
      co_return;
    }
    if (ec) co_return;  // reset by the peer, and the like
    const auto& req = parser.get();
    Plan plan = api_.handle({req.method_string(), req.target(), req[http::field::authorization], req.body()});
    if (!co_await respond(c, plan, req.version(), req.keep_alive())) co_return;
  }
}

// Answers one request; false when the connection must close.
awaitable<bool> Server::Impl::respond(Connection& c, Plan& plan, unsigned version, bool keep_alive) {
  if (plan.stream) co_return co_await stream_generation(c, plan, version, keep_alive);
  HttpReply reply;
  if (plan.blocking && plan.on_disconnect) {
    c.stream.expires_never();
    auto work = blocking_then_stop_watch(c, std::move(plan.blocking), reply);
    auto watch = watch_disconnect(c, std::move(plan.on_disconnect));
    co_await (std::move(work) && std::move(watch));
  } else if (plan.blocking) {
    auto work = run_blocking<HttpReply>(std::move(plan.blocking));
    reply = co_await std::move(work);
  } else {
    reply = std::move(plan.reply);
  }
  metrics_.count_request(plan.route, reply.status);
  co_return co_await write_reply(c, reply, version, keep_alive);
}

awaitable<void> Server::Impl::blocking_then_stop_watch(Connection& c, std::function<HttpReply()> fn, HttpReply& out) {
  auto work = run_blocking<HttpReply>(std::move(fn));
  out = co_await std::move(work);
  error_code ec;
  c.stream.socket().cancel(ec);  // ends watch_disconnect
}

// Reads while a request runs: bytes (a pipelined request) stay in the buffer for the next parse; EOF
// or an error means the client is gone. Ends when the socket's operations are cancelled.
awaitable<void> Server::Impl::watch_disconnect(Connection& c, std::function<void()> on_disconnect) {
  while (c.buffer.size() < 64 * 1024) {
    auto [ec, n] = co_await c.stream.socket().async_read_some(c.buffer.prepare(4096), kTuple);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      on_disconnect();
      co_return;
    }
    c.buffer.commit(n);
  }
}

awaitable<bool> Server::Impl::stream_generation(Connection& c, Plan& plan, unsigned version, bool keep_alive) {
  std::shared_ptr<GenerationJob> job = plan.stream;
  auto prepare = run_blocking<std::optional<ApiError>>([job] { return job->prepare(); });
  const std::optional<ApiError> error = co_await std::move(prepare);
  if (error) {
    auto finish = run_blocking<bool>([job] {
      job->finish(nullptr);
      return true;
    });
    co_await std::move(finish);
    metrics_.count_request(plan.route, error->http_status);
    const HttpReply reply = error_reply(*error);
    co_return co_await write_reply(c, reply, version, keep_alive);
  }
  std::optional<TokenStream> stream;  // none when the job was cancelled before it started
  job->start_with([&](const std::shared_ptr<Session>& session, const GenerateRequest& request) {
    stream.emplace(generate_stream(ioc_.get_executor(), session, request, {.buffer_events = kSseBufferEvents}));
  });
  metrics_.count_request(plan.route, 200);
  bool client_ok = true;
  c.stream.expires_never();
  auto pump = pump_stream(c, job, stream ? &*stream : nullptr, version, keep_alive, client_ok);
  auto watch = watch_disconnect(c, [job] { job->cancel("disconnect"); });
  co_await (std::move(pump) && std::move(watch));
  co_return client_ok&& keep_alive && !stopping_;
}

// Writes the SSE response: the header, one chunk per token event until the stream ends, then the
// end. The job is finished (session released) before the last chunk, so a client that reads [DONE]
// may at once generate again in the same session.
awaitable<void> Server::Impl::pump_stream(Connection& c, std::shared_ptr<GenerationJob> job, TokenStream* stream,
                                          unsigned version, bool keep_alive, bool& client_ok) {
  const auto write_timeout = std::chrono::milliseconds(options_.write_timeout_ms);
  http::response<http::empty_body> res{http::status::ok, version};
  res.set(http::field::server, "mnemo");
  res.set(http::field::content_type, "text/event-stream");
  res.set(http::field::cache_control, "no-cache");
  res.keep_alive(keep_alive);
  res.chunked(true);
  http::response_serializer<http::empty_body> serializer{res};
  c.stream.expires_after(write_timeout);
  auto [ec, n] = co_await http::async_write_header(c.stream, serializer, kTuple);
  client_ok = !ec;
  if (!client_ok) job->cancel("disconnect");
  GenerateResult collected;  // the result, rebuilt from the events
  std::optional<Result<GenerateResult>> final;
  if (!stream) {
    collected.reason = FinishReason::kCancelled;
    final = std::move(collected);
  }
  for (bool done = false; !done;) {
    std::string data;
    if (!final) {
      auto next = stream->async_next(kTuple);
      auto [next_ec, ev] = co_await std::move(next);
      if (next_ec) {
        Status error = stream->status();
        final = error.ok() ? internal_error("token stream: ", next_ec.message()) : std::move(error);
      } else if (ev.last()) {
        collected.text += ev.text;
        collected.reason = *ev.finish;
        final = std::move(collected);
      } else {
        collected.tokens.push_back(ev.id);
        collected.text += ev.text;
        if (ev.text.empty()) continue;  // a pending multi-byte character or stop-string prefix
        data = job->sse_chunk(ev.text);
      }
    }
    if (final) {
      done = true;
      auto finish = run_blocking<bool>([job, result = &*final] {
        job->finish(result);
        return true;
      });
      co_await std::move(finish);
      data = job->sse_end(*final);
    }
    if (!client_ok) continue;
    c.stream.expires_after(write_timeout);
    const auto chunk = http::make_chunk(asio::buffer(data));
    std::tie(ec, n) = co_await asio::async_write(c.stream, chunk, kTuple);
    if (ec) {  // the client is gone or too slow: stop generating, keep draining to the result
      client_ok = false;
      job->cancel("disconnect");
    }
  }
  if (client_ok) {
    const auto last = http::make_chunk_last();
    std::tie(ec, n) = co_await asio::async_write(c.stream, last, kTuple);
    client_ok = !ec;
  }
  c.stream.expires_never();
  c.stream.socket().cancel(ec);  // ends watch_disconnect
}

awaitable<bool> Server::Impl::write_reply(Connection& c, const HttpReply& reply, unsigned version, bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(reply.status), version};
  res.set(http::field::server, "mnemo");
  res.set(http::field::content_type, reply.content_type);
  if (!reply.allow.empty()) res.set(http::field::allow, reply.allow);
  if (reply.status == 401) res.set(http::field::www_authenticate, "Bearer");
  res.keep_alive(keep_alive && !stopping_);
  res.body() = reply.body;
  res.prepare_payload();
  c.stream.expires_after(std::chrono::milliseconds(options_.write_timeout_ms));
  auto [ec, n] = co_await http::async_write(c.stream, res, kTuple);
  co_return !ec && res.keep_alive();
}

// After an error answered before the body was read: stop sending, then read and drop what the client
// still sends for a moment, so closing does not reset the connection before it reads the answer.
awaitable<void> Server::Impl::linger_close(Connection& c) {
  error_code ec;
  c.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  c.stream.expires_after(std::chrono::seconds(1));
  char scratch[4096];
  for (int64_t total = 0; total < options_.max_body_bytes * 2;) {
    auto [read_ec, n] = co_await c.stream.async_read_some(asio::buffer(scratch), kTuple);
    if (read_ec) break;
    total += static_cast<int64_t>(n);
  }
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { stop(); }

Result<std::unique_ptr<Server>> Server::start(Runtime& runtime, const ServerOptions& options) {
  auto impl = std::make_unique<Impl>(runtime, options);
  MNEMO_RETURN_IF_ERROR(impl->listen());
  impl->launch();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

uint16_t Server::port() const { return impl_->port(); }
void Server::stop() { impl_->stop(); }
void Server::wait() { impl_->wait(); }

}  // namespace mnemo::server
