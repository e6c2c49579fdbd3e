// LSE merge of two partials on CUDA (attention/cuda/merge.h): one thread per 8 elements of a row.
#include "attention/cuda/merge.h"

#include "attention/cuda/merge_kernel.cuh"

#include <cmath>

#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

constexpr int kThreads = 256;


}  // namespace

Status validate(const MergeAttentionCudaParams& p) {
  if (p.head_dim <= 0 || p.head_dim % 8 != 0) {
    return invalid_argument("merge_attention: head_dim: expected a positive multiple of 8, got ", p.head_dim);
  }
  if (p.num_rows < 0) return invalid_argument("merge_attention: num_rows: expected >= 0, got ", p.num_rows);
  if (p.num_rows > 0 && (!p.out_a || !p.lse_a || !p.out_b || !p.lse_b || !p.out)) {
    return invalid_argument("merge_attention: out_a, lse_a, out_b, lse_b and out must be set");
  }
  return Status::Ok();
}

Status merge_attention_launch(const MergeAttentionCudaParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return Status::Ok();
  const int64_t items = p.num_rows * (p.head_dim / 8);
  merge_attention_kernel<<<static_cast<unsigned>((items + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
