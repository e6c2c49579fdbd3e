// HelperThreads: short-lived threads for calls that block on the runtime's std::futures, so the
// server's I/O thread never waits. No Asio here.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace mnemo::server {

// Threads for calls that block on the runtime: each runs one call and exits. Finished ones are joined
// on the next spawn, the rest by join_all() at shutdown.
class HelperThreads {
 public:
  template <typename F>
  void spawn(F fn) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    threads_.push_back({std::thread([fn = std::move(fn), done]() mutable {
                          fn();
                          done->store(true);
                        }),
                        done});
  }
  void join_all() {
    std::list<Entry> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(threads_);
    }
    for (Entry& e : all) e.thread.join();
  }

 private:
  struct Entry {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Entry> threads_;
};

}  // namespace mnemo::server
