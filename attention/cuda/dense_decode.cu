// Launcher of decode attention over paged bf16 KV (kernels in dense_decode_kernel.cuh).
#include "attention/cuda/dense.h"
#include "attention/cuda/dense_decode_kernel.cuh"
#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

template <int kHeadDim>
Status launch(const DenseDecodeParams& p, const DecodePartials& part, cudaStream_t stream) {
  using Cfg = DecodeConfig<kHeadDim>;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(dense_decode_split_kernel<kHeadDim>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(Cfg::kSmemBytes)));
  const int group = p.num_heads / p.kv.num_kv_heads;
  const int chunks = (group + Cfg::kRows - 1) / Cfg::kRows;
  // kv heads vary fastest: the CTAs of one split, which read the same rope rows, run together.
  const dim3 grid(static_cast<unsigned>(p.kv.num_kv_heads * chunks), static_cast<unsigned>(p.num_splits),
                  static_cast<unsigned>(p.batch));
  dense_decode_split_kernel<kHeadDim><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, part);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (p.num_splits > 1) {
    const dim3 merge_grid(static_cast<unsigned>(p.num_heads), static_cast<unsigned>(p.batch));
    dense_decode_merge_kernel<kHeadDim>
        <<<merge_grid, kMergeThreads<kHeadDim>, sizeof(float) * p.num_splits, stream>>>(p, part);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return Status::Ok();
}

}  // namespace

Status dense_decode_launch(const DenseDecodeParams& p, Workspace workspace, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const size_t need = dense_decode_workspace_bytes(p);
  if (workspace.bytes < need || (need > 0 && workspace.data == nullptr)) {
    return invalid_argument("dense decode: workspace.bytes: expected >= ", need, " for num_splits ",
                            p.num_splits, ", got ", workspace.bytes);
  }
  DecodePartials part;
  if (p.num_splits > 1) {
    const size_t rows = size_t(p.batch) * p.num_heads * p.num_splits;
    const size_t o_bytes = (rows * p.kv.head_dim * sizeof(float) + 255) / 256 * 256;
    part.o = static_cast<float*>(workspace.data);
    part.lse = reinterpret_cast<float*>(static_cast<char*>(workspace.data) + o_bytes);
  }
  switch (p.kv.head_dim) {
    case 16:
      return launch<16>(p, part, stream);
    case 32:
      return launch<32>(p, part, stream);
    case 64:
      return launch<64>(p, part, stream);
    case 128:
      return launch<128>(p, part, stream);
    default:
      return internal_error("dense decode: head_dim ", p.kv.head_dim, " passed validation");
  }
}

}  // namespace mnemo::cuda
