#include "runtime/session.h"

#include "runtime/engine.h"
#include "runtime/persistence.h"

namespace mnemo {
namespace {

template <typename T>
std::future<T> ready(T value) {
  std::promise<T> p;
  p.set_value(std::move(value));
  return p.get_future();
}

}  // namespace

SessionImpl::SessionImpl(RuntimeImpl* rt, std::string id, std::unique_ptr<Sequence> seq)
    : rt_(rt), id_(std::move(id)), seq_(std::move(seq)) {}

SessionInfo SessionImpl::info() const {
  std::lock_guard<std::mutex> lock(rt_->mu_);
  SessionInfo i;
  i.id = id_;
  i.length = static_cast<int64_t>(tokens_.size() + deferred_.size());
  i.pending_tokens = pending_locked() + static_cast<int64_t>(deferred_.size());
  i.generating = gen_ != nullptr;
  i.parent = parent_;
  return i;
}

std::vector<int32_t> SessionImpl::tokens() const {
  std::lock_guard<std::mutex> lock(rt_->mu_);
  std::vector<int32_t> all = tokens_;
  all.insert(all.end(), deferred_.begin(), deferred_.end());
  return all;
}

int64_t SessionImpl::runnable_locked() const {
  if (gen_ && gen_->started) return pending_locked() > 0 ? 1 : 0;  // the decode token
  return pending_locked();
}

std::future<Status> SessionImpl::append_text(std::string text) {
  // Tokenize outside the lock (a long text takes a while); the first append of a stream starts with
  // BOS (when the tokenizer adds one), decided again under the lock in case another append won.
  std::vector<int32_t> ids = rt_->tokenizer_->encode(text, false);
  std::lock_guard<std::mutex> lock(rt_->mu_);
  const int32_t bos = rt_->tokenizer_->bos_id();
  if (tokens_.empty() && deferred_.empty() && bos >= 0 && rt_->tokenizer_->add_bos_default()) {
    ids.insert(ids.begin(), bos);
  }
  Status s = append_locked(std::move(ids));
  if (s.ok()) rt_->wake();
  return ready(std::move(s));
}

std::future<Status> SessionImpl::append_tokens(std::vector<int32_t> ids) {
  std::lock_guard<std::mutex> lock(rt_->mu_);
  Status s = append_locked(std::move(ids));
  if (s.ok()) rt_->wake();
  return ready(std::move(s));
}

Status SessionImpl::append_locked(std::vector<int32_t> ids) {
  if (closed_) return cancelled("session '", id_, "' is closed");
  if (!broken_.ok()) return broken_;
  const int64_t vocab = rt_->model_->config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return invalid_argument("append to session '", id_, "': token ", i, " has id ", ids[i],
                              ", outside the vocabulary [0, ", vocab, ")");
    }
  }
  const int64_t length = static_cast<int64_t>(tokens_.size() + deferred_.size());
  const int64_t new_len = length + static_cast<int64_t>(ids.size());
  const int64_t limit = rt_->model_->config().max_position_embeddings;
  if (rt_->options_.positions == PositionPolicy::kExact && new_len > limit) {
    return out_of_budget("session '", id_, "': ", new_len, " tokens exceed the model's max_position_embeddings (",
                         limit, ") under the exact position policy; use the bounded policy for longer streams");
  }
  const int64_t pending = pending_locked() + static_cast<int64_t>(deferred_.size() + ids.size());
  if (pending > rt_->options_.max_pending_tokens) {
    return out_of_budget("session '", id_, "': ", pending, " tokens would wait for prefill, more than ",
                         "max_pending_tokens (", rt_->options_.max_pending_tokens, "); wait_prefilled() first");
  }
  if (rt_->persistent()) {
    // Acknowledged only once durable: the ids are in the store's WAL (fsync) before we return.
    MNEMO_RETURN_IF_ERROR(persist::append_tokens(rt_->model_->store(), id_, logged_, ids, /*sync=*/true));
    logged_ += static_cast<int64_t>(ids.size());
  }
  std::vector<int32_t>& dst = gen_ ? deferred_ : tokens_;
  dst.insert(dst.end(), ids.begin(), ids.end());
  return Status::Ok();
}

std::future<Status> SessionImpl::wait_prefilled() {
  std::lock_guard<std::mutex> lock(rt_->mu_);
  if (!broken_.ok()) return ready(broken_);
  if (pending_locked() == 0 && deferred_.empty() && !gen_) return ready(Status::Ok());
  prefill_waiters_.emplace_back();
  rt_->wake();
  return prefill_waiters_.back().get_future();
}

std::future<Result<GenerateResult>> SessionImpl::generate(GenerateRequest request, TokenCallback on_token) {
  auto gen = std::make_unique<Generation>();
  gen->request = std::move(request);
  gen->on_token = std::move(on_token);
  auto f = gen->promise.get_future();
  Status s = start_generation(gen);
  if (!s.ok()) return ready<Result<GenerateResult>>(std::move(s));
  return f;
}

Status SessionImpl::start_generation(std::unique_ptr<Generation>& gen) {
  MNEMO_RETURN_IF_ERROR(gen->request.sampling.validate());
  if (gen->request.max_new_tokens < 0) return invalid_argument("generate: max_new_tokens must be >= 0");
  std::lock_guard<std::mutex> lock(rt_->mu_);
  if (closed_) return cancelled("session '", id_, "' is closed");
  if (!broken_.ok()) return broken_;
  // A generation being cancelled ends at the engine's next step; a new one queues behind it so that
  // "cancel, then generate" (or destroying a TokenStream, then generating) never races the engine.
  if ((gen_ && !cancel_) || next_gen_) return invalid_argument("session '", id_, "' is already generating");
  if (tokens_.empty() && !gen_) {
    const int32_t bos = rt_->tokenizer_->bos_id();
    if (bos < 0) return invalid_argument("session '", id_, "' is empty and the model has no BOS token");
    tokens_.push_back(bos);
  }
  gen->sampler = std::make_unique<Sampler>(gen->request.sampling);
  DecodeOptions decode;
  decode.continuation = true;  // generated text continues the stream
  gen->decoder = std::make_unique<StreamDecoder>(*rt_->tokenizer_, decode);
  if (gen_) {
    next_gen_ = std::move(gen);
  } else {
    gen_ = std::move(gen);
    cancel_ = false;
  }
  rt_->wake();
  return Status::Ok();
}

void SessionImpl::cancel() { cancel_generation(nullptr); }

void SessionImpl::cancel_generation(const void* owner) {
  std::unique_ptr<Generation> queued;
  {
    std::lock_guard<std::mutex> lock(rt_->mu_);
    if (gen_ && (!owner || gen_->owner == owner)) cancel_ = true;
    if (next_gen_ && (!owner || next_gen_->owner == owner)) queued = std::move(next_gen_);
    rt_->wake();
  }
  if (queued) {  // never started: it ends here, empty, outside the lock (its hooks may lock)
    GenerateResult r;
    r.reason = FinishReason::kCancelled;
    queued->complete(std::move(r));
  }
}

void SessionImpl::wake_engine() {
  std::lock_guard<std::mutex> lock(rt_->mu_);
  rt_->wake();
}

std::future<Result<std::shared_ptr<Session>>> SessionImpl::fork(std::string new_id) {
  auto promise = std::make_shared<std::promise<Result<std::shared_ptr<Session>>>>();
  auto f = promise->get_future();
  std::lock_guard<std::mutex> lock(rt_->mu_);
  RuntimeImpl* rt = rt_;
  const std::string parent = id_;
  // Runs on the engine thread between steps, where sequences may be touched.
  rt->control_.push_back([rt, parent, new_id, promise]() mutable {
    promise->set_value(rt->fork_on_engine(parent, std::move(new_id)));
  });
  rt->wake();
  return f;
}

}  // namespace mnemo
