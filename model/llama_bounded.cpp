// The bounded position policy (InfLLM): attention as two partials joined by their log-sum-exp.
//
//   local  : keys j in (t - W, t], rotated at j - off; the query rotated at t - off (true distances)
//   memory : keys j <= t - W — all of them (dense) or those of the selected blocks (sparse) — left
//            un-rotated, the query rotated at W: every memory key sits at distance W from the query
// With RoPE only relative positions matter, so off (the window's block-aligned start) keeps the
// rotation table at the size of the window however long the stream. Stage 1 of sparse selection
// scores un-rotated queries against un-rotated representatives (nothing absolute survives).
#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/dense.h"
#include "attention/merge.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "model/llama.h"

namespace mnemo {

int64_t LlamaModel::bounded_window() const {
  if (options_.bounded_window > 0) return options_.bounded_window;
  if (sparse_) return sparse_->window_size;
  return std::max<int64_t>(options_.block_tokens, config_.max_position_embeddings / 2);
}

Status LlamaModel::attend_bounded(Sequence& seq, int layer, const float* q_local, const float* q_raw,
                                  const std::vector<int64_t>& q_index, const RopeTable& table, int64_t rope_offset,
                                  float* out) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(q_index.size());
  const int64_t kv_len = q_index.back() + 1;
  const int64_t bt = options_.block_tokens;
  const int64_t num_blocks = (kv_len + bt - 1) / bt;
  const int64_t heads = c.num_attention_heads, d = c.head_dim;
  const int kv_heads = int(c.num_key_value_heads);
  const int64_t window = bounded_window();
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Queries with a memory partial: t >= W (older ones see every key inside their window).
  int64_t first_mem = n;
  for (int64_t i = 0; i < n; ++i) {
    if (q_index[i] >= window) {
      first_mem = i;
      break;
    }
  }
  const int64_t m = n - first_mem;
  std::vector<int64_t> mem_index(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) mem_index[i] = q_index[first_mem + i] - window;  // causal bound t - W

  // Memory blocks: all of them (dense), or the sparse selection filtered to the memory range.
  SparseParams sp;
  bool sparse_memory = false;
  int max_selected = 0;
  std::vector<int32_t> block_ids;
  if (sparse_) {
    sp = to_sparse_params(*sparse_);
    MNEMO_RETURN_IF_ERROR(update_representatives(seq, layer, kv_len, table));
    sparse_memory = m > 0 && use_sparse(q_index[first_mem] + 1, sp);
  }
  if (sparse_memory) {
    max_selected = max_selected_blocks(sp);
    MNEMO_RETURN_IF_ERROR(
        select_blocks(seq, layer, q_raw + first_mem * heads * d, q_index.data() + first_mem, m, num_blocks, &block_ids));
    // Keep the blocks that start in the memory range (the local partial covers the rest), in order.
    for (int64_t i = 0; i < m; ++i) {
      const int64_t last_block = mem_index[i] / bt;
      for (int g = 0; g < kv_heads; ++g) {
        int32_t* row = block_ids.data() + (i * kv_heads + g) * max_selected;
        int k = 0;
        for (int j = 0; j < max_selected; ++j) {
          if (row[j] >= 0 && row[j] <= last_block) row[k++] = row[j];
        }
        std::fill(row + k, row + max_selected, -1);
      }
    }
  }

  // Pins the blocks marked in `want` and returns a block table over them (-1 elsewhere).
  auto pin = [&](const std::vector<char>& want, std::vector<int32_t>* table, PagedKv* kv) -> Status {
    std::vector<int64_t> ids;
    for (int64_t b = 0; b < num_blocks; ++b) {
      if (want[b]) ids.push_back(b);
    }
    std::vector<int32_t> slots;
    MNEMO_RETURN_IF_ERROR(store_->acquire(seq.id_, layer, ids, &slots));
    table->assign(static_cast<size_t>(num_blocks), -1);
    for (size_t i = 0; i < ids.size(); ++i) (*table)[ids[i]] = slots[i];
    kv->arena = store_->gpu_arena();
    kv->num_kv_heads = kv_heads;
    kv->block_tokens = int(bt);
    kv->head_dim = int(d);
    kv->block_table = table->data();
    kv->num_blocks = num_blocks;
    kv->kv_len = kv_len;
    return Status::Ok();
  };

  // Local partial: every query, keys within its window, true relative distances.
  std::vector<float> local_lse(static_cast<size_t>(n * heads));
  {
    std::vector<char> want(static_cast<size_t>(num_blocks), 0);
    for (int64_t b = std::max<int64_t>(0, q_index[0] - window + 1) / bt; b < num_blocks; ++b) want[b] = 1;
    std::vector<int32_t> table_slots;
    DenseAttentionParams local;
    MNEMO_RETURN_IF_ERROR(pin(want, &table_slots, &local.kv));
    local.q = q_local;
    local.q_index = q_index.data();
    local.num_q = n;
    local.num_heads = int(heads);
    local.key_rope = &table;
    local.rope_offset = rope_offset;
    local.softmax_scale = softmax_scale;
    local.sliding_window = window;
    local.out = out;
    local.lse = local_lse.data();
    Status st = dense_attention_cpu(local);
    store_->release_all();
    MNEMO_RETURN_IF_ERROR(st);
  }
  if (m == 0) return Status::Ok();

  // Memory partial: un-rotated keys, the query rotated at distance W. Sparse memory runs in groups
  // of queries whose selected blocks fit the GPU tier together (halving the group when they do not);
  // results do not depend on the grouping.
  std::vector<float> q_mem(q_raw + first_mem * heads * d, q_raw + n * heads * d);
  for (int64_t i = 0; i < m * heads; ++i) table.apply(window, q_mem.data() + i * d);
  std::vector<float> mem_out(static_cast<size_t>(m * heads * d)), mem_lse(static_cast<size_t>(m * heads));
  int64_t group = m;
  for (int64_t i0 = 0; i0 < m;) {
    const int64_t i1 = std::min(m, i0 + group);
    std::vector<char> want(static_cast<size_t>(num_blocks), 0);
    if (sparse_memory) {
      for (int64_t k = i0 * kv_heads * max_selected; k < i1 * kv_heads * max_selected; ++k) {
        if (block_ids[k] >= 0) want[block_ids[k]] = 1;
      }
    } else {
      for (int64_t b = 0; b <= mem_index[i1 - 1] / bt; ++b) want[b] = 1;
    }
    std::vector<int32_t> table_slots;
    PagedKv kv;
    Status pinned = pin(want, &table_slots, &kv);
    if (!pinned.ok()) {
      if (pinned.code() == StatusCode::kOutOfBudget && group > 1) {
        group = (group + 1) / 2;
        continue;
      }
      return pinned;
    }
    Status st;
    if (sparse_memory) {
      SparseAttentionParams p;
      p.q = q_mem.data() + i0 * heads * d;
      p.q_index = mem_index.data() + i0;
      p.num_q = i1 - i0;
      p.num_heads = int(heads);
      p.kv = kv;
      p.softmax_scale = softmax_scale;
      p.block_ids = block_ids.data() + i0 * kv_heads * max_selected;
      p.max_selected = max_selected;
      p.out = mem_out.data() + i0 * heads * d;
      p.lse = mem_lse.data() + i0 * heads;
      st = sparse_attention_cpu(p);
    } else {
      DenseAttentionParams p;
      p.q = q_mem.data() + i0 * heads * d;
      p.q_index = mem_index.data() + i0;
      p.num_q = i1 - i0;
      p.num_heads = int(heads);
      p.kv = kv;
      p.kv.kv_len = mem_index[i1 - 1] + 1;
      p.softmax_scale = softmax_scale;
      p.out = mem_out.data() + i0 * heads * d;
      p.lse = mem_lse.data() + i0 * heads;
      st = dense_attention_cpu(p);
    }
    store_->release_all();
    MNEMO_RETURN_IF_ERROR(st);
    i0 = i1;
  }
  AttentionMergeParams merge;
  merge.out_a = out + first_mem * heads * d;
  merge.lse_a = local_lse.data() + first_mem * heads;
  merge.out_b = mem_out.data();
  merge.lse_b = mem_lse.data();
  merge.num_rows = m * heads;
  merge.head_dim = int(d);
  merge.out = out + first_mem * heads * d;
  return merge_attention_cpu(merge);
}

}  // namespace mnemo
