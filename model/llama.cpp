#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "attention/dense.h"
#include "attention/rope.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "attention/sparse_params.h"
#include "model/ops.h"
#include "model/rope_scaling.h"

namespace mnemo {

namespace {

// Identity of the model for the store's fingerprint: KV written under another model is refused.
// Shapes and rope settings in clear text, the weights by a hash of a sample of every tensor.
std::string model_fingerprint(const ModelConfig& c, const ModelWeights& w) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over up to 4096 values of every tensor
  auto mix = [&h](const Tensor& t) {
    if (!t.defined()) return;
    const auto* bytes = static_cast<const uint8_t*>(t.raw());
    const size_t n = std::min<size_t>(t.nbytes(), 4096 * 4);
    for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  };
  mix(w.embed_tokens);
  for (const LayerWeights& l : w.layers) {
    for (const Tensor* t : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) mix(*t);
  }
  mix(w.lm_head);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  std::string f = std::string(architecture_name(c.architecture)) + " layers=" + std::to_string(c.num_hidden_layers) +
                  " kv_heads=" + std::to_string(c.num_key_value_heads) + " head_dim=" + std::to_string(c.head_dim) +
                  " hidden=" + std::to_string(c.hidden_size) + " rope_theta=" + std::to_string(c.rope_theta) +
                  " rope_scaling=" + std::to_string(static_cast<int>(c.rope_scaling.type)) + " kv=f32 weights=" + hex;
  return f;
}

}  // namespace

SparseParams to_sparse_params(const SparseConfig& c) {
  SparseParams p;
  p.kernel_size = c.kernel_size;
  p.kernel_stride = c.kernel_stride;
  p.block_size = c.block_size;
  p.init_blocks = c.init_blocks;
  p.window_size = c.window_size;
  p.topk = c.topk;
  p.dense_len = c.dense_len;
  p.use_nope = c.use_nope;
  return p;
}

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, ModelOptions options,
                       std::unique_ptr<KvStore> store, std::unique_ptr<CudaState> cuda)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      cuda_(std::move(cuda)),
      options_(options),
      store_(std::move(store)) {
  sparse_ = options_.sparse ? options_.sparse : config_.sparse;
}

LlamaModel::~LlamaModel() = default;

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(const std::string& model_dir, const ModelOptions& options) {
  MNEMO_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(model_dir));
  // The CUDA backend keeps bf16 weights: load them as bf16 (half the host memory of f32).
  LoadWeightsOptions load_options;
  if (!options.device.is_cpu()) load_options.dtype = DType::kBF16;
  MNEMO_ASSIGN_OR_RETURN(ModelWeights weights, load_model_weights(model_dir, config, load_options));
  return from_weights(std::move(config), std::move(weights), options);
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::from_weights(ModelConfig config, ModelWeights weights,
                                                             const ModelOptions& options) {
  if (options.block_tokens <= 0) return invalid_argument("ModelOptions.block_tokens must be positive");
  if (options.chunk_tokens <= 0) return invalid_argument("ModelOptions.chunk_tokens must be positive");
  if (options.kv_budget_tokens < options.block_tokens) {
    return invalid_argument("ModelOptions.kv_budget_tokens (", options.kv_budget_tokens,
                            ") must hold at least one block of ", options.block_tokens, " tokens");
  }
  const std::optional<SparseConfig>& sparse = options.sparse ? options.sparse : config.sparse;
  if (sparse) {
    MNEMO_RETURN_IF_ERROR(validate(to_sparse_params(*sparse)).with_context("sparse config"));
    if (sparse->block_size != options.block_tokens) {
      return invalid_argument("sparse config: block_size ", sparse->block_size, " must equal the KV block size (",
                              options.block_tokens, " tokens): selection blocks are KV blocks");
    }
  }
  const bool on_cuda = !options.device.is_cpu();
  if (on_cuda) {
    if (!built_with_cuda()) {
      return invalid_argument("ModelOptions.device ", options.device.to_string(),
                         ": this build has no CUDA backend (configure with -DMNEMO_CUDA=ON)");
    }
    if (options.device.index >= cuda_device_count()) {
      return invalid_argument("ModelOptions.device ", options.device.to_string(), ": ",
                         cuda_device_count() == 0 ? cuda_unavailable_reason()
                                                  : std::to_string(cuda_device_count()) + " CUDA device(s) present");
    }
    if (sparse && config.head_dim != 64 && config.head_dim != 128) {
      return invalid_argument("ModelOptions.device ", options.device.to_string(),
                              ": InfLLM-V2 sparse attention on CUDA needs head_dim 64 or 128 (the stage-1 "
                              "kernel's), got ", config.head_dim, "; use --device cpu");
    }
  } else if (weights.embed_tokens.dtype() != DType::kF32) {
    return invalid_argument("ModelOptions.device cpu: weights must be f32, got ", dtype_name(weights.embed_tokens.dtype()));
  }
  std::unique_ptr<CudaState> cuda;
  if (on_cuda) {
    MNEMO_ASSIGN_OR_RETURN(cuda, make_cuda_state(config, weights, options.device));
  }
  KvLayout layout;
  layout.num_layers = static_cast<int>(config.num_hidden_layers);
  layout.num_kv_heads = static_cast<int>(config.num_key_value_heads);
  layout.block_tokens = options.block_tokens;
  layout.head_dim = static_cast<int>(config.head_dim);
  KvStoreOptions store_options;
  store_options.layout = layout;
  store_options.gpu_budget_bytes = KvArena::slots_for_tokens(layout, options.kv_budget_tokens) * layout.slot_bytes();
  store_options.host_budget_bytes =
      options.host_budget_bytes > 0 ? options.host_budget_bytes : 2 * store_options.gpu_budget_bytes;
  store_options.data_dir = options.data_dir;
  store_options.fingerprint = model_fingerprint(config, weights);
  if (on_cuda) {
    layout.dtype = DType::kBF16;
    store_options.layout = layout;
    store_options.gpu_budget_bytes = KvArena::slots_for_tokens(layout, options.kv_budget_tokens) * layout.slot_bytes();
    store_options.host_budget_bytes =
        options.host_budget_bytes > 0 ? options.host_budget_bytes : 2 * store_options.gpu_budget_bytes;
    store_options.cuda = true;
    store_options.cuda_stream = cuda_stream_of(*cuda);
    store_options.fingerprint += " device=cuda kv=bf16";
    weights = ModelWeights{};  // the device holds them now
  }
  MNEMO_ASSIGN_OR_RETURN(auto store, KvStore::open(store_options));
  return std::unique_ptr<LlamaModel>(
      new LlamaModel(std::move(config), std::move(weights), options, std::move(store), std::move(cuda)));
}

Sequence::~Sequence() {
  // Ephemeral sequences give their blocks back; persistent ones stay in the store for recovery.
  if (!persistent_) store_->drop_sequence(id_).permit_unchecked();
}

Result<std::unique_ptr<Sequence>> LlamaModel::new_sequence(SequenceId id, bool persistent) {
  if (id == 0) id = next_sequence_id_++;
  MNEMO_RETURN_IF_ERROR(store_->create_sequence(id));
  return std::unique_ptr<Sequence>(new Sequence(store_.get(), id, persistent));
}

Result<std::unique_ptr<Sequence>> LlamaModel::recover_sequence(SequenceId id, int64_t max_tokens) {
  MNEMO_ASSIGN_OR_RETURN(int64_t durable, store_->recover_sequence(id));
  auto seq = std::unique_ptr<Sequence>(new Sequence(store_.get(), id, /*persistent=*/true));
  seq->length_ = durable;
  const int64_t keep = std::max<int64_t>(0, max_tokens) / options_.block_tokens * options_.block_tokens;
  if (keep < durable) {
    // Fewer tokens wanted than are durable (the caller re-runs the last ones for their logits): the
    // store keeps whole sealed blocks only, so start over from a block boundary by re-creating it.
    MNEMO_RETURN_IF_ERROR(store_->drop_sequence(id));
    MNEMO_RETURN_IF_ERROR(store_->create_sequence(id));
    seq->length_ = 0;
  }
  return seq;
}

Status LlamaModel::drop_sequence(std::unique_ptr<Sequence> seq) {
  seq->persistent_ = true;  // dropped here, not again by the destructor
  return store_->drop_sequence(seq->id_);
}

Result<std::unique_ptr<Sequence>> LlamaModel::fork_sequence(const Sequence& parent, SequenceId id, bool persistent) {
  if (id == 0) id = next_sequence_id_++;
  MNEMO_RETURN_IF_ERROR(store_->fork_sequence(parent.id_, id));
  auto child = std::unique_ptr<Sequence>(new Sequence(store_.get(), id, persistent));
  child->length_ = parent.length_;
  child->compressed_ = parent.compressed_;
  child->compressed_lse_ = parent.compressed_lse_;
  if (cuda_) {
    MNEMO_ASSIGN_OR_RETURN(child->cuda_repr_, clone_cuda_repr(parent));
  }
  return child;
}

Status LlamaModel::forward(Sequence& seq, std::span<const int32_t> tokens, Tensor* logits, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return invalid_argument("forward: no tokens given");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return invalid_argument("forward: token ", i, " has id ", tokens[i], ", outside the vocabulary [0, ",
                              config_.vocab_size, ")");
    }
  }
  const int64_t vocab = config_.vocab_size;
  *logits = Tensor::zeros({all_logits ? n : 1, vocab});
  const int64_t start_len = seq.length();
  for (int64_t c = 0; c < n; c += options_.chunk_tokens) {
    const int64_t m = std::min(options_.chunk_tokens, n - c);
    // Without all_logits every chunk writes its last row to the same place; the final chunk's stays.
    float* out = all_logits ? logits->data<float>() + c * vocab : logits->data<float>();
    Status s = forward_chunk(seq, tokens.subspan(c, m), out, all_logits);
    if (!s.ok()) {
      // Earlier chunks stay committed (their KV is valid); this chunk's reservation is handed back.
      store_->release_all();
      store_->reserve(seq.id_, seq.length_).permit_unchecked();
      (void)start_len;
      return s;
    }
  }
  return Status::Ok();
}

Status LlamaModel::forward_batch(std::span<BatchItem> items) {
  std::vector<ChunkItem> chunks;
  for (BatchItem& it : items) {
    const int64_t n = static_cast<int64_t>(it.tokens.size());
    if (n == 0 || n > options_.chunk_tokens) {
      return invalid_argument("forward_batch: an item has ", n, " tokens; expected 1 to chunk_tokens (",
                              options_.chunk_tokens, ")");
    }
    for (int64_t i = 0; i < n; ++i) {
      if (it.tokens[i] < 0 || it.tokens[i] >= config_.vocab_size) {
        return invalid_argument("forward: token ", i, " has id ", it.tokens[i], ", outside the vocabulary [0, ",
                                config_.vocab_size, ")");
      }
    }
    for (const ChunkItem& c : chunks) {
      if (c.seq == it.seq) return invalid_argument("forward_batch: a sequence appears twice in one batch");
    }
    *it.logits = Tensor::zeros({1, config_.vocab_size});
    chunks.push_back({it.seq, it.tokens, it.logits->data<float>(), false});
  }
  Status s = forward_chunks(chunks);
  if (!s.ok()) {
    store_->release_all();
    for (const ChunkItem& c : chunks) store_->reserve(c.seq->id_, c.seq->length_).permit_unchecked();
  }
  return s;
}

Status LlamaModel::forward_chunk(Sequence& seq, std::span<const int32_t> tokens, float* logits, bool all_logits) {
  ChunkItem item{&seq, tokens, logits, all_logits};
  return forward_chunks(std::span<ChunkItem>(&item, 1));
}

// Several sequences' chunks in one pass: the token rows of every item go through the GEMMs, norms
// and MLP together (weights are read once per step, not once per session); RoPE, the KV writes and
// attention run per item. Each row is computed exactly as it would be alone.
Status LlamaModel::forward_chunks(std::span<ChunkItem> items) {
  if (cuda_) return forward_chunks_cuda(items);
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t d = c.head_dim, inter = c.intermediate_size, vocab = c.vocab_size;
  const bool bounded = options_.positions == PositionPolicy::kBounded;
  const int64_t window = bounded ? bounded_window() : 0;
  const int64_t bt = options_.block_tokens;

  struct Plan {
    int64_t row0 = 0, n = 0, pos0 = 0, rope_offset = 0;
    std::vector<int64_t> q_index;
    std::unique_ptr<RopeTable> table;
  };
  std::vector<Plan> plans(items.size());
  int64_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    Plan& pl = plans[i];
    pl.row0 = total;
    pl.n = static_cast<int64_t>(items[i].tokens.size());
    pl.pos0 = items[i].seq->length();
    total += pl.n;
    const int64_t new_len = pl.pos0 + pl.n;
    MNEMO_RETURN_IF_ERROR(store_->reserve(items[i].seq->id_, new_len));
    // Exact: keys and queries at their stream index. Bounded: distances never exceed the window, so
    // a table of the window (plus this chunk) serves any stream length, offset to the window's start.
    pl.rope_offset = bounded ? std::max<int64_t>(0, pl.pos0 - window + 1) / bt * bt : 0;
    MNEMO_ASSIGN_OR_RETURN(Rope rope, make_rope(c, bounded ? std::min(new_len, window + pl.n) : new_len));
    pl.table = std::make_unique<RopeTable>(std::move(rope));
    pl.table->ensure(std::max(new_len - pl.rope_offset, window + 1));
    pl.q_index.resize(static_cast<size_t>(pl.n));
    for (int64_t t = 0; t < pl.n; ++t) pl.q_index[t] = pl.pos0 + t;
  }
  const int64_t n = total;

  std::vector<float> x(n * hidden), h(n * hidden), q(n * heads * d), k(n * kv_heads * d), v(n * kv_heads * d);
  std::vector<float> attn(n * heads * d), o(n * hidden), gate(n * inter), up(n * inter), q_nope;
  const float emb_scale = static_cast<float>(c.scale_emb);
  const float res_scale = static_cast<float>(c.residual_scale());
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (size_t i = 0; i < items.size(); ++i) {
    for (int64_t t = 0; t < plans[i].n; ++t) {
      const float* e = weights_.embed_tokens.data<float>() + int64_t{items[i].tokens[t]} * hidden;
      float* dst = x.data() + (plans[i].row0 + t) * hidden;
      for (int64_t j = 0; j < hidden; ++j) dst[j] = e[j] * emb_scale;
    }
  }
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    cpu::rms_norm(x.data(), w.input_norm.data<float>(), h.data(), n, hidden, eps);
    cpu::linear(h.data(), w.q_proj.data<float>(), ptr(w.q_bias), q.data(), n, hidden, heads * d);
    cpu::linear(h.data(), w.k_proj.data<float>(), ptr(w.k_bias), k.data(), n, hidden, kv_heads * d);
    cpu::linear(h.data(), w.v_proj.data<float>(), ptr(w.v_bias), v.data(), n, hidden, kv_heads * d);
    if ((sparse_ && sparse_->use_nope) || bounded) q_nope = q;  // un-rotated: stage 1, bounded memory
    for (size_t i = 0; i < items.size(); ++i) {
      const Plan& pl = plans[i];
      Sequence& seq = *items[i].seq;
      for (int64_t t = 0; t < pl.n; ++t) {
        const int64_t row = pl.row0 + t;
        for (int64_t hh = 0; hh < heads; ++hh) pl.table->apply(pl.pos0 + t - pl.rope_offset, q.data() + (row * heads + hh) * d);
        for (int hk = 0; hk < kv_heads; ++hk) {
          // Keys are stored un-rotated; attention rotates them as it loads them.
          float* k_dst = store_->k_row(seq.id_, int(l), pl.pos0 + t, hk);
          float* v_dst = store_->v_row(seq.id_, int(l), pl.pos0 + t, hk);
          if (!k_dst || !v_dst) return internal_error("KV row of token ", pl.pos0 + t, " is not reserved");
          std::memcpy(k_dst, k.data() + (row * kv_heads + hk) * d, d * sizeof(float));
          std::memcpy(v_dst, v.data() + (row * kv_heads + hk) * d, d * sizeof(float));
        }
      }
      const float* qi = q.data() + pl.row0 * heads * d;
      const float* qn = q_nope.empty() ? nullptr : q_nope.data() + pl.row0 * heads * d;
      float* out = attn.data() + pl.row0 * heads * d;
      Status attended = bounded ? attend_bounded(seq, int(l), qi, qn, pl.q_index, *pl.table, pl.rope_offset, out)
                                : attend(seq, int(l), qi, qn, pl.q_index, *pl.table, out);
      store_->release_all();  // this layer's blocks may be evicted for the next one's
      MNEMO_RETURN_IF_ERROR(attended);
    }
    cpu::linear(attn.data(), w.o_proj.data<float>(), ptr(w.o_bias), o.data(), n, heads * d, hidden);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += o[i] * res_scale;

    cpu::rms_norm(x.data(), w.post_attention_norm.data<float>(), h.data(), n, hidden, eps);
    cpu::linear(h.data(), w.gate_proj.data<float>(), ptr(w.gate_bias), gate.data(), n, hidden, inter);
    cpu::linear(h.data(), w.up_proj.data<float>(), ptr(w.up_bias), up.data(), n, hidden, inter);
    cpu::silu_mul(gate.data(), up.data(), n, inter);
    cpu::linear(gate.data(), w.down_proj.data<float>(), ptr(w.down_bias), o.data(), n, inter, hidden);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += o[i] * res_scale;
  }

  // Only the rows whose logits are wanted go through the final norm and lm_head.
  std::vector<int64_t> rows;
  for (size_t i = 0; i < items.size(); ++i) {
    for (int64_t t = items[i].all_logits ? 0 : plans[i].n - 1; t < plans[i].n; ++t) rows.push_back(plans[i].row0 + t);
  }
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  std::vector<float> sel(num_rows * hidden), logits(num_rows * vocab);
  for (int64_t r = 0; r < num_rows; ++r) {
    cpu::rms_norm(x.data() + rows[r] * hidden, weights_.final_norm.data<float>(), sel.data() + r * hidden, 1, hidden, eps);
  }
  const double divisor = c.logit_divisor();
  if (divisor != 1.0) {
    const float inv = static_cast<float>(divisor);
    for (float& f : sel) f /= inv;
  }
  cpu::linear(sel.data(), weights_.lm_head.data<float>(), nullptr, logits.data(), num_rows, hidden, vocab);
  int64_t r = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t count = items[i].all_logits ? plans[i].n : 1;
    std::memcpy(items[i].logits, logits.data() + r * vocab, static_cast<size_t>(count * vocab) * sizeof(float));
    r += count;
  }
  for (size_t i = 0; i < items.size(); ++i) {
    MNEMO_RETURN_IF_ERROR(store_->commit(items[i].seq->id_, plans[i].pos0 + plans[i].n));
    items[i].seq->length_ = plans[i].pos0 + plans[i].n;
  }
  return Status::Ok();
}

Status LlamaModel::fill_synthetic_kv(Sequence& seq, int64_t tokens, uint64_t seed) {
  if (tokens < 0) return invalid_argument("fill_synthetic_kv: tokens: expected >= 0, got ", tokens);
  if (cuda_) return fill_synthetic_kv_cuda(seq, tokens, seed);
  const int64_t kv_heads = config_.num_key_value_heads, d = config_.head_dim;
  for (int64_t done = 0; done < tokens;) {
    const int64_t pos0 = seq.length_, m = std::min(options_.chunk_tokens, tokens - done);
    const int64_t new_len = pos0 + m;
    MNEMO_RETURN_IF_ERROR(store_->reserve(seq.id_, new_len));
    std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(pos0) * 0x9e3779b97f4a7c15ull));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      for (int64_t t = pos0; t < new_len; ++t) {
        for (int64_t h = 0; h < kv_heads; ++h) {
          float* k = store_->k_row(seq.id_, int(l), t, int(h));
          float* v = store_->v_row(seq.id_, int(l), t, int(h));
          if (!k || !v) return internal_error("fill_synthetic_kv: KV row of token ", t, " is not reserved");
          for (int64_t e = 0; e < d; ++e) k[e] = normal(rng), v[e] = normal(rng);
        }
      }
    }
    Status s = Status::Ok();
    if (sparse_) {
      MNEMO_ASSIGN_OR_RETURN(Rope rope, make_rope(config_, new_len));
      RopeTable table(std::move(rope));
      table.ensure(new_len);
      for (int64_t l = 0; l < config_.num_hidden_layers && s.ok(); ++l) s = update_representatives(seq, int(l), new_len, table);
    }
    if (s.ok()) s = store_->commit(seq.id_, new_len);
    if (!s.ok()) {
      store_->release_all();
      store_->reserve(seq.id_, seq.length_).permit_unchecked();
      return s;
    }
    seq.length_ = new_len;
    done += m;
  }
  return Status::Ok();
}

#ifndef MNEMO_WITH_CUDA
// CPU builds: from_weights refuses a CUDA device before any of these is reached.
Result<std::unique_ptr<LlamaModel::CudaState>> LlamaModel::make_cuda_state(const ModelConfig&, const ModelWeights&,
                                                                          Device device) {
  return invalid_argument("device ", device.to_string(), ": this build has no CUDA backend");
}
void* LlamaModel::cuda_stream_of(CudaState&) { return nullptr; }
Result<std::shared_ptr<void>> LlamaModel::clone_cuda_repr(const Sequence&) { return std::shared_ptr<void>(); }
Status LlamaModel::forward_chunks_cuda(std::span<ChunkItem>) { return invalid_argument("this build has no CUDA backend"); }
Status LlamaModel::forward_chunks_cuda_step(std::span<ChunkItem>) {
  return invalid_argument("this build has no CUDA backend");
}
Status LlamaModel::fill_synthetic_kv_cuda(Sequence&, int64_t, uint64_t) {
  return invalid_argument("this build has no CUDA backend");
}
#endif

}  // namespace mnemo

