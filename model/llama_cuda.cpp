// The Llama-family forward on a CUDA device (ModelOptions.device = cuda): the same step as the CPU
// forward in llama.cpp, with bf16 weights and KV, an f32 residual stream, cuBLAS GEMMs and the paged
// dense attention kernels of attention/cuda over the store's GPU tier.
//
// One step (forward_chunks_cuda), for every item's tokens concatenated into rows — rows of one-token
// items (decode) first, then the prefill chunks:
//   embed (f32) → per layer: RMSNorm → Q, K, V GEMMs → RoPE on Q → acquire the item's blocks (the
//   store loads misses) → K/V written into their open-block slots → dense attention (the decode
//   kernel for the one-token items, the prefill kernel for the rest; keys rotated as they load) →
//   O GEMM, residual → RMSNorm → gate|up GEMM → SwiGLU → down GEMM, residual
//   → final RMSNorm of the rows whose logits are wanted → lm_head (f32) → host.
// All work is queued on one stream; the host waits once per step, for the logits. Metadata (token
// ids, positions, block tables, slot mappings) goes up through a pinned staging buffer, a region per
// layer, so a layer's upload never overwrites what an earlier, still queued copy reads.
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

namespace mnemo {

namespace {

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

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

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

namespace {
CudaForwardState& state_of(LlamaModel::CudaState& s) { return static_cast<CudaForwardState&>(s); }
}  // namespace

void* LlamaModel::cuda_stream_of(CudaState& state) { return state_of(state).stream; }

Result<std::unique_ptr<LlamaModel::CudaState>> LlamaModel::make_cuda_state(const ModelConfig& c,
                                                                          const ModelWeights& w, Device device) {
  auto st = std::make_unique<CudaForwardState>();
  st->device = device.index;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(device.index));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&st->num_sms, cudaDevAttrMultiProcessorCount, device.index));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
  MNEMO_ASSIGN_OR_RETURN(st->cublas, cuda::CublasHandle::create());
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&st->invalid_ids, sizeof(int32_t)));
  MNEMO_RETURN_IF_ERROR(st->cublas_workspace.reserve(size_t{32} << 20, "the cuBLAS workspace"));
  for (int64_t dim : {c.hidden_size, c.head_dim * c.num_attention_heads, c.head_dim * c.num_key_value_heads,
                      c.intermediate_size}) {
    if (dim % 8 != 0) {
      return invalid_argument("CUDA forward: hidden_size, heads x head_dim and intermediate_size must be multiples "
                              "of 8 (16-byte rows), got ", dim);
    }
  }
  if (c.head_dim != 16 && c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128) {
    return invalid_argument("CUDA forward: head_dim: expected 16, 32, 64 or 128 (the attention kernels'), got ",
                            c.head_dim);
  }
  MNEMO_ASSIGN_OR_RETURN(st->embed, st->upload(w.embed_tokens, "model.embed_tokens.weight"));
  MNEMO_ASSIGN_OR_RETURN(st->final_norm, st->upload(w.final_norm, "model.norm.weight"));
  if (w.lm_head.defined() && w.lm_head.raw() == w.embed_tokens.raw()) {
    st->lm_head = st->embed;  // tied
  } else {
    MNEMO_ASSIGN_OR_RETURN(st->lm_head, st->upload(w.lm_head, "lm_head.weight"));
  }
  for (const LayerWeights& lw : w.layers) {
    DeviceLayer d;
    MNEMO_ASSIGN_OR_RETURN(d.wq, st->upload(lw.q_proj, "q_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.wk, st->upload(lw.k_proj, "k_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.wv, st->upload(lw.v_proj, "v_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.wo, st->upload(lw.o_proj, "o_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.bq, st->upload(lw.q_bias, "q_proj.bias"));
    MNEMO_ASSIGN_OR_RETURN(d.bk, st->upload(lw.k_bias, "k_proj.bias"));
    MNEMO_ASSIGN_OR_RETURN(d.bv, st->upload(lw.v_bias, "v_proj.bias"));
    MNEMO_ASSIGN_OR_RETURN(d.bo, st->upload(lw.o_bias, "o_proj.bias"));
    MNEMO_ASSIGN_OR_RETURN(d.w_gate_up, st->upload({&lw.gate_proj, &lw.up_proj}, "gate_proj|up_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.b_gate_up, st->upload({&lw.gate_bias, &lw.up_bias}, "gate|up bias"));
    MNEMO_ASSIGN_OR_RETURN(d.w_down, st->upload(lw.down_proj, "down_proj"));
    MNEMO_ASSIGN_OR_RETURN(d.b_down, st->upload(lw.down_bias, "down_proj.bias"));
    MNEMO_ASSIGN_OR_RETURN(d.input_norm, st->upload(lw.input_norm, "input_layernorm"));
    MNEMO_ASSIGN_OR_RETURN(d.post_norm, st->upload(lw.post_attention_norm, "post_attention_layernorm"));
    st->layers.push_back(d);
  }
  return std::unique_ptr<CudaState>(std::move(st));
}

namespace {

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

Status grow_tier(SeqRepr::Tier& t, int64_t windows, int kv_heads, int d, cudaStream_t stream) {
  if (windows <= t.capacity) return Status::Ok();
  const int64_t cap = std::max({windows, t.capacity * 2, int64_t{256}});
  void* fresh = nullptr;
  if (cudaMallocAsync(&fresh, sizeof(bf16) * kv_heads * cap * d, stream) != cudaSuccess) {
    cudaGetLastError();
    return out_of_budget("CUDA forward: no device memory for representatives of ", cap, " windows");
  }
  if (t.keys && t.num_compressed > 0) {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(fresh, sizeof(bf16) * cap * d, t.keys, sizeof(bf16) * t.capacity * d,
                                                 sizeof(bf16) * t.num_compressed * d, kv_heads,
                                                 cudaMemcpyDeviceToDevice, stream));
  }
  if (t.keys) MNEMO_CUDA_RETURN_IF_ERROR(cudaFreeAsync(t.keys, stream));
  t.keys = static_cast<bf16*>(fresh);
  t.capacity = cap;
  return Status::Ok();
}

cuda::CompressedKeysBf16 view(const SeqRepr::Tier& t, int d, int kernel, int stride) {
  cuda::CompressedKeysBf16 v;
  v.keys = t.keys;
  v.head_stride = t.capacity * d;
  v.num_compressed = t.num_compressed;
  v.kernel_size = kernel;
  v.kernel_stride = stride;
  return v;
}

// Compresses the windows of layer `l` that the first `tokens` tokens complete (both tiers), reading
// keys through `kv` (one sequence's block table); rope null: keys as stored.
Status compress_new_windows(SeqRepr& r, int64_t l, const cuda::PagedKvBf16& kv, const cuda::RopeTableView* rope,
                            const SparseParams& sp, bool approx, int64_t tokens, cudaStream_t stream) {
  for (int tier = 0; tier < (approx ? 2 : 1); ++tier) {
    SeqRepr::Tier& t = tier == 0 ? r.t1[l] : r.t2[l];
    cuda::CompressKeysCudaParams cp;
    cp.kv = kv;
    if (rope) cp.key_rope = *rope;
    cp.kernel_size = tier == 0 ? sp.kernel_size : lse_kernel_size(sp);
    cp.kernel_stride = tier == 0 ? sp.kernel_stride : lse_kernel_stride(sp);
    cp.first_window = t.num_compressed;
    cp.num_windows = num_windows(tokens, cp.kernel_size, cp.kernel_stride) - t.num_compressed;
    cp.out = t.keys;
    cp.head_stride = t.capacity * kv.head_dim;
    MNEMO_RETURN_IF_ERROR(cuda::compress_keys_launch(cp, stream));
    t.num_compressed += cp.num_windows;
  }
  return Status::Ok();
}

// Stage 1 + top-k for `m` queries of one sequence in layer `l`: block ids [m, kv heads, max_sel].
struct Selection {
  const bf16* q = nullptr;            // [m, heads, head_dim]: rotated, or un-rotated (use_nope, bounded)
  const int32_t* q_index = nullptr;   // [m] stream index (device)
  int64_t m = 0, num_blocks = 0;
  int32_t* block_ids = nullptr;       // device
};
Status launch_selection(CudaForwardState& st, const SeqRepr& r, int64_t l, const Selection& sel, const SparseParams& sp,
                        bool approx, int heads, int kv_heads, int d, float softmax_scale, int max_sel) {
  cuda::BlockScoreCudaParams bs;
  bs.q = sel.q;
  bs.q_index = sel.q_index;
  bs.num_q = int(sel.m);
  bs.num_heads = heads;
  bs.num_kv_heads = kv_heads;
  bs.head_dim = d;
  bs.keys = view(r.t1[l], d, sp.kernel_size, sp.kernel_stride);
  if (approx) bs.lse_keys = view(r.t2[l], d, lse_kernel_size(sp), lse_kernel_stride(sp));
  bs.block_size = sp.block_size;
  bs.num_blocks = sel.num_blocks;
  bs.softmax_scale = softmax_scale;
  bs.block_scores = st.scores.as<float>();
  const cuda::BlockScorePlan plan = cuda::plan_block_scores(int(sel.m), heads, kv_heads, bs.keys.num_compressed, st.num_sms);
  bs.num_splits = plan.num_splits;
  MNEMO_RETURN_IF_ERROR(st.score_workspace.reserve(std::max<size_t>(plan.workspace_bytes, 256), "block scores"));
  MNEMO_RETURN_IF_ERROR(
      cuda::block_scores_launch(bs, Workspace{st.score_workspace.as<void>(), st.score_workspace.bytes()}, st.stream));
  cuda::BlockTopkCudaParams tk;
  tk.block_scores = st.scores.as<float>();
  tk.q_index = sel.q_index;
  tk.num_q = int(sel.m);
  tk.num_kv_heads = kv_heads;
  tk.num_blocks = sel.num_blocks;
  tk.sparse = sp;
  tk.max_selected = max_sel;
  tk.block_ids = sel.block_ids;
  return cuda::select_topk_launch(tk, st.stream);
}

// The device RoPE table for `rope`, covering positions [0, max_len) (rebuilt when a length-dependent
// rope changes, grown by doubling).
Status ensure_rope_table(CudaForwardState& st, const Rope& rope, int64_t max_len, int64_t d) {
  if (st.rope_valid && rope.inv_freq == st.rope.inv_freq && rope.scale == st.rope.scale && st.rope_len >= max_len) {
    return Status::Ok();
  }
  const int64_t half = d / 2;
  const int64_t cap = st.rope_valid && st.rope_len >= max_len ? st.rope_len
                                                              : std::max({max_len, st.rope_len * 2, int64_t{4096}});
  MNEMO_RETURN_IF_ERROR(st.rope_inv_freq.reserve(sizeof(float) * half, "the RoPE frequencies"));
  MNEMO_RETURN_IF_ERROR(st.rope_cos.reserve(sizeof(float) * cap * half, "the RoPE table"));
  MNEMO_RETURN_IF_ERROR(st.rope_sin.reserve(sizeof(float) * cap * half, "the RoPE table"));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(st.rope_inv_freq.as<float>(), rope.inv_freq.data(), sizeof(float) * half,
                                             cudaMemcpyHostToDevice, st.stream));
  cuda::RopeTableParams rp;
  rp.inv_freq = st.rope_inv_freq.as<float>();
  rp.half = static_cast<int>(half);
  rp.scale = rope.scale;
  rp.len = cap;
  rp.cos = st.rope_cos.as<float>();
  rp.sin = st.rope_sin.as<float>();
  MNEMO_RETURN_IF_ERROR(cuda::rope_table_launch(rp, st.stream));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st.stream));  // inv_freq's host copy is the caller's
  st.rope = rope;
  st.rope_len = cap;
  st.rope_valid = true;
  return Status::Ok();
}

}  // namespace

Result<std::shared_ptr<void>> LlamaModel::clone_cuda_repr(const Sequence& parent) {
  if (!parent.cuda_repr_) return std::shared_ptr<void>();
  CudaForwardState& st = state_of(*cuda_);
  const auto& from = *static_cast<const SeqRepr*>(parent.cuda_repr_.get());
  auto to = std::make_shared<SeqRepr>();
  to->stream = st.stream;
  const int kv_heads = int(config_.num_key_value_heads), d = int(config_.head_dim);
  for (auto [src, dst] : {std::pair{&from.t1, &to->t1}, std::pair{&from.t2, &to->t2}}) {
    dst->resize(src->size());
    for (size_t l = 0; l < src->size(); ++l) {
      SeqRepr::Tier& t = (*dst)[l];
      MNEMO_RETURN_IF_ERROR(grow_tier(t, (*src)[l].capacity, kv_heads, d, st.stream));
      t.num_compressed = (*src)[l].num_compressed;
      if (t.num_compressed > 0) {
        MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(t.keys, sizeof(bf16) * t.capacity * d, (*src)[l].keys,
                                                     sizeof(bf16) * (*src)[l].capacity * d,
                                                     sizeof(bf16) * t.num_compressed * d, kv_heads,
                                                     cudaMemcpyDeviceToDevice, st.stream));
      }
    }
  }
  return std::shared_ptr<void>(std::move(to));
}

Status LlamaModel::forward_chunks_cuda(std::span<ChunkItem> items) {
  // A failed step leaves every sequence at its length (forward() hands the reservations back); the
  // representatives it computed for tokens that were not committed are forgotten too, so a retry
  // with other tokens recomputes those windows.
  std::vector<std::vector<int64_t>> counts(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (const auto* r = static_cast<const SeqRepr*>(items[i].seq->cuda_repr_.get())) {
      for (const auto* tiers : {&r->t1, &r->t2}) {
        for (const SeqRepr::Tier& t : *tiers) counts[i].push_back(t.num_compressed);
      }
    }
  }
  std::vector<int64_t> lengths(items.size());
  for (size_t i = 0; i < items.size(); ++i) lengths[i] = items[i].seq->length();
  Status s = forward_chunks_cuda_step(items);
  for (size_t i = 0; i < items.size() && !s.ok(); ++i) {
    if (items[i].seq->length() != lengths[i]) continue;  // committed (per-item fallback): keeps its windows
    if (counts[i].empty()) {
      items[i].seq->cuda_repr_.reset();  // made by this step: nothing of it is committed
      continue;
    }
    auto* r = static_cast<SeqRepr*>(items[i].seq->cuda_repr_.get());
    size_t k = 0;
    for (auto* tiers : {&r->t1, &r->t2}) {
      for (SeqRepr::Tier& t : *tiers) t.num_compressed = std::min(t.num_compressed, counts[i][k++]);
    }
  }
  return s;
}

Status LlamaModel::forward_chunks_cuda_step(std::span<ChunkItem> items) {
  CudaForwardState& st = state_of(*cuda_);
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t d = c.head_dim, inter = c.intermediate_size, vocab = c.vocab_size;
  const int64_t bt = options_.block_tokens;
  const int64_t layers = c.num_hidden_layers;
  cudaStream_t stream = st.stream;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(st.device));
  const bool sparse = sparse_.has_value();
  const SparseParams sp = sparse ? to_sparse_params(*sparse_) : SparseParams{};
  const bool approx = sparse && options_.approximate_selection_lse;
  const int max_sel = sparse ? max_selected_blocks(sp) : 0;
  // The bounded policy (llama_bounded.cpp): a local window with true distances plus a memory partial
  // (un-rotated keys, the query at distance W), joined by their LSE; each item runs its own launches.
  const bool bounded = options_.positions == PositionPolicy::kBounded;
  const int64_t window = bounded ? bounded_window() : 0;

  // A length-dependent rope (dynamic NTK, longrope) gives each length its own frequencies: items
  // whose ropes differ run one after another (rare: only across such a rope's switch point).
  std::vector<Rope> ropes;
  for (const ChunkItem& it : items) {
    const int64_t len = it.seq->length() + static_cast<int64_t>(it.tokens.size());
    MNEMO_ASSIGN_OR_RETURN(Rope r, make_rope(c, bounded ? std::min(len, window + static_cast<int64_t>(it.tokens.size())) : len));
    ropes.push_back(std::move(r));
  }
  for (size_t i = 1; i < items.size(); ++i) {
    if (ropes[i].inv_freq != ropes[0].inv_freq || ropes[i].scale != ropes[0].scale) {
      for (ChunkItem& it : items) MNEMO_RETURN_IF_ERROR(forward_chunks_cuda_step(std::span<ChunkItem>(&it, 1)));
      return Status::Ok();
    }
  }

  // Rows, in four groups (each contiguous, so each is one launch where it can be):
  //   0 dense decode tokens | 1 sparse decode tokens | 2 dense prefill chunks | 3 chunks with sparse queries
  // A chunk of group 3 runs its dense queries (before the sparse switch) and its sparse ones as two
  // launches of its own.
  struct Plan {
    size_t item = 0;
    int group = 0;
    int64_t row0 = 0, n = 0, pos0 = 0, first_block = 0, num_blocks = 0;
    int64_t first_sparse = 0;  // rows [first_sparse, n) are sparse queries
    int64_t sel_row0 = 0;      // first row of this item's sparse queries in the selection buffers
    int64_t repr_from = 0;     // first token a new window (either tier) reads
    int64_t first_mem = 0;     // bounded: rows [first_mem, n) have a memory partial (t >= W)
    bool sparse_memory = false;
  };
  std::vector<Plan> plans;
  for (size_t i = 0; i < items.size(); ++i) {
    Plan p;
    p.item = i;
    p.n = static_cast<int64_t>(items[i].tokens.size());
    p.pos0 = items[i].seq->length();
    const int64_t new_len = p.pos0 + p.n;
    p.num_blocks = (new_len + bt - 1) / bt;
    p.first_block = c.sliding_window > 0 ? std::max<int64_t>(0, p.pos0 - c.sliding_window + 1) / bt : 0;
    p.first_sparse = p.n;
    if (bounded) {
      p.first_block = std::max<int64_t>(0, p.pos0 - window + 1) / bt;
      p.first_mem = std::clamp<int64_t>(window - p.pos0, 0, p.n);
      p.sparse_memory = sparse && p.first_mem < p.n && use_sparse(p.pos0 + p.first_mem + 1, sp);
    } else if (sparse) {
      for (int64_t t = 0; t < p.n; ++t) {
        if (use_sparse(p.pos0 + t + 1, sp)) {
          p.first_sparse = t;
          break;
        }
      }
    }
    const bool has_sparse = p.first_sparse < p.n;
    p.group = p.n == 1 ? (has_sparse ? 1 : 0) : (has_sparse ? 3 : 2);
    if (bounded) p.group = p.n == 1 ? 0 : 2;  // launches per item: the groups only order the rows
    plans.push_back(p);
  }
  std::stable_sort(plans.begin(), plans.end(), [](const Plan& a, const Plan& b) { return a.group < b.group; });
  int64_t group_count[4] = {0, 0, 0, 0}, group_row0[4] = {0, 0, 0, 0};
  int64_t total = 0, sel_rows = 0, max_kv[4] = {0, 0, 0, 0}, stride = 1, max_q_pre = 1, max_blocks_sparse = 1;
  for (Plan& p : plans) {
    if (group_count[p.group]++ == 0) group_row0[p.group] = total;
    p.row0 = total;
    total += p.n;
    p.sel_row0 = sel_rows;
    sel_rows += p.n - p.first_sparse;
    const int64_t new_len = p.pos0 + p.n;
    max_kv[p.group] = std::max(max_kv[p.group], new_len);
    stride = std::max(stride, p.num_blocks);
    if (p.group == 2) max_q_pre = std::max(max_q_pre, p.n);
    if (p.first_sparse < p.n) max_blocks_sparse = std::max(max_blocks_sparse, p.num_blocks);
    if (p.sparse_memory) {
      p.sel_row0 = sel_rows - (p.n - p.first_sparse);
      sel_rows += p.n - p.first_mem;
    }
    MNEMO_RETURN_IF_ERROR(store_->reserve(items[p.item].seq->id_, new_len));
  }
  const int64_t n = total;
  const int64_t max_len = *std::max_element(max_kv, max_kv + 4);
  int64_t table_len = max_len;
  if (bounded) {
    // The local partial rotates keys and queries at their true indices: only t - j matters to RoPE,
    // so this equals the CPU's rotation relative to the window's start (which keeps its table at the
    // window's size) up to float rounding; the device table simply covers the stream. (The dense
    // kernels build rows by angle addition from the table's first rows: a shifted view would break.)
    table_len = std::max(max_len, window + 1);
  }
  if (max_len > INT32_MAX) return invalid_argument("CUDA forward: stream length ", max_len, " exceeds 2^31 - 1");

  // Representatives: room for every window this step completes, and where the new ones start.
  const int kh = int(kv_heads), di = int(d);
  if (sparse) {
    for (Plan& p : plans) {
      Sequence& seq = *items[p.item].seq;
      if (!seq.cuda_repr_) {
        auto r = std::make_shared<SeqRepr>();
        r->stream = stream;
        r->t1.resize(static_cast<size_t>(layers));
        if (approx) r->t2.resize(static_cast<size_t>(layers));
        seq.cuda_repr_ = std::move(r);
      }
      auto& r = *static_cast<SeqRepr*>(seq.cuda_repr_.get());
      const int64_t new_len = p.pos0 + p.n;
      p.repr_from = new_len;
      for (int64_t l = 0; l < layers; ++l) {
        MNEMO_RETURN_IF_ERROR(grow_tier(r.t1[l], num_windows(new_len, sp.kernel_size, sp.kernel_stride), kh, di, stream));
        p.repr_from = std::min(p.repr_from, r.t1[l].num_compressed * sp.kernel_stride);
        if (approx) {
          MNEMO_RETURN_IF_ERROR(grow_tier(r.t2[l], num_windows(new_len, lse_kernel_size(sp), lse_kernel_stride(sp)), kh,
                                          di, stream));
          p.repr_from = std::min(p.repr_from, r.t2[l].num_compressed * lse_kernel_stride(sp));
        }
      }
      // A recovered sequence's representatives start empty: rebuilding them here would pin every
      // block of a long stream at once. (Recovery under sparse attention on CUDA: not yet.)
      if (p.repr_from < std::max<int64_t>(0, p.pos0 - 4 * sp.kernel_size - bt)) {
        return unimplemented("CUDA forward: sequence ", seq.id_, " has ", p.pos0,
                             " tokens without device representatives (a recovered sequence); rebuilding them on "
                             "CUDA is not implemented yet (issue #5) — recover it on the CPU backend");
      }
    }
  }

  // RoPE table on the device, covering every position of this step.
  MNEMO_RETURN_IF_ERROR(ensure_rope_table(st, ropes[0], table_len, d));

  // Rows whose logits are wanted.
  std::vector<int32_t> out_rows;
  for (const Plan& p : plans) {
    for (int64_t t = items[p.item].all_logits ? 0 : p.n - 1; t < p.n; ++t) out_rows.push_back(int32_t(p.row0 + t));
  }
  const int64_t num_out = static_cast<int64_t>(out_rows.size());
  const int64_t num_items = static_cast<int64_t>(plans.size());

  // Metadata, in int32: a step part, then one part per layer. Per item b (in plan order):
  //   step : tokens[n] positions[n] rows[num_out] kv_len[items] indptr[items][4] (0, dense rows, 0, sparse rows)
  //          indptr_pre[group 2 + 1]
  //   layer: slot_mapping[n] tables[items][stride]
  auto pad = [](int64_t x) { return (x + 63) / 64 * 64; };  // 256-byte aligned parts
  const int64_t off_tokens = 0, off_pos = pad(n), off_rows = off_pos + pad(n), off_kv = off_rows + pad(num_out);
  const int64_t off_pairs = off_kv + pad(num_items), off_indptr = off_pairs + pad(4 * num_items);
  const int64_t off_iota = off_indptr + pad(group_count[2] + 1);  // 0, 1, ..., num_items: decode indptr
  const int64_t off_mem_index = off_iota + pad(num_items + 1);  // bounded: t - W (memory causal bound)
  const int64_t off_w_pos = off_mem_index + pad(n);             // bounded: W (the memory query's position)
  const int64_t off_mem_kv = off_w_pos + pad(n);                // bounded: per item, last t - W + 1
  const int64_t off_mem_pairs = off_mem_kv + pad(num_items);    // bounded: per item (0, memory rows)
  const int64_t step_ints = off_mem_pairs + pad(2 * num_items);
  const int64_t off_slots = 0, off_tables = pad(n);
  const int64_t layer_ints = off_tables + pad(num_items * stride);
  const int64_t meta_ints = step_ints + layers * layer_ints;
  MNEMO_RETURN_IF_ERROR(st.host_meta.reserve(sizeof(int32_t) * meta_ints, stream, "step metadata"));
  MNEMO_RETURN_IF_ERROR(st.meta.reserve(sizeof(int32_t) * meta_ints, "step metadata"));
  int32_t* hm = st.host_meta.as<int32_t>();
  int32_t* dm = st.meta.as<int32_t>();
  {
    int64_t pre = 0;
    hm[off_indptr] = 0;
    for (int64_t b = 0; b < num_items; ++b) {
      const Plan& p = plans[b];
      for (int64_t t = 0; t < p.n; ++t) {
        hm[off_tokens + p.row0 + t] = items[p.item].tokens[t];
        hm[off_pos + p.row0 + t] = int32_t(p.pos0 + t);
        hm[off_mem_index + p.row0 + t] = int32_t(std::max<int64_t>(0, p.pos0 + t - window));
        hm[off_w_pos + p.row0 + t] = int32_t(window);
      }
      hm[off_kv + b] = int32_t(p.pos0 + p.n);
      hm[off_mem_kv + b] = int32_t(std::max<int64_t>(1, p.pos0 + p.n - window));
      hm[off_mem_pairs + 2 * b] = 0;
      hm[off_mem_pairs + 2 * b + 1] = int32_t(p.n - p.first_mem);
      int32_t* pair = hm + off_pairs + 4 * b;
      pair[0] = 0, pair[1] = int32_t(p.first_sparse), pair[2] = 0, pair[3] = int32_t(p.n - p.first_sparse);
      if (p.group == 2) {
        ++pre;
        hm[off_indptr + pre] = int32_t(p.row0 + p.n - group_row0[2]);
      }
    }
    std::copy(out_rows.begin(), out_rows.end(), hm + off_rows);
    for (int64_t b = 0; b <= num_items; ++b) hm[off_iota + b] = int32_t(b);
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dm, hm, sizeof(int32_t) * step_ints, cudaMemcpyHostToDevice, stream));
  }
  const int32_t* positions = dm + off_pos;  // == stream index of each row

  // Activations and selection buffers.
  const int64_t qkv = heads * d, kvd = kv_heads * d;
  MNEMO_RETURN_IF_ERROR(st.x.reserve(sizeof(float) * n * hidden, "activations"));
  MNEMO_RETURN_IF_ERROR(st.h.reserve(2 * n * std::max(hidden, qkv), "activations"));
  MNEMO_RETURN_IF_ERROR(st.q.reserve(2 * n * qkv, "activations"));
  MNEMO_RETURN_IF_ERROR(st.k.reserve(2 * n * kvd, "activations"));
  MNEMO_RETURN_IF_ERROR(st.v.reserve(2 * n * kvd, "activations"));
  MNEMO_RETURN_IF_ERROR(st.attn.reserve(2 * n * qkv, "activations"));
  MNEMO_RETURN_IF_ERROR(st.o.reserve(2 * n * hidden, "activations"));
  MNEMO_RETURN_IF_ERROR(st.gate_up.reserve(2 * n * 2 * inter, "activations"));
  MNEMO_RETURN_IF_ERROR(st.act.reserve(2 * n * inter, "activations"));
  MNEMO_RETURN_IF_ERROR(st.sel.reserve(2 * num_out * hidden, "activations"));
  MNEMO_RETURN_IF_ERROR(st.logits.reserve(sizeof(float) * num_out * vocab, "logits"));
  MNEMO_RETURN_IF_ERROR(st.host_logits.reserve(sizeof(float) * num_out * vocab, stream, "logits"));
  const bool use_nope = (sparse && sp.use_nope) || bounded;  // bounded: q_raw for the memory partial
  if (bounded) {
    MNEMO_RETURN_IF_ERROR(st.q_nope.reserve(2 * n * qkv, "activations"));
    MNEMO_RETURN_IF_ERROR(st.q_mem.reserve(2 * n * qkv, "activations"));
    MNEMO_RETURN_IF_ERROR(st.mem_out.reserve(2 * n * qkv, "activations"));
    MNEMO_RETURN_IF_ERROR(st.lse_local.reserve(sizeof(float) * n * heads, "activations"));
    MNEMO_RETURN_IF_ERROR(st.lse_mem.reserve(sizeof(float) * n * heads, "activations"));
  }
  if (sel_rows > 0) {
    if (use_nope) MNEMO_RETURN_IF_ERROR(st.q_nope.reserve(2 * n * qkv, "activations"));
    int64_t max_scores = 1;
    for (const Plan& p : plans) {
      const int64_t rows = std::max(p.n - p.first_sparse, p.sparse_memory ? p.n - p.first_mem : 0);
      max_scores = std::max(max_scores, rows * kv_heads * p.num_blocks);
    }
    MNEMO_RETURN_IF_ERROR(st.scores.reserve(sizeof(float) * max_scores, "block scores"));
    MNEMO_RETURN_IF_ERROR(st.block_ids.reserve(sizeof(int32_t) * sel_rows * kv_heads * max_sel, "selected blocks"));
    MNEMO_RETURN_IF_ERROR(
        st.host_block_ids.reserve(sizeof(int32_t) * sel_rows * kv_heads * max_sel, stream, "selected blocks"));
  }

  cuda::DenseDecodePlan dec_plan;
  cuda::SparseDecodePlan sdec_plan;
  size_t attn_ws = 256;
  if (group_count[0] > 0) {
    dec_plan = cuda::plan_dense_decode(int(group_count[0]), int(heads), kh, di, int(bt), max_kv[0], st.num_sms);
    attn_ws = std::max(attn_ws, dec_plan.workspace_bytes);
  }
  if (group_count[1] > 0) {
    sdec_plan = cuda::plan_sparse_decode(int(group_count[1]), int(heads), kh, di, int(bt), max_sel, st.num_sms);
    attn_ws = std::max(attn_ws, sdec_plan.workspace_bytes);
  }
  MNEMO_RETURN_IF_ERROR(st.attn_workspace.reserve(attn_ws, "the attention workspace"));
  const Workspace attn_workspace{st.attn_workspace.as<void>(), st.attn_workspace.bytes()};
  const Workspace gemm_ws{st.cublas_workspace.as<void>(), st.cublas_workspace.bytes()};
  auto linear = [&](const bf16* x, const bf16* w, const bf16* bias, void* y, DType y_dtype, int64_t rows,
                    int64_t in, int64_t out) {
    cuda::LinearParams lp;
    lp.x = x;
    lp.w = w;
    lp.bias = bias;
    lp.y = y;
    lp.y_dtype = y_dtype;
    lp.n = rows;
    lp.in = in;
    lp.out = out;
    return cuda::linear_launch(lp, st.cublas.get(), gemm_ws, stream);
  };

  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(st.invalid_ids, 0, sizeof(int32_t), stream));
  {
    cuda::EmbedF32Params ep;
    ep.table = st.embed;
    ep.ids = dm + off_tokens;
    ep.out = st.x.as<float>();
    ep.n = n;
    ep.vocab = vocab;
    ep.hidden = int(hidden);
    ep.scale = static_cast<float>(c.scale_emb);
    ep.invalid_ids = st.invalid_ids;
    MNEMO_RETURN_IF_ERROR(cuda::embed_f32_launch(ep, stream));
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float res_scale = static_cast<float>(c.residual_scale());
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  const auto* arena = static_cast<const bf16*>(store_->gpu_arena_data());
  const int64_t num_slots = store_->metrics().gpu_slots_total;
  cuda::RopeTableView rt;
  rt.cos = st.rope_cos.as<float>();
  rt.sin = st.rope_sin.as<float>();
  rt.len = st.rope_len;
  cuda::PagedKvBf16 kv_base;
  kv_base.arena = arena;
  kv_base.num_kv_heads = kh;
  kv_base.block_tokens = int(bt);
  kv_base.head_dim = di;
  kv_base.block_table_stride = int(stride);

  std::vector<int64_t> ids;
  std::vector<int32_t> slots;
  std::vector<char> have;
  // Prefetch (memory/store.h): a decode step's selection in layer l + 1 mostly repeats the previous
  // step's, so once layer l's selection is known, the previous step's blocks of layer l + 1 start
  // moving host -> GPU while layer l computes. `selected` becomes layer l's prediction for next step.
  std::vector<int64_t> predicted;
  auto remember_and_prefetch = [&](SeqRepr& r, SequenceId id, int64_t l, const std::vector<int64_t>& selected,
                                   int64_t num_blocks) -> Status {
    if (r.last_selected.size() != static_cast<size_t>(layers)) r.last_selected.resize(static_cast<size_t>(layers));
    r.last_selected[l] = selected;
    if (l + 1 >= layers) return Status::Ok();
    predicted.clear();
    for (int64_t blk : r.last_selected[l + 1]) {
      if (blk < num_blocks) predicted.push_back(blk);
    }
    return predicted.empty() ? Status::Ok() : store_->prefetch(id, int(l + 1), predicted);
  };
  for (int64_t l = 0; l < layers; ++l) {
    const DeviceLayer& w = st.layers[l];
    bf16* h = st.h.as<bf16>();
    bf16* q = st.q.as<bf16>();
    bf16* k = st.k.as<bf16>();
    bf16* v = st.v.as<bf16>();
    cuda::RmsNormF32Params np;
    np.x = st.x.as<float>();
    np.weight = w.input_norm;
    np.y = h;
    np.n = n;
    np.dim = int(hidden);
    np.eps = eps;
    MNEMO_RETURN_IF_ERROR(cuda::rms_norm_f32_launch(np, stream));
    MNEMO_RETURN_IF_ERROR(linear(h, w.wq, w.bq, q, DType::kBF16, n, hidden, qkv));
    MNEMO_RETURN_IF_ERROR(linear(h, w.wk, w.bk, k, DType::kBF16, n, hidden, kvd));
    MNEMO_RETURN_IF_ERROR(linear(h, w.wv, w.bv, v, DType::kBF16, n, hidden, kvd));
    if (use_nope && (sel_rows > 0 || bounded)) {
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(st.q_nope.as<bf16>(), q, 2 * n * qkv, cudaMemcpyDeviceToDevice, stream));
    }
    cuda::RopeQParams rq;
    rq.q = q;
    rq.positions = positions;
    rq.cos = rt.cos;
    rq.sin = rt.sin;
    rq.rope_len = st.rope_len;
    rq.n = n;
    rq.num_heads = int(heads);
    rq.head_dim = di;
    MNEMO_RETURN_IF_ERROR(cuda::rope_q_launch(rq, stream));

    // Blocks the step needs before selection: the dense queries' (all from the window start) and the
    // new windows' (from repr_from). Pinned in GPU slots (misses loaded); then the block tables and
    // every new token's slot.
    int32_t* lm = hm + step_ints + l * layer_ints;
    int32_t* ldm = dm + step_ints + l * layer_ints;
    std::vector<std::vector<char>> pinned(plans.size());
    for (int64_t b = 0; b < num_items; ++b) {
      const Plan& p = plans[b];
      const int64_t dense_end = p.pos0 + p.first_sparse;  // dense queries are [pos0, dense_end)
      std::vector<char>& want = pinned[b];
      want.assign(static_cast<size_t>(p.num_blocks), 0);
      if (p.first_sparse > 0) {
        for (int64_t blk = p.first_block; blk * bt < dense_end; ++blk) want[blk] = 1;
      }
      for (int64_t blk = sparse ? p.repr_from / bt : p.num_blocks; blk < p.num_blocks; ++blk) want[blk] = 1;
      // The new tokens' blocks are written now whatever reads them.
      for (int64_t blk = p.pos0 / bt; blk < p.num_blocks; ++blk) want[blk] = 1;
      ids.clear();
      for (int64_t blk = 0; blk < p.num_blocks; ++blk) {
        if (want[blk]) ids.push_back(blk);
      }
      MNEMO_RETURN_IF_ERROR(store_->acquire(items[p.item].seq->id_, int(l), ids, &slots));
      int32_t* table = lm + off_tables + b * stride;
      // Blocks nobody reads point at a valid slot all the same.
      for (int64_t blk = 0; blk < p.num_blocks; ++blk) table[blk] = slots[0];
      for (size_t i = 0; i < ids.size(); ++i) table[ids[i]] = slots[i];
      for (int64_t t = 0; t < p.n; ++t) {
        const int64_t pos = p.pos0 + t;
        lm[off_slots + p.row0 + t] = int32_t(table[pos / bt] * bt + pos % bt);
      }
    }
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(ldm, lm, sizeof(int32_t) * layer_ints, cudaMemcpyHostToDevice, stream));
    cuda::KvAppendParams ka;
    ka.k = k;
    ka.v = v;
    ka.slot_mapping = ldm + off_slots;
    ka.arena = const_cast<bf16*>(arena);
    ka.n = n;
    ka.num_slots = num_slots;
    ka.num_kv_heads = kh;
    ka.block_tokens = int(bt);
    ka.head_dim = di;
    MNEMO_RETURN_IF_ERROR(cuda::kv_append_launch(ka, stream));

    cuda::PagedKvBf16 kv = kv_base;
    const int32_t* tables = ldm + off_tables;
    bf16* attn = st.attn.as<bf16>();
    // New representatives (the windows this step completed), then the dense queries.
    if (sparse) {
      for (int64_t b = 0; b < num_items; ++b) {
        const Plan& p = plans[b];
        auto& r = *static_cast<SeqRepr*>(items[p.item].seq->cuda_repr_.get());
        const int64_t new_len = p.pos0 + p.n;
        cuda::PagedKvBf16 ikv = kv;
        ikv.block_tables = tables + b * stride;
        const bool rotated = !sp.use_nope && !bounded;
        MNEMO_RETURN_IF_ERROR(compress_new_windows(r, l, ikv, rotated ? &rt : nullptr, sp, approx, new_len, stream));
      }
    }
    if (bounded) {
      // Per item: the local partial (keys in the window, true relative distances), then for
      // rows with t >= W the memory partial (all older blocks, or the sparse selection among them;
      // keys un-rotated, the query rotated at W), merged by LSE into attn.
      bf16* q_raw = st.q_nope.as<bf16>();
      bf16* q_mem = st.q_mem.as<bf16>();
      bf16* mem_out = st.mem_out.as<bf16>();
      float* lse_local = st.lse_local.as<float>();
      float* lse_mem = st.lse_mem.as<float>();
      int32_t* d_ids = st.block_ids.as<int32_t>();
      for (int64_t b = 0; b < num_items; ++b) {
        const Plan& p = plans[b];
        const int64_t new_len = p.pos0 + p.n;
        const cuda::RopeTableView& local_rope = rt;
        cuda::PagedKvBf16 ikv = kv;
        ikv.block_tables = tables + b * stride;
        ikv.kv_lens = dm + off_kv + b;
        ikv.max_kv_len = new_len;
        if (p.n == 1) {
          cuda::DenseDecodeParams dp;
          dp.q = q + p.row0 * qkv;
          dp.batch = 1;
          dp.num_heads = int(heads);
          dp.kv = ikv;
          dp.key_rope = local_rope;
          dp.softmax_scale = softmax_scale;
          dp.sliding_window = window;
          const cuda::DenseDecodePlan plan =
              cuda::plan_dense_decode(1, int(heads), kh, di, int(bt), std::min(new_len, window), st.num_sms);
          dp.num_splits = plan.num_splits;
          dp.out = attn + p.row0 * qkv;
          dp.lse = lse_local + p.row0 * heads;
          MNEMO_RETURN_IF_ERROR(st.attn_workspace.reserve(std::max<size_t>(plan.workspace_bytes, 256), "attention"));
          MNEMO_RETURN_IF_ERROR(cuda::dense_decode_launch(
              dp, Workspace{st.attn_workspace.as<void>(), st.attn_workspace.bytes()}, stream));
        } else {
          cuda::DensePrefillParams pp;
          pp.q = q + p.row0 * qkv;
          pp.q_indptr = dm + off_pairs + 4 * b;  // (0, first_sparse == n)
          pp.q_index = positions + p.row0;
          pp.batch = 1;
          pp.max_q_per_seq = int(p.n);
          pp.num_heads = int(heads);
          pp.kv = ikv;
          pp.key_rope = local_rope;
          pp.softmax_scale = softmax_scale;
          pp.sliding_window = window;
          pp.out = attn + p.row0 * qkv;
          pp.lse = lse_local + p.row0 * heads;
          MNEMO_RETURN_IF_ERROR(cuda::dense_prefill_launch(pp, stream));
        }
        const int64_t m = p.n - p.first_mem;
        if (m == 0) continue;
        const int64_t r0 = p.row0 + p.first_mem;
        // The memory query: q_raw rotated at W.
        MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_mem + r0 * qkv, q_raw + r0 * qkv, sizeof(bf16) * m * qkv,
                                                   cudaMemcpyDeviceToDevice, stream));
        cuda::RopeQParams mq;
        mq.q = q_mem + r0 * qkv;
        mq.positions = dm + off_w_pos + r0;
        mq.cos = rt.cos;
        mq.sin = rt.sin;
        mq.rope_len = st.rope_len;
        mq.n = m;
        mq.num_heads = int(heads);
        mq.head_dim = di;
        MNEMO_RETURN_IF_ERROR(cuda::rope_q_launch(mq, stream));
        std::vector<char>& want = pinned[b];
        int32_t* table = lm + off_tables + b * stride;
        const int64_t last_mem_block = (new_len - 1 - window) / bt;
        ids.clear();
        if (p.sparse_memory) {
          const auto& r = *static_cast<const SeqRepr*>(items[p.item].seq->cuda_repr_.get());
          int32_t* item_ids = d_ids + p.sel_row0 * kv_heads * max_sel;
          MNEMO_RETURN_IF_ERROR(launch_selection(st, r, l, {q_raw + r0 * qkv, positions + r0, m, p.num_blocks, item_ids},
                                                 sp, approx, int(heads), kh, di, softmax_scale, max_sel));
          // Keep the selected blocks that start in the memory range (the local partial has the rest).
          int32_t* h_ids = st.host_block_ids.as<int32_t>() + p.sel_row0 * kv_heads * max_sel;
          const size_t id_bytes = sizeof(int32_t) * m * kv_heads * max_sel;
          MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_ids, item_ids, id_bytes, cudaMemcpyDeviceToHost, stream));
          MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
          for (int64_t i = 0; i < m; ++i) {
            const int64_t last_block = (p.pos0 + p.first_mem + i - window) / bt;
            for (int64_t g = 0; g < kv_heads; ++g) {
              int32_t* row = h_ids + (i * kv_heads + g) * max_sel;
              int k = 0;
              for (int j = 0; j < max_sel; ++j) {
                if (row[j] >= 0 && row[j] <= last_block) row[k++] = row[j];
              }
              std::fill(row + k, row + max_sel, -1);
              for (int j = 0; j < k; ++j) {
                if (!want[row[j]]) want[row[j]] = 1, ids.push_back(row[j]);
              }
            }
          }
          MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(item_ids, h_ids, id_bytes, cudaMemcpyHostToDevice, stream));
        } else {
          for (int64_t blk = 0; blk <= last_mem_block; ++blk) {
            if (!want[blk]) want[blk] = 1, ids.push_back(blk);
          }
        }
        std::sort(ids.begin(), ids.end());
        if (p.sparse_memory) {
          auto& r = *static_cast<SeqRepr*>(items[p.item].seq->cuda_repr_.get());
          MNEMO_RETURN_IF_ERROR(remember_and_prefetch(r, items[p.item].seq->id_, l, ids, p.num_blocks));
        }
        if (!ids.empty()) {
          MNEMO_RETURN_IF_ERROR(store_->acquire(items[p.item].seq->id_, int(l), ids, &slots));
          // This item's table row again, after the wait for its earlier upload (a sync, or the one
          // below: uploads of one row are ordered on the stream and read from distinct staging).
          MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
          for (size_t i = 0; i < ids.size(); ++i) table[ids[i]] = slots[i];
          MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ldm + off_tables + b * stride, table, sizeof(int32_t) * stride,
                                                     cudaMemcpyHostToDevice, stream));
        }
        cuda::PagedKvBf16 mkv = ikv;  // keys as stored: no rope
        mkv.kv_lens = p.sparse_memory ? dm + off_kv + b : dm + off_mem_kv + b;
        mkv.max_kv_len = p.sparse_memory ? new_len : new_len - window;
        if (p.sparse_memory) {
          cuda::SparseAttentionCudaParams sa;
          sa.q = q_mem + r0 * qkv;
          sa.q_indptr = dm + off_mem_pairs + 2 * b;
          sa.q_index = dm + off_mem_index + r0;
          sa.batch = 1;
          sa.total_q = int(m);
          sa.max_q_per_seq = int(m);
          sa.num_heads = int(heads);
          sa.kv = mkv;
          sa.softmax_scale = softmax_scale;
          sa.block_ids = d_ids + p.sel_row0 * kv_heads * max_sel;
          sa.max_selected = max_sel;
          sa.out = mem_out + r0 * qkv;
          sa.lse = lse_mem + r0 * heads;
          if (m == 1) {
            const cuda::SparseDecodePlan plan =
                cuda::plan_sparse_decode(1, int(heads), kh, di, int(bt), max_sel, st.num_sms);
            sa.num_splits = plan.num_splits;
            MNEMO_RETURN_IF_ERROR(st.attn_workspace.reserve(std::max<size_t>(plan.workspace_bytes, 256), "attention"));
            MNEMO_RETURN_IF_ERROR(cuda::sparse_decode_launch(
                sa, Workspace{st.attn_workspace.as<void>(), st.attn_workspace.bytes()}, stream));
          } else {
            MNEMO_RETURN_IF_ERROR(cuda::sparse_prefill_launch(sa, stream));
          }
        } else if (m == 1) {
          cuda::DenseDecodeParams dp;  // the query sits at kv_len - 1 = t - W
          dp.q = q_mem + r0 * qkv;
          dp.batch = 1;
          dp.num_heads = int(heads);
          dp.kv = mkv;
          dp.softmax_scale = softmax_scale;
          const cuda::DenseDecodePlan plan =
              cuda::plan_dense_decode(1, int(heads), kh, di, int(bt), new_len - window, st.num_sms);
          dp.num_splits = plan.num_splits;
          dp.out = mem_out + r0 * qkv;
          dp.lse = lse_mem + r0 * heads;
          MNEMO_RETURN_IF_ERROR(st.attn_workspace.reserve(std::max<size_t>(plan.workspace_bytes, 256), "attention"));
          MNEMO_RETURN_IF_ERROR(cuda::dense_decode_launch(
              dp, Workspace{st.attn_workspace.as<void>(), st.attn_workspace.bytes()}, stream));
        } else {
          cuda::DensePrefillParams pp;
          pp.q = q_mem + r0 * qkv;
          pp.q_indptr = dm + off_mem_pairs + 2 * b;
          pp.q_index = dm + off_mem_index + r0;
          pp.batch = 1;
          pp.max_q_per_seq = int(m);
          pp.num_heads = int(heads);
          pp.kv = mkv;
          pp.softmax_scale = softmax_scale;
          pp.out = mem_out + r0 * qkv;
          pp.lse = lse_mem + r0 * heads;
          MNEMO_RETURN_IF_ERROR(cuda::dense_prefill_launch(pp, stream));
        }
        cuda::MergeAttentionCudaParams mg;
        mg.out_a = attn + r0 * qkv;
        mg.lse_a = lse_local + r0 * heads;
        mg.out_b = mem_out + r0 * qkv;
        mg.lse_b = lse_mem + r0 * heads;
        mg.num_rows = m * heads;
        mg.head_dim = di;
        mg.out = attn + r0 * qkv;
        MNEMO_RETURN_IF_ERROR(cuda::merge_attention_launch(mg, stream));
      }
    } else {
      if (group_count[0] > 0) {
        cuda::DenseDecodeParams dp;
        dp.q = q + group_row0[0] * qkv;
        dp.batch = int(group_count[0]);
        dp.num_heads = int(heads);
        dp.kv = kv;
        dp.kv.block_tables = tables;  // group 0 items come first
        dp.kv.kv_lens = dm + off_kv;
        dp.kv.max_kv_len = max_kv[0];
        dp.key_rope = rt;
        dp.softmax_scale = softmax_scale;
        dp.sliding_window = c.sliding_window;
        dp.num_splits = dec_plan.num_splits;
        dp.out = attn + group_row0[0] * qkv;
        MNEMO_RETURN_IF_ERROR(cuda::dense_decode_launch(dp, attn_workspace, stream));
      }
      const int64_t first_pre = group_count[0] + group_count[1];  // plan index of the first chunk
      if (group_count[2] > 0) {
        cuda::DensePrefillParams pp;
        pp.q = q + group_row0[2] * qkv;
        pp.q_indptr = dm + off_indptr;
        pp.q_index = positions + group_row0[2];
        pp.batch = int(group_count[2]);
        pp.max_q_per_seq = int(max_q_pre);
        pp.num_heads = int(heads);
        pp.kv = kv;
        pp.kv.block_tables = tables + first_pre * stride;
        pp.kv.kv_lens = dm + off_kv + first_pre;
        pp.kv.max_kv_len = max_kv[2];
        pp.key_rope = rt;
        pp.softmax_scale = softmax_scale;
        pp.sliding_window = c.sliding_window;
        pp.out = attn + group_row0[2] * qkv;
        MNEMO_RETURN_IF_ERROR(cuda::dense_prefill_launch(pp, stream));
      }
      for (int64_t b = first_pre + group_count[2]; b < num_items; ++b) {  // group 3: dense part
        const Plan& p = plans[b];
        if (p.first_sparse == 0) continue;
        cuda::DensePrefillParams pp;
        pp.q = q + p.row0 * qkv;
        pp.q_indptr = dm + off_pairs + 4 * b;
        pp.q_index = positions + p.row0;
        pp.batch = 1;
        pp.max_q_per_seq = int(p.first_sparse);
        pp.num_heads = int(heads);
        pp.kv = kv;
        pp.kv.block_tables = tables + b * stride;
        pp.kv.kv_lens = dm + off_kv + b;
        pp.kv.max_kv_len = p.pos0 + p.n;
        pp.key_rope = rt;
        pp.softmax_scale = softmax_scale;
        pp.sliding_window = c.sliding_window;
        pp.out = attn + p.row0 * qkv;
        MNEMO_RETURN_IF_ERROR(cuda::dense_prefill_launch(pp, stream));
      }

      // Sparse queries: stage 1 + top-k per sequence, the selection to the host (one wait per layer),
      // the selected blocks pinned, then stage 2.
      if (sel_rows > 0) {
        int32_t* d_ids = st.block_ids.as<int32_t>();
        for (int64_t b = 0; b < num_items; ++b) {
          const Plan& p = plans[b];
          const int64_t m = p.n - p.first_sparse;
          if (m == 0) continue;
          const auto& r = *static_cast<const SeqRepr*>(items[p.item].seq->cuda_repr_.get());
          const Selection sel{(use_nope ? st.q_nope.as<bf16>() : q) + (p.row0 + p.first_sparse) * qkv,
                              positions + p.row0 + p.first_sparse, m, p.num_blocks,
                              d_ids + p.sel_row0 * kv_heads * max_sel};
          MNEMO_RETURN_IF_ERROR(launch_selection(st, r, l, sel, sp, approx, int(heads), kh, di, softmax_scale, max_sel));
        }
        int32_t* h_ids = st.host_block_ids.as<int32_t>();
        MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_ids, d_ids, sizeof(int32_t) * sel_rows * kv_heads * max_sel,
                                                   cudaMemcpyDeviceToHost, stream));
        MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
        for (int64_t b = 0; b < num_items; ++b) {
          const Plan& p = plans[b];
          const int64_t m = p.n - p.first_sparse;
          if (m == 0) continue;
          std::vector<char>& want = pinned[b];
          ids.clear();
          const int32_t* row = h_ids + p.sel_row0 * kv_heads * max_sel;
          for (int64_t i = 0; i < m * kv_heads * max_sel; ++i) {
            const int32_t blk = row[i];
            if (blk < 0) continue;
            if (blk >= p.num_blocks) return internal_error("CUDA top-k selected block ", blk, " of ", p.num_blocks);
            if (!want[blk]) {
              want[blk] = 1;
              ids.push_back(blk);
            }
          }
          std::sort(ids.begin(), ids.end());
          auto& r = *static_cast<SeqRepr*>(items[p.item].seq->cuda_repr_.get());
          if (!ids.empty()) {
            MNEMO_RETURN_IF_ERROR(store_->acquire(items[p.item].seq->id_, int(l), ids, &slots));
            int32_t* table = lm + off_tables + b * stride;
            for (size_t i = 0; i < ids.size(); ++i) table[ids[i]] = slots[i];
          }
          MNEMO_RETURN_IF_ERROR(remember_and_prefetch(r, items[p.item].seq->id_, l, ids, p.num_blocks));
        }
        // The tables again (the first upload is done: the stream was just synchronised).
        MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ldm + off_tables, lm + off_tables, sizeof(int32_t) * num_items * stride,
                                                   cudaMemcpyHostToDevice, stream));
        if (group_count[1] > 0) {
          cuda::SparseAttentionCudaParams sa;
          sa.q = q + group_row0[1] * qkv;
          sa.q_indptr = dm + off_iota;
          sa.q_index = positions + group_row0[1];
          sa.batch = int(group_count[1]);
          sa.total_q = int(group_count[1]);
          sa.max_q_per_seq = 1;
          sa.num_heads = int(heads);
          sa.kv = kv;
          sa.kv.block_tables = tables + group_count[0] * stride;
          sa.kv.kv_lens = dm + off_kv + group_count[0];
          sa.kv.max_kv_len = max_kv[1];
          sa.key_rope = rt;
          sa.softmax_scale = softmax_scale;
          sa.block_ids = d_ids + plans[group_count[0]].sel_row0 * kv_heads * max_sel;
          sa.max_selected = max_sel;
          sa.num_splits = sdec_plan.num_splits;
          sa.out = attn + group_row0[1] * qkv;
          MNEMO_RETURN_IF_ERROR(cuda::sparse_decode_launch(sa, attn_workspace, stream));
        }
        for (int64_t b = first_pre + group_count[2]; b < num_items; ++b) {  // group 3: sparse part
          const Plan& p = plans[b];
          const int64_t m = p.n - p.first_sparse;
          cuda::SparseAttentionCudaParams sa;
          sa.q = q + (p.row0 + p.first_sparse) * qkv;
          sa.q_indptr = dm + off_pairs + 4 * b + 2;
          sa.q_index = positions + p.row0 + p.first_sparse;
          sa.batch = 1;
          sa.total_q = int(m);
          sa.max_q_per_seq = int(m);
          sa.num_heads = int(heads);
          sa.kv = kv;
          sa.kv.block_tables = tables + b * stride;
          sa.kv.kv_lens = dm + off_kv + b;
          sa.kv.max_kv_len = p.pos0 + p.n;
          sa.key_rope = rt;
          sa.softmax_scale = softmax_scale;
          sa.block_ids = d_ids + p.sel_row0 * kv_heads * max_sel;
          sa.max_selected = max_sel;
          sa.out = attn + (p.row0 + p.first_sparse) * qkv;
          MNEMO_RETURN_IF_ERROR(cuda::sparse_prefill_launch(sa, stream));
        }
      }
    }
    // The layer's kernels are queued; the store orders any later load into these slots after them.
    store_->release_all();

    bf16* o = st.o.as<bf16>();
    MNEMO_RETURN_IF_ERROR(linear(attn, w.wo, w.bo, o, DType::kBF16, n, qkv, hidden));
    cuda::ResidualAddParams ra;
    ra.x = st.x.as<float>();
    ra.o = o;
    ra.n = n * hidden;
    ra.alpha = res_scale;
    MNEMO_RETURN_IF_ERROR(cuda::residual_add_launch(ra, stream));
    np.weight = w.post_norm;
    MNEMO_RETURN_IF_ERROR(cuda::rms_norm_f32_launch(np, stream));
    bf16* gu = st.gate_up.as<bf16>();
    MNEMO_RETURN_IF_ERROR(linear(h, w.w_gate_up, w.b_gate_up, gu, DType::kBF16, n, hidden, 2 * inter));
    cuda::SiluMulParams sm;
    sm.gate = gu;
    sm.up = gu + inter;
    sm.in_stride = 2 * inter;
    sm.out = st.act.as<bf16>();
    sm.n = n;
    sm.dim = int(inter);
    MNEMO_RETURN_IF_ERROR(cuda::silu_mul_launch(sm, stream));
    MNEMO_RETURN_IF_ERROR(linear(st.act.as<bf16>(), w.w_down, w.b_down, o, DType::kBF16, n, inter, hidden));
    MNEMO_RETURN_IF_ERROR(cuda::residual_add_launch(ra, stream));
  }

  cuda::RmsNormF32Params fn;
  fn.x = st.x.as<float>();
  fn.rows = dm + off_rows;
  fn.weight = st.final_norm;
  fn.y = st.sel.as<bf16>();
  fn.n = num_out;
  fn.dim = int(hidden);
  fn.eps = eps;
  fn.out_scale = static_cast<float>(1.0 / c.logit_divisor());
  MNEMO_RETURN_IF_ERROR(cuda::rms_norm_f32_launch(fn, stream));
  MNEMO_RETURN_IF_ERROR(linear(st.sel.as<bf16>(), st.lm_head, nullptr, st.logits.as<float>(), DType::kF32, num_out,
                               hidden, vocab));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(st.host_logits.as<float>(), st.logits.as<float>(),
                                             sizeof(float) * num_out * vocab, cudaMemcpyDeviceToHost, stream));
  int32_t invalid = 0;
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&invalid, st.invalid_ids, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (invalid != 0) return internal_error("CUDA forward: ", invalid, " token ids outside the vocabulary reached the GPU");

  const float* hl = st.host_logits.as<float>();
  int64_t r = 0;
  for (const Plan& p : plans) {
    const int64_t count = items[p.item].all_logits ? p.n : 1;
    std::memcpy(items[p.item].logits, hl + r * vocab, static_cast<size_t>(count * vocab) * sizeof(float));
    r += count;
  }
  for (const Plan& p : plans) {
    MNEMO_RETURN_IF_ERROR(store_->commit(items[p.item].seq->id_, p.pos0 + p.n));
    items[p.item].seq->length_ = p.pos0 + p.n;
  }
  return Status::Ok();
}

Status LlamaModel::fill_synthetic_kv_cuda(Sequence& seq, int64_t tokens, uint64_t seed) {
  CudaForwardState& st = state_of(*cuda_);
  const ModelConfig& c = config_;
  const int64_t kv_heads = c.num_key_value_heads, d = c.head_dim, bt = options_.block_tokens;
  const int kh = int(kv_heads), di = int(d);
  const bool sparse = sparse_.has_value();
  const SparseParams sp = sparse ? to_sparse_params(*sparse_) : SparseParams{};
  const bool approx = sparse && options_.approximate_selection_lse;
  cudaStream_t stream = st.stream;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(st.device));
  const auto* arena = static_cast<const bf16*>(store_->gpu_arena_data());
  const int64_t num_slots = store_->metrics().gpu_slots_total;
  std::vector<int64_t> ids;
  std::vector<int32_t> slots;
  for (int64_t done = 0; done < tokens;) {
    const int64_t pos0 = seq.length_, m = std::min<int64_t>(options_.chunk_tokens, tokens - done);
    const int64_t new_len = pos0 + m, num_blocks = (new_len + bt - 1) / bt;
    MNEMO_ASSIGN_OR_RETURN(Rope rope, make_rope(c, new_len));
    MNEMO_RETURN_IF_ERROR(ensure_rope_table(st, rope, new_len, d));
    MNEMO_RETURN_IF_ERROR(store_->reserve(seq.id_, new_len));
    auto fail = [&](Status s) {
      store_->release_all();
      store_->reserve(seq.id_, seq.length_).permit_unchecked();
      return s;
    };
    int64_t repr_from = new_len;
    if (sparse) {
      if (!seq.cuda_repr_) {
        auto r = std::make_shared<SeqRepr>();
        r->stream = stream;
        r->t1.resize(static_cast<size_t>(c.num_hidden_layers));
        if (approx) r->t2.resize(static_cast<size_t>(c.num_hidden_layers));
        seq.cuda_repr_ = std::move(r);
      }
      auto& r = *static_cast<SeqRepr*>(seq.cuda_repr_.get());
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        Status s = grow_tier(r.t1[l], num_windows(new_len, sp.kernel_size, sp.kernel_stride), kh, di, stream);
        if (s.ok() && approx) s = grow_tier(r.t2[l], num_windows(new_len, lse_kernel_size(sp), lse_kernel_stride(sp)), kh, di, stream);
        if (!s.ok()) return fail(s);
        repr_from = std::min(repr_from, r.t1[l].num_compressed * sp.kernel_stride);
        if (approx) repr_from = std::min(repr_from, r.t2[l].num_compressed * lse_kernel_stride(sp));
      }
    }
    const int64_t first_block = std::min(repr_from, pos0) / bt;
    Status s = st.k.reserve(2 * m * kv_heads * d, "synthetic K");
    if (s.ok()) s = st.v.reserve(2 * m * kv_heads * d, "synthetic V");
    if (s.ok()) s = st.host_meta.reserve(sizeof(int32_t) * (m + num_blocks) * c.num_hidden_layers, stream, "metadata");
    if (s.ok()) s = st.meta.reserve(sizeof(int32_t) * (m + num_blocks) * c.num_hidden_layers, "metadata");
    if (!s.ok()) return fail(s);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      ids.clear();
      for (int64_t b = first_block; b < num_blocks; ++b) ids.push_back(b);
      s = store_->acquire(seq.id_, int(l), ids, &slots);
      if (!s.ok()) return fail(s);
      int32_t* hm = st.host_meta.as<int32_t>() + l * (m + num_blocks);
      int32_t* dm = st.meta.as<int32_t>() + l * (m + num_blocks);
      int32_t* table = hm + m;
      for (int64_t b = 0; b < num_blocks; ++b) table[b] = b < first_block ? slots[0] : slots[b - first_block];
      for (int64_t t = 0; t < m; ++t) hm[t] = int32_t(table[(pos0 + t) / bt] * bt + (pos0 + t) % bt);
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(dm, hm, sizeof(int32_t) * (m + num_blocks), cudaMemcpyHostToDevice, stream));
      const uint64_t layer_seed = seed ^ (static_cast<uint64_t>(l) << 48) ^ (static_cast<uint64_t>(pos0) << 1);
      s = cuda::fill_normal_bf16_launch(st.k.as<bf16>(), m * kv_heads * d, layer_seed, 1.0f, stream);
      if (s.ok()) s = cuda::fill_normal_bf16_launch(st.v.as<bf16>(), m * kv_heads * d, ~layer_seed, 1.0f, stream);
      cuda::KvAppendParams ka;
      ka.k = st.k.as<bf16>();
      ka.v = st.v.as<bf16>();
      ka.slot_mapping = dm;
      ka.arena = const_cast<bf16*>(arena);
      ka.n = m;
      ka.num_slots = num_slots;
      ka.num_kv_heads = kh;
      ka.block_tokens = int(bt);
      ka.head_dim = di;
      if (s.ok()) s = cuda::kv_append_launch(ka, stream);
      if (s.ok() && sparse) {
        auto& r = *static_cast<SeqRepr*>(seq.cuda_repr_.get());
        cuda::PagedKvBf16 fkv;
        fkv.arena = arena;
        fkv.num_kv_heads = kh;
        fkv.block_tokens = int(bt);
        fkv.head_dim = di;
        fkv.block_tables = dm + m;
        cuda::RopeTableView rope_view;
        rope_view.cos = st.rope_cos.as<float>();
        rope_view.sin = st.rope_sin.as<float>();
        rope_view.len = st.rope_len;
        // Rotated at their index, unless stage 1 compares un-rotated keys (use_nope, bounded positions).
        const bool rotated = !sp.use_nope && options_.positions != PositionPolicy::kBounded;
        s = compress_new_windows(r, l, fkv, rotated ? &rope_view : nullptr, sp, approx, new_len, stream);
      }
      if (!s.ok()) return fail(s);
      store_->release_all();
    }
    // The staging buffer is rewritten by the next chunk: its uploads must be done.
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    s = store_->commit(seq.id_, new_len);
    if (!s.ok()) return fail(s);
    seq.length_ = new_len;
    done += m;
  }
  return Status::Ok();
}

}  // namespace mnemo
