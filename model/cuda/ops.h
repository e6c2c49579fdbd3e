// Dense model ops on the CUDA backend: the bf16 counterparts of model/ops.h's CPU references, plus
// the glue a GPU forward needs (embedding gather, RoPE on Q, KV append into paged slots, greedy
// argmax) and the GEMM through cuBLAS.
//
// CUDA-only header. All pointers are device pointers; sizes are host values. bf16 in and out, fp32
// math inside, one rounding per output. Launchers validate shapes (messages name the field) and
// return the CUDA error of a failed launch; on failure the outputs are unspecified.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/workspace.h"
#include "core/dtype.h"
#include "core/status.h"

namespace mnemo::cuda {

using bf16 = __nv_bfloat16;

// y = x / sqrt(mean(x^2) + eps) * weight per row (Llama RMSNorm; fp32 sum of squares).
struct RmsNormParams {
  const bf16* x = nullptr;       // [n, dim]
  const bf16* weight = nullptr;  // [dim]
  bf16* y = nullptr;             // [n, dim]; may equal x
  int64_t n = 0;
  int dim = 0;                   // a multiple of 8
  float eps = 1e-6f;
};
Status rms_norm_launch(const RmsNormParams& p, cudaStream_t stream);

// Rotates query heads in place at their positions (attention/rope.h's convention and table layout).
struct RopeQParams {
  bf16* q = nullptr;                // [n, num_heads, head_dim], rotated in place
  const int32_t* positions = nullptr;  // [n]; a position outside [0, rope_len) writes NaN (loud)
  const float* cos = nullptr;       // [rope_len, head_dim / 2], scale folded in
  const float* sin = nullptr;       // [rope_len, head_dim / 2]
  int64_t rope_len = 0;
  int64_t n = 0;
  int num_heads = 0;
  int head_dim = 0;                 // even
};
Status rope_q_launch(const RopeQParams& p, cudaStream_t stream);

// out = silu(gate) * up (SwiGLU). gate and up rows may be interleaved halves of one [n, 2 dim]
// projection: row r of gate starts at gate + r * in_stride, likewise up.
struct SiluMulParams {
  const bf16* gate = nullptr;  // [n, in_stride] (first dim used)
  const bf16* up = nullptr;    // [n, in_stride]
  int64_t in_stride = 0;       // elements between rows of gate / up (>= dim)
  bf16* out = nullptr;         // [n, dim]; may equal gate when in_stride == dim
  int64_t n = 0;
  int dim = 0;
};
Status silu_mul_launch(const SiluMulParams& p, cudaStream_t stream);

// out[i] = table[ids[i]]. An id outside [0, vocab) gives a zero row and adds 1 to *invalid_ids.
struct EmbeddingParams {
  const bf16* table = nullptr;  // [vocab, hidden]
  const int32_t* ids = nullptr;  // [n]
  bf16* out = nullptr;           // [n, hidden]
  int64_t n = 0;
  int64_t vocab = 0;
  int hidden = 0;                // a multiple of 8
  int32_t* invalid_ids = nullptr;  // device counter; may be null
};
Status embedding_launch(const EmbeddingParams& p, cudaStream_t stream);

// Writes each token's K and V (before RoPE) into its paged slot position:
// arena[slot][0][h][offset] = k[i][h], arena[slot][1][h][offset] = v[i][h], where
// slot_mapping[i] = slot * block_tokens + offset. A negative mapping skips the token (padding); a
// mapping at or past num_slots * block_tokens skips it and adds 1 to *invalid_slots.
struct KvAppendParams {
  const bf16* k = nullptr;  // [n, num_kv_heads, head_dim]
  const bf16* v = nullptr;  // [n, num_kv_heads, head_dim]
  const int32_t* slot_mapping = nullptr;  // [n]
  bf16* arena = nullptr;    // [num_slots, 2, num_kv_heads, block_tokens, head_dim]
  int64_t n = 0;
  int64_t num_slots = 0;
  int num_kv_heads = 0;
  int block_tokens = 0;
  int head_dim = 0;         // a multiple of 8
  int32_t* invalid_slots = nullptr;  // device counter; may be null
};
Status kv_append_launch(const KvAppendParams& p, cudaStream_t stream);

// out[i] = argmax_j logits[i][j] (greedy sampling). Ties go to the lowest index; NaN counts as the
// largest value (torch.argmax's rule), so NaN logits show up instead of hiding.
struct ArgmaxParams {
  const void* logits = nullptr;  // [n, vocab] of logits_dtype
  DType logits_dtype = DType::kF32;  // kF32 or kBF16
  int32_t* out = nullptr;        // [n]
  int64_t n = 0;
  int64_t vocab = 0;
};
Status argmax_launch(const ArgmaxParams& p, cudaStream_t stream);

// y[n, out] = x[n, in] . w[out, in]^T (+ bias[out]): PyTorch's Linear layout, bf16 operands, fp32
// accumulation (cuBLAS, CUBLAS_COMPUTE_32F), y in bf16 or f32 (f32 suits logits). y = x w^T + bias is
// rounded to y_dtype once: the call sets CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION on the
// handle, so no split-K reduction runs in bf16 (see gemm.cu).
struct LinearParams {
  const bf16* x = nullptr;     // [n, in]
  const bf16* w = nullptr;     // [out, in]
  const bf16* bias = nullptr;  // [out] or null
  void* y = nullptr;           // [n, out] of y_dtype
  DType y_dtype = DType::kBF16;  // kBF16 or kF32
  int64_t n = 0, in = 0, out = 0;
};
// `workspace` is lent to cuBLAS for this call (cublasSetWorkspace; 32 MiB suits Hopper; empty lets
// cuBLAS use its own pool, which a CUDA graph capture cannot). The handle is bound to `stream`.
Status linear_launch(const LinearParams& p, cublasHandle_t handle, Workspace workspace, cudaStream_t stream);

// Owns a cuBLAS handle (create per device and thread; cuBLAS handles are not thread-safe).
class CublasHandle {
 public:
  static Result<CublasHandle> create();
  CublasHandle() = default;
  CublasHandle(CublasHandle&& o) noexcept : handle_(o.handle_) { o.handle_ = nullptr; }
  CublasHandle& operator=(CublasHandle&& o) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle();
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// --- The forward pass's residual stream in f32 (model/llama_cuda.cpp) ---

// out[i] = float(table[ids[i]]) * scale (MiniCPM's scale_emb; 1 elsewhere): the f32 residual stream.
// An id outside [0, vocab) gives a zero row and adds 1 to *invalid_ids.
struct EmbedF32Params {
  const bf16* table = nullptr;   // [vocab, hidden]
  const int32_t* ids = nullptr;  // [n]
  float* out = nullptr;          // [n, hidden]
  int64_t n = 0;
  int64_t vocab = 0;
  int hidden = 0;                // a multiple of 8
  float scale = 1.0f;
  int32_t* invalid_ids = nullptr;  // device counter; may be null
};
Status embed_f32_launch(const EmbedF32Params& p, cudaStream_t stream);

// y[r] = bf16(weight * (x[src] * rsqrt(mean(x[src]^2) + eps)) * out_scale), src = rows ? rows[r] : r:
// RMSNorm of the f32 residual into the bf16 GEMM input (out_scale folds MiniCPM's logit divisor in).
struct RmsNormF32Params {
  const float* x = nullptr;       // [*, dim]
  const int32_t* rows = nullptr;  // [n] rows of x to normalise; null: rows 0..n-1
  const bf16* weight = nullptr;   // [dim]
  bf16* y = nullptr;              // [n, dim]
  int64_t n = 0;
  int dim = 0;                    // a multiple of 8
  float eps = 1e-6f;
  float out_scale = 1.0f;
};
Status rms_norm_f32_launch(const RmsNormF32Params& p, cudaStream_t stream);

// x[i] += alpha * float(o[i]) over n elements (the residual connection; alpha = MiniCPM's
// scale_depth / sqrt(layers), 1 elsewhere).
struct ResidualAddParams {
  float* x = nullptr;       // [n]
  const bf16* o = nullptr;  // [n]
  int64_t n = 0;            // a multiple of 8
  float alpha = 1.0f;
};
Status residual_add_launch(const ResidualAddParams& p, cudaStream_t stream);

// The RoPE table of attention/rope.h (RopeTable::ensure's formula: angle p * inv_freq[i] in double,
// cos/sin times scale rounded to float) for positions [0, len).
struct RopeTableParams {
  const float* inv_freq = nullptr;  // [half] (device)
  int half = 0;
  float scale = 1.0f;
  int64_t len = 0;
  float* cos = nullptr;  // [len, half]
  float* sin = nullptr;  // [len, half]
};
Status rope_table_launch(const RopeTableParams& p, cudaStream_t stream);

// out[i] = bf16(normal(0, std)) from a counter-based hash of (seed, i): synthetic K/V for benchmarks.
Status fill_normal_bf16_launch(bf16* out, int64_t n, uint64_t seed, float std, cudaStream_t stream);

}  // namespace mnemo::cuda
