// The engine: one thread runs every model step for every session (runtime/runtime.h's contract).
//
// A step: run control tasks (fork), plan work with the scheduler (decode tokens first, then prefill
// chunks), run the model outside the lock, then apply results under the lock — advance prefill,
// sample, stream tokens, finish generations. User callbacks and promise completions are collected
// and run after the lock is released, so a callback may call back into its session.
#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <sstream>

#include "core/file.h"
#include "runtime/persistence.h"
#include "runtime/session.h"

namespace mnemo {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "?";
}

Result<std::unique_ptr<Runtime>> Runtime::open(const RuntimeOptions& options) {
  if (options.chunk_tokens <= 0 || options.max_batch_tokens <= 0) {
    return invalid_argument("RuntimeOptions: chunk_tokens and max_batch_tokens must be positive");
  }
  const std::string dir = options.model_dir.empty() ? std::string(MNEMO_SOURCE_DIR "/models/tiny") : options.model_dir;
  MNEMO_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(dir));
  // K and V of one token in every layer: f32 on the CPU, bf16 on a CUDA device.
  const int64_t elem_bytes = options.device.is_cpu() ? 4 : 2;
  const int64_t token_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem_bytes;
  ModelOptions model_options;
  model_options.device = options.device;
  model_options.chunk_tokens = options.chunk_tokens;
  model_options.host_budget_bytes = options.host_kv_budget_bytes;
  model_options.data_dir = options.data_dir;
  model_options.positions = options.positions;
  if (!options.sparse_config_path.empty()) {
    MNEMO_ASSIGN_OR_RETURN(std::string text, read_text_file(options.sparse_config_path));
    MNEMO_ASSIGN_OR_RETURN(SparseConfig sparse, parse_sparse_config(text, options.sparse_config_path));
    model_options.block_tokens = sparse.block_size;
    model_options.sparse = sparse;
  }
  // Whole blocks of every layer that fit the byte budget (never more than it).
  const int64_t block_bytes = token_bytes * model_options.block_tokens;
  model_options.kv_budget_tokens = std::max<int64_t>(1, options.gpu_kv_budget_bytes / block_bytes) * model_options.block_tokens;
  MNEMO_ASSIGN_OR_RETURN(auto model, LlamaModel::load(dir, model_options));
  TokenizerOptions tok_options;
  if (!config.bos_token_ids.empty()) tok_options.bos_id = config.bos_token_ids[0];
  tok_options.eos_ids = config.eos_token_ids;
  MNEMO_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::load(dir, tok_options));
  return std::unique_ptr<Runtime>(new RuntimeImpl(options, std::move(model), std::move(tokenizer)));
}

RuntimeImpl::RuntimeImpl(RuntimeOptions options, std::unique_ptr<LlamaModel> model,
                         std::unique_ptr<Tokenizer> tokenizer)
    : options_(std::move(options)), model_(std::move(model)), tokenizer_(std::move(tokenizer)) {
  for (int64_t id : model_->config().eos_token_ids) stop_ids_.push_back(static_cast<int32_t>(id));
  for (int32_t id : tokenizer_->eos_ids()) stop_ids_.push_back(id);
  thread_ = std::thread([this] { loop(); });
}

RuntimeImpl::~RuntimeImpl() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // No cancel_ here: a step in flight finishes, then the loop fails every generation with the same
    // kCancelled "the runtime is shutting down" — never sometimes a result, sometimes an error.
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string RuntimeImpl::fresh_id_locked() {
  std::string id;
  do {
    id = "s";
    id += std::to_string(next_id_++);
  } while (sessions_.count(id));
  return id;
}

Result<std::shared_ptr<Session>> RuntimeImpl::create_session(std::string id) {
  if (!id.empty()) MNEMO_RETURN_IF_ERROR(persist::validate_session_id(id));
  // Sequences are created on the engine thread: it alone touches the store's sequences.
  return run_on_engine<std::shared_ptr<Session>>([this, id]() mutable -> Result<std::shared_ptr<Session>> {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (id.empty()) id = fresh_id_locked();
      if (sessions_.count(id)) return invalid_argument("session '", id, "' already exists");
    }
    SequenceId seq_id = 0;
    if (persistent()) {
      if (persist::read_session(model_->store(), id).ok()) return invalid_argument("session '", id, "' already exists");
      MNEMO_ASSIGN_OR_RETURN(seq_id, persist::next_sequence_id(model_->store()));
    }
    MNEMO_ASSIGN_OR_RETURN(auto seq, model_->new_sequence(seq_id, persistent()));
    if (persistent()) MNEMO_RETURN_IF_ERROR(persist::write_session(model_->store(), {id, seq->id(), ""}));
    std::lock_guard<std::mutex> lock(mu_);
    auto s = std::make_shared<SessionImpl>(this, id, std::move(seq));
    sessions_[id] = s;
    return std::shared_ptr<Session>(s);
  });
}

Result<std::shared_ptr<Session>> RuntimeImpl::open_session(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) return std::shared_ptr<Session>(it->second);
  }
  if (!persistent()) return not_found("unknown session '", id, "'");
  MNEMO_RETURN_IF_ERROR(persist::validate_session_id(id).with_context("open_session"));
  // Recovery: the token log is the truth; durable KV blocks are reused, the rest is recomputed.
  return run_on_engine<std::shared_ptr<Session>>([this, id]() -> Result<std::shared_ptr<Session>> {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sessions_.find(id);
      if (it != sessions_.end()) return std::shared_ptr<Session>(it->second);
    }
    MNEMO_ASSIGN_OR_RETURN(persist::SessionRecord record, persist::read_session(model_->store(), id));
    MNEMO_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, persist::read_tokens(model_->store(), id));
    const int64_t n = static_cast<int64_t>(tokens.size());
    Tensor logits = persist::read_logits(model_->store(), id, n);
    // Without stored logits of the whole stream the last token is run again to get them.
    const int64_t max_kv = logits.defined() ? n : std::max<int64_t>(0, n - 1);
    MNEMO_ASSIGN_OR_RETURN(auto seq, model_->recover_sequence(record.seq, max_kv));
    std::lock_guard<std::mutex> lock(mu_);
    auto s = std::make_shared<SessionImpl>(this, id, std::move(seq));
    s->parent_ = record.parent;
    s->tokens_ = std::move(tokens);
    s->prefilled_ = s->seq_->length();
    s->logged_ = n;
    if (s->prefilled_ == n) s->last_logits_ = std::move(logits);
    sessions_[id] = s;
    return std::shared_ptr<Session>(s);
  });
}

std::vector<SessionInfo> RuntimeImpl::list_sessions() {
  std::vector<std::shared_ptr<SessionImpl>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, s] : sessions_) all.push_back(s);
  }
  std::vector<SessionInfo> out;
  for (auto& s : all) out.push_back(s->info());
  if (persistent()) {
    // Sessions on disk that are not open: their length from the token log.
    auto records = persist::list_sessions(model_->store());
    if (records.ok()) {
      for (const auto& r : *records) {
        if (std::any_of(out.begin(), out.end(), [&](const SessionInfo& i) { return i.id == r.id; })) continue;
        SessionInfo info;
        info.id = r.id;
        info.parent = r.parent;
        auto tokens = persist::read_tokens(model_->store(), r.id);
        info.length = tokens.ok() ? static_cast<int64_t>(tokens->size()) : -1;
        out.push_back(info);
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const SessionInfo& a, const SessionInfo& b) { return a.id < b.id; });
  return out;
}

Status RuntimeImpl::delete_session(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) {
      it->second->closed_ = true;  // no new work; a running generation ends as cancelled
      if (it->second->gen_) it->second->cancel_ = true;
    }
  }
  // Removal happens on the engine thread, after any step that uses the session has finished.
  auto r = run_on_engine<bool>([this, id]() -> Result<bool> {
    std::shared_ptr<SessionImpl> victim;
    std::unique_ptr<Generation> gen, next_gen;
    std::vector<std::promise<Status>> waiters;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sessions_.find(id);
      if (it != sessions_.end()) {
        victim = it->second;
        sessions_.erase(it);
        gen = std::move(victim->gen_);
        next_gen = std::move(victim->next_gen_);
        waiters = std::move(victim->prefill_waiters_);
      }
    }
    if (gen) gen->complete(cancelled("session '", id, "' was deleted"));
    if (next_gen) next_gen->complete(cancelled("session '", id, "' was deleted"));
    for (auto& w : waiters) w.set_value(cancelled("session '", id, "' was deleted"));
    if (persistent()) {
      Result<persist::SessionRecord> record = persist::read_session(model_->store(), id);
      if (!record.ok() && !victim) return record.status();
      if (victim) {
        MNEMO_RETURN_IF_ERROR(model_->drop_sequence(std::move(victim->seq_)));
      } else {
        MNEMO_RETURN_IF_ERROR(model_->store().drop_sequence(record->seq));
      }
      MNEMO_RETURN_IF_ERROR(persist::delete_session(model_->store(), id));
      return true;
    }
    if (!victim) return not_found("unknown session '", id, "'");
    return true;
  });
  return r.status();
}

Result<std::shared_ptr<Session>> RuntimeImpl::fork_on_engine(const std::string& parent_id, std::string new_id) {
  std::shared_ptr<SessionImpl> parent;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(parent_id);
    if (it == sessions_.end()) return not_found("fork: unknown session '", parent_id, "'");
    parent = it->second;
    if (new_id.empty()) new_id = fresh_id_locked();
    if (sessions_.count(new_id)) return invalid_argument("fork: session '", new_id, "' already exists");
  }
  MNEMO_RETURN_IF_ERROR(persist::validate_session_id(new_id).with_context("fork"));
  SequenceId seq_id = 0;
  if (persistent()) {
    if (persist::read_session(model_->store(), new_id).ok()) {
      return invalid_argument("fork: session '", new_id, "' already exists");
    }
    MNEMO_ASSIGN_OR_RETURN(seq_id, persist::next_sequence_id(model_->store()));
  }
  MNEMO_ASSIGN_OR_RETURN(auto seq, model_->fork_sequence(*parent->seq_, seq_id, persistent()));
  std::vector<int32_t> tokens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens = parent->tokens_;
    tokens.insert(tokens.end(), parent->deferred_.begin(), parent->deferred_.end());
  }
  if (persistent()) {
    // The child's log starts as a copy of the parent's (its KV blocks are shared, not copied).
    MNEMO_RETURN_IF_ERROR(persist::append_tokens(model_->store(), new_id, 0, tokens, /*sync=*/false));
    MNEMO_RETURN_IF_ERROR(persist::write_session(model_->store(), {new_id, seq->id(), parent_id}));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto child = std::make_shared<SessionImpl>(this, new_id, std::move(seq));
  child->parent_ = parent_id;
  child->tokens_ = std::move(tokens);
  child->logged_ = static_cast<int64_t>(child->tokens_.size());
  child->prefilled_ = parent->prefilled_;
  child->last_logits_ = parent->last_logits_.defined() ? *parent->last_logits_.to(Device::cpu()) : Tensor();
  sessions_[new_id] = child;
  return std::shared_ptr<Session>(child);
}

bool RuntimeImpl::has_work_locked() const {
  if (!control_.empty()) return true;
  for (const auto& [id, s] : sessions_) {
    if (!s->broken_.ok()) continue;
    if (s->runnable_locked() > 0) return true;
    if (s->gen_ && (s->cancel_ || (!s->gen_->started && s->pending_locked() == 0 && s->gen_->may_sample()))) {
      return true;
    }
  }
  return false;
}

void RuntimeImpl::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || has_work_locked(); });
    if (stop_) {
      // Control tasks still queued (an open or delete racing shutdown) run so their callers return.
      while (!control_.empty()) {
        auto tasks = std::move(control_);
        control_.clear();
        lock.unlock();
        for (auto& t : tasks) t();
        lock.lock();
      }
      // Finish: cancel generations and fail waiters so no future is left hanging. Unlocked, as in a
      // step: a generation's on_done hook may lock its stream's state.
      std::vector<std::unique_ptr<Generation>> gens;
      std::vector<std::promise<Status>> waiters;
      for (auto& [id, s] : sessions_) {
        if (s->gen_) gens.push_back(std::move(s->gen_));
        if (s->next_gen_) gens.push_back(std::move(s->next_gen_));
        for (auto& w : s->prefill_waiters_) waiters.push_back(std::move(w));
        s->prefill_waiters_.clear();
      }
      lock.unlock();
      for (auto& g : gens) g->complete(cancelled("the runtime is shutting down"));
      for (auto& w : waiters) w.set_value(cancelled("the runtime is shutting down"));
      return;
    }
    step(lock);
  }
}

}  // namespace mnemo
