// Key compression on CUDA: the representatives stage 1 scores queries against, computed on the
// device as blocks fill (attention/compress.h is the CPU contract). For kv head g and window j:
//   ck_j,g = (1 / kernel_size) · Σ_{t ∈ [j·stride, j·stride + kernel_size)} key'_t,g
// key'_t = rope(k_t, t) in fp32 (the table's cos/sin, attention/rope.h's formula), or the stored k_t
// when key_rope.cos is null (use_nope, and the bounded policy). The sum runs in fp32 from the window's
// first token upward (the CPU's order), then is rounded once to bf16: the device table is bf16
// (attention/cuda/select.h's CompressedKeysBf16, [num_kv_heads, capacity, head_dim]).
//
// Incremental: a launch computes windows [first_window, first_window + num_windows) — the ones that
// became complete since the last launch — reading keys through one sequence's block table (a window
// may straddle two blocks). Every key a window reads must be written and its block mapped.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/dense.h"

namespace mnemo::cuda {

struct CompressKeysCudaParams {
  PagedKvBf16 kv;           // one sequence: kv.block_tables is its row; kv_lens / max_kv_len unused
  RopeTableView key_rope;   // cos == nullptr: keys as stored
  int kernel_size = 0;
  int kernel_stride = 0;
  int64_t first_window = 0;
  int64_t num_windows = 0;  // 0: nothing to do
  bf16* out = nullptr;      // [num_kv_heads, capacity, head_dim]; windows written at their index
  int64_t head_stride = 0;  // elements between kv heads (capacity · head_dim)
};

// Shape checks; the message names the field, expected and got.
Status validate(const CompressKeysCudaParams& p);
// Grid (windows, kv heads), head_dim threads (at least a warp). Nothing else is touched.
Status compress_keys_launch(const CompressKeysCudaParams& p, cudaStream_t stream);

}  // namespace mnemo::cuda
