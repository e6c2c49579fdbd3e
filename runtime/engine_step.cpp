// One engine step: control tasks, scheduling, the model, and applying results (see engine.cpp).
#include <algorithm>
#include <chrono>

#include "runtime/engine.h"
#include "runtime/persistence.h"
#include "runtime/session.h"

namespace mnemo {
namespace {

// Finishes `s`'s generation with `result` (or an error); the promise is completed later, unlocked.
void finish(SessionImpl& s, Result<GenerateResult> result, std::vector<std::function<void()>>* after) {
  auto gen = std::shared_ptr<Generation>(std::move(s.gen_));
  after->push_back([gen, r = std::move(result)]() mutable { gen->complete(std::move(r)); });
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: text that must
// be held back because the next token may complete a stop string.
size_t held_suffix(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const std::string& stop : stops) {
    for (size_t k = std::min(stop.size() - 1, text.size()); k > best; --k) {
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        best = k;
        break;
      }
    }
  }
  return best;
}

}  // namespace

void RuntimeImpl::step(std::unique_lock<std::mutex>& lock) {
  if (!control_.empty()) {
    auto tasks = std::move(control_);
    control_.clear();
    lock.unlock();
    for (auto& t : tasks) t();
    lock.lock();
  }
  std::vector<std::function<void()>> after;  // callbacks and promises, run unlocked at the end

  // Cancellations and generations ready to start need no model work.
  std::vector<std::shared_ptr<SessionImpl>> all;
  for (auto& [id, s] : sessions_) all.push_back(s);

  // Plan.
  std::vector<SessionLoad> loads(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    SessionImpl& s = *all[i];
    if (!s.broken_.ok() || (s.gen_ && s.cancel_)) continue;
    loads[i].decode_ready = s.gen_ && s.gen_->started && s.pending_locked() > 0;
    loads[i].pending_prefill = s.runnable_locked();
  }
  SchedulerOptions sched;
  sched.chunk_tokens = options_.chunk_tokens;
  sched.max_batch_tokens = options_.max_batch_tokens;
  const std::vector<StepWork> work = plan_step(loads, sched, &cursor_);

  struct Job {
    std::shared_ptr<SessionImpl> session;
    std::vector<int32_t> tokens;
    Status status;
  };
  std::vector<Job> jobs;
  for (const StepWork& w : work) {
    SessionImpl& s = *all[w.session];
    auto first = s.tokens_.begin() + s.prefilled_;
    jobs.push_back({all[w.session], std::vector<int32_t>(first, first + w.tokens), Status::Ok()});
  }

  // Run the model without the lock: only this thread touches sequences and logits.
  lock.unlock();
  const auto t0 = std::chrono::steady_clock::now();
  // One batched pass for every session's work (weights read once per step); if it fails, run the
  // jobs one by one so only the session at fault sees the error.
  std::vector<LlamaModel::BatchItem> batch;
  for (Job& j : jobs) batch.push_back({j.session->seq_.get(), j.tokens, &j.session->last_logits_});
  if (!batch.empty() && !model_->forward_batch(batch).ok()) {
    for (Job& j : jobs) j.status = model_->forward(*j.session->seq_, j.tokens, &j.session->last_logits_);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  lock.lock();
  model_seconds_ += seconds;
  if (!jobs.empty()) ++steps_;

  for (Job& j : jobs) {
    SessionImpl& s = *j.session;
    if (!j.status.ok()) {
      s.broken_ = j.status.with_context("session '" + s.id_ + "'");
      if (s.gen_) finish(s, s.broken_, &after);
      // Nobody may wait forever on a session that can no longer make progress.
      for (auto& w : s.prefill_waiters_) {
        auto p = std::make_shared<std::promise<Status>>(std::move(w));
        after.push_back([p, st = s.broken_] { p->set_value(st); });
      }
      s.prefill_waiters_.clear();
      continue;
    }
    s.prefilled_ += static_cast<int64_t>(j.tokens.size());
    if (s.gen_ && s.gen_->started) {
      decode_tokens_ += 1;
    } else {
      prefill_tokens_ += static_cast<int64_t>(j.tokens.size());
    }
  }

  const int64_t vocab = model_->config().vocab_size;
  for (Job& j : jobs) {
    SessionImpl& s = *j.session;
    // An idle persistent session keeps the logits of its whole stream, so a reopen can generate
    // without re-running its last token.
    if (persistent() && j.status.ok() && s.pending_locked() == 0 && !s.gen_ && s.deferred_.empty()) {
      persist::write_logits(model_->store(), s.id_, s.prefilled_, s.last_logits_).permit_unchecked();
    }
  }
  for (auto& sp : all) {
    SessionImpl& s = *sp;
    if (s.pending_locked() == 0 && !s.gen_ && s.deferred_.empty()) {
      for (auto& w : s.prefill_waiters_) {
        auto p = std::make_shared<std::promise<Status>>(std::move(w));
        after.push_back([p] { p->set_value(Status::Ok()); });
      }
      s.prefill_waiters_.clear();
    }
    if (!s.gen_) continue;
    Generation& g = *s.gen_;
    if (!s.broken_.ok()) {
      finish(s, s.broken_, &after);
      continue;
    }
    if (s.cancel_) {
      g.result.text += g.held;  // nothing matched a stop string: the held text is real output
      g.result.reason = FinishReason::kCancelled;
      finish(s, std::move(g.result), &after);
      continue;
    }
    // Sample when the whole stream is in the KV (first token after prefill, or after a decode step).
    if (s.pending_locked() != 0 || !s.last_logits_.defined()) continue;
    if (g.request.max_new_tokens == 0) {
      g.result.reason = FinishReason::kLength;
      finish(s, std::move(g.result), &after);
      continue;
    }
    // Backpressure: a stream whose consumer has not read its buffer pauses the session here, with
    // the last token's logits kept; reading wakes the engine (runtime/token_stream.cpp).
    if (!g.may_sample()) continue;
    g.started = true;
    std::vector<int32_t> history = s.tokens_;
    const int32_t token = g.sampler->sample(s.last_logits_.data<float>(), vocab, history);
    const bool eos = std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end();
    if (eos && !g.request.ignore_eos) {
      g.result.text += g.held + g.decoder->flush();
      g.result.reason = FinishReason::kEos;
      finish(s, std::move(g.result), &after);
      continue;
    }
    s.tokens_.push_back(token);
    g.result.tokens.push_back(token);
    if (persistent()) {
      // Generated tokens join the log through the WAL without fsync: losing the last few to a crash
      // loses no acknowledged append.
      Status logged = persist::append_tokens(model_->store(), s.id_, s.logged_, {token}, /*sync=*/false);
      if (!logged.ok()) {
        s.broken_ = logged.with_context("session '" + s.id_ + "': token log");
        finish(s, s.broken_, &after);
        continue;
      }
      ++s.logged_;
    }
    g.held += g.decoder->push(token);
    // Stop strings: emit text that can no longer be part of one; stop when one appears.
    bool stopped = false;
    for (const std::string& stop : g.request.stop) {
      const size_t at = stop.empty() ? std::string::npos : g.held.find(stop);
      if (at != std::string::npos) {
        g.held.resize(at);
        stopped = true;
      }
    }
    std::string emit;
    if (stopped) {
      emit = std::move(g.held);
      g.held.clear();
    } else {
      const size_t keep = held_suffix(g.held, g.request.stop);
      emit = g.held.substr(0, g.held.size() - keep);
      g.held.erase(0, g.held.size() - keep);
    }
    g.result.text += emit;
    if (g.on_token) {
      after.push_back([cb = g.on_token, ev = TokenEvent{token, emit}] { cb(ev); });
    }
    if (stopped) {
      g.result.reason = FinishReason::kStop;
      finish(s, std::move(g.result), &after);
    } else if (static_cast<int64_t>(g.result.tokens.size()) >= g.request.max_new_tokens) {
      g.result.text += g.held + g.decoder->flush();
      g.result.reason = FinishReason::kLength;
      finish(s, std::move(g.result), &after);
    }
  }
  // Input appended during a generation joins the stream once it is over; then a generation queued
  // behind a cancelled one starts (after that input, as if generate() had been called now).
  for (auto& sp : all) {
    if (!sp->gen_ && !sp->deferred_.empty()) {
      sp->tokens_.insert(sp->tokens_.end(), sp->deferred_.begin(), sp->deferred_.end());
      sp->deferred_.clear();
    }
    if (!sp->gen_ && sp->next_gen_) {
      sp->gen_ = std::move(sp->next_gen_);
      sp->cancel_ = false;
      if (!sp->broken_.ok()) finish(*sp, sp->broken_, &after);  // the loop skips broken sessions
    }
  }
  lock.unlock();
  for (auto& f : after) f();
  lock.lock();
}

std::string RuntimeImpl::metrics_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  os << "# HELP mnemo_steps_total Engine steps that ran the model.\n# TYPE mnemo_steps_total counter\n"
     << "mnemo_steps_total " << steps_ << "\n"
     << "# HELP mnemo_prefill_tokens_total Input tokens run through the model.\n"
     << "# TYPE mnemo_prefill_tokens_total counter\nmnemo_prefill_tokens_total " << prefill_tokens_ << "\n"
     << "# HELP mnemo_decode_tokens_total Generated tokens run through the model.\n"
     << "# TYPE mnemo_decode_tokens_total counter\nmnemo_decode_tokens_total " << decode_tokens_ << "\n"
     << "# HELP mnemo_model_seconds_total Time spent in model forward passes.\n"
     << "# TYPE mnemo_model_seconds_total counter\nmnemo_model_seconds_total " << model_seconds_ << "\n"
     << "# HELP mnemo_sessions Live sessions.\n# TYPE mnemo_sessions gauge\nmnemo_sessions " << sessions_.size()
     << "\n";
  // The KV store: hits and misses per tier, bytes moved, stalls, occupancy (memory/store.h).
  const KvStoreMetrics m = model_->store().metrics();
  auto counter = [&os](const char* name, const char* help, double v) {
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n" << name << " " << v << "\n";
  };
  auto gauge = [&os](const char* name, const char* help, double v) {
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n" << name << " " << v << "\n";
  };
  counter("mnemo_kv_gpu_hits_total", "Requested blocks already in GPU slots.", double(m.gpu_hits));
  counter("mnemo_kv_gpu_misses_total", "Requested blocks loaded into GPU slots.", double(m.gpu_misses));
  counter("mnemo_kv_host_hits_total", "GPU misses served from the host tier.", double(m.host_hits));
  counter("mnemo_kv_disk_reads_total", "GPU misses read from disk.", double(m.disk_reads));
  counter("mnemo_kv_bytes_host_to_gpu_total", "Bytes copied host to GPU.", double(m.bytes_host_to_gpu));
  counter("mnemo_kv_bytes_disk_to_host_total", "Bytes read from disk.", double(m.bytes_disk_to_host));
  counter("mnemo_kv_bytes_host_to_disk_total", "Bytes written behind to disk.", double(m.bytes_host_to_disk));
  counter("mnemo_kv_gpu_evictions_total", "Blocks evicted from GPU slots.", double(m.gpu_evictions));
  counter("mnemo_kv_host_evictions_total", "Host copies dropped (durable on disk).", double(m.host_evictions));
  counter("mnemo_kv_stall_seconds_total", "Time steps waited for KV loads or write-behind.", m.stall_seconds);
  gauge("mnemo_kv_gpu_slots_used", "GPU slots in use.", double(m.gpu_slots_used));
  gauge("mnemo_kv_gpu_slots_total", "GPU slots (the GPU tier budget).", double(m.gpu_slots_total));
  gauge("mnemo_kv_host_slots_used", "Host slots in use.", double(m.host_slots_used));
  gauge("mnemo_kv_host_slots_total", "Host slots (the host tier budget).", double(m.host_slots_total));
  gauge("mnemo_kv_disk_blocks", "Blocks durable on disk.", double(m.disk_blocks));
  gauge("mnemo_kv_blocks", "Distinct KV blocks of live sequences (shared ones once).", double(m.blocks));
  gauge("mnemo_kv_shared_blocks", "Blocks shared copy-on-write by forks.", double(m.shared_blocks));
  gauge("mnemo_kv_pending_writes", "Sealed blocks not yet durable.", double(m.pending_writes));
  return os.str();
}

}  // namespace mnemo
