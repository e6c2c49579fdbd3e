// A CPU simulator for mnemo's CUDA kernel source, so kernel logic (fragment layouts, masks, online
// softmax, split merges) is tested on machines without a GPU — CI and the dev box.
//
// Include this before the kernel headers and define MNEMO_WARP_SIM. Every thread of a CTA is a
// ucontext fiber; CTAs run one after another. Warp collectives (shuffles, ldmatrix, mma.sync) and
// barriers yield to a round-robin scheduler until all live lanes of the warp (or CTA) arrived, then
// each lane reads its result from the exchange area. The tensor-core product is exact bf16 x bf16 with
// a double accumulator, rounded to fp32 once. Kernels must take shared memory through
// MNEMO_DYNAMIC_SMEM (no static __shared__), which points at one buffer reused by every CTA.
// Not thread-safe; a deadlock (a collective some lanes never reach) aborts with a message.
#pragma once

#ifndef MNEMO_WARP_SIM
#define MNEMO_WARP_SIM 1
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace mnemo::sim {

struct Lane {
  ucontext_t ctx;
  std::vector<char> stack;
  uint3 tid;
  int warp = 0, lane = 0;
  bool done = false;
};

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct State {
  dim3 grid, block;
  uint3 block_idx;
  std::vector<Lane> lanes;
  ucontext_t scheduler;
  int current = -1;
  uint64_t progress = 0;  // bumped on every arrival, release and exit: detects deadlock
  Barrier cta;
  std::vector<Barrier> warps;
  std::vector<int> warp_alive;
  std::vector<uint64_t> exchange;  // [warp][lane][16] words
  std::vector<unsigned char> dynamic_smem;
  const std::function<void()>* body = nullptr;
};

inline State& state() {
  static State s;
  return s;
}
inline Lane& me() { return state().lanes[state().current]; }
inline uint64_t* slot(int warp, int lane) { return &state().exchange[(size_t(warp) * 32 + lane) * 16]; }
inline unsigned char* dynamic_smem() { return state().dynamic_smem.data(); }

inline void yield() { swapcontext(&me().ctx, &state().scheduler); }

// Waits until every live member (`alive`) has arrived; exited lanes count as arrived (as on sm_70+).
inline void barrier_wait(Barrier& b, const int& alive) {
  State& s = state();
  const uint64_t gen = b.generation;
  ++b.arrived;
  ++s.progress;
  if (b.arrived >= alive) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield();
}
inline void warp_barrier() { barrier_wait(state().warps[me().warp], state().warp_alive[me().warp]); }
inline int cta_alive() {
  int n = 0;
  for (const Lane& l : state().lanes) n += l.done ? 0 : 1;
  return n;
}
inline void cta_barrier() {
  static int alive;
  alive = cta_alive();
  barrier_wait(state().cta, alive);
}

template <typename T>
T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  slot(me().warp, me().lane)[0] = bits;
  warp_barrier();
  const uint64_t other = slot(me().warp, me().lane ^ lane_mask)[0];
  warp_barrier();
  T r;
  std::memcpy(&r, &other, sizeof r);
  return r;
}

inline uint16_t load_b16(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(row) + 2 * col, 2);
  return v;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const int w = me().warp, lane = me().lane;
  slot(w, lane)[1] = reinterpret_cast<uintptr_t>(row);
  warp_barrier();
  for (int i = 0; i < 4; ++i) {
    const void* rows[8];
    for (int k = 0; k < 8; ++k) rows[k] = reinterpret_cast<const void*>(slot(w, 8 * i + k)[1]);
    uint16_t lo, hi;
    if (!trans) {
      lo = load_b16(rows[lane / 4], 2 * (lane % 4));
      hi = load_b16(rows[lane / 4], 2 * (lane % 4) + 1);
    } else {
      lo = load_b16(rows[2 * (lane % 4)], lane / 4);
      hi = load_b16(rows[2 * (lane % 4) + 1], lane / 4);
    }
    r[i] = uint32_t{lo} | (uint32_t{hi} << 16);
  }
  warp_barrier();
}

// cp.async emulated synchronously: the copy (or zero fill) lands at issue, so commit and wait are
// no-ops. A kernel that reads a buffer before its wait + barrier still passes here: the sim does not
// catch missing cp.async waits (compute-sanitizer racecheck on the GPU does).
inline void cp_async16(void* dst, const void* src, bool valid) {
  if (valid) {
    std::memcpy(dst, src, 16);
  } else {
    std::memset(dst, 0, 16);
  }
}

inline double bf16_bits(uint32_t packed, int half) {
  const uint32_t bits = half ? (packed & 0xffff0000u) : (packed << 16);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int w = me().warp, lane = me().lane;
  uint64_t* mine = slot(w, lane);
  for (int i = 0; i < 4; ++i) mine[2 + i] = a[i];
  mine[6] = b0;
  mine[7] = b1;
  warp_barrier();
  double A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    const uint64_t* s = slot(w, L);
    const int g = L / 4, t = L % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = bf16_bits(uint32_t(s[2]), h);
      A[g + 8][2 * t + h] = bf16_bits(uint32_t(s[3]), h);
      A[g][2 * t + 8 + h] = bf16_bits(uint32_t(s[4]), h);
      A[g + 8][2 * t + 8 + h] = bf16_bits(uint32_t(s[5]), h);
      B[2 * t + h][g] = bf16_bits(uint32_t(s[6]), h);
      B[2 * t + 8 + h][g] = bf16_bits(uint32_t(s[7]), h);
    }
  }
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    double acc = d[e];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[e] = static_cast<float>(acc);
  }
  warp_barrier();
}

inline void lane_entry() {
  (*state().body)();
  State& s = state();
  me().done = true;
  --s.warp_alive[me().warp];
  ++s.progress;
  // A lane that exits may complete a barrier the others wait at.
  Barrier& wb = s.warps[me().warp];
  if (wb.arrived > 0 && wb.arrived >= s.warp_alive[me().warp]) {
    wb.arrived = 0;
    ++wb.generation;
  }
  if (s.cta.arrived > 0 && s.cta.arrived >= cta_alive()) {
    s.cta.arrived = 0;
    ++s.cta.generation;
  }
}

// Runs `kernel()` as a grid of CTAs of `block` threads with `smem_bytes` of dynamic shared memory.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& kernel) {
  State& s = state();
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0) {
    std::fprintf(stderr, "warp_sim: block of %d threads is not whole warps\n", threads);
    std::abort();
  }
  const int num_warps = threads / 32;
  s.grid = grid;
  s.block = block;
  s.body = &kernel;
  s.dynamic_smem.assign(smem_bytes + 16, 0xcd);  // garbage, like real shared memory
  s.exchange.assign(size_t(num_warps) * 32 * 16, 0);
  s.lanes.resize(threads);
  for (Lane& l : s.lanes) l.stack.resize(64 * 1024);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        s.block_idx = make_uint3(bx, by, bz);
        s.warps.assign(num_warps, Barrier{});
        s.warp_alive.assign(num_warps, 32);
        s.cta = Barrier{};
        for (int i = 0; i < threads; ++i) {
          Lane& l = s.lanes[i];
          l.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
          l.warp = i / 32;
          l.lane = i % 32;
          l.done = false;
          getcontext(&l.ctx);
          l.ctx.uc_stack.ss_sp = l.stack.data();
          l.ctx.uc_stack.ss_size = l.stack.size();
          l.ctx.uc_link = &s.scheduler;
          makecontext(&l.ctx, lane_entry, 0);
        }
        for (int live = threads; live > 0;) {
          const uint64_t before = s.progress;
          live = 0;
          for (int i = 0; i < threads; ++i) {
            if (s.lanes[i].done) continue;
            s.current = i;
            swapcontext(&s.scheduler, &s.lanes[i].ctx);
            live += s.lanes[i].done ? 0 : 1;
          }
          if (live > 0 && s.progress == before) {
            std::fprintf(stderr, "warp_sim: deadlock in block (%u, %u, %u)\n", bx, by, bz);
            std::abort();
          }
        }
        s.current = -1;
      }
    }
  }
}

inline uint3 thread_idx() { return me().tid; }

}  // namespace mnemo::sim

#define threadIdx (::mnemo::sim::thread_idx())
#define blockIdx (::mnemo::sim::state().block_idx)
#define blockDim (::mnemo::sim::state().block)
#define gridDim (::mnemo::sim::state().grid)
#define __launch_bounds__(...)
