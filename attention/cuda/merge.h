// LSE merge of two partial attentions on CUDA (attention/merge.h is the CPU contract): bf16 outputs
// with fp32 log-sum-exps, e.g. the bounded policy's local window and memory partials.
//   m = max(lse_a, lse_b),  lse = m + log(exp(lse_a − m) + exp(lse_b − m)),
//   out = exp(lse_a − lse) · out_a + exp(lse_b − lse) · out_b      (fp32, rounded once to bf16)
// An empty partial (lse −inf) weighs 0 and its out is never read; two empty ones give out 0, lse −inf.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/dense.h"

namespace mnemo::cuda {

struct MergeAttentionCudaParams {
  const bf16* out_a = nullptr;  // [num_rows, head_dim]
  const float* lse_a = nullptr;  // [num_rows]
  const bf16* out_b = nullptr;  // [num_rows, head_dim]
  const float* lse_b = nullptr;  // [num_rows]
  int64_t num_rows = 0;
  int head_dim = 0;              // a multiple of 8
  bf16* out = nullptr;           // [num_rows, head_dim]; may alias out_a or out_b
  float* lse = nullptr;          // [num_rows]; may alias lse_a or lse_b; may be null
};

Status validate(const MergeAttentionCudaParams& p);
Status merge_attention_launch(const MergeAttentionCudaParams& p, cudaStream_t stream);

}  // namespace mnemo::cuda
