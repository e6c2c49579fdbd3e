// Internal: the Runtime implementation — the engine thread, its sessions and the step loop.
// Public API in runtime/runtime.h; nothing here is for embedding applications.
#pragma once

#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "runtime/runtime.h"
#include "runtime/scheduler.h"

namespace mnemo {

class SessionImpl;

class RuntimeImpl : public Runtime {
 public:
  RuntimeImpl(RuntimeOptions options, std::unique_ptr<LlamaModel> model, std::unique_ptr<Tokenizer> tokenizer);
  ~RuntimeImpl() override;

  Result<std::shared_ptr<Session>> create_session(std::string id) override;
  Result<std::shared_ptr<Session>> open_session(const std::string& id) override;
  std::vector<SessionInfo> list_sessions() override;
  Status delete_session(const std::string& id) override;
  const ModelConfig& model_config() const override { return model_->config(); }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  std::string metrics_text() const override;

 private:
  friend class SessionImpl;
  void loop();
  bool has_work_locked() const;
  // Runs one step: plans under the lock, runs the model unlocked, applies results under the lock.
  void step(std::unique_lock<std::mutex>& lock);
  void wake() { cv_.notify_all(); }
  bool persistent() const { return !options_.data_dir.empty(); }
  // Runs `fn` on the engine thread between steps and waits for its result. Never call it from the
  // engine thread (a token callback).
  template <typename T>
  Result<T> run_on_engine(std::function<Result<T>()> fn) {
    auto promise = std::make_shared<std::promise<Result<T>>>();
    auto f = promise->get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      control_.push_back([promise, fn = std::move(fn)] { promise->set_value(fn()); });
    }
    cv_.notify_all();
    return f.get();
  }
  Result<std::shared_ptr<Session>> fork_on_engine(const std::string& parent, std::string new_id);
  std::string fresh_id_locked();

  RuntimeOptions options_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> stop_ids_;  // EOS ids of the config and the tokenizer

  mutable std::mutex mu_;  // guards sessions_ and every session's shared state
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<SessionImpl>> sessions_;
  std::vector<std::function<void()>> control_;  // run on the engine thread between steps
  bool stop_ = false;
  size_t cursor_ = 0;
  uint64_t next_id_ = 1;

  // Metrics (guarded by mu_).
  int64_t steps_ = 0, prefill_tokens_ = 0, decode_tokens_ = 0, generations_ = 0;
  double model_seconds_ = 0;

  std::thread thread_;  // last: started after everything above exists
};

}  // namespace mnemo
