// One layer's attention over the tiered KV store: the blocks a step needs are acquired (pinned in GPU
// slots, loaded from host or disk on a miss), attention reads them through a block table, and the
// caller releases them after the layer. Dense before the sparse switch; InfLLM-V2 after it.
#include <algorithm>
#include <cmath>

#include "attention/dense.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "attention/sparse_params.h"
#include "model/llama.h"

namespace mnemo {

Status LlamaModel::update_representatives(Sequence& seq, int layer, int64_t tokens, const RopeTable& table) {
  const SparseParams sp = to_sparse_params(*sparse_);
  const int64_t bt = options_.block_tokens;
  if (seq.compressed_.empty()) {
    const int kv_heads = int(config_.num_key_value_heads), d = int(config_.head_dim);
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      seq.compressed_.emplace_back(kv_heads, d, sp.kernel_size, sp.kernel_stride);
      if (options_.approximate_selection_lse) {
        seq.compressed_lse_.emplace_back(kv_heads, d, lse_kernel_size(sp), lse_kernel_stride(sp));
      }
    }
  }
  // Un-rotated representatives with use_nope, and always under the bounded policy (no absolute positions).
  const RopeTable* rope = sp.use_nope || options_.positions == PositionPolicy::kBounded ? nullptr : &table;
  std::vector<CompressedKeys*> tiers = {&seq.compressed_[layer]};
  if (options_.approximate_selection_lse) tiers.push_back(&seq.compressed_lse_[layer]);
  // Catch up in groups of blocks so a long recovered stream never needs all its blocks at once.
  constexpr int64_t kGroupBlocks = 16;
  while (true) {
    int64_t done = tokens;
    for (CompressedKeys* ck : tiers) done = std::min(done, ck->num_tokens());
    if (done >= tokens) return Status::Ok();
    const int64_t kernel = std::max(sp.kernel_size, lse_kernel_size(sp));
    const int64_t first_block = std::max<int64_t>(0, done - kernel) / bt;
    const int64_t upto = std::min(tokens, (first_block + kGroupBlocks) * bt);
    std::vector<int64_t> ids;
    for (int64_t b = first_block; b * bt < upto; ++b) ids.push_back(b);
    std::vector<int32_t> slots;
    MNEMO_RETURN_IF_ERROR(store_->acquire(seq.id_, layer, ids, &slots));
    std::vector<int32_t> table_slots(static_cast<size_t>((upto + bt - 1) / bt), -1);
    for (size_t i = 0; i < ids.size(); ++i) table_slots[ids[i]] = slots[i];
    PagedKv kv;
    kv.arena = store_->gpu_arena();
    kv.num_kv_heads = int(config_.num_key_value_heads);
    kv.block_tokens = int(bt);
    kv.head_dim = int(config_.head_dim);
    kv.block_table = table_slots.data();
    kv.num_blocks = static_cast<int64_t>(table_slots.size());
    kv.kv_len = upto;
    for (CompressedKeys* ck : tiers) {
      if (ck->num_tokens() < upto) MNEMO_RETURN_IF_ERROR(ck->append_block(kv, upto, rope));
    }
    store_->release_all();
  }
}

Status LlamaModel::select_blocks(Sequence& seq, int layer, const float* q_score, const int64_t* q_index, int64_t m,
                                 int64_t num_blocks, std::vector<int32_t>* block_ids) {
  const SparseParams sp = to_sparse_params(*sparse_);
  const int max_selected = max_selected_blocks(sp);
  block_ids->assign(static_cast<size_t>(m * config_.num_key_value_heads * max_selected), -1);
  BlockSelectParams sel;
  sel.score.q = q_score;
  sel.score.q_index = q_index;
  sel.score.num_q = m;
  sel.score.num_heads = int(config_.num_attention_heads);
  sel.score.keys = seq.compressed_[layer].view();
  if (options_.approximate_selection_lse) sel.score.lse_keys = seq.compressed_lse_[layer].view();
  sel.score.block_size = sp.block_size;
  sel.score.num_blocks = num_blocks;
  sel.score.softmax_scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  sel.sparse = sp;
  sel.max_selected = max_selected;
  sel.block_ids = block_ids->data();
  return select_blocks_cpu(sel);
}

Status LlamaModel::attend(Sequence& seq, int layer, const float* q, const float* q_nope,
                          const std::vector<int64_t>& q_index, const RopeTable& table, float* out) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(q_index.size());
  const int64_t kv_len = q_index.back() + 1;
  const int64_t bt = options_.block_tokens;
  const int64_t num_blocks = (kv_len + bt - 1) / bt;
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int64_t heads = c.num_attention_heads, d = c.head_dim;
  const int kv_heads = int(c.num_key_value_heads);

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
    MNEMO_RETURN_IF_ERROR(update_representatives(seq, layer, kv_len, table));
  }

  // Stage 1 + top-k for the sparse queries: which blocks they need.
  const int64_t m = n - first_sparse;
  const int max_selected = sparse_ ? max_selected_blocks(sp) : 0;
  std::vector<int32_t> block_ids(static_cast<size_t>(m * kv_heads * max_selected));
  std::vector<char> needed(static_cast<size_t>(num_blocks), 0);
  if (first_sparse > 0) {
    const int64_t dense_len = q_index[first_sparse - 1] + 1;
    // The chunk's first query sees the oldest keys: its window starts at q_index[0] - window + 1.
    const int64_t from = c.sliding_window > 0 ? std::max<int64_t>(0, q_index[0] - c.sliding_window + 1) / bt : 0;
    for (int64_t b = from; b * bt < dense_len; ++b) needed[b] = 1;
  }
  if (m > 0) {
    MNEMO_RETURN_IF_ERROR(select_blocks(seq, layer, (q_nope ? q_nope : q) + first_sparse * heads * d,
                                        q_index.data() + first_sparse, m, num_blocks, &block_ids));
    for (int32_t b : block_ids) {
      if (b >= 0) needed[b] = 1;
    }
  }

  // Make exactly those blocks resident (hits stay; misses come from host or disk) and build the
  // block table; blocks nobody reads stay where they are (-1).
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (needed[b]) ids.push_back(b);
  }
  std::vector<int32_t> slots;
  MNEMO_RETURN_IF_ERROR(store_->acquire(seq.id_, layer, ids, &slots));
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks), -1);
  for (size_t i = 0; i < ids.size(); ++i) block_table[ids[i]] = slots[i];
  PagedKv kv;
  kv.arena = store_->gpu_arena();
  kv.num_kv_heads = kv_heads;
  kv.block_tokens = int(bt);
  kv.head_dim = int(d);
  kv.block_table = block_table.data();
  kv.num_blocks = num_blocks;
  kv.kv_len = kv_len;

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
  if (m == 0) return Status::Ok();
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
