// Fetch bandwidth of a step's cold KV blocks, host → GPU (issue #5): 64 KiB blocks from random host
// slots into random GPU slots, three ways in one run — the gather kernel reading mapped pinned host
// memory (memory/gather.h), one cudaMemcpyAsync per block, and a bulk pinned copy (the ceiling).
// Checks the gathered bytes against the CPU reference, prints a table last, writes JSON.
//   fetch_bench [--blocks N] [--block-kib K] [--host-gib G] [--json OUT.json]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "memory/gather.h"

namespace {

#define CHECK(call)                                                                           \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_));                 \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

template <typename F>
double median_ms(F&& f, int reps) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  f();  // warm-up
  CHECK(cudaDeviceSynchronize());
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(a));
    f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t blocks = 2048, block_kib = 64, host_gib = 4;
  std::string json = "fetch.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--blocks") blocks = std::atoll(argv[i + 1]);
    else if (f == "--block-kib") block_kib = std::atoll(argv[i + 1]);
    else if (f == "--host-gib") host_gib = std::atoll(argv[i + 1]);
    else if (f == "--json") json = argv[i + 1];
  }
  const int64_t block_bytes = block_kib * 1024;
  const int64_t host_slots = (host_gib << 30) / block_bytes;
  const int64_t gpu_slots = blocks * 2;
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));

  // Host tier: mapped pinned memory, filled with a pattern that names each slot.
  void* host = nullptr;
  CHECK(cudaHostAlloc(&host, static_cast<size_t>(host_slots * block_bytes), cudaHostAllocMapped));
  for (int64_t s = 0; s < host_slots; ++s) {
    auto* w = reinterpret_cast<uint32_t*>(static_cast<char*>(host) + s * block_bytes);
    for (int64_t k = 0; k < block_bytes / 4; k += 1024) w[k] = static_cast<uint32_t>(s * 2654435761u + k);
  }
  void* host_dev = nullptr;
  CHECK(cudaHostGetDevicePointer(&host_dev, host, 0));
  void* gpu = nullptr;
  CHECK(cudaMalloc(&gpu, static_cast<size_t>(gpu_slots * block_bytes)));

  std::mt19937_64 rng(7);
  std::vector<int32_t> src(host_slots), dst(gpu_slots);
  std::iota(src.begin(), src.end(), 0);
  std::iota(dst.begin(), dst.end(), 0);
  std::shuffle(src.begin(), src.end(), rng);
  std::shuffle(dst.begin(), dst.end(), rng);
  src.resize(blocks);
  dst.resize(blocks);
  int32_t *d_src = nullptr, *d_dst = nullptr;
  CHECK(cudaMalloc(&d_src, blocks * sizeof(int32_t)));
  CHECK(cudaMalloc(&d_dst, blocks * sizeof(int32_t)));
  CHECK(cudaMemcpy(d_src, src.data(), blocks * sizeof(int32_t), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst, dst.data(), blocks * sizeof(int32_t), cudaMemcpyHostToDevice));
  mnemo::GatherParams p{host_dev, gpu, d_src, d_dst, blocks, block_bytes};

  // Correctness: the kernel's result equals the CPU reference gather.
  CHECK(cudaMemset(gpu, 0xff, static_cast<size_t>(gpu_slots * block_bytes)));
  if (!mnemo::gather_blocks_cuda(p, nullptr).ok()) return 1;
  CHECK(cudaDeviceSynchronize());
  std::vector<char> got(static_cast<size_t>(gpu_slots * block_bytes)), want(got.size(), '\xff');
  CHECK(cudaMemcpy(got.data(), gpu, got.size(), cudaMemcpyDeviceToHost));
  mnemo::GatherParams cpu_p{host, want.data(), src.data(), dst.data(), blocks, block_bytes};
  if (!mnemo::gather_blocks_cpu(cpu_p).ok()) return 1;
  const bool correct = got == want;

  const double bytes = static_cast<double>(blocks * block_bytes);
  const double gather_ms = median_ms([&] { (void)mnemo::gather_blocks_cuda(p, nullptr); }, 10);
  const double per_block_ms = median_ms([&] {
    for (int64_t i = 0; i < blocks; ++i) {
      CHECK(cudaMemcpyAsync(static_cast<char*>(gpu) + int64_t{dst[i]} * block_bytes,
                            static_cast<char*>(host) + int64_t{src[i]} * block_bytes, block_bytes,
                            cudaMemcpyHostToDevice));
    }
  }, 5);
  const double bulk_ms = median_ms([&] { CHECK(cudaMemcpyAsync(gpu, host, bytes, cudaMemcpyHostToDevice)); }, 10);
  auto gbs = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };

  FILE* f = std::fopen(json.c_str(), "w");
  if (f) {
    std::fprintf(f,
                 "{\"device\": \"%s\", \"blocks\": %lld, \"block_bytes\": %lld, \"correct\": %s, "
                 "\"gather_ms\": %.4f, \"gather_gbs\": %.2f, \"per_block_memcpy_ms\": %.4f, "
                 "\"per_block_memcpy_gbs\": %.2f, \"bulk_ms\": %.4f, \"bulk_gbs\": %.2f}\n",
                 prop.name, static_cast<long long>(blocks), static_cast<long long>(block_bytes),
                 correct ? "true" : "false", gather_ms, gbs(gather_ms), per_block_ms, gbs(per_block_ms), bulk_ms,
                 gbs(bulk_ms));
    std::fclose(f);
  }
  std::printf("\nfetch of %lld random %lld KiB blocks (%.0f MiB) host -> GPU on %s; gather correct: %s\n",
              static_cast<long long>(blocks), static_cast<long long>(block_kib), bytes / (1 << 20), prop.name,
              correct ? "PASS" : "FAIL");
  std::printf("| method | ms | GB/s | vs bulk |\n|---|---|---|---|\n");
  std::printf("| bulk pinned copy (ceiling) | %.3f | %.1f | 100%% |\n", bulk_ms, gbs(bulk_ms));
  std::printf("| mnemo gather kernel (mapped pinned) | %.3f | %.1f | %.0f%% |\n", gather_ms, gbs(gather_ms),
              100.0 * bulk_ms / gather_ms);
  std::printf("| one cudaMemcpyAsync per block | %.3f | %.1f | %.0f%% |\n", per_block_ms, gbs(per_block_ms),
              100.0 * bulk_ms / per_block_ms);
  return correct ? 0 : 1;
}
