// The CUDA forward's state and everything around the step (model/llama_cuda.cpp has the step itself):
// the weights' upload, the representatives' helpers, forks, the failed-step rollback of
// representatives, and the benchmarks' synthetic context.
#include "model/cuda/forward_state.h"

namespace mnemo {

namespace cuda_fwd {
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

Status remember_and_prefetch(KvStore& store, SeqRepr& r, SequenceId id, int64_t l, int64_t layers,
                             const std::vector<int64_t>& selected, int64_t num_blocks) {
  if (r.last_selected.size() != static_cast<size_t>(layers)) r.last_selected.resize(static_cast<size_t>(layers));
  r.last_selected[l] = selected;
  if (l + 1 >= layers) return Status::Ok();
  std::vector<int64_t> predicted;
  for (int64_t blk : r.last_selected[l + 1]) {
    if (blk < num_blocks) predicted.push_back(blk);
  }
  return predicted.empty() ? Status::Ok() : store.prefetch(id, int(l + 1), predicted);
}

}  // namespace cuda_fwd

using namespace cuda_fwd;

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
