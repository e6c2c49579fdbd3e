// Launcher of causal prefill attention over paged bf16 KV (kernel in dense_prefill_kernel.cuh).
#include "attention/cuda/dense.h"
#include "attention/cuda/dense_prefill_kernel.cuh"
#include "core/cuda/check.h"

namespace mnemo::cuda {
namespace {

template <int kHeadDim>
Status launch(const DensePrefillParams& p, cudaStream_t stream) {
  using Cfg = PrefillConfig<kHeadDim>;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(dense_prefill_kernel<kHeadDim>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(Cfg::kSmemBytes)));
  const int64_t rows = int64_t{p.max_q_per_seq} * (p.num_heads / p.kv.num_kv_heads);
  const dim3 grid(static_cast<unsigned>((rows + Cfg::kRows - 1) / Cfg::kRows),
                  static_cast<unsigned>(p.kv.num_kv_heads), static_cast<unsigned>(p.batch));
  dense_prefill_kernel<kHeadDim><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status dense_prefill_launch(const DensePrefillParams& p, cudaStream_t stream) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  switch (p.kv.head_dim) {
    case 16:
      return launch<16>(p, stream);
    case 32:
      return launch<32>(p, stream);
    case 64:
      return launch<64>(p, stream);
    case 128:
      return launch<128>(p, stream);
    default:
      return internal_error("dense prefill: head_dim ", p.kv.head_dim, " passed validation");
  }
}

}  // namespace mnemo::cuda
