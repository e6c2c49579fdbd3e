// Launchers of stage-1 block scores and top-k selection (kernels in block_score_kernel.cuh and
// topk_kernel.cuh).
#include "attention/cuda/block_score_kernel.cuh"
#include "attention/cuda/select.h"
#include "attention/cuda/topk_kernel.cuh"
#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

template <int kHeadDim, int kMode>
Status launch_mode(const BlockScoreCudaParams& p, float2* partials, cudaStream_t stream) {
  using Cfg = BlockScoreConfig<kHeadDim>;
  const int group = p.num_heads / p.num_kv_heads;
  const int queries = Cfg::kRows / group;  // whole groups per CTA (group <= 64)
  const int halo = p.keys.kernel_size / p.keys.kernel_stride - 1;
  const size_t smem = Cfg::smem_bytes(queries, halo);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(block_score_kernel<kHeadDim, kMode>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((p.num_q + queries - 1) / queries), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_splits));
  block_score_kernel<kHeadDim, kMode><<<grid, Cfg::kThreads, smem, stream>>>(p, queries, halo, partials);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

template <int kHeadDim>
Status launch_scores(const BlockScoreCudaParams& p, float2* partials, cudaStream_t stream) {
  if (p.num_splits == 1) return launch_mode<kHeadDim, kFused>(p, nullptr, stream);
  MNEMO_RETURN_IF_ERROR((launch_mode<kHeadDim, kLsePartial>(p, partials, stream)));
  return launch_mode<kHeadDim, kScoreFromPartials>(p, partials, stream);
}

}  // namespace

Status block_scores_launch(const BlockScoreCudaParams& p, Workspace workspace, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const size_t need = block_scores_workspace_bytes(p);
  if (workspace.bytes < need || (need > 0 && workspace.data == nullptr)) {
    return invalid_argument("block scores: workspace.bytes: expected >= ", need, " for num_splits ", p.num_splits,
                            ", got ", workspace.bytes);
  }
  float2* partials = static_cast<float2*>(workspace.data);
  switch (p.head_dim) {
    case 64:
      return launch_scores<64>(p, partials, stream);
    case 128:
      return launch_scores<128>(p, partials, stream);
    default:
      return internal_error("block scores: head_dim ", p.head_dim, " passed validation");
  }
}

Status select_topk_launch(const BlockTopkCudaParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const size_t smem = topk_smem_bytes(p.num_blocks);
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t rows = int64_t{p.num_q} * p.num_kv_heads;
  topk_kernel<<<static_cast<unsigned>(rows), kTopkThreads, smem, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace mnemo::cuda
