// The HTTP server against the bundled tiny model on loopback: every test starts a Server on an
// ephemeral port in-process and talks to it with a small Beast client whose every operation has a
// 20 s deadline, so a hang fails the test instead of stalling CI.
#include "runtime/server/server.h"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <thread>

#include "runtime/runtime.h"

namespace mnemo::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using error_code = boost::system::error_code;
constexpr auto kDeadline = std::chrono::seconds(20);

struct Response {
  int status = 0;
  std::string body;
  std::string content_type;
  json::value json() const { return json::parse(body); }
  std::string error_message() const { return std::string(json().at("error").at("message").as_string()); }
};

// A blocking HTTP/1.1 client: each call runs an async Beast operation under a deadline to completion.
class Client {
 public:
  explicit Client(uint16_t port) {
    const asio::ip::tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
    error_code result;
    stream_.expires_after(kDeadline);
    stream_.async_connect(endpoint, [&](error_code ec) { result = ec; });
    run();
    EXPECT_FALSE(result) << "connect: " << result.message();
  }

  // Sends a request and reads the whole response (a streamed one until its last chunk).
  Response send(http::verb verb, const std::string& target, const std::string& body = "",
                const std::string& auth = "") {
    if (error_code ec = write_request(verb, target, body, auth)) return {0, "write: " + ec.message(), ""};
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    error_code result;
    stream_.expires_after(kDeadline);
    http::async_read(stream_, buffer_, parser, [&](error_code ec, size_t) { result = ec; });
    run();
    if (result) return {0, "read: " + result.message(), ""};
    const auto& res = parser.get();
    return {static_cast<int>(res.result_int()), res.body(), std::string(res[http::field::content_type])};
  }
  Response get(const std::string& target, const std::string& auth = "") {
    return send(http::verb::get, target, "", auth);
  }
  Response post(const std::string& target, const std::string& body, const std::string& auth = "") {
    return send(http::verb::post, target, body, auth);
  }

  // Streaming by hand: the request, then the response header, then body bytes as they come.
  error_code write_request(http::verb verb, const std::string& target, const std::string& body,
                           const std::string& auth) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    if (!auth.empty()) req.set(http::field::authorization, auth);
    req.body() = body;
    req.prepare_payload();
    error_code result;
    stream_.expires_after(kDeadline);
    http::async_write(stream_, req, [&](error_code ec, size_t) { result = ec; });
    run();
    return result;
  }
  error_code write_raw(const std::string& bytes) {
    error_code result;
    stream_.expires_after(kDeadline);
    asio::async_write(stream_, asio::buffer(bytes), [&](error_code ec, size_t) { result = ec; });
    run();
    return result;
  }
  error_code read_header() {
    parser_.body_limit(64 << 20);
    error_code result;
    stream_.expires_after(kDeadline);
    http::async_read_header(stream_, buffer_, parser_, [&](error_code ec, size_t) { result = ec; });
    run();
    return result;
  }
  error_code read_some() {
    error_code result;
    stream_.expires_after(kDeadline);
    http::async_read_some(stream_, buffer_, parser_, [&](error_code ec, size_t) { result = ec; });
    run();
    return result;
  }
  http::response_parser<http::string_body>& parser() { return parser_; }
  void close() {
    error_code ec;
    stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    stream_.close();
  }

 private:
  void run() {
    ioc_.restart();
    ioc_.run();
  }
  asio::io_context ioc_;
  beast::tcp_stream stream_{ioc_};
  beast::flat_buffer buffer_;
  http::response_parser<http::string_body> parser_;
};

// The JSON payloads of an SSE body ("data: {...}\n\n" events); the last one is "[DONE]".
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> events;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << "unterminated event at byte " << at;
    if (end == std::string::npos) break;
    const std::string event = body.substr(at, end - at);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    events.push_back(event.substr(6));
    at = end + 2;
  }
  return events;
}

// Text of a completion stream; checks the chunk format and that [DONE] comes last.
std::string streamed_text(const std::string& body, std::string* finish_reason, bool chat = false) {
  const auto events = sse_events(body);
  EXPECT_GE(events.size(), 2u);
  if (events.empty()) return "";
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json::value chunk = json::parse(events[i]);
    EXPECT_EQ(chunk.at("object").as_string(), chat ? "chat.completion.chunk" : "text_completion");
    const json::value& choice = chunk.at("choices").at(0);
    const json::value& piece =
        chat ? choice.at("delta").as_object().contains("content") ? choice.at("delta").at("content") : json::value("")
             : choice.at("text");
    text += std::string(piece.as_string());
    if (!choice.at("finish_reason").is_null()) *finish_reason = std::string(choice.at("finish_reason").as_string());
  }
  return text;
}

// Polls until `done` or 20 s pass.
template <typename F>
bool eventually(F done) {
  const auto until = std::chrono::steady_clock::now() + kDeadline;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

class ServerTest : public ::testing::Test {
 protected:
  void start(ServerOptions options = {}, RuntimeOptions runtime_options = {}) {
    runtime_options.model_dir = "models/tiny";
    auto rt = Runtime::open(runtime_options);
    ASSERT_TRUE(rt.ok()) << rt.status().to_string();
    runtime_ = std::move(*rt);
    options.port = 0;
    auto server = Server::start(*runtime_, options);
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server_ = std::move(*server);
    ASSERT_NE(server_->port(), 0);
  }
  void SetUp() override { start(); }
  void TearDown() override {
    if (server_) server_->stop();
    server_.reset();
    runtime_.reset();
  }
  Client client() { return Client(server_->port()); }

  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<Server> server_;
};

const std::string kGreedy =
    R"({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true)";

TEST_F(ServerTest, HealthAnswersOk) {
  Response r = client().get("/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.json(), json::parse(R"({"status":"ok"})"));
  EXPECT_EQ(r.content_type, "application/json");
}

TEST_F(ServerTest, MetricsShowTheRuntimeAndHttpCounters) {
  Client c = client();
  EXPECT_EQ(c.get("/health").status, 200);
  EXPECT_EQ(c.get("/nowhere").status, 404);
  Response r = c.get("/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.content_type.find("text/plain"), std::string::npos);
  EXPECT_NE(r.body.find("mnemo_steps_total"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("mnemo_http_requests_total{route=\"/health\",code=\"200\"} 1"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("mnemo_http_requests_total{route=\"other\",code=\"404\"} 1"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("mnemo_http_open_connections 1"), std::string::npos) << r.body;
}

TEST_F(ServerTest, StreamedGreedyCompletionEqualsTheNonStreamedOne) {
  Client c = client();
  Response full = c.post("/v1/completions", kGreedy + "}");
  ASSERT_EQ(full.status, 200) << full.body;
  const json::value j = full.json();
  EXPECT_EQ(j.at("object").as_string(), "text_completion");
  const std::string text(j.at("choices").at(0).at("text").as_string());
  EXPECT_EQ(j.at("choices").at(0).at("finish_reason").as_string(), "length");
  EXPECT_GT(j.at("usage").at("prompt_tokens").as_int64(), 0);
  EXPECT_EQ(j.at("usage").at("completion_tokens").as_int64(), 12);

  // Same connection (keep-alive), now streamed.
  Response streamed = c.post("/v1/completions", kGreedy + R"(, "stream": true})");
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.content_type, "text/event-stream");
  std::string finish;
  EXPECT_EQ(streamed_text(streamed.body, &finish), text);
  EXPECT_EQ(finish, "length");
  // Temporary sessions are gone afterwards.
  EXPECT_TRUE(runtime_->list_sessions().empty());
}

TEST_F(ServerTest, CompletionTakesATokenArrayPromptAndStopStrings) {
  Client c = client();
  Response r = c.post("/v1/completions", R"({"prompt": [1, 450, 996], "max_tokens": 5, "temperature": 0,
                                            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto events = sse_events(r.body);
  ASSERT_GE(events.size(), 3u);
  const json::value usage = json::parse(events[events.size() - 2]).at("usage");
  EXPECT_EQ(usage.at("prompt_tokens").as_int64(), 3);
  EXPECT_EQ(usage.at("completion_tokens").as_int64(), 5);

  // Greedy text, then the same request stopped at its second character: "stop" and a prefix.
  Response full = c.post("/v1/completions", kGreedy + "}");
  const std::string text(full.json().at("choices").at(0).at("text").as_string());
  ASSERT_GE(text.size(), 3u);
  json::object stopped = json::parse(kGreedy + "}").as_object();
  stopped["stop"] = json::array{text.substr(1, 2)};
  Response s = c.post("/v1/completions", json::serialize(stopped));
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_EQ(s.json().at("choices").at(0).at("text").as_string(), text.substr(0, text.find(text.substr(1, 2))));
  EXPECT_EQ(s.json().at("choices").at(0).at("finish_reason").as_string(), "stop");
}

TEST_F(ServerTest, ChatCompletionAnswersWithAnAssistantMessage) {
  Client c = client();
  const std::string body = R"({"messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                               "max_tokens": 8, "temperature": 0)";
  Response r = c.post("/v1/chat/completions", body + "}");
  ASSERT_EQ(r.status, 200) << r.body;
  const json::value j = r.json();
  EXPECT_EQ(j.at("object").as_string(), "chat.completion");
  EXPECT_EQ(j.at("choices").at(0).at("message").at("role").as_string(), "assistant");
  const std::string content(j.at("choices").at(0).at("message").at("content").as_string());
  EXPECT_GT(j.at("usage").at("prompt_tokens").as_int64(), 5);

  Response s = c.post("/v1/chat/completions", body + R"(, "stream": true})");
  ASSERT_EQ(s.status, 200) << s.body;
  std::string finish;
  EXPECT_EQ(streamed_text(s.body, &finish, /*chat=*/true), content);
  EXPECT_EQ(json::parse(sse_events(s.body)[0]).at("choices").at(0).at("delta").at("role").as_string(), "assistant");
}

TEST_F(ServerTest, SessionLifecycleCreateAppendGenerateForkDelete) {
  Client c = client();
  Response created = c.post("/v1/sessions", R"({"id": "doc"})");
  ASSERT_EQ(created.status, 200) << created.body;
  EXPECT_EQ(created.json().at("id").as_string(), "doc");
  EXPECT_EQ(c.post("/v1/sessions", R"({"id": "doc"})").status, 409);

  Response appended = c.post("/v1/sessions/doc/append", R"({"text": "The pass key is 12345."})");
  ASSERT_EQ(appended.status, 200) << appended.body;
  const int64_t length = appended.json().at("length").as_int64();
  EXPECT_GT(length, 5);
  EXPECT_EQ(c.post("/v1/sessions/doc/append", R"({"tokens": [100, 200]})").json().at("length").as_int64(), length + 2);

  Response gen = c.post("/v1/sessions/doc/generate", R"({"max_tokens": 4, "temperature": 0, "ignore_eos": true})");
  ASSERT_EQ(gen.status, 200) << gen.body;
  EXPECT_EQ(gen.json().at("session").as_string(), "doc");
  EXPECT_EQ(gen.json().at("tokens").as_array().size(), 4u);
  Response info = c.get("/v1/sessions/doc");
  EXPECT_EQ(info.json().at("length").as_int64(), length + 2 + 4);
  EXPECT_FALSE(info.json().at("generating").as_bool());

  Response forked = c.post("/v1/sessions/doc/fork", R"({"id": "doc-b"})");
  ASSERT_EQ(forked.status, 200) << forked.body;
  EXPECT_EQ(forked.json().at("id").as_string(), "doc-b");
  EXPECT_EQ(forked.json().at("parent").as_string(), "doc");
  EXPECT_EQ(forked.json().at("length").as_int64(), length + 6);
  // Both branches continue the same history: greedy continuations agree.
  const std::string greedy = R"({"max_tokens": 3, "temperature": 0, "ignore_eos": true})";
  Response a = c.post("/v1/sessions/doc/generate", greedy), b = c.post("/v1/sessions/doc-b/generate", greedy);
  EXPECT_EQ(a.json().at("tokens"), b.json().at("tokens"));
  EXPECT_EQ(c.get("/v1/sessions").json().at("data").as_array().size(), 2u);

  EXPECT_EQ(c.send(http::verb::delete_, "/v1/sessions/doc").status, 200);
  Response gone = c.get("/v1/sessions/doc");
  EXPECT_EQ(gone.status, 404);
  EXPECT_NE(gone.error_message().find("'doc'"), std::string::npos) << gone.body;
  EXPECT_EQ(c.get("/v1/sessions/doc-b").status, 200);
  EXPECT_EQ(c.send(http::verb::delete_, "/v1/sessions/doc-b").status, 200);
  EXPECT_EQ(c.get("/v1/sessions").json().at("data").as_array().size(), 0u);
}

TEST_F(ServerTest, MalformedJsonAndWrongTypesAre400NamingTheProblem) {
  Client c = client();
  Response r = c.post("/v1/completions", "{\"prompt\": \"hi\",\n \"max_tokens\": }");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.json().at("error").at("code").as_string(), "invalid_json");
  EXPECT_NE(r.error_message().find("line 2, column 16"), std::string::npos) << r.body;

  r = c.post("/v1/completions", R"({"prompt": "hi", "max_tokens": "ten"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.error_message().find("'max_tokens'"), std::string::npos) << r.body;
  EXPECT_NE(r.error_message().find("got string"), std::string::npos) << r.body;

  r = c.post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": 7}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.error_message().find("'messages[0].content': expected a string, got integer"), std::string::npos)
      << r.body;

  r = c.post("/v1/completions", R"({"prompt": "hi", "top_p": 0})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.error_message().find("top_p"), std::string::npos) << r.body;
  EXPECT_EQ(c.post("/v1/completions", "[1, 2]").status, 400);
  EXPECT_EQ(c.get("/health").status, 200);  // the connection survives bad requests
}

TEST_F(ServerTest, UnknownSessionRouteAndMethodAre404And405) {
  Client c = client();
  Response r = c.get("/v1/sessions/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.error_message().find("'nope'"), std::string::npos) << r.body;
  r = c.post("/v1/completions", R"({"prompt": "hi", "session": "nope"})");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.error_message().find("'nope'"), std::string::npos) << r.body;
  EXPECT_EQ(c.post("/v1/sessions/nope/append", R"({"text": "x"})").status, 404);
  EXPECT_EQ(c.get("/v2/anything").status, 404);
  r = c.get("/v1/completions");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.json().at("error").at("code").as_string(), "method_not_allowed");
}

TEST_F(ServerTest, BearerKeyIsRequiredWhenSet) {
  server_->stop();
  ServerOptions options;
  options.port = 0;  // ephemeral: a fixed port can be taken by another test or process
  options.api_key = "sekret";
  auto started = Server::start(*runtime_, options);
  ASSERT_TRUE(started.ok()) << started.status().to_string();
  server_ = std::move(*started);
  Client c = client();
  Response r = c.get("/v1/sessions");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.json().at("error").at("type").as_string(), "authentication_error");
  EXPECT_EQ(c.get("/v1/sessions", "Bearer wrong").status, 401);
  EXPECT_EQ(c.get("/v1/sessions", "Bearer sekret").status, 200);
  EXPECT_EQ(c.get("/health").status, 200);
}

TEST_F(ServerTest, OversizedBodyIs413) {
  server_->stop();
  ServerOptions options;
  options.port = 0;  // ephemeral: a fixed port can be taken by another test or process
  options.max_body_bytes = 1024;
  auto started = Server::start(*runtime_, options);
  ASSERT_TRUE(started.ok()) << started.status().to_string();
  server_ = std::move(*started);
  Client c = client();
  // The header announces 100 kB; the server answers without reading the body.
  ASSERT_FALSE(
      c.write_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Content-Length: 100000\r\n\r\n{\"prompt\": \"" +
                  std::string(2000, 'a')));
  ASSERT_FALSE(c.read_header());
  while (!c.parser().is_done() && !c.read_some()) {
  }
  EXPECT_EQ(c.parser().get().result_int(), 413u);
  EXPECT_NE(c.parser().get().body().find("body_too_large"), std::string::npos);
}

TEST_F(ServerTest, AppendBeyondThePendingBudgetIs429) {
  server_->stop();
  server_.reset();
  RuntimeOptions runtime_options;
  runtime_options.max_pending_tokens = 8;
  start({}, runtime_options);
  Client c = client();
  ASSERT_EQ(c.post("/v1/sessions", R"({"id": "a"})").status, 200);
  Response r = c.post("/v1/sessions/a/append", R"({"tokens": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]})");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.json().at("error").at("type").as_string(), "rate_limit_error");
}

// Starts a long streamed generation in session `id` and reads until its first token chunk.
void start_long_stream(Client& c, const std::string& id) {
  ASSERT_FALSE(c.write_request(http::verb::post, "/v1/sessions/" + id + "/generate",
                               R"({"max_tokens": 1900, "temperature": 0, "ignore_eos": true, "stream": true})", ""));
  ASSERT_FALSE(c.read_header());
  ASSERT_EQ(c.parser().get().result_int(), 200u);
  while (c.parser().get().body().find("data: ") == std::string::npos) ASSERT_FALSE(c.read_some());
}

TEST_F(ServerTest, ClientDisconnectMidStreamCancelsTheGeneration) {
  Client c = client();
  ASSERT_EQ(c.post("/v1/sessions", R"({"id": "long"})").status, 200);
  ASSERT_EQ(c.post("/v1/sessions/long/append", R"({"text": "Once upon a time"})").status, 200);
  const int64_t before = c.get("/v1/sessions/long").json().at("length").as_int64();
  Client streaming = client();
  start_long_stream(streaming, "long");
  streaming.close();
  Response info;
  EXPECT_TRUE(eventually([&] {
    info = c.get("/v1/sessions/long");
    return info.status == 200 && !info.json().at("generating").as_bool();
  })) << info.body;
  EXPECT_LT(info.json().at("length").as_int64(), before + 1900);
  std::string metrics;
  EXPECT_TRUE(eventually([&] {  // the server records the end just after the session reports it
    metrics = c.get("/metrics").body;
    return metrics.find("mnemo_http_generations_total{reason=\"cancelled\"} 1") != std::string::npos;
  })) << metrics;
  EXPECT_NE(metrics.find("mnemo_http_generations_cancelled_total{cause=\"disconnect\"} 1"), std::string::npos)
      << metrics;
}

TEST_F(ServerTest, BusySessionIs409AndCancelEndsItsStream) {
  Client c = client();
  ASSERT_EQ(c.post("/v1/sessions", R"({"id": "busy"})").status, 200);
  Client streaming = client();
  start_long_stream(streaming, "busy");
  Response r = c.post("/v1/sessions/busy/generate", R"({"max_tokens": 2})");
  EXPECT_EQ(r.status, 409);
  EXPECT_NE(r.error_message().find("'busy'"), std::string::npos) << r.body;
  EXPECT_EQ(c.post("/v1/sessions/busy/cancel", "").json().at("cancelled").as_bool(), true);
  while (!streaming.parser().is_done()) ASSERT_FALSE(streaming.read_some());
  std::string finish;
  streamed_text(streaming.parser().get().body(), &finish);
  EXPECT_EQ(finish, "cancelled");
}

TEST_F(ServerTest, StopCancelsGenerationsAndClosesConnections) {
  Client c = client();
  ASSERT_EQ(c.post("/v1/sessions", R"({"id": "s"})").status, 200);
  Client streaming = client();
  start_long_stream(streaming, "s");
  const auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_FALSE(runtime_->open_session("s").value()->info().generating);
  // The stream ended (cancelled), and the idle keep-alive connection was closed.
  error_code ec;
  while (!streaming.parser().is_done() && !(ec = streaming.read_some())) {
  }
  EXPECT_TRUE(streaming.parser().is_done()) << ec.message();
  EXPECT_EQ(c.get("/health").status, 0);
}

}  // namespace
}  // namespace mnemo::server
