// A step's disk misses through TieredStore::acquire on a CPU store, by disk read threads (issue #5,
// KvStoreOptions::disk_read_threads). f32, 64 KiB slots (2 kv heads x 32 tokens x 128 dims x K,V x 4 B),
// one layer. Writes `blocks` sealed blocks to a data dir (flushed), then for each thread count: per
// rep, reopen the store (not timed), recover the sequence and time one acquire of every block (all
// disk misses: MultiGet + crc32c + copies into host slots + the CPU gather). The files were just
// written and read once before timing, so the page cache is WARM: this measures the CPU side of a
// disk read, not the device. The bytes of every timed acquire are checked. Table last, JSON written.
//   disk_read_bench [--blocks N] [--reps N] [--threads 1,2,4,8] [--dir D] [--json F]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "memory/store.h"

namespace {

using mnemo::KvStore;
using mnemo::KvStoreOptions;
using mnemo::Status;

void check(const Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.to_string().c_str());
    std::exit(1);
  }
}

float value(int64_t t, int kv, int h, int i) {
  return static_cast<float>((t * 131 + kv * 17 + h * 7 + i) % 4093) * 0.25f;
}

KvStoreOptions options(const std::string& dir, int64_t blocks, int threads) {
  KvStoreOptions o;
  o.layout = mnemo::KvLayout{.num_layers = 1, .num_kv_heads = 2, .block_tokens = 32, .head_dim = 128};
  o.gpu_budget_bytes = (blocks + 8) * o.layout.slot_bytes();
  o.host_budget_bytes = (blocks + 8) * o.layout.slot_bytes();
  o.data_dir = dir;
  o.disk_read_threads = threads;
  return o;
}

// Acquires every sealed block (all disk misses after a reopen); returns ms; checks the bytes.
double timed_acquire(KvStore& store, int64_t blocks) {
  std::vector<int64_t> ids(static_cast<size_t>(blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<int32_t> slots;
  const auto t0 = std::chrono::steady_clock::now();
  check(store.acquire(1, 0, ids, &slots), "acquire");
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const mnemo::KvLayout& l = store.layout();
  for (int64_t b = 0; b < blocks; ++b) {
    const float* slot = store.gpu_arena() + slots[b] * l.slot_floats();
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < l.num_kv_heads; ++h)
        for (int t = 0; t < l.block_tokens; ++t)
          for (int i = 0; i < l.head_dim; i += 37) {
            const float got = slot[((kv * l.num_kv_heads + h) * l.block_tokens + t) * l.head_dim + i];
            if (got != value(b * l.block_tokens + t, kv, h, i)) {
              std::fprintf(stderr, "FAIL: block %lld has wrong bytes\n", static_cast<long long>(b));
              std::exit(1);
            }
          }
  }
  store.release_all();
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t blocks = 512;
  int reps = 7;
  std::vector<int> thread_counts = {1, 2, 4, 8};
  std::string dir = "/tmp/mnemo_disk_read_bench_" + std::to_string(getpid());
  std::string json = "/tmp/disk_read_bench.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--blocks") blocks = std::atoll(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--json") json = argv[i + 1];
    else if (a == "--threads") {
      thread_counts.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string t; std::getline(ss, t, ',');) thread_counts.push_back(std::atoi(t.c_str()));
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  std::filesystem::remove_all(dir);
  const int64_t slot_bytes = options(dir, blocks, 1).layout.slot_bytes();
  {  // write
    auto store = KvStore::open(options(dir, blocks, 1));
    check(store.status(), "open");
    KvStore& s = **store;
    const mnemo::KvLayout& l = s.layout();
    check(s.create_sequence(1), "create_sequence");
    const int64_t tokens = blocks * l.block_tokens + 1;
    for (int64_t len = 0; len < tokens;) {
      const int64_t next = std::min(tokens, len + 4 * l.block_tokens);
      check(s.reserve(1, next), "reserve");
      for (int64_t t = len; t < next; ++t)
        for (int h = 0; h < l.num_kv_heads; ++h) {
          float* k = s.k_row(1, 0, t, h);
          float* v = s.v_row(1, 0, t, h);
          for (int i = 0; i < l.head_dim; ++i) {
            k[i] = value(t, 0, h, i);
            v[i] = value(t, 1, h, i);
          }
        }
      check(s.commit(1, next), "commit");
      len = next;
    }
    check(s.flush(), "flush");
  }
  auto run = [&](int threads) {
    auto store = KvStore::open(options(dir, blocks, threads));
    check(store.status(), "reopen");
    auto n = (*store)->recover_sequence(1);
    check(n.status(), "recover_sequence");
    return timed_acquire(**store, blocks);
  };
  run(1);  // warm the page cache (and RocksDB's table files) once, untimed
  struct Row {
    int threads;
    double median_ms, best_ms;
  };
  std::vector<Row> rows;
  for (int threads : thread_counts) {
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) ms.push_back(run(threads));
    std::sort(ms.begin(), ms.end());
    rows.push_back({threads, ms[ms.size() / 2], ms[0]});
  }
  std::filesystem::remove_all(dir);

  const double mib = static_cast<double>(blocks * slot_bytes) / (1 << 20);
  const double gb = static_cast<double>(blocks * slot_bytes) / 1e9;
  if (FILE* f = std::fopen(json.c_str(), "w")) {
    std::fprintf(f, "{\"bench\": \"disk_read_bench\", \"page_cache\": \"warm\", \"blocks\": %lld, \"slot_bytes\": %lld, "
                 "\"reps\": %d, \"hardware_threads\": %u, \"rows\": [",
                 static_cast<long long>(blocks), static_cast<long long>(slot_bytes), reps,
                 std::thread::hardware_concurrency());
    for (size_t i = 0; i < rows.size(); ++i) {
      std::fprintf(f, "%s{\"threads\": %d, \"median_ms\": %.3f, \"best_ms\": %.3f, \"gb_per_s\": %.3f}", i ? ", " : "",
                   rows[i].threads, rows[i].median_ms, rows[i].best_ms, gb / (rows[i].median_ms / 1e3));
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  std::printf("disk_read_bench: %lld blocks of %lld KiB (%.0f MiB) per acquire, all disk misses, page cache WARM, "
              "median of %d reps, %u hardware threads, bytes checked; JSON: %s\n",
              static_cast<long long>(blocks), static_cast<long long>(slot_bytes >> 10), mib, reps,
              std::thread::hardware_concurrency(), json.c_str());
  std::printf("| disk_read_threads | median ms | best ms | GB/s (median) | vs 1 thread |\n|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %d | %.2f | %.2f | %.2f | %.2fx |\n", r.threads, r.median_ms, r.best_ms, gb / (r.median_ms / 1e3),
                rows[0].median_ms / r.median_ms);
  }
  return 0;
}
