// Times mnemo's CUDA InfLLM-V2 path on MiniCPM4-8B shapes (32 query heads, 2 kv heads, head_dim 128,
// bf16, 64-token blocks in shuffled slots, topk 64, window 2048, init 1: 96 blocks per query) beside
// mnemo's dense kernels on the same KV:
//   prefill 32K and 128K: stage 1 (block scores) + top-k + stage 2 (sparse prefill), each and in total;
//   decode 32K, 128K and 1M: the same three steps for one query, each and in total.
// Compressed keys (tier 1 32/16 and tier 2 128/64, un-rotated keys) are computed on the host and
// uploaded as bf16. Queries of one 64-token block share a direction (base + 0.5 x noise), as a real
// model's neighbouring queries do, so neighbouring selections overlap; the measured overlap (blocks a
// 4-query prefill CTA loads, vs 96 per query) is reported. Checks against the CPU ops on sample rows:
// stage-1 scores (max rel err), selections (rows identical to the CPU's top-k of the CPU's scores) and
// stage-2 output (max abs err, rel L2). L2 flushed before every repetition; medians of CUDA events.
// --json PATH writes everything; --dump-ids DIR writes the prefill selections for the FlexAttention anchor.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention/cuda/dense.h"
#include "attention/cuda/select.h"
#include "attention/cuda/sparse.h"
#include "attention/select.h"
#include "attention/sparse.h"
#include "core/dtype.h"

namespace {

using mnemo::cuda::bf16;

#define CHECK_CUDA(call)                                                                          \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
#define CHECK_OK(expr)                                                                   \
  do {                                                                                   \
    const mnemo::Status s_ = (expr);                                                     \
    if (!s_.ok()) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.to_string().c_str()); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

constexpr int kHeads = 32, kKvHeads = 2, kHeadDim = 128, kBt = 64, kGroup = kHeads / kKvHeads;
constexpr size_t kFlushBytes = size_t{256} << 20;
const mnemo::SparseParams kSparse{};  // MiniCPM4 defaults
int g_sms = 132;

template <typename T>
T* upload(const std::vector<T>& host) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(16, host.size() * sizeof(T))));
  CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
template <typename T>
T* alloc(size_t n) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(16, n * sizeof(T))));
  return p;
}
template <typename T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> h(n);
  CHECK_CUDA(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Uniform in [-1, 1) from a counter (parallel-friendly).
inline float hash_uniform(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return float(x >> 40) / float(1 << 23) - 1.0f;
}

template <typename Fn>
double median_ms(int reps, void* flush, Fn&& fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaMemsetAsync(flush, r & 0xff, kFlushBytes));
    CHECK_CUDA(cudaEventRecord(start));
    fn();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// One sequence of `len` tokens: paged KV, rope table, compressed keys, on host and device.
struct Seq {
  int64_t len, blocks, n1, n2;
  std::vector<uint16_t> arena;  // [blocks, 2, Hkv, 64, D]
  std::vector<int32_t> table;
  std::vector<float> cos, sin, ck1_f, ck2_f;
  bf16 *d_arena, *d_ck1, *d_ck2;
  int32_t *d_table, *d_len;
  float *d_cos, *d_sin;
  std::vector<float> inv_freq;

  explicit Seq(int64_t n) : len(n) {
    blocks = (n + kBt - 1) / kBt;
    arena.resize(size_t(blocks) * 2 * kKvHeads * kBt * kHeadDim);
#pragma omp parallel for
    for (int64_t i = 0; i < int64_t(arena.size()); ++i) arena[i] = mnemo::float_to_bf16(hash_uniform(uint64_t(i) + (uint64_t(n) << 40)));
    table.resize(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(uint32_t(n)));
    for (int i = 0; i < kHeadDim / 2; ++i) inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / kHeadDim)));
    cos.resize(size_t(n) * kHeadDim / 2);
    sin.resize(cos.size());
#pragma omp parallel for
    for (int64_t p = 0; p < n; ++p) {
      for (int i = 0; i < kHeadDim / 2; ++i) {
        const double a = double(p) * inv_freq[i];
        cos[p * kHeadDim / 2 + i] = float(std::cos(a));
        sin[p * kHeadDim / 2 + i] = float(std::sin(a));
      }
    }
    n1 = mnemo::num_windows(n, kSparse.kernel_size, kSparse.kernel_stride);
    n2 = mnemo::num_windows(n, mnemo::lse_kernel_size(kSparse), mnemo::lse_kernel_stride(kSparse));
    ck1_f = compress(n1, kSparse.kernel_size, kSparse.kernel_stride);
    ck2_f = compress(n2, mnemo::lse_kernel_size(kSparse), mnemo::lse_kernel_stride(kSparse));
    d_arena = reinterpret_cast<bf16*>(upload(arena));
    d_table = upload(table);
    d_len = upload(std::vector<int32_t>{int32_t(n)});
    d_cos = upload(cos);
    d_sin = upload(sin);
    d_ck1 = reinterpret_cast<bf16*>(upload(to_bf16(ck1_f)));
    d_ck2 = reinterpret_cast<bf16*>(upload(to_bf16(ck2_f)));
  }
  ~Seq() {
    for (void* p : {(void*)d_arena, (void*)d_table, (void*)d_len, (void*)d_cos, (void*)d_sin, (void*)d_ck1, (void*)d_ck2}) {
      cudaFree(p);
    }
  }
  float key(int64_t j, int g, int e) const {
    const int64_t slot = table[j / kBt];
    return mnemo::bf16_to_float(arena[((slot * 2 * kKvHeads + g) * kBt + j % kBt) * kHeadDim + e]);
  }
  // Mean of kernel keys every stride tokens (un-rotated: use_nope), rounded through bf16 like the device table.
  std::vector<float> compress(int64_t n, int kernel, int stride) const {
    std::vector<float> out(size_t(kKvHeads) * n * kHeadDim);
#pragma omp parallel for collapse(2)
    for (int g = 0; g < kKvHeads; ++g) {
      for (int64_t w = 0; w < n; ++w) {
        for (int e = 0; e < kHeadDim; ++e) {
          float s = 0;
          for (int t = 0; t < kernel; ++t) s += key(w * stride + t, g, e);
          out[(g * n + w) * kHeadDim + e] = mnemo::bf16_to_float(mnemo::float_to_bf16(s / kernel));
        }
      }
    }
    return out;
  }
  static std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
    std::vector<uint16_t> b(f.size());
    for (size_t i = 0; i < f.size(); ++i) b[i] = mnemo::float_to_bf16(f[i]);
    return b;
  }
  mnemo::cuda::PagedKvBf16 kv() const { return {d_arena, kKvHeads, kBt, kHeadDim, d_table, int(blocks), d_len, len}; }
  mnemo::cuda::RopeTableView rope() const { return {d_cos, d_sin, len}; }
  mnemo::cuda::CompressedKeysBf16 keys1() const {
    return {d_ck1, n1 * kHeadDim, n1, kSparse.kernel_size, kSparse.kernel_stride};
  }
  mnemo::cuda::CompressedKeysBf16 keys2() const {
    return {d_ck2, n2 * kHeadDim, n2, mnemo::lse_kernel_size(kSparse), mnemo::lse_kernel_stride(kSparse)};
  }
};

// Queries at q_index: a direction per 64-token block plus half as much per-token noise, bf16 bits.
std::vector<uint16_t> make_queries(const std::vector<int32_t>& q_index) {
  std::vector<uint16_t> q(q_index.size() * kHeads * kHeadDim);
#pragma omp parallel for
  for (int64_t i = 0; i < int64_t(q_index.size()); ++i) {
    const uint64_t blk = uint64_t(q_index[i] / kBt);
    for (int e = 0; e < kHeads * kHeadDim; ++e) {
      const float v = 2.0f * hash_uniform((blk << 20) + e) + 1.0f * hash_uniform((uint64_t(q_index[i]) << 21) ^ (e + 7));
      q[i * kHeads * kHeadDim + e] = mnemo::float_to_bf16(v);
    }
  }
  return q;
}

struct Checks {
  double score_max_rel = 0, out_max_abs = 0, out_rel_l2 = 0;
  int rows = 0, rows_identical = 0;
  bool finite = true;
  std::string json() const {
    char b[320];
    std::snprintf(b, sizeof b,
                  "{\"rows\": %d, \"score_max_rel_err\": %.3g, \"selection_rows_identical\": %d, \"out_max_abs_err\": %.3g, "
                  "\"out_rel_l2_err\": %.3g, \"finite\": %s}",
                  rows, score_max_rel, rows_identical, out_max_abs, out_rel_l2, finite ? "true" : "false");
    return b;
  }
};

// CPU checks on sample query rows (indices into q_index): stage-1 scores, selection, stage-2 output.
Checks check_rows(const Seq& s, const std::vector<int32_t>& q_index, const std::vector<uint16_t>& q,
                  const std::vector<int64_t>& rows, const float* d_scores, const int32_t* d_ids, const bf16* d_out,
                  int max_sel) {
  Checks c;
  c.rows = int(rows.size());
  const int64_t nb = s.blocks;
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  double d2 = 0, r2 = 0;
  for (int64_t r : rows) {
    std::vector<float> qf(size_t(kHeads) * kHeadDim);
    for (size_t e = 0; e < qf.size(); ++e) qf[e] = mnemo::bf16_to_float(q[r * kHeads * kHeadDim + e]);
    const int64_t t = q_index[r];
    // Stage 1 on the CPU for this row.
    mnemo::BlockScoreParams bp;
    bp.q = qf.data();
    bp.q_index = &t;
    bp.num_q = 1;
    bp.num_heads = kHeads;
    bp.keys = {s.ck1_f.data(), s.n1 * kHeadDim, s.n1, kKvHeads, kHeadDim, kSparse.kernel_size, kSparse.kernel_stride};
    bp.lse_keys = {s.ck2_f.data(), s.n2 * kHeadDim, s.n2, kKvHeads, kHeadDim, mnemo::lse_kernel_size(kSparse),
                   mnemo::lse_kernel_stride(kSparse)};
    bp.block_size = kBt;
    bp.num_blocks = nb;
    bp.softmax_scale = scale;
    std::vector<float> cpu_scores(size_t(kKvHeads) * nb);
    bp.block_scores = cpu_scores.data();
    CHECK_OK(mnemo::block_scores_cpu(bp));
    const std::vector<float> gpu_scores = download(d_scores + r * kKvHeads * nb, size_t(kKvHeads) * nb);
    for (size_t i = 0; i < cpu_scores.size(); ++i) {
      if (!std::isfinite(gpu_scores[i])) c.finite = false;
      if (cpu_scores[i] != 0) c.score_max_rel = std::max(c.score_max_rel, double(std::fabs(gpu_scores[i] - cpu_scores[i]) / std::fabs(cpu_scores[i])));
    }
    mnemo::BlockTopkParams tp;
    tp.block_scores = cpu_scores.data();
    tp.q_index = &t;
    tp.num_q = 1;
    tp.num_kv_heads = kKvHeads;
    tp.num_blocks = nb;
    tp.sparse = kSparse;
    tp.max_selected = max_sel;
    std::vector<int32_t> cpu_ids(size_t(kKvHeads) * max_sel);
    tp.block_ids = cpu_ids.data();
    CHECK_OK(mnemo::select_topk_cpu(tp));
    const std::vector<int32_t> ids = download(d_ids + r * kKvHeads * max_sel, size_t(kKvHeads) * max_sel);
    if (ids == cpu_ids) ++c.rows_identical;
    // Stage 2 on the CPU with the GPU's selection, over a float arena of just the selected blocks.
    std::vector<int32_t> ctable(size_t(nb), 0);
    std::vector<int32_t> used;
    for (int32_t b : ids) {
      if (b >= 0 && std::find(used.begin(), used.end(), b) == used.end()) used.push_back(b);
    }
    const int64_t slot_floats = int64_t{2} * kKvHeads * kBt * kHeadDim;
    std::vector<float> arena_f(size_t(used.size() + 1) * slot_floats, 0.0f);
    for (size_t u = 0; u < used.size(); ++u) {
      ctable[used[u]] = int32_t(u + 1);
      const uint16_t* src = s.arena.data() + int64_t{s.table[used[u]]} * slot_floats;
      for (int64_t e = 0; e < slot_floats; ++e) arena_f[(u + 1) * slot_floats + e] = mnemo::bf16_to_float(src[e]);
    }
    mnemo::Rope rope;
    rope.inv_freq = s.inv_freq;
    mnemo::RopeTable table(rope);
    table.ensure(t + 1);
    mnemo::SparseAttentionParams sp;
    sp.q = qf.data();
    sp.q_index = &t;
    sp.num_q = 1;
    sp.num_heads = kHeads;
    sp.kv = {arena_f.data(), kKvHeads, kBt, kHeadDim, ctable.data(), nb, t + 1};
    sp.key_rope = &table;
    sp.softmax_scale = scale;
    sp.block_ids = ids.data();
    sp.max_selected = max_sel;
    std::vector<float> want(qf.size());
    sp.out = want.data();
    CHECK_OK(mnemo::sparse_attention_cpu(sp));
    const std::vector<uint16_t> got = download(reinterpret_cast<const uint16_t*>(d_out) + r * kHeads * kHeadDim, want.size());
    for (size_t e = 0; e < want.size(); ++e) {
      const double g = mnemo::bf16_to_float(got[e]), d = g - want[e];
      if (!std::isfinite(g)) c.finite = false;
      c.out_max_abs = std::max(c.out_max_abs, std::fabs(d));
      d2 += d * d;
      r2 += double(want[e]) * want[e];
    }
  }
  c.out_rel_l2 = std::sqrt(d2 / r2);
  return c;
}

// Stage 1 + top-k + stage 2 for the queries q_index of one sequence; decode (1 query) or prefill.
struct Pipeline {
  const Seq& s;
  std::vector<int32_t> q_index;
  std::vector<uint16_t> q;
  int max_sel = mnemo::max_selected_blocks(kSparse);
  bf16 *d_q, *d_out;
  int32_t *d_index, *d_indptr, *d_ids;
  float* d_scores;
  void *d_work1, *d_work2;
  mnemo::cuda::BlockScoreCudaParams sc;
  mnemo::cuda::BlockTopkCudaParams tk;
  mnemo::cuda::SparseAttentionCudaParams st;
  mnemo::Workspace ws1, ws2;
  bool decode;
  cudaStream_t stream = nullptr;  // a created stream while a CUDA graph captures the step

  Pipeline(const Seq& seq, std::vector<int32_t> idx, bool is_decode) : s(seq), q_index(std::move(idx)), decode(is_decode) {
    const int nq = int(q_index.size());
    q = make_queries(q_index);
    d_q = reinterpret_cast<bf16*>(upload(q));
    d_out = alloc<bf16>(q.size());
    d_index = upload(q_index);
    d_indptr = upload(std::vector<int32_t>{0, nq});
    d_scores = alloc<float>(size_t(nq) * kKvHeads * s.blocks);
    d_ids = alloc<int32_t>(size_t(nq) * kKvHeads * max_sel);
    const float scale = 1.0f / std::sqrt(float(kHeadDim));
    sc.q = d_q;
    sc.q_index = d_index;
    sc.num_q = nq;
    sc.num_heads = kHeads;
    sc.num_kv_heads = kKvHeads;
    sc.head_dim = kHeadDim;
    sc.keys = s.keys1();
    sc.lse_keys = s.keys2();
    sc.block_size = kBt;
    sc.num_blocks = s.blocks;
    sc.softmax_scale = scale;
    sc.block_scores = d_scores;
    const auto plan1 = mnemo::cuda::plan_block_scores(nq, kHeads, kKvHeads, s.n1, g_sms);
    sc.num_splits = plan1.num_splits;
    d_work1 = alloc<char>(plan1.workspace_bytes);
    ws1 = {d_work1, plan1.workspace_bytes};
    tk.block_scores = d_scores;
    tk.q_index = d_index;
    tk.num_q = nq;
    tk.num_kv_heads = kKvHeads;
    tk.num_blocks = s.blocks;
    tk.sparse = kSparse;
    tk.max_selected = max_sel;
    tk.block_ids = d_ids;
    st.q = d_q;
    st.q_indptr = d_indptr;
    st.q_index = d_index;
    st.batch = 1;
    st.total_q = nq;
    st.max_q_per_seq = nq;
    st.num_heads = kHeads;
    st.kv = s.kv();
    st.key_rope = s.rope();
    st.softmax_scale = scale;
    st.block_ids = d_ids;
    st.max_selected = max_sel;
    st.out = d_out;
    if (decode) {
      const auto plan2 = mnemo::cuda::plan_sparse_decode(nq, kHeads, kKvHeads, kHeadDim, kBt, max_sel, g_sms);
      st.num_splits = plan2.num_splits;
      d_work2 = alloc<char>(plan2.workspace_bytes);
      ws2 = {d_work2, plan2.workspace_bytes};
    } else {
      d_work2 = nullptr;
    }
  }
  ~Pipeline() {
    for (void* p : {(void*)d_q, (void*)d_out, (void*)d_index, (void*)d_indptr, (void*)d_ids, (void*)d_scores, d_work1, d_work2}) {
      cudaFree(p);
    }
  }
  void stage1() { CHECK_OK(mnemo::cuda::block_scores_launch(sc, ws1, stream)); }
  void topk() { CHECK_OK(mnemo::cuda::select_topk_launch(tk, stream)); }
  void stage2() {
    if (decode) CHECK_OK(mnemo::cuda::sparse_decode_launch(st, ws2, stream));
    else CHECK_OK(mnemo::cuda::sparse_prefill_launch(st, stream));
  }
  void all() { stage1(), topk(), stage2(); }

  // Tiles a 4-query prefill CTA loads (union of its queries' selections), averaged over CTAs and heads.
  double mean_union_blocks() const {
    const std::vector<int32_t> ids = download(d_ids, q_index.size() * kKvHeads * max_sel);
    double total = 0;
    int64_t n = 0;
    for (size_t q0 = 0; q0 + 4 <= q_index.size(); q0 += 4 * 97) {  // a sample of CTAs
      for (int g = 0; g < kKvHeads; ++g) {
        std::set<int32_t> u;
        for (size_t i = q0; i < q0 + 4; ++i) {
          for (int k = 0; k < max_sel; ++k) {
            const int32_t b = ids[(i * kKvHeads + g) * max_sel + k];
            if (b >= 0) u.insert(b);
          }
        }
        total += double(u.size());
        ++n;
      }
    }
    return n ? total / n : 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, dump_dir;
  int reps = 20;
  bool with_1m = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--dump-ids") && i + 1 < argc) dump_dir = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--no-1m")) with_1m = false;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  void* flush = alloc<char>(kFlushBytes);
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n";
  char line[1024];

  // Decode: one query at the end of the sequence.
  json += "  \"sparse_decode\": [\n";
  std::vector<int64_t> decode_lens = {32768, 131072};
  if (with_1m) decode_lens.push_back(int64_t{1} << 20);
  for (int64_t len : decode_lens) {
    const Seq s(len);
    Pipeline pl(s, {int32_t(len - 1)}, true);
    for (int i = 0; i < 5; ++i) pl.all();
    CHECK_CUDA(cudaDeviceSynchronize());
    const double t1 = median_ms(reps * 5, flush, [&] { pl.stage1(); });
    const double t2 = median_ms(reps * 5, flush, [&] { pl.topk(); });
    const double t3 = median_ms(reps * 5, flush, [&] { pl.stage2(); });
    const double tt = median_ms(reps * 5, flush, [&] { pl.all(); });
    // The step as one CUDA graph (how a decode step runs: no host gaps between the 3-5 kernels).
    double tg = -1;
    {
      cudaStream_t cs;
      CHECK_CUDA(cudaStreamCreate(&cs));
      pl.stream = cs;
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK_CUDA(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
      pl.all();
      CHECK_CUDA(cudaStreamEndCapture(cs, &graph));
      CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      CHECK_CUDA(cudaGraphLaunch(exec, cs));
      CHECK_CUDA(cudaStreamSynchronize(cs));
      tg = median_ms(reps * 5, flush, [&] { CHECK_CUDA(cudaGraphLaunch(exec, cs)); });
      CHECK_CUDA(cudaGraphExecDestroy(exec));
      CHECK_CUDA(cudaGraphDestroy(graph));
      CHECK_CUDA(cudaStreamDestroy(cs));
      pl.stream = nullptr;
    }
    // Dense decode on the same KV and query.
    mnemo::cuda::DenseDecodeParams dp;
    dp.q = pl.d_q;
    dp.batch = 1;
    dp.num_heads = kHeads;
    dp.kv = s.kv();
    dp.key_rope = s.rope();
    dp.softmax_scale = pl.st.softmax_scale;
    const auto dplan = mnemo::cuda::plan_dense_decode(1, kHeads, kKvHeads, kHeadDim, kBt, len, g_sms);
    dp.num_splits = dplan.num_splits;
    bf16* d_dense_out = alloc<bf16>(pl.q.size());
    dp.out = d_dense_out;
    void* dwork = alloc<char>(dplan.workspace_bytes);
    auto dense = [&] { CHECK_OK(mnemo::cuda::dense_decode_launch(dp, {dwork, dplan.workspace_bytes}, nullptr)); };
    dense();
    const double td = median_ms(reps * 5, flush, dense);
    CHECK_CUDA(cudaFree(d_dense_out));
    CHECK_CUDA(cudaFree(dwork));
    pl.all();
    CHECK_CUDA(cudaDeviceSynchronize());
    const Checks c = check_rows(s, pl.q_index, pl.q, {0}, pl.d_scores, pl.d_ids, pl.d_out, pl.max_sel);
    std::snprintf(line, sizeof line,
                  "    {\"kv_len\": %lld, \"stage1_us\": %.2f, \"topk_us\": %.2f, \"stage2_us\": %.2f, \"total_us\": %.2f, "
                  "\"total_graph_us\": %.2f, \"dense_us\": %.2f, \"stage1_splits\": %d, \"stage2_splits\": %d, \"check\": %s},\n",
                  (long long)len, t1 * 1e3, t2 * 1e3, t3 * 1e3, tt * 1e3, tg * 1e3, td * 1e3, pl.sc.num_splits,
                  pl.st.num_splits, c.json().c_str());
    json += line;
    std::printf("sparse decode %lldK: stage1 %.1f us (splits %d), topk %.1f us, stage2 %.1f us (splits %d), total %.1f us "
                "(as a CUDA graph %.1f us); dense %.1f us; check %s\n",
                (long long)(len / 1024), t1 * 1e3, pl.sc.num_splits, t2 * 1e3, t3 * 1e3, pl.st.num_splits, tt * 1e3,
                tg * 1e3, td * 1e3, c.json().c_str());
    std::fflush(stdout);
  }
  json.erase(json.size() - 2, 1);
  json += "  ],\n  \"sparse_prefill\": [\n";

  for (int64_t len : {int64_t{32768}, int64_t{131072}}) {
    const Seq s(len);
    std::vector<int32_t> idx(len);
    std::iota(idx.begin(), idx.end(), 0);
    Pipeline pl(s, idx, false);
    pl.all();
    CHECK_CUDA(cudaDeviceSynchronize());
    const int r = std::max(3, reps / 4);
    const double t1 = median_ms(r, flush, [&] { pl.stage1(); });
    const double t2 = median_ms(r, flush, [&] { pl.topk(); });
    const double t3 = median_ms(r, flush, [&] { pl.stage2(); });
    const double tt = median_ms(r, flush, [&] { pl.all(); });
    mnemo::cuda::DensePrefillParams dp;
    dp.q = pl.d_q;
    dp.q_indptr = pl.d_indptr;
    dp.q_index = pl.d_index;
    dp.batch = 1;
    dp.max_q_per_seq = int(len);
    dp.num_heads = kHeads;
    dp.kv = s.kv();
    dp.key_rope = s.rope();
    dp.softmax_scale = pl.st.softmax_scale;
    bf16* d_dense_out = alloc<bf16>(pl.q.size());
    dp.out = d_dense_out;
    auto dense = [&] { CHECK_OK(mnemo::cuda::dense_prefill_launch(dp, nullptr)); };
    dense();
    const double td = median_ms(3, flush, dense);
    CHECK_CUDA(cudaFree(d_dense_out));
    pl.all();
    CHECK_CUDA(cudaDeviceSynchronize());
    const double unions = pl.mean_union_blocks();
    const Checks c = check_rows(s, pl.q_index, pl.q, {100, 5000, len / 2 + 17, len - 1}, pl.d_scores, pl.d_ids,
                                pl.d_out, pl.max_sel);
    // Stage-2 work: each (query, head) attends <= 96 blocks of 64 keys; 4 flops per key and dim.
    const double flops = 4.0 * kHeads * kHeadDim * 96.0 * kBt * double(len);
    std::snprintf(line, sizeof line,
                  "    {\"len\": %lld, \"stage1_ms\": %.3f, \"topk_ms\": %.3f, \"stage2_ms\": %.3f, \"total_ms\": %.3f, "
                  "\"dense_ms\": %.3f, \"stage2_tflops_at_96_blocks\": %.1f, \"cta_union_blocks\": %.1f, \"check\": %s},\n",
                  (long long)len, t1, t2, t3, tt, td, flops / t3 / 1e9, unions, c.json().c_str());
    json += line;
    std::printf("sparse prefill %lldK: stage1 %.2f ms, topk %.2f ms, stage2 %.2f ms (%.0f TFLOP/s at 96 blocks; a 4-query "
                "CTA loads %.1f blocks), total %.2f ms; dense %.2f ms; check %s\n",
                (long long)(len / 1024), t1, t2, t3, flops / t3 / 1e9, unions, tt, td, c.json().c_str());
    std::fflush(stdout);
    if (!dump_dir.empty()) {
      const std::vector<int32_t> ids = download(pl.d_ids, size_t(len) * kKvHeads * pl.max_sel);
      const std::string path = dump_dir + "/ids_" + std::to_string(len) + ".bin";
      FILE* f = std::fopen(path.c_str(), "wb");
      if (f) {
        std::fwrite(ids.data(), sizeof(int32_t), ids.size(), f);
        std::fclose(f);
      }
    }
  }
  json.erase(json.size() - 2, 1);
  json += "  ]\n}\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) return 1;
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
