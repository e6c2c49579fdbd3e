// KvLayout's dtype and the store options that depend on it, in CI (no GPU): slot sizes of bf16
// layouts, the clear error of `cuda = true` without CUDA, and the tiered-store scenarios of
// byte_store_util.h on a bf16 host store (the byte path the CUDA store uses, with memcpy).
#include <gtest/gtest.h>

#include "core/device.h"
#include "tests/memory/byte_store_util.h"

namespace mnemo {
namespace {

using memory_test::bf16_layout;
using memory_test::host_io;

TEST(KvLayout, SlotBytesCountTheDtype) {
  KvLayout l{.num_layers = 32, .num_kv_heads = 2, .block_tokens = 64, .head_dim = 128};
  EXPECT_EQ(l.dtype, DType::kF32);  // the default: CPU builds are unchanged
  EXPECT_EQ(l.slot_elems(), 2 * 2 * 64 * 128);
  EXPECT_EQ(l.slot_floats(), l.slot_elems());
  EXPECT_EQ(l.slot_bytes(), 2 * 2 * 64 * 128 * 4);
  l.dtype = DType::kBF16;  // MiniCPM4's shape: 64 KiB slots
  EXPECT_EQ(l.slot_elems(), 32768);
  EXPECT_EQ(l.slot_floats(), 32768);
  EXPECT_EQ(l.slot_bytes(), 65536);
  EXPECT_EQ(bf16_layout().slot_bytes(), 2 * 2 * 4 * 8 * 2);
}

TEST(KvLayout, BudgetsCountSlotsOfTheLayoutsDtype) {
  KvStoreOptions o = memory_test::byte_options(bf16_layout(), 0, 3);
  o.gpu_budget_bytes = 10 * 256 + 255;  // 10 bf16 slots (5 f32 ones)
  auto store = memory_test::open_or_fail(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->metrics().gpu_slots_total, 10);
  EXPECT_EQ(store->metrics().host_slots_total, 3);
}

TEST(KvStore, CudaWithoutADeviceIsAClearError) {
  if (built_with_cuda() && cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present (cuda_store_test)";
  KvStoreOptions o = memory_test::byte_options(bf16_layout(), 8, 8);
  o.cuda = true;
  auto opened = KvStore::open(o);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument);
  const std::string msg = opened.status().message();
  EXPECT_NE(msg.find("options.cuda"), std::string::npos) << msg;
  const std::string reason = built_with_cuda() ? cuda_unavailable_reason() : "MNEMO_CUDA=OFF";
  ASSERT_FALSE(reason.empty());
  EXPECT_NE(msg.find(reason), std::string::npos) << msg;
}

TEST(KvStore, OnlyF32AndBf16LayoutsAreAccepted) {
  KvLayout l = bf16_layout();
  l.dtype = DType::kI32;
  auto opened = KvStore::open(memory_test::byte_options(l, 8, 8));
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(opened.status().message().find("layout.dtype must be f32 or bf16, got i32"), std::string::npos)
      << opened.status().message();
}

TEST(KvStore, Bf16HostStoreHasNoFloatRows) {
  auto store = memory_test::open_or_fail(memory_test::byte_options(bf16_layout(), 8, 8));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->create_sequence(1).ok());
  ASSERT_TRUE(store->reserve(1, 3).ok());
  EXPECT_EQ(store->k_row(1, 0, 0, 0), nullptr);
  EXPECT_EQ(store->v_row(1, 0, 0, 0), nullptr);
  EXPECT_EQ(store->gpu_arena(), nullptr);
  EXPECT_NE(store->gpu_arena_data(), nullptr);
}

TEST(KvStore, F32HostStoreArenaDataIsTheFloatArena) {
  auto store = memory_test::open_or_fail(memory_test::tiny_options(8, 8));
  ASSERT_TRUE(store);
  EXPECT_EQ(static_cast<const void*>(store->gpu_arena()), store->gpu_arena_data());
}

KvStoreOptions bf16_host() { return memory_test::byte_options(bf16_layout(), 1, 1); }

TEST(Bf16HostStore, EvictedBlocksComeBackBitExactFromHost) {
  memory_test::run_host_round_trip(bf16_host(), host_io());
}

TEST(Bf16HostStore, EvictedBlocksComeBackBitExactFromDiskAndAfterReopen) {
  memory_test::run_disk_round_trip(bf16_host(), host_io(), memory_test::scratch_dir());
}

TEST(Bf16HostStore, ForkSharesSealedBlocksAndCopiesTheOpenOne) { memory_test::run_fork(bf16_host(), host_io()); }

TEST(Bf16HostStore, BudgetsHoldAndBytesStayIntactUnderARandomWorkload) {
  for (uint32_t seed : {21u, 22u}) memory_test::run_random_workload(bf16_host(), host_io(), seed, "");
  memory_test::run_random_workload(bf16_host(), host_io(), 23u, memory_test::scratch_dir());
}

}  // namespace
}  // namespace mnemo
