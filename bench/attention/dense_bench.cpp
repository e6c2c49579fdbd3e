// Times mnemo's CUDA dense attention on MiniCPM4-8B shapes (32 query heads, 2 kv heads, head_dim 128,
// bf16, 64-token blocks in shuffled slots, batch 1) beside the two measured ceilings:
//   - a 1 GiB device-to-device copy (GB/s counting bytes read + written),
//   - an 8192^3 bf16 GEMM through cuBLAS (model/cuda's linear_launch).
// Decode at 32K and 128K keys (with the rope table, and with keys used as stored to show its cost),
// prefill at 32K; each checked against the CPU op (attention/dense.h) on the same bf16 data (decode:
// every head; prefill: 8 query rows). L2 is flushed (256 MB memset) before every repetition; times
// are medians of CUDA-event intervals. Writes JSON (--json PATH) and prints a table.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention/cuda/dense.h"
#include "attention/dense.h"
#include "core/dtype.h"
#include "model/cuda/ops.h"

namespace {

using mnemo::cuda::bf16;

#define CHECK_CUDA(call)                                                                            \
  do {                                                                                              \
    const cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));   \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)
#define CHECK_OK(expr)                                                                                     \
  do {                                                                                                     \
    const mnemo::Status s_ = (expr);                                                                       \
    if (!s_.ok()) {                                                                                        \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.to_string().c_str());                   \
      std::exit(1);                                                                                        \
    }                                                                                                      \
  } while (0)

constexpr int kHeads = 32, kKvHeads = 2, kHeadDim = 128, kBlockTokens = 64;
constexpr size_t kFlushBytes = size_t{256} << 20;

template <typename T>
T* device_upload(const std::vector<T>& host) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(1, host.size() * sizeof(T))));
  CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

std::vector<uint16_t> random_bf16(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<uint16_t> v(n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (uint16_t& x : v) {  // xorshift: uniform in [-scale, scale), fast enough for 10^8 values
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = mnemo::float_to_bf16(scale * (float(s >> 40) / float(1 << 24) * 2.0f - 1.0f));
  }
  return v;
}

// Median of `reps` timed runs of `fn`, each after an L2 flush.
template <typename Fn>
double median_ms(int reps, void* flush, Fn&& fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    if (flush) CHECK_CUDA(cudaMemsetAsync(flush, r & 0xff, kFlushBytes));
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

// One sequence of `len` keys in shuffled slots, its rope table, on the device and the host.
struct Kv {
  int64_t len = 0;
  std::vector<uint16_t> arena;
  std::vector<int32_t> table;
  std::vector<float> cos, sin;
  bf16* d_arena = nullptr;
  int32_t *d_table = nullptr, *d_len = nullptr;
  float *d_cos = nullptr, *d_sin = nullptr;
  mnemo::Rope rope;

  Kv(int64_t n, uint64_t seed) : len(n) {
    const int64_t blocks = (n + kBlockTokens - 1) / kBlockTokens;
    arena = random_bf16(size_t(blocks) * 2 * kKvHeads * kBlockTokens * kHeadDim, seed);
    table.resize(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(uint32_t(seed)));
    for (int i = 0; i < kHeadDim / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / kHeadDim)));
    cos.resize(size_t(n) * kHeadDim / 2);
    sin.resize(cos.size());
#pragma omp parallel for
    for (int64_t p = 0; p < n; ++p) {
      for (int i = 0; i < kHeadDim / 2; ++i) {
        const double a = double(p) * rope.inv_freq[i];
        cos[p * kHeadDim / 2 + i] = float(std::cos(a));
        sin[p * kHeadDim / 2 + i] = float(std::sin(a));
      }
    }
    d_arena = reinterpret_cast<bf16*>(device_upload(arena));
    d_table = device_upload(table);
    d_len = device_upload(std::vector<int32_t>{int32_t(n)});
    d_cos = device_upload(cos);
    d_sin = device_upload(sin);
  }
  mnemo::cuda::PagedKvBf16 view() const {
    return {d_arena, kKvHeads, kBlockTokens, kHeadDim, d_table, int(table.size()), d_len, len};
  }
  size_t kv_bytes() const { return size_t(len) * 2 * kKvHeads * kHeadDim * 2; }
  size_t rope_bytes() const { return size_t(len) * kHeadDim * 4; }  // cos + sin, float

  // CPU op on the same data for the queries `q` at `q_index` ([n, heads, dim], bf16 bits).
  std::vector<float> cpu_attention(const std::vector<uint16_t>& q, const std::vector<int64_t>& q_index) const {
    std::vector<float> arena_f(arena.size()), q_f(q.size()), out(q.size());
    for (size_t i = 0; i < arena.size(); ++i) arena_f[i] = mnemo::bf16_to_float(arena[i]);
    for (size_t i = 0; i < q.size(); ++i) q_f[i] = mnemo::bf16_to_float(q[i]);
    mnemo::RopeTable rope_table(rope);
    rope_table.ensure(len);
    mnemo::DenseAttentionParams p;
    p.q = q_f.data();
    p.q_index = q_index.data();
    p.num_q = int64_t(q_index.size());
    p.num_heads = kHeads;
    p.kv = {arena_f.data(), kKvHeads, kBlockTokens, kHeadDim, table.data(), int64_t(table.size()), len};
    p.key_rope = &rope_table;
    p.softmax_scale = 1.0f / std::sqrt(float(kHeadDim));
    p.out = out.data();
    CHECK_OK(mnemo::dense_attention_cpu(p));
    return out;
  }
};

struct Err {
  double max_abs = 0, rel_l2 = 0;
  bool finite = true;
};
Err compare(const std::vector<uint16_t>& got, const std::vector<float>& want) {
  Err e;
  double d2 = 0, r2 = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = mnemo::bf16_to_float(got[i]), d = g - want[i];
    if (!std::isfinite(g)) e.finite = false;
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    d2 += d * d;
    r2 += double(want[i]) * want[i];
  }
  e.rel_l2 = std::sqrt(d2 / r2);
  return e;
}

std::string json_err(const Err& e) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "{\"max_abs_err\": %.3g, \"rel_l2_err\": %.3g, \"finite\": %s}", e.max_abs, e.rel_l2,
                e.finite ? "true" : "false");
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 50;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  void* flush = nullptr;
  CHECK_CUDA(cudaMalloc(&flush, kFlushBytes));
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"sms\": " +
                     std::to_string(prop.multiProcessorCount) + ",\n";
  char line[512];

  // Ceiling 1: device-to-device copy.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  CHECK_CUDA(cudaMemset(src, 1, copy_bytes));
  auto copy = [&] { CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); };
  for (int i = 0; i < 3; ++i) copy();
  const double copy_ms = median_ms(20, nullptr, copy);
  const double copy_gbps = 2.0 * copy_bytes / copy_ms / 1e6;
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));

  // Ceiling 2: bf16 GEMM through cuBLAS on random data.
  const int64_t g = 8192;
  auto handle = mnemo::cuda::CublasHandle::create();
  CHECK_OK(handle.status());
  bf16* gx = reinterpret_cast<bf16*>(device_upload(random_bf16(size_t(g * g), 1)));
  bf16* gw = reinterpret_cast<bf16*>(device_upload(random_bf16(size_t(g * g), 2)));
  bf16* gy = nullptr;
  void* gwork = nullptr;
  CHECK_CUDA(cudaMalloc(&gy, size_t(g * g) * 2));
  CHECK_CUDA(cudaMalloc(&gwork, size_t{32} << 20));
  mnemo::cuda::LinearParams lp{gx, gw, nullptr, gy, mnemo::DType::kBF16, g, g, g};
  auto gemm = [&] { CHECK_OK(mnemo::cuda::linear_launch(lp, handle->get(), {gwork, size_t{32} << 20}, nullptr)); };
  for (int i = 0; i < 3; ++i) gemm();
  const double gemm_ms = median_ms(20, nullptr, gemm);
  const double gemm_tflops = 2.0 * g * g * g / gemm_ms / 1e9;
  CHECK_CUDA(cudaFree(gx));
  CHECK_CUDA(cudaFree(gw));
  CHECK_CUDA(cudaFree(gy));
  std::snprintf(line, sizeof line, "  \"ceilings\": {\"copy_gbps\": %.1f, \"gemm_bf16_tflops\": %.1f},\n", copy_gbps,
                gemm_tflops);
  json += line;
  std::printf("ceilings: copy %.0f GB/s (1 GiB D2D, read+write), bf16 GEMM %.0f TFLOP/s (8192^3 cuBLAS)\n", copy_gbps,
              gemm_tflops);

  // Decode at 32K and 128K.
  json += "  \"decode\": [\n";
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  for (int64_t len : {int64_t{32768}, int64_t{131072}}) {
    const Kv kv(len, uint64_t(len));
    const std::vector<uint16_t> q = random_bf16(size_t(kHeads) * kHeadDim, 7, 2.0f);
    bf16* d_q = reinterpret_cast<bf16*>(device_upload(q));
    bf16* d_out = nullptr;
    CHECK_CUDA(cudaMalloc(&d_out, q.size() * 2));
    const auto plan = mnemo::cuda::plan_dense_decode(1, kHeads, kKvHeads, kHeadDim, kBlockTokens, len,
                                                     prop.multiProcessorCount);
    void* work = nullptr;
    CHECK_CUDA(cudaMalloc(&work, std::max<size_t>(plan.workspace_bytes, 256)));
    mnemo::cuda::DenseDecodeParams p;
    p.q = d_q;
    p.batch = 1;
    p.num_heads = kHeads;
    p.kv = kv.view();
    p.key_rope = {kv.d_cos, kv.d_sin, len};
    p.softmax_scale = scale;
    p.num_splits = plan.num_splits;
    p.out = d_out;
    const mnemo::Workspace ws{work, plan.workspace_bytes};
    for (bool rope : {true, false}) {
      mnemo::cuda::DenseDecodeParams pr = p;
      if (!rope) pr.key_rope = {};
      auto run = [&] { CHECK_OK(mnemo::cuda::dense_decode_launch(pr, ws, nullptr)); };
      for (int i = 0; i < 5; ++i) run();
      CHECK_CUDA(cudaDeviceSynchronize());
      const double ms = median_ms(reps, flush, run);
      const size_t bytes = kv.kv_bytes() + (rope ? kv.rope_bytes() : 0);
      const double floor_us = bytes / (copy_gbps * 1e3);
      std::string check = "null";
      if (rope) {
        std::vector<uint16_t> got(q.size());
        CHECK_CUDA(cudaMemset(d_out, 0xff, q.size() * 2));
        run();
        CHECK_CUDA(cudaMemcpy(got.data(), d_out, q.size() * 2, cudaMemcpyDeviceToHost));
        const Err e = compare(got, kv.cpu_attention(q, {len - 1}));
        check = json_err(e);
        std::printf("decode %lldK check vs CPU op: max abs err %.3g, rel L2 %.3g%s\n", (long long)(len / 1024),
                    e.max_abs, e.rel_l2, e.finite ? "" : ", NON-FINITE OUTPUT");
      }
      std::snprintf(line, sizeof line,
                    "    {\"kv_len\": %lld, \"rope_table\": %s, \"splits\": %d, \"median_us\": %.2f, \"bytes\": %zu, "
                    "\"gbps\": %.1f, \"floor_us\": %.2f, \"check\": %s},\n",
                    (long long)len, rope ? "true" : "false", plan.num_splits, ms * 1e3, bytes, bytes / ms / 1e6,
                    floor_us, check.c_str());
      json += line;
      std::printf("decode %lldK%s: %.1f us, %.0f GB/s, floor %.1f us (%.0f%% of copy ceiling)\n",
                  (long long)(len / 1024), rope ? "" : " (no rope)", ms * 1e3, bytes / ms / 1e6, floor_us,
                  100.0 * floor_us / (ms * 1e3));
    }
    CHECK_CUDA(cudaFree(d_q));
    CHECK_CUDA(cudaFree(d_out));
    CHECK_CUDA(cudaFree(work));
  }
  json.erase(json.size() - 2, 1);  // trailing comma
  json += "  ],\n";

  // Prefill at 32K: every query of a 32K sequence, causal; with the rope table and without (keys
  // taken as stored: the cost of rotating K on load). The CPU check runs on the rope case.
  json += "  \"prefill\": [\n";
  {
    const int64_t len = 32768;
    const Kv kv(len, 99);
    const std::vector<uint16_t> q = random_bf16(size_t(len) * kHeads * kHeadDim, 11, 2.0f);
    std::vector<int32_t> q_index(len);
    std::iota(q_index.begin(), q_index.end(), 0);
    bf16* d_q = reinterpret_cast<bf16*>(device_upload(q));
    int32_t* d_index = device_upload(q_index);
    int32_t* d_indptr = device_upload(std::vector<int32_t>{0, int32_t(len)});
    bf16* d_out = nullptr;
    CHECK_CUDA(cudaMalloc(&d_out, q.size() * 2));
    for (const bool rope : {true, false}) {
      mnemo::cuda::DensePrefillParams p;
      p.q = d_q;
      p.q_indptr = d_indptr;
      p.q_index = d_index;
      p.batch = 1;
      p.max_q_per_seq = int(len);
      p.num_heads = kHeads;
      p.kv = kv.view();
      if (rope) p.key_rope = {kv.d_cos, kv.d_sin, len};
      p.softmax_scale = scale;
      p.out = d_out;
      auto run = [&] { CHECK_OK(mnemo::cuda::dense_prefill_launch(p, nullptr)); };
      run();
      CHECK_CUDA(cudaDeviceSynchronize());
      const double ms = median_ms(std::max(3, reps / 10), flush, run);
      const double flops = 4.0 * kHeads * kHeadDim * (double(len) * (len + 1) / 2);
      const double tflops = flops / ms / 1e9;
      const double floor_ms = flops / (gemm_tflops * 1e9);
      // Check 8 query rows against the CPU op.
      std::string check = "null";
      const char* tag = rope ? "" : " (no rope)";
      if (rope) {
        const std::vector<int64_t> rows = {0, 1, 63, 64, 4095, 16384, len - 2, len - 1};
        std::vector<uint16_t> got(rows.size() * kHeads * kHeadDim), q_rows(got.size());
        CHECK_CUDA(cudaMemset(d_out, 0xff, q.size() * 2));
        run();
        for (size_t i = 0; i < rows.size(); ++i) {
          const size_t row_elems = size_t(kHeads) * kHeadDim;
          CHECK_CUDA(cudaMemcpy(got.data() + i * row_elems, d_out + rows[i] * row_elems, row_elems * 2,
                                cudaMemcpyDeviceToHost));
          std::copy_n(q.begin() + rows[i] * row_elems, row_elems, q_rows.begin() + i * row_elems);
        }
        const Err e = compare(got, kv.cpu_attention(q_rows, rows));
        check = json_err(e);
        std::printf("prefill 32K check vs CPU op (8 rows): max abs err %.3g, rel L2 %.3g%s\n", e.max_abs, e.rel_l2,
                    e.finite ? "" : ", NON-FINITE OUTPUT");
      }
      std::snprintf(line, sizeof line,
                    "    {\"len\": %lld, \"rope_table\": %s, \"median_ms\": %.3f, \"tflops\": %.1f, "
                    "\"floor_ms\": %.3f, \"check\": %s},\n",
                    (long long)len, rope ? "true" : "false", ms, tflops, floor_ms, check.c_str());
      json += line;
      std::printf("prefill 32K causal%s: %.2f ms, %.0f TFLOP/s, floor %.2f ms (%.0f%% of GEMM ceiling)\n", tag, ms,
                  tflops, floor_ms, 100.0 * floor_ms / ms);
    }
    CHECK_CUDA(cudaFree(d_q));
    CHECK_CUDA(cudaFree(d_index));
    CHECK_CUDA(cudaFree(d_indptr));
    CHECK_CUDA(cudaFree(d_out));
  }
  json.erase(json.size() - 2, 1);  // trailing comma
  json += "  ]\n}\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
