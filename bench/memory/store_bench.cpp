// A step's cold KV blocks through the store (issue #5), on a GPU machine: TieredStore::acquire on a
// CUDA store (bf16, MiniCPM4's 64 KiB slots: 2 kv heads x 64 tokens x 128 dims x K,V x 2 B)
//   (a) from the host tier: the store's planning + one gather over mapped pinned memory, beside a
//       raw gather of the same size (memory/gather.h) and a bulk pinned copy measured in this run;
//   (b) from the disk tier: MultiGet + crc32c checks + copy into host slots + gather, after the
//       store was closed and reopened with its files' page cache dropped by posix_fadvise(DONTNEED)
//       (no root needed for clean pages; mincore says how much stayed resident) — dropping the
//       whole page cache needs root, and a data set larger than RAM does not fit this run — then
//       the same reads again with the page cache warm.
// Every acquire is timed to the caller stream's completion (cudaStreamSynchronize); the bytes of
// the first step of each part are checked against what was written. Table last, JSON written.
//   store_bench [--step N] [--host-blocks N] [--disk-blocks N] [--disk-step N] [--dir D] [--json F]
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "memory/gather.h"
#include "memory/store.h"

namespace {

using mnemo::KvStore;
using mnemo::KvStoreOptions;
using mnemo::Status;

#define CHECK(call)                                                                           \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_));                 \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

#define CHECK_OK(expr)                                                                        \
  do {                                                                                        \
    const Status s_ = (expr);                                                                 \
    if (!s_.ok()) {                                                                           \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.to_string().c_str());                 \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kPatterns = 61;  // distinct random blocks; block b holds pattern b % 61 with b in its first 8 bytes

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Writer {
  cudaStream_t stream;
  int64_t slot_bytes;
  void* patterns;     // [kPatterns, slot_bytes] device
  uint64_t* ids;      // [max blocks] pinned: the block index written into each block's first 8 bytes
  std::vector<uint8_t> host_patterns;

  // Appends `blocks` whole blocks to layer 0 of `seq` the way the model would: reserve, acquire the
  // open blocks, write them with copies on the caller stream, release, commit.
  void append(KvStore& store, mnemo::SequenceId seq, int64_t blocks, int64_t chunk) {
    const int bt = store.layout().block_tokens;
    for (int64_t done = 0; done < blocks; done += chunk) {
      const int64_t n = std::min(chunk, blocks - done);
      const int64_t len = *store.length(seq);
      CHECK_OK(store.reserve(seq, len + n * bt));
      std::vector<int64_t> open(static_cast<size_t>(n));
      std::iota(open.begin(), open.end(), len / bt);
      std::vector<int32_t> slots;
      CHECK_OK(store.acquire(seq, 0, open, &slots));
      char* arena = static_cast<char*>(const_cast<void*>(store.gpu_arena_data()));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = open[i];
        char* dst = arena + int64_t{slots[i]} * slot_bytes;
        CHECK(cudaMemcpyAsync(dst, static_cast<char*>(patterns) + (b % kPatterns) * slot_bytes, slot_bytes,
                              cudaMemcpyDeviceToDevice, stream));
        ids[b] = static_cast<uint64_t>(b);
        CHECK(cudaMemcpyAsync(dst, &ids[b], 8, cudaMemcpyHostToDevice, stream));
      }
      store.release_all();
      CHECK_OK(store.commit(seq, len + n * bt));
    }
  }

  // Reads the acquired slots back and compares them with what append() wrote.
  bool check(const KvStore& store, const std::vector<int64_t>& blocks, const std::vector<int32_t>& slots) {
    std::vector<uint8_t> got(static_cast<size_t>(slot_bytes));
    const char* arena = static_cast<const char*>(store.gpu_arena_data());
    for (size_t i = 0; i < blocks.size(); ++i) {
      CHECK(cudaMemcpyAsync(got.data(), arena + int64_t{slots[i]} * slot_bytes, slot_bytes, cudaMemcpyDeviceToHost,
                            stream));
      CHECK(cudaStreamSynchronize(stream));
      const int64_t b = blocks[i];
      uint64_t id;
      std::memcpy(&id, got.data(), 8);
      if (id != static_cast<uint64_t>(b) ||
          std::memcmp(got.data() + 8, host_patterns.data() + (b % kPatterns) * slot_bytes + 8, slot_bytes - 8) != 0) {
        std::fprintf(stderr, "block %lld (slot %d) does not hold what was written\n", static_cast<long long>(b),
                     slots[i]);
        return false;
      }
    }
    return true;
  }
};

// Times acquire(step blocks) + completion on the caller stream for each chunk; checks the first.
struct StepTimes {
  std::vector<double> seconds;
  int64_t misses = 0, disk_reads = 0;
  bool correct = true;
};

StepTimes time_steps(KvStore& store, Writer& w, const std::vector<std::vector<int64_t>>& chunks, bool check_first) {
  StepTimes out;
  const mnemo::KvStoreMetrics m0 = store.metrics();
  for (size_t c = 0; c < chunks.size(); ++c) {
    std::vector<int32_t> slots;
    const double t0 = now_s();
    CHECK_OK(store.acquire(1, 0, chunks[c], &slots));
    CHECK(cudaStreamSynchronize(w.stream));
    out.seconds.push_back(now_s() - t0);
    if (check_first && c == 0) out.correct = w.check(store, chunks[c], slots);
    store.release_all();
  }
  const mnemo::KvStoreMetrics m1 = store.metrics();
  out.misses = m1.gpu_misses - m0.gpu_misses;
  out.disk_reads = m1.disk_reads - m0.disk_reads;
  return out;
}

// fdatasync + POSIX_FADV_DONTNEED on every file under `dir`; returns the bytes still resident
// (mincore) and the total.
std::pair<int64_t, int64_t> drop_page_cache(const std::string& dir) {
  int64_t resident = 0, total = 0;
  const long page = sysconf(_SC_PAGESIZE);
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    struct stat st {};
    fstat(fd, &st);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (st.st_size > 0) {
      void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
      if (map != MAP_FAILED) {
        std::vector<unsigned char> vec(static_cast<size_t>((st.st_size + page - 1) / page));
        if (mincore(map, static_cast<size_t>(st.st_size), vec.data()) == 0) {
          for (unsigned char v : vec) resident += (v & 1) ? page : 0;
        }
        munmap(map, static_cast<size_t>(st.st_size));
      }
    }
    total += st.st_size;
    ::close(fd);
  }
  return {resident, total};
}

std::vector<std::vector<int64_t>> random_chunks(int64_t blocks, int64_t step, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(blocks));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int64_t>> chunks;
  for (int64_t i = 0; i + step <= blocks; i += step) chunks.emplace_back(order.begin() + i, order.begin() + i + step);
  return chunks;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t step = 2048, host_blocks = 16384, disk_blocks = 8192, disk_step = 512;
  std::string dir = "store_bench_data", json = "store.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--step") step = std::atoll(argv[i + 1]);
    else if (f == "--host-blocks") host_blocks = std::atoll(argv[i + 1]);
    else if (f == "--disk-blocks") disk_blocks = std::atoll(argv[i + 1]);
    else if (f == "--disk-step") disk_step = std::atoll(argv[i + 1]);
    else if (f == "--dir") dir = argv[i + 1];
    else if (f == "--json") json = argv[i + 1];
  }
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  KvStoreOptions base;
  base.layout = {.num_layers = 1, .num_kv_heads = 2, .block_tokens = 64, .head_dim = 128, .dtype = mnemo::DType::kBF16};
  base.cuda = true;
  const int64_t slot_bytes = base.layout.slot_bytes();  // 65536

  Writer w{};
  w.slot_bytes = slot_bytes;
  CHECK(cudaStreamCreateWithFlags(&w.stream, cudaStreamNonBlocking));
  base.cuda_stream = w.stream;
  w.host_patterns.resize(static_cast<size_t>(kPatterns * slot_bytes));
  std::mt19937_64 rng(5);
  for (auto& b : w.host_patterns) b = static_cast<uint8_t>(rng());
  CHECK(cudaMalloc(&w.patterns, w.host_patterns.size()));
  CHECK(cudaMemcpy(w.patterns, w.host_patterns.data(), w.host_patterns.size(), cudaMemcpyHostToDevice));
  CHECK(cudaHostAlloc(reinterpret_cast<void**>(&w.ids), sizeof(uint64_t) * std::max(host_blocks, disk_blocks),
                      cudaHostAllocDefault));
  const double step_bytes = static_cast<double>(step * slot_bytes);

  // (a) host → GPU through the store.
  double fill_a = now_s();
  KvStoreOptions oa = base;
  oa.gpu_budget_bytes = (step + 16) * slot_bytes;
  oa.host_budget_bytes = (host_blocks + 16) * slot_bytes;
  auto opened = KvStore::open(oa);
  CHECK_OK(opened.status());
  std::unique_ptr<KvStore> store = std::move(opened).value();
  CHECK_OK(store->create_sequence(1));
  w.append(*store, 1, host_blocks, 256);
  fill_a = now_s() - fill_a;
  const auto chunks_a = random_chunks(host_blocks, step, 11);
  StepTimes warm = time_steps(*store, w, {chunks_a[0]}, false);  // warm-up (first launch, page tables)
  (void)warm;
  std::vector<std::vector<int64_t>> timed_a(chunks_a.begin() + 1, chunks_a.end());
  StepTimes a = time_steps(*store, w, timed_a, true);
  store.reset();

  // Raw gather of the same size on fresh buffers: the kernel alone (device-resident slot lists).
  void* host = nullptr;
  CHECK(cudaHostAlloc(&host, static_cast<size_t>(host_blocks * slot_bytes), cudaHostAllocMapped));
  std::memset(host, 1, static_cast<size_t>(host_blocks * slot_bytes));
  void* host_dev = nullptr;
  CHECK(cudaHostGetDevicePointer(&host_dev, host, 0));
  void* gpu = nullptr;
  CHECK(cudaMalloc(&gpu, static_cast<size_t>(2 * step * slot_bytes)));
  std::vector<int32_t> src(chunks_a[1].begin(), chunks_a[1].end()), dst(static_cast<size_t>(2 * step));
  std::iota(dst.begin(), dst.end(), 0);
  std::shuffle(dst.begin(), dst.end(), rng);
  dst.resize(static_cast<size_t>(step));
  int32_t *d_src = nullptr, *d_dst = nullptr;
  CHECK(cudaMalloc(&d_src, step * sizeof(int32_t)));
  CHECK(cudaMalloc(&d_dst, step * sizeof(int32_t)));
  CHECK(cudaMemcpy(d_src, src.data(), step * sizeof(int32_t), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst, dst.data(), step * sizeof(int32_t), cudaMemcpyHostToDevice));
  mnemo::GatherParams gp{host_dev, gpu, d_src, d_dst, step, slot_bytes};
  std::vector<double> raw, bulk;
  for (int r = 0; r < 8; ++r) {
    double t0 = now_s();
    CHECK_OK(mnemo::gather_blocks_cuda(gp, w.stream));
    CHECK(cudaStreamSynchronize(w.stream));
    if (r > 0) raw.push_back(now_s() - t0);
    t0 = now_s();
    CHECK(cudaMemcpyAsync(gpu, host, static_cast<size_t>(step * slot_bytes), cudaMemcpyHostToDevice, w.stream));
    CHECK(cudaStreamSynchronize(w.stream));
    if (r > 0) bulk.push_back(now_s() - t0);
  }
  CHECK(cudaFreeHost(host));
  CHECK(cudaFree(gpu));

  // (b) disk → host → GPU through the store, after a reopen with the page cache dropped.
  std::filesystem::remove_all(dir);
  KvStoreOptions ob = base;
  ob.data_dir = dir;
  ob.gpu_budget_bytes = (disk_step + 16) * slot_bytes;  // only the last step stays resident
  ob.host_budget_bytes = (disk_step + 64) * slot_bytes;
  double fill_b = now_s();
  opened = KvStore::open(ob);
  CHECK_OK(opened.status());
  store = std::move(opened).value();
  CHECK_OK(store->create_sequence(1));
  w.append(*store, 1, disk_blocks, 256);
  CHECK_OK(store->flush());
  store.reset();
  fill_b = now_s() - fill_b;
  drop_page_cache(dir);
  double reopen_s = now_s();
  opened = KvStore::open(ob);
  CHECK_OK(opened.status());
  store = std::move(opened).value();
  auto recovered = store->recover_sequence(1);
  CHECK_OK(recovered.status());
  reopen_s = now_s() - reopen_s;
  // Again with the store open: reopening may flush the WAL's memtable into new (cached) files.
  const auto [resident_after, disk_bytes] = drop_page_cache(dir);
  const auto chunks_b = random_chunks(disk_blocks, disk_step, 13);
  StepTimes cold = time_steps(*store, w, chunks_b, true);
  StepTimes warm_b = time_steps(*store, w, chunks_b, true);
  store.reset();
  std::filesystem::remove_all(dir);

  const double disk_step_bytes = static_cast<double>(disk_step * slot_bytes);
  auto gbs = [](double bytes, double s) { return s > 0 ? bytes / s / 1e9 : 0.0; };
  const double a_s = median(a.seconds), raw_s = median(raw), bulk_s = median(bulk);
  // The store moves only the misses: GB/s counts those bytes (a few fill leftovers may hit).
  const double a_bytes = static_cast<double>(a.misses * slot_bytes) / static_cast<double>(timed_a.size());
  const double cold_s = median(cold.seconds), warm_s = median(warm_b.seconds);
  double cold_total = 0;
  for (double s : cold.seconds) cold_total += s;
  // Every step of the disk part misses GPU and host; the host part may hit a few blocks left
  // resident by the fill (misses are reported).
  const bool correct = a.correct && cold.correct && warm_b.correct &&
                       cold.disk_reads == disk_step * int64_t(chunks_b.size()) &&
                       warm_b.disk_reads == disk_step * int64_t(chunks_b.size());

  FILE* f = std::fopen(json.c_str(), "w");
  if (f) {
    std::fprintf(f,
                 "{\"device\": \"%s\", \"slot_bytes\": %lld, \"step_blocks\": %lld, \"correct\": %s,\n"
                 " \"host\": {\"blocks\": %lld, \"steps\": %zu, \"misses\": %lld, \"store_acquire_ms\": %.4f, "
                 "\"store_acquire_gbs\": %.2f, \"raw_gather_ms\": %.4f, \"raw_gather_gbs\": %.2f, \"bulk_ms\": %.4f, "
                 "\"bulk_gbs\": %.2f, \"fill_s\": %.2f},\n"
                 " \"disk\": {\"blocks\": %lld, \"step_blocks\": %lld, \"steps\": %zu, \"disk_reads\": %lld, "
                 "\"data_bytes\": %lld, \"resident_after_fadvise_bytes\": %lld, \"reopen_recover_s\": %.3f, "
                 "\"cold_step_ms\": %.3f, \"cold_gbs\": %.3f, \"cold_all_steps_gbs\": %.3f, \"warm_step_ms\": %.3f, "
                 "\"warm_gbs\": %.3f, \"fill_and_flush_s\": %.2f}}\n",
                 prop.name, static_cast<long long>(slot_bytes), static_cast<long long>(step), correct ? "true" : "false",
                 static_cast<long long>(host_blocks), timed_a.size(), static_cast<long long>(a.misses), a_s * 1e3,
                 gbs(a_bytes, a_s), raw_s * 1e3, gbs(step_bytes, raw_s), bulk_s * 1e3, gbs(step_bytes, bulk_s),
                 fill_a, static_cast<long long>(disk_blocks), static_cast<long long>(disk_step), chunks_b.size(),
                 static_cast<long long>(cold.disk_reads), static_cast<long long>(disk_bytes),
                 static_cast<long long>(resident_after), reopen_s, cold_s * 1e3, gbs(disk_step_bytes, cold_s),
                 gbs(disk_step_bytes * chunks_b.size(), cold_total), warm_s * 1e3, gbs(disk_step_bytes, warm_s), fill_b);
    std::fclose(f);
  }
  std::printf("\nstore-level fetch on %s, bf16 64 KiB slots; bytes checked: %s\n", prop.name,
              correct ? "PASS" : "FAIL");
  std::printf("disk: %lld blocks (%.0f MiB of RocksDB files), page cache after fadvise(DONTNEED): %.1f MiB "
              "resident; reopen + recover %.3f s\n",
              static_cast<long long>(disk_blocks), disk_bytes / 1048576.0, resident_after / 1048576.0, reopen_s);
  std::printf("| path (median of steps) | blocks/step | ms | GB/s |\n|---|---|---|---|\n");
  std::printf("| bulk pinned copy, host -> GPU (ceiling) | %lld | %.3f | %.1f |\n", static_cast<long long>(step),
              bulk_s * 1e3, gbs(step_bytes, bulk_s));
  std::printf("| raw gather kernel, random host slots | %lld | %.3f | %.1f |\n", static_cast<long long>(step),
              raw_s * 1e3, gbs(step_bytes, raw_s));
  std::printf("| TieredStore::acquire from host (%zu steps, %.1f%% misses) | %lld | %.3f | %.1f |\n",
              timed_a.size(), 100.0 * a.misses / (step * double(timed_a.size())), static_cast<long long>(step),
              a_s * 1e3, gbs(a_bytes, a_s));
  std::printf("| TieredStore::acquire from disk, page cache dropped (%zu steps) | %lld | %.3f | %.2f |\n",
              chunks_b.size(), static_cast<long long>(disk_step), cold_s * 1e3, gbs(disk_step_bytes, cold_s));
  std::printf("| TieredStore::acquire from disk, page cache warm | %lld | %.3f | %.2f |\n",
              static_cast<long long>(disk_step), warm_s * 1e3, gbs(disk_step_bytes, warm_s));
  return correct ? 0 : 1;
}
