// Warp-level building blocks of the attention kernels: bf16 packing, ldmatrix, mma.sync m16n8k16,
// shuffles. Device code only (included by .cu files).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with bf16 inputs; g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): a[0] = (g, 2t..2t+1)  a[1] = (g+8, 2t..2t+1)
//                           a[2] = (g, 2t+8..2t+9) a[3] = (g+8, 2t+8..2t+9)
//   B (16 x 8, k x n):      b[0] = (k = 2t..2t+1, n = g)   b[1] = (k = 2t+8..2t+9, n = g)
//   C (16 x 8, fp32):       c[0..1] = (g, 2t..2t+1)        c[2..3] = (g+8, 2t..2t+1)
// A packed register holds the lower column (or k) in its low 16 bits.
// ldmatrix.x4: lanes 8i..8i+7 address the 8 rows (16 bytes each) of matrix i; lane L receives in
// r[i] row L/4, columns 2(L%4)..+1 of matrix i (with .trans: column L/4, rows 2(L%4)..+1).
//
// Under MNEMO_WARP_SIM (tests/cuda/sim/warp_sim.h, included first) the same kernel source runs on the
// CPU: every warp-collective operation here has a host implementation there, and kernels take their
// shared memory only through MNEMO_DYNAMIC_SMEM (no static __shared__).
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef MNEMO_WARP_SIM
#define MNEMO_DYNAMIC_SMEM(name) unsigned char* name = ::mnemo::sim::dynamic_smem()
#else
#define MNEMO_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace mnemo::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float bits_as_float(uint32_t v) {
#ifdef MNEMO_WARP_SIM
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
#else
  return __uint_as_float(v);
#endif
}

// Two floats -> two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#ifdef MNEMO_WARP_SIM
  return uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(lo))} |
         (uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(hi))} << 16);
#else
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
#endif
}

// bf16 -> float is exact: the bf16 bits are the high half of the float.
__device__ __forceinline__ float bf16_lo(uint32_t v) { return bits_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return bits_as_float(v & 0xffff0000u); }

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
#ifdef MNEMO_WARP_SIM
  return ::mnemo::sim::shfl_xor(v, lane_mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#endif
}
__device__ __forceinline__ int shfl_xor(int v, int lane_mask) {
#ifdef MNEMO_WARP_SIM
  return ::mnemo::sim::shfl_xor(v, lane_mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#endif
}

__device__ __forceinline__ int64_t shfl_xor(int64_t v, int lane_mask) {
#ifdef MNEMO_WARP_SIM
  return ::mnemo::sim::shfl_xor(v, lane_mask);
#else
  return __shfl_xor_sync(0xffffffffu, static_cast<long long>(v), lane_mask);
#endif
}

__device__ __forceinline__ void warp_sync() {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::warp_barrier();
#else
  __syncwarp();
#endif
}

__device__ __forceinline__ void cta_sync() {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::cta_barrier();
#else
  __syncthreads();
#endif
}

// Four 8x8 b16 matrices from shared memory; `row` is this lane's row address (see the file header).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::ldmatrix_x4(r, row, false);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::ldmatrix_x4(r, row, true);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#endif
}

// 16 bytes global -> shared without a register round trip (cp.async.cg, sm_80+); `valid` false writes
// 16 zero bytes and reads nothing (src-size 0; `src` must still be a mapped address). The data is
// visible to the CTA only after cp_async_wait_all() and a barrier. The simulator copies at issue.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::cp_async16(dst, src, valid);
#else
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifndef MNEMO_WARP_SIM
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits for all of this thread's cp.async copies (a barrier must follow before others read them).
__device__ __forceinline__ void cp_async_wait_all() {
#ifndef MNEMO_WARP_SIM
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// d += A * B on the tensor cores: A 16x16 bf16, B 16x8 bf16, d 16x8 fp32.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
#ifdef MNEMO_WARP_SIM
  ::mnemo::sim::mma_bf16_16816(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

}  // namespace mnemo::cuda
