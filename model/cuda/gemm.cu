// The Linear layer on CUDA through cuBLAS (see model/cuda/ops.h).
//
// cuBLAS is column-major. Row-major y[n, out] is column-major Y (out x n, ld out); row-major
// w[out, in] is column-major (in x out), used transposed; row-major x[n, in] is column-major
// (in x n). So Y = op_T(W) X with m = out, n = n, k = in. A bias is broadcast into y first and
// the GEMM runs with beta = 1, so y = x w^T + bias is rounded once, in the GEMM's epilogue.
//
// "Rounded once" needs CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION. Without it cuBLAS may pick
// a split-K algorithm that reduces the K-slices' partial sums in the output type: for bf16 y the
// running sum (beta*C plus the slices so far) is rounded to bf16 before it is complete, so an output
// whose partials cancel keeps an error of up to half a bf16 ulp of the partials, not of itself.
// That is what the first H100 run (cuBLAS 13.0; in = 1032, out = 520, n = 1..257) showed in
// tests/cuda/ops_test.cpp: bf16 y with a bias (beta = 1) was off by 0.001-0.008 (0.40625 for
// 0.402418, -0.0078125 for -0.011249), i.e. half an ulp at |partial| ~ 1-4 whatever the size of the
// output, while bias-free bf16 y and f32 y were within fp32-accumulation error. With the flag the
// reduction stays in the fp32 compute type and the epilogue rounds alpha*acc + beta*C to bf16 once.
// (PyTorch sets the same flag for bf16 GEMMs unless allow_bf16_reduced_precision_reduction is on.)
#include <cstdint>
#include <utility>

#include "core/cuda/check.h"
#include "model/cuda/ops.h"

#define MNEMO_CUBLAS_RETURN_IF_ERROR(call)                                                             \
  do {                                                                                                 \
    const cublasStatus_t mnemo_cublas_status_ = (call);                                                \
    if (mnemo_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                               \
      return ::mnemo::cuda_error(#call, " failed at ", __FILE__, ":", __LINE__, ": ",                  \
                                 cublasGetStatusName(mnemo_cublas_status_), " (",                      \
                                 cublasGetStatusString(mnemo_cublas_status_), ")");                    \
    }                                                                                                  \
  } while (0)

namespace mnemo::cuda {
namespace {

template <typename T>
__global__ void broadcast_bias_kernel(const bf16* bias, T* y, int64_t n, int64_t out) {
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= n * out) return;
  if constexpr (sizeof(T) == 2) {
    y[idx] = bias[idx % out];
  } else {
    y[idx] = __bfloat162float(bias[idx % out]);
  }
}

// y = bf16(acc + bias): the bias joins the fp32 accumulator, then one rounding.
__global__ void bias_round_kernel(const float* acc, const bf16* bias, bf16* y, int64_t n, int64_t out) {
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= n * out) return;
  y[idx] = __float2bfloat16(acc[idx] + __bfloat162float(bias[idx % out]));
}

}  // namespace

Result<CublasHandle> CublasHandle::create() {
  CublasHandle h;
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.handle_));
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(
      h.handle_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  return Result<CublasHandle>(std::move(h));
}

CublasHandle& CublasHandle::operator=(CublasHandle&& o) noexcept {
  if (this != &o) {
    if (handle_) cublasDestroy(handle_);
    handle_ = o.handle_;
    o.handle_ = nullptr;
  }
  return *this;
}

CublasHandle::~CublasHandle() {
  if (handle_) cublasDestroy(handle_);
}

Status linear_launch(const LinearParams& p, cublasHandle_t handle, Workspace workspace, cudaStream_t stream) {
  if (!handle) return invalid_argument("linear: the cuBLAS handle is null");
  if (!p.x || !p.w || !p.y) return invalid_argument("linear: x, w and y must be set");
  if (p.y_dtype != DType::kBF16 && p.y_dtype != DType::kF32) {
    return invalid_argument("linear: y_dtype: expected bf16 or f32, got ", dtype_name(p.y_dtype));
  }
  if (p.n < 0 || p.in <= 0 || p.out <= 0 || p.n > INT32_MAX || p.in > INT32_MAX || p.out > INT32_MAX) {
    return invalid_argument("linear: n (", p.n, "), in (", p.in, ") and out (", p.out,
                            ") must be positive and below 2^31");
  }
  if (p.n == 0) return Status::Ok();
  // cublasSetStream resets the workspace to cuBLAS's own pool, so it goes first.
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle, stream));
  if (workspace.bytes > 0) MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(handle, workspace.data, workspace.bytes));
  // Set on every call, not only in CublasHandle::create: the handle may come from elsewhere. Plain
  // default math otherwise (no TF32: the operands are bf16 and the compute type is CUBLAS_COMPUTE_32F).
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(
      handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  const bool f32 = p.y_dtype == DType::kF32;
  const float alpha = 1.0f;
  const int m = static_cast<int>(p.out), n = static_cast<int>(p.n), k = static_cast<int>(p.in);
  if (p.bias && !f32) {
    // bf16 output with a bias: cuBLAS's epilogue (alpha·acc + beta·C) was seen on the H100 to round
    // twice (off by one bf16 ulp), so the GEMM writes fp32 into the workspace and one kernel adds the
    // bias and rounds once. The staging buffer is the workspace's head; cuBLAS gets the rest.
    const size_t staging = (static_cast<size_t>(p.n) * static_cast<size_t>(p.out) * sizeof(float) + 255) / 256 * 256;
    if (workspace.bytes < staging) {
      return invalid_argument("linear: bf16 output with a bias needs a workspace of at least ", staging,
                              " bytes (fp32 staging of [", p.n, ", ", p.out, "]), got ", workspace.bytes);
    }
    float* acc = static_cast<float*>(workspace.data);
    MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(handle, static_cast<char*>(workspace.data) + staging,
                                                    workspace.bytes - staging));
    const float zero = 0.0f;
    MNEMO_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, p.w, CUDA_R_16BF, k,
                                              p.x, CUDA_R_16BF, k, &zero, acc, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
    const unsigned blocks = static_cast<unsigned>((p.n * p.out + 255) / 256);
    bias_round_kernel<<<blocks, 256, 0, stream>>>(acc, p.bias, static_cast<bf16*>(p.y), p.n, p.out);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  }
  float beta = 0.0f;
  if (p.bias) {
    const unsigned blocks = static_cast<unsigned>((p.n * p.out + 255) / 256);
    if (f32) {
      broadcast_bias_kernel<float><<<blocks, 256, 0, stream>>>(p.bias, static_cast<float*>(p.y), p.n, p.out);
    } else {
      broadcast_bias_kernel<bf16><<<blocks, 256, 0, stream>>>(p.bias, static_cast<bf16*>(p.y), p.n, p.out);
    }
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    beta = 1.0f;
  }
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, p.w, CUDA_R_16BF, k,
                                            p.x, CUDA_R_16BF, k, &beta, p.y, f32 ? CUDA_R_32F : CUDA_R_16BF, m,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::Ok();
}

}  // namespace mnemo::cuda
