// Internal to the CUDA forward (model/llama_cuda.cpp, model/llama_cuda_state.cpp): the device state
// a LlamaModel holds on CUDA (weights, stream, cuBLAS, scratch), one sequence's device
// representatives, and the helpers both files use. Not a public header.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>

#include "attention/compress.h"
#include "attention/cuda/compress.h"
#include "attention/cuda/dense.h"
#include "attention/cuda/merge.h"
#include "attention/cuda/select.h"
#include "attention/cuda/sparse.h"
#include "attention/sparse_params.h"
#include "core/cuda/check.h"
#include "model/cuda/ops.h"
#include "model/llama.h"
#include "model/rope_scaling.h"

#include <memory>
#include <vector>

namespace mnemo::cuda_fwd {

using cuda::bf16;


// Device memory owned by the forward; grown, never shrunk.
class DeviceMem {
 public:
  DeviceMem() = default;
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  ~DeviceMem() {
    if (p_) cudaFree(p_);
  }
  // Makes room for `bytes`; the contents are lost when it grows (callers refill every step).
  Status reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return Status::Ok();
    if (p_) {
      MNEMO_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // queued work may still read the old buffer
      cudaFree(p_);
      p_ = nullptr;
      bytes_ = 0;
    }
    const size_t grown = std::max(bytes, bytes_ + bytes_ / 2);
    if (cudaMalloc(&p_, grown) != cudaSuccess) {
      cudaGetLastError();
      p_ = nullptr;
      return out_of_budget("CUDA forward: cannot allocate ", grown, " bytes of device memory for ", what);
    }
    bytes_ = grown;
    return Status::Ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

class PinnedMem {
 public:
  PinnedMem() = default;
  PinnedMem(const PinnedMem&) = delete;
  PinnedMem& operator=(const PinnedMem&) = delete;
  ~PinnedMem() {
    if (p_) cudaFreeHost(p_);
  }
  Status reserve(size_t bytes, cudaStream_t stream, const char* what) {
    if (bytes <= bytes_) return Status::Ok();
    if (p_) {
      MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
      cudaFreeHost(p_);
      p_ = nullptr;
      bytes_ = 0;
    }
    const size_t grown = std::max(bytes, bytes_ + bytes_ / 2);
    if (cudaMallocHost(&p_, grown) != cudaSuccess) {
      cudaGetLastError();
      p_ = nullptr;
      return out_of_budget("CUDA forward: cannot allocate ", grown, " bytes of pinned host memory for ", what);
    }
    bytes_ = grown;
    return Status::Ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceLayer {
  bf16 *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr, *w_gate_up = nullptr, *w_down = nullptr;
  bf16 *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr, *b_gate_up = nullptr, *b_down = nullptr;
  bf16 *input_norm = nullptr, *post_norm = nullptr;
};

inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

struct CudaForwardState final : LlamaModel::CudaState {
  ~CudaForwardState() override {
    if (stream) cudaStreamSynchronize(stream);
    for (void* p : allocations) cudaFree(p);
    if (invalid_ids) cudaFree(invalid_ids);
    if (stream) cudaStreamDestroy(stream);
  }

  int device = 0;
  int num_sms = 0;
  cudaStream_t stream = nullptr;
  cuda::CublasHandle cublas;
  std::vector<void*> allocations;  // weights
  bf16* embed = nullptr;
  bf16* final_norm = nullptr;
  bf16* lm_head = nullptr;
  std::vector<DeviceLayer> layers;
  int32_t* invalid_ids = nullptr;

  DeviceMem cublas_workspace, attn_workspace;
  DeviceMem x, h, q, k, v, attn, o, gate_up, act, sel, logits, meta, q_nope, scores, block_ids, score_workspace,
      q_mem, mem_out, lse_local, lse_mem;
  PinnedMem host_meta, host_logits, host_block_ids;

  // RoPE table on the device for the rope in force (rebuilt when a length-dependent rope changes).
  Rope rope;
  bool rope_valid = false;
  int64_t rope_len = 0;
  DeviceMem rope_inv_freq, rope_cos, rope_sin;

  // Appends tensor `t` as bf16 to `host` (bf16 copied, f32/f16 rounded to nearest even).
  static void append_bf16(const Tensor& t, std::vector<uint16_t>* host) {
    const size_t n = static_cast<size_t>(t.numel());
    const size_t at = host->size();
    host->resize(at + n);
    if (t.dtype() == DType::kBF16) {
      std::memcpy(host->data() + at, t.raw(), n * 2);
    } else {
      std::vector<float> f(n);
      convert_to_f32(t.raw(), t.dtype(), f.data(), n);
      convert_from_f32(f.data(), host->data() + at, DType::kBF16, n);
    }
  }

  Result<bf16*> upload_host(const std::vector<uint16_t>& host, const std::string& name) {
    void* p = nullptr;
    if (cudaMalloc(&p, align256(host.size() * 2)) != cudaSuccess) {
      cudaGetLastError();
      return out_of_budget("CUDA forward: no device memory for weight ", name, " (", host.size() * 2, " bytes)");
    }
    allocations.push_back(p);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpy(p, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    return static_cast<bf16*>(p);
  }

  // One tensor, or several stacked along dim 0 (gate|up for a single GEMM); null when undefined.
  Result<bf16*> upload(std::initializer_list<const Tensor*> parts, const std::string& name) {
    if (!(*parts.begin())->defined()) return static_cast<bf16*>(nullptr);
    std::vector<uint16_t> host;
    for (const Tensor* t : parts) {
      if (t->dtype() != DType::kBF16 && t->dtype() != DType::kF32 && t->dtype() != DType::kF16) {
        return invalid_argument("CUDA forward: weight ", name, ": expected f32, f16 or bf16, got ", dtype_name(t->dtype()));
      }
      append_bf16(*t, &host);
    }
    return upload_host(host, name);
  }
  Result<bf16*> upload(const Tensor& t, const std::string& name) { return upload({&t}, name); }
};

inline CudaForwardState& state_of(LlamaModel::CudaState& s) { return static_cast<CudaForwardState&>(s); }

// One sequence's representatives on the device: per layer, tier 1 (and tier 2 with the approximate
// LSE) as bf16 [num_kv_heads, capacity, head_dim], grown by doubling with stream-ordered copies.
struct SeqRepr {
  struct Tier {
    bf16* keys = nullptr;
    int64_t capacity = 0;        // windows of room per kv head
    int64_t num_compressed = 0;  // windows computed
  };
  std::vector<Tier> t1, t2;
  // Per layer: the blocks the last step's selection added beyond the local window and the new
  // windows' blocks — the prediction the next step prefetches one layer ahead.
  std::vector<std::vector<int64_t>> last_selected;
  cudaStream_t stream = nullptr;
  ~SeqRepr() {
    for (auto* tiers : {&t1, &t2}) {
      for (Tier& t : *tiers) {
        if (t.keys) cudaFreeAsync(t.keys, stream);
      }
    }
  }
};

// Grows a tier's table to hold `windows` windows (doubling; stream-ordered copy of the rows so far).
Status grow_tier(SeqRepr::Tier& t, int64_t windows, int kv_heads, int d, cudaStream_t stream);
cuda::CompressedKeysBf16 view(const SeqRepr::Tier& t, int d, int kernel, int stride);
// Compresses the windows of layer `l` that the first `tokens` tokens complete (both tiers), reading
// keys through `kv` (one sequence's block table); rope null: keys as stored.
Status compress_new_windows(SeqRepr& r, int64_t l, const cuda::PagedKvBf16& kv, const cuda::RopeTableView* rope,
                            const SparseParams& sp, bool approx, int64_t tokens, cudaStream_t stream);

// Stage 1 + top-k for `m` queries of one sequence in layer `l`: block ids [m, kv heads, max_sel].
struct Selection {
  const bf16* q = nullptr;            // [m, heads, head_dim]: rotated, or un-rotated (use_nope, bounded)
  const int32_t* q_index = nullptr;   // [m] stream index (device)
  int64_t m = 0, num_blocks = 0;
  int32_t* block_ids = nullptr;       // device
};
Status launch_selection(CudaForwardState& st, const SeqRepr& r, int64_t l, const Selection& sel, const SparseParams& sp,
                        bool approx, int heads, int kv_heads, int d, float softmax_scale, int max_sel);
// The device RoPE table for `rope`, covering positions [0, max_len) (rebuilt when a length-dependent
// rope changes, grown by doubling).
Status ensure_rope_table(CudaForwardState& st, const Rope& rope, int64_t max_len, int64_t d);

// Prefetch (memory/store.h): a decode step's selection in layer l + 1 mostly repeats the previous
// step's, so once layer l's selection is known, the previous step's blocks of layer l + 1 start
// moving host -> GPU while layer l computes. `selected` becomes layer l's prediction for next step.
Status remember_and_prefetch(KvStore& store, SeqRepr& r, SequenceId id, int64_t l, int64_t layers,
                             const std::vector<int64_t>& selected, int64_t num_blocks);

}  // namespace mnemo::cuda_fwd
