// The mover's batched gather: the CPU reference moves exactly the named blocks, and on a GPU the
// CUDA kernel (reading mapped pinned host memory) matches it on fresh random data.
#include "memory/gather.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/device.h"

#ifdef MNEMO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace mnemo {
namespace {

struct Case {
  std::vector<uint8_t> src;
  std::vector<int32_t> src_slots, dst_slots;
  int64_t block_bytes = 0, dst_slots_total = 0;
};

Case make_case(int64_t blocks, int64_t block_bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  Case c;
  c.block_bytes = block_bytes;
  const int64_t src_total = blocks * 3, dst_total = blocks * 2;
  c.dst_slots_total = dst_total;
  c.src.resize(static_cast<size_t>(src_total * block_bytes));
  for (auto& b : c.src) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> s(src_total), d(dst_total);
  std::iota(s.begin(), s.end(), 0);
  std::iota(d.begin(), d.end(), 0);
  std::shuffle(s.begin(), s.end(), rng);
  std::shuffle(d.begin(), d.end(), rng);
  c.src_slots.assign(s.begin(), s.begin() + blocks);
  c.dst_slots.assign(d.begin(), d.begin() + blocks);
  return c;
}

TEST(Gather, CpuMovesExactlyTheNamedBlocks) {
  const Case c = make_case(37, 256, 1);
  std::vector<uint8_t> dst(static_cast<size_t>(c.dst_slots_total * c.block_bytes), 0xab);
  GatherParams p{c.src.data(), dst.data(), c.src_slots.data(), c.dst_slots.data(), 37, c.block_bytes};
  ASSERT_TRUE(gather_blocks_cpu(p).ok());
  std::vector<char> written(static_cast<size_t>(c.dst_slots_total), 0);
  for (size_t i = 0; i < c.src_slots.size(); ++i) {
    written[c.dst_slots[i]] = 1;
    EXPECT_EQ(0, std::memcmp(dst.data() + c.dst_slots[i] * c.block_bytes, c.src.data() + c.src_slots[i] * c.block_bytes,
                             static_cast<size_t>(c.block_bytes)));
  }
  for (int64_t s = 0; s < c.dst_slots_total; ++s) {
    if (!written[s]) {
      EXPECT_EQ(dst[s * c.block_bytes], 0xab) << "slot " << s << " was not named";
    }
  }
}

TEST(Gather, CudaKernelMatchesTheCpuReference) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();
#ifdef MNEMO_WITH_CUDA
  for (int64_t blocks : {1, 63, 257}) {
    const uint32_t seed = std::random_device{}();
    SCOPED_TRACE("seed " + std::to_string(seed) + ", blocks " + std::to_string(blocks));
    const Case c = make_case(blocks, 64 * 1024, seed);
    void* host = nullptr;
    ASSERT_EQ(cudaHostAlloc(&host, c.src.size(), cudaHostAllocMapped), cudaSuccess);
    std::memcpy(host, c.src.data(), c.src.size());
    void* host_dev = nullptr;
    ASSERT_EQ(cudaHostGetDevicePointer(&host_dev, host, 0), cudaSuccess);
    const size_t dst_bytes = static_cast<size_t>(c.dst_slots_total * c.block_bytes);
    void* gpu = nullptr;
    int32_t *s = nullptr, *d = nullptr;
    ASSERT_EQ(cudaMalloc(&gpu, dst_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(gpu, 0xab, dst_bytes), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&s, blocks * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&d, blocks * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(s, c.src_slots.data(), blocks * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d, c.dst_slots.data(), blocks * 4, cudaMemcpyHostToDevice), cudaSuccess);
    GatherParams p{host_dev, gpu, s, d, blocks, c.block_bytes};
    ASSERT_TRUE(gather_blocks_cuda(p, nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint8_t> got(dst_bytes), want(dst_bytes, 0xab);
    ASSERT_EQ(cudaMemcpy(got.data(), gpu, dst_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    GatherParams cpu{c.src.data(), want.data(), c.src_slots.data(), c.dst_slots.data(), blocks, c.block_bytes};
    ASSERT_TRUE(gather_blocks_cpu(cpu).ok());
    EXPECT_TRUE(got == want);
    cudaFree(gpu);
    cudaFree(s);
    cudaFree(d);
    cudaFreeHost(host);
  }
#endif
}

}  // namespace
}  // namespace mnemo
