// CPU timing of one attention layer, dense vs InfLLM-V2 sparse (stage 1 + top-k + stage 2), at long
// contexts. The CPU path is the reference, not the product: this shows where its time goes and what
// selection saves, and is the baseline the CUDA kernels' speedups are quoted against.
//
// Usage: attention_sparse_cpu_bench [--lengths 16384,65536] [--heads 32] [--kv-heads 2] [--head-dim 128]
//                                   [--chunk 64] [--reps 3] [--json sparse_cpu_bench.json]
// Per length: a decode token (1 query at the end) and a prefill chunk (--chunk queries at the end).
// Median of --reps after one warm-up; a 64 MiB buffer is swept between repetitions to flush caches.
// Compression (both tiers over the whole context) is timed once: the engine pays it per sealed block.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attention/compress.h"
#include "attention/dense.h"
#include "attention/select.h"
#include "attention/sparse.h"

namespace {

using namespace mnemo;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int64_t> lengths = {16384, 65536};
  int heads = 32, kv_heads = 2, head_dim = 128, chunk = 64, reps = 3;
  std::string json = "sparse_cpu_bench.json";
};

void flush_caches() {
  static std::vector<char> sweep(64 << 20);
  for (size_t i = 0; i < sweep.size(); i += 64) sweep[i] = char(sweep[i] + 1);
}

template <typename F>
double median_ms(int reps, F&& f) {
  f();  // warm-up
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    flush_caches();
    const auto t0 = Clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void check(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.to_string().c_str());
    std::exit(1);
  }
}

struct Row {
  int64_t kv_len, num_q;
  double compress_ms, stage1_ms, topk_ms, stage2_ms, sparse_ms, dense_ms;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--lengths") {
      o.lengths.clear();
      std::stringstream ss(v);
      for (std::string x; std::getline(ss, x, ',');) o.lengths.push_back(std::stoll(x));
    } else if (k == "--heads") o.heads = std::stoi(v);
    else if (k == "--kv-heads") o.kv_heads = std::stoi(v);
    else if (k == "--head-dim") o.head_dim = std::stoi(v);
    else if (k == "--chunk") o.chunk = std::stoi(v);
    else if (k == "--reps") o.reps = std::stoi(v);
    else if (k == "--json") o.json = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const SparseParams sp;  // MiniCPM4 defaults: budget 96 blocks
  const int d = o.head_dim;
  const float scale = 1.0f / std::sqrt(float(d));
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Rope rope;
  for (int i = 0; i < d / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
  std::vector<Row> rows;
  std::printf("one layer, %d heads / %d kv heads, head_dim %d, fp32 CPU, median of %d\n", o.heads, o.kv_heads, d, o.reps);
  std::printf("%8s %6s %12s %10s %8s %10s %11s %10s %8s\n", "kv_len", "num_q", "compress_ms", "stage1_ms", "topk_ms",
              "stage2_ms", "sparse_ms", "dense_ms", "speedup");
  for (int64_t kv_len : o.lengths) {
    PagedKv kv;
    kv.num_kv_heads = o.kv_heads;
    kv.block_tokens = sp.block_size;
    kv.head_dim = d;
    kv.num_blocks = (kv_len + sp.block_size - 1) / sp.block_size;
    kv.kv_len = kv_len;
    std::vector<float> arena(kv.num_blocks * kv.slot_floats());
    for (float& x : arena) x = nd(rng);
    std::vector<int32_t> table(kv.num_blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    kv.arena = arena.data();
    kv.block_table = table.data();
    RopeTable rope_table(rope);
    rope_table.ensure(kv_len);

    CompressedKeys tier1, tier2;
    const double compress_ms = median_ms(1, [&] {
      tier1 = CompressedKeys(o.kv_heads, d, sp.kernel_size, sp.kernel_stride);
      tier2 = CompressedKeys(o.kv_heads, d, lse_kernel_size(sp), lse_kernel_stride(sp));
      check(tier1.append_block(kv, kv_len, &rope_table));
      check(tier2.append_block(kv, kv_len, &rope_table));
    });
    for (int64_t nq : {int64_t{1}, int64_t{o.chunk}}) {
      std::vector<float> q(nq * o.heads * d), out(q.size());
      for (float& x : q) x = nd(rng);
      std::vector<int64_t> q_index(nq);
      for (int64_t i = 0; i < nq; ++i) q_index[i] = kv_len - nq + i;
      const int max_sel = max_selected_blocks(sp);
      std::vector<float> scores(nq * o.kv_heads * kv.num_blocks);
      std::vector<int32_t> ids(nq * o.kv_heads * max_sel);
      BlockScoreParams s;
      s.q = q.data();
      s.q_index = q_index.data();
      s.num_q = nq;
      s.num_heads = o.heads;
      s.keys = tier1.view();
      s.lse_keys = tier2.view();
      s.block_size = sp.block_size;
      s.num_blocks = kv.num_blocks;
      s.softmax_scale = scale;
      s.block_scores = scores.data();
      BlockTopkParams t;
      t.block_scores = scores.data();
      t.q_index = q_index.data();
      t.num_q = nq;
      t.num_kv_heads = o.kv_heads;
      t.num_blocks = kv.num_blocks;
      t.sparse = sp;
      t.max_selected = max_sel;
      t.block_ids = ids.data();
      SparseAttentionParams a;
      a.q = q.data();
      a.q_index = q_index.data();
      a.num_q = nq;
      a.num_heads = o.heads;
      a.kv = kv;
      a.key_rope = &rope_table;
      a.softmax_scale = scale;
      a.block_ids = ids.data();
      a.max_selected = max_sel;
      a.out = out.data();
      DenseAttentionParams dp;
      dp.q = q.data();
      dp.q_index = q_index.data();
      dp.num_q = nq;
      dp.num_heads = o.heads;
      dp.kv = kv;
      dp.key_rope = &rope_table;
      dp.softmax_scale = scale;
      dp.out = out.data();
      Row r{kv_len, nq, compress_ms, 0, 0, 0, 0, 0};
      r.stage1_ms = median_ms(o.reps, [&] { check(block_scores_cpu(s)); });
      r.topk_ms = median_ms(o.reps, [&] { check(select_topk_cpu(t)); });
      r.stage2_ms = median_ms(o.reps, [&] { check(sparse_attention_cpu(a)); });
      r.sparse_ms = median_ms(o.reps, [&] {
        check(block_scores_cpu(s));
        check(select_topk_cpu(t));
        check(sparse_attention_cpu(a));
      });
      r.dense_ms = median_ms(o.reps, [&] { check(dense_attention_cpu(dp)); });
      std::printf("%8lld %6lld %12.1f %10.2f %8.2f %10.2f %11.2f %10.2f %7.1fx\n", (long long)kv_len, (long long)nq,
                  r.compress_ms, r.stage1_ms, r.topk_ms, r.stage2_ms, r.sparse_ms, r.dense_ms, r.dense_ms / r.sparse_ms);
      std::fflush(stdout);
      rows.push_back(r);
    }
  }
  if (FILE* f = std::fopen(o.json.c_str(), "w")) {
    std::fprintf(f, "{\"bench\": \"attention_sparse_cpu\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
                    "\"budget_blocks\": %d, \"reps\": %d, \"rows\": [",
                 o.heads, o.kv_heads, d, block_budget(sp), o.reps);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f, "%s\n  {\"kv_len\": %lld, \"num_q\": %lld, \"compress_ms\": %.3f, \"stage1_ms\": %.3f, "
                      "\"topk_ms\": %.3f, \"stage2_ms\": %.3f, \"sparse_ms\": %.3f, \"dense_ms\": %.3f}",
                   i ? "," : "", (long long)r.kv_len, (long long)r.num_q, r.compress_ms, r.stage1_ms, r.topk_ms,
                   r.stage2_ms, r.sparse_ms, r.dense_ms);
    }
    std::fprintf(f, "\n]}\n");
    std::fclose(f);
    std::printf("wrote %s\n", o.json.c_str());
  }
  return 0;
}
