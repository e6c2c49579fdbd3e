#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/dense.h"
#include "attention/rope.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "attention/sparse_params.h"
#include "model/ops.h"
#include "model/rope_scaling.h"

namespace mnemo {

namespace {

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

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, ModelOptions options,
                       std::unique_ptr<KvArena> arena)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options), arena_(std::move(arena)) {
  sparse_ = options_.sparse ? options_.sparse : config_.sparse;
}

LlamaModel::~LlamaModel() = default;

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(const std::string& model_dir, const ModelOptions& options) {
  MNEMO_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(model_dir));
  MNEMO_ASSIGN_OR_RETURN(ModelWeights weights, load_model_weights(model_dir, config));
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
  KvLayout layout;
  layout.num_layers = static_cast<int>(config.num_hidden_layers);
  layout.num_kv_heads = static_cast<int>(config.num_key_value_heads);
  layout.block_tokens = options.block_tokens;
  layout.head_dim = static_cast<int>(config.head_dim);
  MNEMO_ASSIGN_OR_RETURN(auto arena,
                         KvArena::create(layout, KvArena::slots_for_tokens(layout, options.kv_budget_tokens)));
  return std::unique_ptr<LlamaModel>(
      new LlamaModel(std::move(config), std::move(weights), options, std::move(arena)));
}

Result<std::unique_ptr<Sequence>> LlamaModel::new_sequence() {
  return std::unique_ptr<Sequence>(new Sequence(arena_.get()));
}

Result<std::unique_ptr<Sequence>> LlamaModel::fork_sequence(const Sequence& parent) {
  auto child = std::unique_ptr<Sequence>(new Sequence(arena_.get()));
  MNEMO_RETURN_IF_ERROR(child->kv_.copy_from(parent.kv_));
  child->compressed_ = parent.compressed_;
  child->compressed_lse_ = parent.compressed_lse_;
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
      seq.kv_.set_length(start_len);
      return s;
    }
  }
  return Status::Ok();
}

Status LlamaModel::forward_chunk(Sequence& seq, std::span<const int32_t> tokens, float* logits, bool all_logits) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t pos0 = seq.length();
  const int64_t new_len = pos0 + n;
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t d = c.head_dim, inter = c.intermediate_size, vocab = c.vocab_size;
  MNEMO_RETURN_IF_ERROR(seq.kv_.reserve(new_len));

  MNEMO_ASSIGN_OR_RETURN(Rope rope, make_rope(c, new_len));
  RopeTable table(std::move(rope));
  table.ensure(new_len);

  std::vector<float> x(n * hidden), h(n * hidden), q(n * heads * d), k(n * kv_heads * d), v(n * kv_heads * d);
  std::vector<float> attn(n * heads * d), o(n * hidden), gate(n * inter), up(n * inter), q_nope;
  std::vector<int64_t> q_index(n);
  for (int64_t t = 0; t < n; ++t) q_index[t] = pos0 + t;
  const float emb_scale = static_cast<float>(c.scale_emb);
  const float res_scale = static_cast<float>(c.residual_scale());
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int64_t t = 0; t < n; ++t) {
    const float* e = weights_.embed_tokens.data<float>() + int64_t{tokens[t]} * hidden;
    for (int64_t i = 0; i < hidden; ++i) x[t * hidden + i] = e[i] * emb_scale;
  }
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    cpu::rms_norm(x.data(), w.input_norm.data<float>(), h.data(), n, hidden, eps);
    cpu::linear(h.data(), w.q_proj.data<float>(), ptr(w.q_bias), q.data(), n, hidden, heads * d);
    cpu::linear(h.data(), w.k_proj.data<float>(), ptr(w.k_bias), k.data(), n, hidden, kv_heads * d);
    cpu::linear(h.data(), w.v_proj.data<float>(), ptr(w.v_bias), v.data(), n, hidden, kv_heads * d);
    if (sparse_ && sparse_->use_nope) q_nope = q;  // stage 1 scores un-rotated queries
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t hh = 0; hh < heads; ++hh) table.apply(pos0 + t, q.data() + (t * heads + hh) * d);
      for (int hk = 0; hk < kv_heads; ++hk) {
        // Keys are stored un-rotated; attention rotates them as it loads them.
        std::memcpy(seq.kv_.k_row(int(l), pos0 + t, hk), k.data() + (t * kv_heads + hk) * d, d * sizeof(float));
        std::memcpy(seq.kv_.v_row(int(l), pos0 + t, hk), v.data() + (t * kv_heads + hk) * d, d * sizeof(float));
      }
    }
    MNEMO_RETURN_IF_ERROR(attend(seq, int(l), q.data(), q_nope.empty() ? nullptr : q_nope.data(), q_index, table,
                                 attn.data()));
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
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  cpu::rms_norm(x.data() + first * hidden, weights_.final_norm.data<float>(), h.data(), rows, hidden, eps);
  const double divisor = c.logit_divisor();
  if (divisor != 1.0) {
    const float inv = static_cast<float>(divisor);
    for (int64_t i = 0; i < rows * hidden; ++i) h[i] /= inv;
  }
  cpu::linear(h.data(), weights_.lm_head.data<float>(), nullptr, logits, rows, hidden, vocab);
  seq.kv_.set_length(new_len);
  return Status::Ok();
}

}  // namespace mnemo

namespace mnemo {

Status LlamaModel::attend(Sequence& seq, int layer, const float* q, const float* q_nope,
                          const std::vector<int64_t>& q_index, const RopeTable& table, float* out) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(q_index.size());
  const int64_t kv_len = q_index.back() + 1;
  const std::vector<int32_t>& blocks = seq.kv_.block_table(layer);
  PagedKv kv;
  kv.arena = arena_->data();
  kv.num_kv_heads = int(c.num_key_value_heads);
  kv.block_tokens = arena_->layout().block_tokens;
  kv.head_dim = int(c.head_dim);
  kv.block_table = blocks.data();
  kv.num_blocks = static_cast<int64_t>(blocks.size());
  kv.kv_len = kv_len;
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  // Queries before the dense/sparse switch run dense; decided per query so chunking never matters.
  int64_t first_sparse = n;
  SparseParams sp;
  if (sparse_) {
    sp = to_sparse_params(*sparse_);
    for (int64_t i = 0; i < n; ++i) {
      if (use_sparse(q_index[i] + 1, sp)) {
        first_sparse = i;
        break;
      }
    }
    // Representatives grow with the stream whether or not this chunk needs them yet.
    if (seq.compressed_.empty()) {
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        seq.compressed_.emplace_back(kv.num_kv_heads, kv.head_dim, sp.kernel_size, sp.kernel_stride);
        if (options_.approximate_selection_lse) {
          seq.compressed_lse_.emplace_back(kv.num_kv_heads, kv.head_dim, lse_kernel_size(sp), lse_kernel_stride(sp));
        }
      }
    }
    const RopeTable* ck_rope = sp.use_nope ? nullptr : &table;
    MNEMO_RETURN_IF_ERROR(seq.compressed_[layer].append_block(kv, kv_len, ck_rope));
    if (options_.approximate_selection_lse) {
      MNEMO_RETURN_IF_ERROR(seq.compressed_lse_[layer].append_block(kv, kv_len, ck_rope));
    }
  }

  const int64_t heads = c.num_attention_heads, d = c.head_dim;
  if (first_sparse > 0) {
    DenseAttentionParams p;
    p.q = q;
    p.q_index = q_index.data();
    p.num_q = first_sparse;
    p.num_heads = int(heads);
    p.kv = kv;
    p.kv.kv_len = q_index[first_sparse - 1] + 1;
    p.key_rope = &table;
    p.softmax_scale = softmax_scale;
    p.sliding_window = c.sliding_window;
    p.out = out;
    MNEMO_RETURN_IF_ERROR(dense_attention_cpu(p));
  }
  if (first_sparse == n) return Status::Ok();

  // Stage 1 + top-k for the sparse queries, then stage 2 over exactly the chosen blocks.
  const int64_t m = n - first_sparse;
  const int max_selected = max_selected_blocks(sp);
  std::vector<int32_t> block_ids(static_cast<size_t>(m * kv.num_kv_heads * max_selected));
  BlockSelectParams sel;
  sel.score.q = (q_nope ? q_nope : q) + first_sparse * heads * d;
  sel.score.q_index = q_index.data() + first_sparse;
  sel.score.num_q = m;
  sel.score.num_heads = int(heads);
  sel.score.keys = seq.compressed_[layer].view();
  if (options_.approximate_selection_lse) sel.score.lse_keys = seq.compressed_lse_[layer].view();
  sel.score.block_size = sp.block_size;
  sel.score.num_blocks = kv.num_blocks;
  sel.score.softmax_scale = softmax_scale;
  sel.sparse = sp;
  sel.max_selected = max_selected;
  sel.block_ids = block_ids.data();
  MNEMO_RETURN_IF_ERROR(select_blocks_cpu(sel));

  SparseAttentionParams p;
  p.q = q + first_sparse * heads * d;
  p.q_index = q_index.data() + first_sparse;
  p.num_q = m;
  p.num_heads = int(heads);
  p.kv = kv;
  p.key_rope = &table;
  p.softmax_scale = softmax_scale;
  p.block_ids = block_ids.data();
  p.max_selected = max_selected;
  p.out = out + first_sparse * heads * d;
  return sparse_attention_cpu(p);
}

}  // namespace mnemo
