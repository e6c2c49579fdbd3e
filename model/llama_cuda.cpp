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
#include "model/cuda/forward_state.h"

namespace mnemo {

using namespace cuda_fwd;

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
          MNEMO_RETURN_IF_ERROR(remember_and_prefetch(*store_, r, items[p.item].seq->id_, l, layers, ids, p.num_blocks));
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
          MNEMO_RETURN_IF_ERROR(remember_and_prefetch(*store_, r, items[p.item].seq->id_, l, layers, ids, p.num_blocks));
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

}  // namespace mnemo
