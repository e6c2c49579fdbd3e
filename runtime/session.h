// Internal: one session's state, shared between API threads (under RuntimeImpl::mu_) and the engine.
#pragma once

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "runtime/runtime.h"

namespace mnemo {

class RuntimeImpl;

// A generation from request to finish.
struct Generation {
  GenerateRequest request;
  TokenCallback on_token;
  std::promise<Result<GenerateResult>> promise;
  // Backpressure (runtime/token_stream.cpp): the engine samples the next token only while this
  // returns true. Called under RuntimeImpl::mu_: it must not lock or call into the runtime.
  std::function<bool()> has_room;
  // Runs once with the outcome, after the last on_token and before the promise is set; never under
  // RuntimeImpl::mu_, so it may lock its own state.
  std::function<void(const Result<GenerateResult>&)> on_done;
  const void* owner = nullptr;  // who started it (a TokenStream's state), for cancel_generation()
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StreamDecoder> decoder;
  GenerateResult result;
  std::string held;      // decoded text held back while it may be the start of a stop string
  bool started = false;  // all input before it was prefilled and the first token sampled

  bool may_sample() const { return !has_room || has_room(); }
  // Hands out the outcome: on_done, then the promise. Call it without holding RuntimeImpl::mu_.
  void complete(Result<GenerateResult> result) {
    if (on_done) on_done(result);
    promise.set_value(std::move(result));
  }
};

class SessionImpl : public Session {
 public:
  SessionImpl(RuntimeImpl* rt, std::string id, std::unique_ptr<Sequence> seq);

  const std::string& id() const override { return id_; }
  SessionInfo info() const override;
  std::future<Status> append_text(std::string text) override;
  std::future<Status> append_tokens(std::vector<int32_t> ids) override;
  std::future<Status> wait_prefilled() override;
  std::future<Result<GenerateResult>> generate(GenerateRequest request, TokenCallback on_token) override;
  void cancel() override;
  std::future<Result<std::shared_ptr<Session>>> fork(std::string new_id) override;
  std::vector<int32_t> tokens() const override;

 // Engine-facing state: this header is internal to runtime/, the engine reads and writes it directly.
  Status append_locked(std::vector<int32_t> ids);
  int64_t pending_locked() const { return static_cast<int64_t>(tokens_.size()) - prefilled_; }
  // Tokens the scheduler may run now: pending input, unless a started generation owns the stream.
  int64_t runnable_locked() const;
  // Installs `gen` as the session's generation (generate() with the stream's hooks). When the
  // running generation is being cancelled, `gen` waits in next_gen_ and starts once it has stopped.
  // Errors (nothing installed, `gen` untouched): as generate().
  Status start_generation(std::unique_ptr<Generation>& gen);
  // Cancels the generation started by `owner` (running or queued); no-op when it is not there any
  // more, so a stream never cancels a later generation of its session.
  void cancel_generation(const void* owner);
  // Wakes the engine (a stream's consumer made room in a full buffer). Takes rt_->mu_ so the wake
  // cannot fall between the engine's check of has_room and its wait.
  void wake_engine();

  RuntimeImpl* rt_;
  const std::string id_;
  std::string parent_;

  // Guarded by rt_->mu_.
  std::vector<int32_t> tokens_;         // the stream: acknowledged input and generated tokens
  std::vector<int32_t> deferred_;       // appended while generating; joins tokens_ when it ends
  int64_t prefilled_ = 0;               // tokens_[0, prefilled_) are in the KV cache
  int64_t logged_ = 0;                  // tokens_ + deferred_ written to the store's token log
  std::unique_ptr<Generation> gen_;
  std::unique_ptr<Generation> next_gen_;  // requested while gen_ was being cancelled
  bool cancel_ = false;                   // applies to gen_
  bool closed_ = false;
  Status broken_;                       // a failed step leaves the session unusable with this error
  std::vector<std::promise<Status>> prefill_waiters_;

  // Engine thread only.
  std::unique_ptr<Sequence> seq_;
  Tensor last_logits_;                  // [1, vocab] after tokens_[prefilled_ - 1]
};

}  // namespace mnemo
