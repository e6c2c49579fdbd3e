// Launchers of stage-2 block-sparse attention over paged bf16 KV (kernels in sparse_decode_kernel.cuh
// and sparse_prefill_kernel.cuh).
#include "attention/cuda/sparse.h"
#include "attention/cuda/sparse_decode_kernel.cuh"
#include "attention/cuda/sparse_prefill_kernel.cuh"
#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

template <int kHeadDim>
Status launch_decode(const SparseAttentionCudaParams& p, const DecodePartials& part, cudaStream_t stream) {
  using Cfg = DecodeConfig<kHeadDim>;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(sparse_decode_split_kernel<kHeadDim>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(Cfg::kSmemBytes)));
  const int group = p.num_heads / p.kv.num_kv_heads;
  const int chunks = (group + Cfg::kRows - 1) / Cfg::kRows;
  const dim3 grid(static_cast<unsigned>(p.kv.num_kv_heads * chunks), static_cast<unsigned>(p.num_splits),
                  static_cast<unsigned>(p.total_q));
  sparse_decode_split_kernel<kHeadDim><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, part);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (p.num_splits > 1) {
    const dim3 merge_grid(static_cast<unsigned>(p.num_heads), static_cast<unsigned>(p.total_q));
    sparse_decode_merge_kernel<kHeadDim><<<merge_grid, kHeadDim, sizeof(float) * p.num_splits, stream>>>(p, part);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return Status::Ok();
}

template <int kHeadDim>
Status launch_prefill(const SparseAttentionCudaParams& p, cudaStream_t stream) {
  using Cfg = SparsePrefillConfig<kHeadDim>;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(sparse_prefill_kernel<kHeadDim>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(Cfg::kSmemBytes)));
  const int64_t rows = int64_t{p.max_q_per_seq} * (p.num_heads / p.kv.num_kv_heads);
  const dim3 grid(static_cast<unsigned>((rows + Cfg::kRows - 1) / Cfg::kRows),
                  static_cast<unsigned>(p.kv.num_kv_heads), static_cast<unsigned>(p.batch));
  sparse_prefill_kernel<kHeadDim><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status sparse_decode_launch(const SparseAttentionCudaParams& p, Workspace workspace, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const size_t need = sparse_decode_workspace_bytes(p);
  if (workspace.bytes < need || (need > 0 && workspace.data == nullptr)) {
    return invalid_argument("sparse decode: workspace.bytes: expected >= ", need, " for num_splits ",
                            p.num_splits, ", got ", workspace.bytes);
  }
  DecodePartials part;
  if (p.num_splits > 1) {
    const size_t rows = size_t(p.total_q) * p.num_heads * p.num_splits;
    const size_t o_bytes = (rows * p.kv.head_dim * sizeof(float) + 255) / 256 * 256;
    part.o = static_cast<float*>(workspace.data);
    part.lse = reinterpret_cast<float*>(static_cast<char*>(workspace.data) + o_bytes);
  }
  switch (p.kv.head_dim) {
    case 64:
      return launch_decode<64>(p, part, stream);
    case 128:
      return launch_decode<128>(p, part, stream);
    default:
      return internal_error("sparse decode: head_dim ", p.kv.head_dim, " passed validation");
  }
}

Status sparse_prefill_launch(const SparseAttentionCudaParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  if (p.max_q_per_seq <= 0) return invalid_argument("sparse prefill: max_q_per_seq: expected > 0, got ", p.max_q_per_seq);
  switch (p.kv.head_dim) {
    case 64:
      return launch_prefill<64>(p, stream);
    case 128:
      return launch_prefill<128>(p, stream);
    default:
      return internal_error("sparse prefill: head_dim ", p.kv.head_dim, " passed validation");
  }
}

}  // namespace mnemo::cuda
