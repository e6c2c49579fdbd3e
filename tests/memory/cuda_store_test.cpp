// The tiered KV store on a GPU (issue #5): bf16 slots in a cudaMalloc'd arena, the host tier in
// mapped pinned memory, blocks moved by the gather kernel on the store's stream. The scenarios of
// byte_store_util.h (host and disk round trips, forks, a random workload against a host model of the
// bytes) run with cudaMemcpy into and out of the device arena; the ordering tests queue the writes
// and reads on a caller stream behind a long memset, so a store that forgot an event would copy
// bytes that are not there yet. Every test skips, naming the reason, without a usable device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "core/device.h"
#include "tests/memory/byte_store_util.h"

namespace mnemo {
namespace {

using memory_test::bf16_layout;

#define SKIP_WITHOUT_GPU()                                                                  \
  do {                                                                                      \
    if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();                \
  } while (0)

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

memory_test::SlotIo cuda_io() {
  // Synchronous copies on the legacy default stream (the store's cuda_stream default).
  return {[](void* d, const void* s, size_t n) {
            const cudaError_t e = cudaMemcpy(d, s, n, cudaMemcpyHostToDevice);
            EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
          },
          [](void* d, const void* s, size_t n) {
            const cudaError_t e = cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost);
            EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
          }};
}

KvStoreOptions cuda_bf16() {
  KvStoreOptions o = memory_test::byte_options(bf16_layout(), 1, 1);
  o.cuda = true;
  return o;
}

TEST(CudaStore, ArenaIsDeviceMemoryAndThereAreNoHostRows) {
  SKIP_WITHOUT_GPU();
  KvStoreOptions o = cuda_bf16();
  o.gpu_budget_bytes = 8 * o.layout.slot_bytes();
  o.host_budget_bytes = 8 * o.layout.slot_bytes();
  auto store = memory_test::open_or_fail(o);
  ASSERT_TRUE(store);
  cudaPointerAttributes attr{};
  CUDA_OK(cudaPointerGetAttributes(&attr, store->gpu_arena_data()));
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(store->gpu_arena(), nullptr);
  ASSERT_TRUE(store->create_sequence(1).ok());
  ASSERT_TRUE(store->reserve(1, 5).ok());
  EXPECT_EQ(store->k_row(1, 0, 0, 0), nullptr);
  EXPECT_EQ(store->v_row(1, 1, 4, 1), nullptr);
  EXPECT_EQ(store->metrics().gpu_slots_total, 8);
}

TEST(CudaStore, F32LayoutWorksToo) {
  SKIP_WITHOUT_GPU();
  KvStoreOptions o = memory_test::byte_options(memory_test::tiny_layout(), 1, 1);
  o.cuda = true;
  memory_test::run_host_round_trip(o, cuda_io());
}

TEST(CudaStore, SlotsThatAreNotWholeVectorsAreRefused) {
  SKIP_WITHOUT_GPU();
  KvStoreOptions o = cuda_bf16();
  o.layout.head_dim = 1;
  o.layout.block_tokens = 1;  // 2 x 2 x 1 x 1 x 2 B = 8 bytes
  o.gpu_budget_bytes = o.host_budget_bytes = 64;
  auto opened = KvStore::open(o);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(opened.status().message().find("= 8 is not a multiple of 16"), std::string::npos)
      << opened.status().message();
}

TEST(CudaStore, EvictedBlocksComeBackBitExactFromHost) {
  SKIP_WITHOUT_GPU();
  memory_test::run_host_round_trip(cuda_bf16(), cuda_io());
}

TEST(CudaStore, EvictedBlocksComeBackBitExactFromDiskAndAfterReopen) {
  SKIP_WITHOUT_GPU();
  memory_test::run_disk_round_trip(cuda_bf16(), cuda_io(), memory_test::scratch_dir());
}

TEST(CudaStore, ForkSharesSealedBlocksAndCopiesTheOpenOne) {
  SKIP_WITHOUT_GPU();
  memory_test::run_fork(cuda_bf16(), cuda_io());
}

TEST(CudaStore, BudgetsHoldAndBytesStayIntactUnderARandomWorkload) {
  SKIP_WITHOUT_GPU();
  for (uint32_t seed : {31u, 32u}) memory_test::run_random_workload(cuda_bf16(), cuda_io(), seed, "");
  for (uint32_t seed : {33u, 34u}) {
    memory_test::run_random_workload(cuda_bf16(), cuda_io(), seed, memory_test::scratch_dir());
  }
}

// A caller stream kept busy by a long memset: what the test queues behind it runs late, so the
// store must order its own copies with events rather than by luck.
struct BusyStream {
  cudaStream_t stream = nullptr;
  void* scratch = nullptr;
  static constexpr size_t kScratchBytes = size_t{1} << 30;
  BusyStream() {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&scratch, kScratchBytes), cudaSuccess);
  }
  ~BusyStream() {
    cudaStreamSynchronize(stream);
    cudaFree(scratch);
    cudaStreamDestroy(stream);
  }
  void busy() {
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(cudaMemsetAsync(scratch, i, kScratchBytes, stream), cudaSuccess);
    }
  }
};

TEST(CudaStore, CopiesAreOrderedWithTheCallersStream) {
  SKIP_WITHOUT_GPU();
  BusyStream caller;
  KvStoreOptions o = cuda_bf16();
  o.cuda_stream = caller.stream;
  o.gpu_budget_bytes = 6 * o.layout.slot_bytes();  // 2 layers: every sealed block is evicted soon
  o.host_budget_bytes = 64 * o.layout.slot_bytes();
  auto store = memory_test::open_or_fail(o);
  ASSERT_TRUE(store);
  const KvLayout& l = o.layout;
  // Pinned staging: cudaMemcpyAsync from it is truly asynchronous, queued behind the memsets.
  const size_t staging_bytes = 64 * static_cast<size_t>(l.slot_bytes());
  uint8_t* staging = nullptr;
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&staging), staging_bytes, cudaHostAllocDefault));
  size_t used = 0;
  // (b): write K/V rows of a forward on the caller stream behind the memsets, commit at once (the
  // seal copies must wait for them), fork while the last writes are still queued.
  auto queue_rows = [&](SequenceId seq, const std::vector<uint32_t>& tags) -> Status {
    MNEMO_ASSIGN_OR_RETURN(const int64_t len, store->length(seq));
    const int64_t new_len = len + static_cast<int64_t>(tags.size());
    MNEMO_RETURN_IF_ERROR(store->reserve(seq, new_len));
    caller.busy();
    std::vector<int64_t> open;
    for (int64_t b = len / l.block_tokens; b * l.block_tokens < new_len; ++b) open.push_back(b);
    for (int layer = 0; layer < l.num_layers; ++layer) {
      std::vector<int32_t> slots;
      MNEMO_RETURN_IF_ERROR(store->acquire(seq, layer, open, &slots));
      for (int64_t t = len; t < new_len; ++t) {
        for (int kv = 0; kv < 2; ++kv) {
          for (int h = 0; h < l.num_kv_heads; ++h) {
            const std::vector<uint8_t> row = memory_test::row_bytes(l, tags[t - len], t, layer, kv, h);
            if (used + row.size() > staging_bytes) return internal_error("staging buffer too small");
            std::memcpy(staging + used, row.data(), row.size());
            char* dst = memory_test::slot_ptr(*store, slots[t / l.block_tokens - open[0]]) +
                        memory_test::row_offset(l, t, kv, h);
            if (cudaMemcpyAsync(dst, staging + used, row.size(), cudaMemcpyHostToDevice, caller.stream) !=
                cudaSuccess) {
              return internal_error("cudaMemcpyAsync failed");
            }
            used += row.size();
          }
        }
      }
    }
    store->release_all();
    return store->commit(seq, new_len);
  };
  ASSERT_TRUE(store->create_sequence(1).ok());
  std::vector<uint32_t> tags;
  for (int round = 0; round < 6; ++round) {  // 42 tokens: 10 sealed blocks and 2 tokens open
    const std::vector<uint32_t> more = memory_test::tags_from(1000 + 10 * round, 7);
    Status s = queue_rows(1, more);
    ASSERT_TRUE(s.ok()) << s.to_string();
    tags.insert(tags.end(), more.begin(), more.end());
  }
  ASSERT_TRUE(store->fork_sequence(1, 2).ok());  // the open block's rows may still be queued
  CUDA_OK(cudaStreamSynchronize(caller.stream));
  used = 0;

  // (a): acquire evicted blocks and read them on the caller stream, without synchronising anything
  // but that stream. The memsets are queued before release_all(), so the load waits for them too
  // and races the read unless acquire() made the caller stream wait for it.
  for (SequenceId seq : {SequenceId{1}, SequenceId{2}}) {
    for (int layer = 0; layer < l.num_layers; ++layer) {
      for (int64_t b : memory_test::all_blocks(*store, static_cast<int64_t>(tags.size()))) {
        std::vector<int32_t> slots;
        caller.busy();
        store->release_all();
        const std::vector<int64_t> one{b};
        Status s = store->acquire(seq, layer, one, &slots);
        ASSERT_TRUE(s.ok()) << s.to_string();
        std::vector<uint8_t> got(static_cast<size_t>(l.slot_bytes()));
        CUDA_OK(cudaMemcpyAsync(staging, memory_test::slot_ptr(*store, slots[0]), got.size(), cudaMemcpyDeviceToHost,
                                caller.stream));
        CUDA_OK(cudaStreamSynchronize(caller.stream));
        std::memcpy(got.data(), staging, got.size());
        memory_test::SlotIo from_copy{nullptr, [&](void* d, const void*, size_t n) { std::memcpy(d, got.data(), n); }};
        EXPECT_EQ(memory_test::check_block_bytes(*store, from_copy, slots[0], layer, b, tags), "") << "seq " << seq;
      }
    }
  }
  const KvStoreMetrics m = store->metrics();
  EXPECT_GT(m.gpu_misses, 0);
  EXPECT_GT(m.gpu_evictions, 0);
  CUDA_OK(cudaFreeHost(staging));
}

// Prefetch (issue #5) on the GPU. Every step first queues long memsets on the caller stream and
// releases, so the mover (ordered after the caller by release_all) runs the prefetch copies late:
// an acquire() that did not make the caller stream wait for them reads the slots too early; and a
// drop while they are queued hands their slots to a new sequence's open blocks, whose rows the caller
// writes (reserve must order those writes after the copies, or the copies overwrite them).
TEST(CudaStore, PrefetchedBlocksAreOrderedWithTheCallersStream) {
  SKIP_WITHOUT_GPU();
  BusyStream caller;
  KvStoreOptions o = cuda_bf16();
  o.cuda_stream = caller.stream;
  o.gpu_budget_bytes = 8 * o.layout.slot_bytes();
  o.host_budget_bytes = 64 * o.layout.slot_bytes();
  auto store = memory_test::open_or_fail(o);
  ASSERT_TRUE(store);
  const KvLayout& l = o.layout;
  // Reads and writes of slot bytes on the caller stream, through pinned staging (truly async).
  constexpr size_t kStaging = size_t{1} << 20;
  uint8_t* staging = nullptr;
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&staging), 2 * kStaging, cudaHostAllocDefault));
  size_t used = 0;
  memory_test::SlotIo io{[&](void* d, const void* src, size_t n) {
                           if (used + n > kStaging) {
                             EXPECT_EQ(cudaStreamSynchronize(caller.stream), cudaSuccess);
                             used = 0;
                           }
                           std::memcpy(staging + used, src, n);
                           EXPECT_EQ(cudaMemcpyAsync(d, staging + used, n, cudaMemcpyHostToDevice, caller.stream),
                                     cudaSuccess);
                           used += n;
                         },
                         [&](void* d, const void* src, size_t n) {
                           uint8_t* out = staging + kStaging;
                           EXPECT_EQ(cudaMemcpyAsync(out, src, n, cudaMemcpyDeviceToHost, caller.stream),
                                     cudaSuccess);
                           EXPECT_EQ(cudaStreamSynchronize(caller.stream), cudaSuccess);
                           std::memcpy(d, out, n);
                         }};
  ASSERT_TRUE(store->create_sequence(1).ok());
  const std::vector<uint32_t> tags = memory_test::tags_from(300, 10 * l.block_tokens + 2);
  caller.busy();
  ASSERT_TRUE(memory_test::append_bytes_chunked(*store, io, 1, tags, 4).ok());

  // (a) prefetch, then acquire and read on the caller stream.
  int64_t prefetched = 0;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int64_t first = 0; first + 3 <= 10; first += 3) {
      const std::vector<int64_t> blocks{first + 2, first, first + 1};
      caller.busy();
      store->release_all();
      const KvStoreMetrics before = store->metrics();
      ASSERT_TRUE(store->prefetch(1, layer, blocks).ok());
      const KvStoreMetrics after = store->metrics();
      prefetched += after.prefetched_blocks - before.prefetched_blocks;
      std::vector<int32_t> slots;
      ASSERT_TRUE(store->acquire(1, layer, blocks, &slots).ok());
      EXPECT_EQ(store->metrics().prefetch_hits - after.prefetch_hits,
                after.prefetched_blocks - before.prefetched_blocks);
      EXPECT_EQ(store->metrics().bytes_host_to_gpu, after.bytes_host_to_gpu) << "acquire moved nothing more";
      for (size_t i = 0; i < blocks.size(); ++i) {
        EXPECT_EQ(memory_test::check_block_bytes(*store, io, slots[i], layer, blocks[i], tags), "")
            << "layer " << layer << " block " << blocks[i];
      }
    }
  }
  EXPECT_GT(prefetched, 0);

  // (b) drop while the prefetch copies are queued; a new sequence writes into the freed slots.
  caller.busy();
  store->release_all();
  ASSERT_TRUE(store->prefetch(1, 0, std::vector<int64_t>{0, 1, 2, 3}).ok());
  ASSERT_TRUE(store->prefetch(1, 1, std::vector<int64_t>{4, 5, 6, 7}).ok());
  ASSERT_TRUE(store->drop_sequence(1).ok());
  ASSERT_TRUE(store->create_sequence(2).ok());
  const std::vector<uint32_t> tags2 = memory_test::tags_from(7000, 3 * l.block_tokens + 1);
  ASSERT_TRUE(memory_test::append_bytes(*store, io, 2, tags2).ok());  // 4 open blocks per layer: every slot
  memory_test::expect_sequence_bytes(*store, io, 2, tags2);
  CUDA_OK(cudaStreamSynchronize(caller.stream));
  CUDA_OK(cudaFreeHost(staging));
}

}  // namespace
}  // namespace mnemo
