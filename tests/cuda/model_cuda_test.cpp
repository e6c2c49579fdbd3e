// The model forward on the CUDA backend against the CPU backend (the f32 reference) and against the
// transformers fixtures: bf16 weights and KV, so logits may differ by bf16 rounding — relative error
// (max |got − want| over a row / max |want|) at most 1e-2. Tiering on the GPU (evictions to pinned
// host memory and back) must not change a single bit. Skips with the reason when no GPU is present.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/file.h"
#include "model/llama.h"
#include "tests/model/fixture_util.h"
#include "model/rope_scaling.h"
#include "tests/model/model_test_util.h"

namespace mnemo {
namespace {

constexpr double kBf16RelTol = 1e-2;
const char* kFixtureRoot = "tests/data/fixtures";

#define SKIP_WITHOUT_GPU()                                                       \
  do {                                                                           \
    if (cuda_device_count() == 0) GTEST_SKIP() << cuda_unavailable_reason();     \
  } while (0)

std::vector<std::string> fixture_names() { return testing_util::fixture_names(kFixtureRoot); }

using testing_util::FixtureCase;
using testing_util::load_cases;


// Worst row of max |got − want| / max |want|; infinity on NaN.
double worst_row_error(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  if (got.shape() != want.shape()) return INFINITY;
  const int64_t vocab = want.dim(1);
  double worst = 0;
  for (int64_t t = 0; t < want.dim(0); ++t) {
    double err = 0, scale = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const double g = got.data<float>()[t * vocab + j], w = want.data<float>()[t * vocab + j];
      if (std::isnan(g) || std::isnan(w)) return INFINITY;
      err = std::max(err, std::fabs(g - w));
      scale = std::max(scale, std::fabs(w));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

std::unique_ptr<LlamaModel> load(const std::string& dir, ModelOptions options) {
  auto m = LlamaModel::load(dir, options);
  EXPECT_TRUE(m.ok()) << dir << ": " << m.status().to_string();
  return m.ok() ? std::move(*m) : nullptr;
}

ModelOptions cuda_options() {
  ModelOptions o;
  o.device = Device::cuda(0);
  return o;
}

class CudaFixture : public testing::TestWithParam<std::string> {};

TEST_P(CudaFixture, LogitsMatchCpuAndTransformers) {
  SKIP_WITHOUT_GPU();
  const std::string dir = std::string(kFixtureRoot) + "/" + GetParam();
  auto cpu = load(dir, {});
  auto gpu = load(dir, cuda_options());
  ASSERT_TRUE(cpu && gpu);
  for (const FixtureCase& c : load_cases(dir)) {
    Tensor want = testing_util::all_logits(*cpu, c.tokens);
    Tensor got = testing_util::all_logits(*gpu, c.tokens);
    const double vs_cpu = worst_row_error(got, want), vs_hf = worst_row_error(got, c.logits);
    std::printf("[ stats    ] %s T=%zu: rel err vs CPU %.3g, vs transformers %.3g\n", GetParam().c_str(),
                c.tokens.size(), vs_cpu, vs_hf);
    EXPECT_LE(vs_cpu, kBf16RelTol) << GetParam() << " T=" << c.tokens.size();
    EXPECT_LE(vs_hf, kBf16RelTol) << GetParam() << " T=" << c.tokens.size();
  }
}

// Prefill in odd chunks, then one token at a time (the decode kernel): within bf16 of the CPU.
TEST_P(CudaFixture, ChunkedPrefillAndDecodeMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::string dir = std::string(kFixtureRoot) + "/" + GetParam();
  ModelOptions options = cuda_options();
  options.chunk_tokens = 7;
  auto cpu = load(dir, {});
  auto gpu = load(dir, options);
  ASSERT_TRUE(cpu && gpu);
  if (rope_depends_on_length(gpu->config())) GTEST_SKIP() << "rope depends on the stream length";
  for (const FixtureCase& c : load_cases(dir)) {
    const int64_t vocab = c.logits.dim(1), n = static_cast<int64_t>(c.tokens.size());
    const int64_t split = n * 2 / 3;
    auto seq = gpu->new_sequence();
    ASSERT_TRUE(seq.ok());
    Tensor all = Tensor::zeros(c.logits.shape());
    if (split > 0) {
      Tensor part;
      ASSERT_TRUE(gpu->forward(**seq, std::span(c.tokens).first(split), &part, true).ok());
      std::copy_n(part.data<float>(), split * vocab, all.data<float>());
    }
    for (int64_t t = split; t < n; ++t) {
      Tensor one;
      const Status s = gpu->forward(**seq, std::span(c.tokens).subspan(t, 1), &one, false);
      ASSERT_TRUE(s.ok()) << s.to_string();
      std::copy_n(one.data<float>(), vocab, all.data<float>() + t * vocab);
    }
    Tensor want = testing_util::all_logits(*cpu, c.tokens);
    EXPECT_LE(worst_row_error(all, want), kBf16RelTol) << GetParam() << " T=" << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaFixture, testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CudaFixture);

const char* kTinyModel = "models/tiny";

// Sequences prefilled with prompt_lens[i] random tokens each, then one forward_batch appending
// step_lens[i] more to each (decode tokens and chunks mixed); logits[i] is item i's last row.
struct MixedBatch {
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<std::vector<int32_t>> streams;
  std::vector<Tensor> logits;
};
void run_mixed_batch(LlamaModel& m, const std::vector<int64_t>& prompt_lens, const std::vector<int64_t>& step_lens,
                     uint32_t seed, MixedBatch* out) {
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    out->streams.push_back(testing_util::random_tokens(prompt_lens[i] + step_lens[i], seed + uint32_t(i), 4096));
    auto s = m.new_sequence();
    ASSERT_TRUE(s.ok());
    Tensor ignored;
    ASSERT_TRUE(m.forward(**s, std::span(out->streams[i]).first(prompt_lens[i]), &ignored).ok());
    out->seqs.push_back(std::move(*s));
  }
  out->logits.resize(prompt_lens.size());
  std::vector<LlamaModel::BatchItem> batch;
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    batch.push_back({out->seqs[i].get(), std::span(out->streams[i]).subspan(prompt_lens[i], step_lens[i]),
                     &out->logits[i]});
  }
  const Status s = m.forward_batch(batch);
  ASSERT_TRUE(s.ok()) << s.to_string();
}

// A batch mixing decode tokens and prefill chunks of different sequences gives each sequence the
// logits it gets alone (within bf16: the GEMMs see other row counts).
TEST(CudaModel, MixedBatchMatchesSequencesAlone) {
  SKIP_WITHOUT_GPU();
  auto gpu = load(kTinyModel, cuda_options());
  auto cpu = load(kTinyModel, {});
  ASSERT_TRUE(gpu && cpu);
  const std::vector<int64_t> prompt_lens = {70, 1, 129, 300};
  const std::vector<int64_t> step_lens = {1, 1, 37, 1};
  MixedBatch mb;
  ASSERT_NO_FATAL_FAILURE(run_mixed_batch(*gpu, prompt_lens, step_lens, 100, &mb));
  auto& seqs = mb.seqs;
  auto& streams = mb.streams;
  auto& logits = mb.logits;
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    EXPECT_EQ(seqs[i]->length(), prompt_lens[i] + step_lens[i]);
    auto alone = cpu->new_sequence();
    Tensor want;
    ASSERT_TRUE(cpu->forward(**alone, streams[i], &want).ok());
    EXPECT_LE(worst_row_error(logits[i], want), kBf16RelTol) << "sequence " << i;
  }
}

// A GPU budget of a few blocks per layer: every layer's blocks are evicted to pinned host memory and
// gathered back on the next step. Same logits, bit for bit, as with everything resident.
TEST(CudaModel, TinyGpuBudgetEvictsToHostAndChangesNoBit) {
  SKIP_WITHOUT_GPU();
  ModelOptions small = cuda_options();
  small.kv_budget_tokens = 6 * 64;  // 6 blocks of every layer: one sequence of <= 320 tokens at a time
  small.host_budget_bytes = int64_t{256} << 20;
  auto tiered = load(kTinyModel, small);
  auto resident = load(kTinyModel, cuda_options());
  ASSERT_TRUE(tiered && resident);
  const std::vector<int32_t> a = testing_util::random_tokens(300, 7, 4096), b = testing_util::random_tokens(250, 8, 4096);
  auto run = [](LlamaModel& m, const std::vector<int32_t>& ta, const std::vector<int32_t>& tb) {
    std::vector<Tensor> out;
    auto sa = m.new_sequence();
    auto sb = m.new_sequence();
    EXPECT_TRUE(sa.ok() && sb.ok());
    // Alternate the two sequences so each step's blocks must come back from host.
    for (int64_t t = 0; t < 300; t += 50) {
      for (int which = 0; which < 2; ++which) {
        const std::vector<int32_t>& toks = which == 0 ? ta : tb;
        Sequence& seq = which == 0 ? **sa : **sb;
        if (t >= static_cast<int64_t>(toks.size())) continue;
        const int64_t len = std::min<int64_t>(50, static_cast<int64_t>(toks.size()) - t);
        Tensor logits;
        const Status s = m.forward(seq, std::span(toks).subspan(t, len), &logits, true);
        EXPECT_TRUE(s.ok()) << s.to_string();
        out.push_back(std::move(logits));
      }
    }
    return out;
  };
  const std::vector<Tensor> got = run(*tiered, a, b), want = run(*resident, a, b);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].numel(), want[i].numel());
    EXPECT_EQ(0, std::memcmp(got[i].raw(), want[i].raw(), got[i].nbytes())) << "step " << i;
  }
  const KvStoreMetrics m = tiered->store().metrics();
  EXPECT_GT(m.gpu_evictions, 0) << "the budget was meant to force evictions";
  EXPECT_GT(m.host_hits, 0) << "evicted blocks were meant to come back from host";
  EXPECT_LE(m.gpu_slots_used, m.gpu_slots_total);
}

// Token ids are checked on the host: a bad one names itself and leaves the sequence unchanged.
TEST(CudaModel, OutOfVocabularyTokenIsRejectedBeforeTheGpu) {
  SKIP_WITHOUT_GPU();
  auto gpu = load(kTinyModel, cuda_options());
  ASSERT_TRUE(gpu);
  auto seq = gpu->new_sequence();
  ASSERT_TRUE(seq.ok());
  const std::vector<int32_t> bad = {1, 5000};
  Tensor logits;
  const Status s = gpu->forward(**seq, bad, &logits);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("5000"), std::string::npos) << s.message();
  EXPECT_EQ((*seq)->length(), 0);
}

}  // namespace
}  // namespace mnemo

namespace mnemo {
namespace {

// InfLLM-V2 on the GPU (training-free mode on the bundled model, head_dim 64): the switch at
// dense_len inside a prefill chunk, then sparse decode.
SparseConfig small_sparse(int topk) {
  SparseConfig s;
  s.kernel_size = 32;
  s.kernel_stride = 16;
  s.block_size = 64;
  s.init_blocks = 1;
  s.window_size = 256;
  s.topk = topk;
  s.dense_len = 512;
  return s;
}

// Prefill in chunks of 300 (one straddles dense_len or the bounded window), then one token at a time
// to the end; logits of every step.
std::vector<Tensor> chunks_then_decode(LlamaModel& m, const std::vector<int32_t>& tokens, int64_t prompt) {
  std::vector<Tensor> out;
  auto seq = m.new_sequence();
  EXPECT_TRUE(seq.ok());
  for (int64_t t = 0; t < prompt; t += 300) {
    Tensor l;
    const Status s = m.forward(**seq, std::span(tokens).subspan(t, std::min<int64_t>(300, prompt - t)), &l, true);
    EXPECT_TRUE(s.ok()) << s.to_string();
    out.push_back(std::move(l));
  }
  for (int64_t t = prompt; t < static_cast<int64_t>(tokens.size()); ++t) {
    Tensor l;
    const Status s = m.forward(**seq, std::span(tokens).subspan(t, 1), &l);
    EXPECT_TRUE(s.ok()) << s.to_string();
    out.push_back(std::move(l));
  }
  return out;
}

TEST(CudaSparseModel, SelectingEveryBlockEqualsDense) {
  SKIP_WITHOUT_GPU();
  ModelOptions all = cuda_options();
  all.sparse = small_sparse(/*topk=*/64);  // 64 + 4 local blocks >= every block of a 1240-token stream
  auto sparse = load(kTinyModel, all);
  auto dense = load(kTinyModel, cuda_options());
  ASSERT_TRUE(sparse && dense);
  const std::vector<int32_t> tokens = testing_util::random_tokens(1240, 21, 4096);
  const auto got = chunks_then_decode(*sparse, tokens, 1200), want = chunks_then_decode(*dense, tokens, 1200);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, worst_row_error(got[i], want[i]));
  std::printf("[ stats    ] sparse (all blocks) vs dense on CUDA: worst row rel err %.3g\n", worst);
  EXPECT_LE(worst, 1e-3);
}

TEST(CudaSparseModel, MatchesCpuSparse) {
  SKIP_WITHOUT_GPU();
  ModelOptions gpu_options = cuda_options(), cpu_options;
  gpu_options.sparse = cpu_options.sparse = small_sparse(/*topk=*/4);
  auto gpu = load(kTinyModel, gpu_options);
  auto cpu = load(kTinyModel, cpu_options);
  ASSERT_TRUE(gpu && cpu);
  const std::vector<int32_t> tokens = testing_util::random_tokens(1240, 22, 4096);
  const auto got = chunks_then_decode(*gpu, tokens, 1200), want = chunks_then_decode(*cpu, tokens, 1200);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  int over = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = worst_row_error(got[i], want[i]);
    worst = std::max(worst, e);
    over += e > kBf16RelTol;
  }
  std::printf("[ stats    ] sparse CUDA vs CPU: worst row rel err %.3g, %d of %zu steps over %.0e\n", worst, over,
              got.size(), kBf16RelTol);
  EXPECT_LE(worst, kBf16RelTol);
}

// Sparse and dense sequences, decode tokens and chunks, in one batch: each as it is alone.
TEST(CudaSparseModel, MixedBatchMatchesSequencesAlone) {
  SKIP_WITHOUT_GPU();
  ModelOptions o = cuda_options();
  o.sparse = small_sparse(4);
  auto gpu = load(kTinyModel, o);
  ASSERT_TRUE(gpu);
  const std::vector<int64_t> prompt_lens = {100, 700, 600, 300, 1000};
  const std::vector<int64_t> step_lens = {1, 1, 50, 400, 30};  // groups: dense decode, sparse decode, chunks
  MixedBatch mb;
  ASSERT_NO_FATAL_FAILURE(run_mixed_batch(*gpu, prompt_lens, step_lens, 300, &mb));
  auto& streams = mb.streams;
  auto& logits = mb.logits;
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    auto alone = gpu->new_sequence();
    Tensor ignored, want;
    ASSERT_TRUE(gpu->forward(**alone, std::span(streams[i]).first(prompt_lens[i]), &ignored).ok());
    ASSERT_TRUE(gpu->forward(**alone, std::span(streams[i]).subspan(prompt_lens[i], step_lens[i]), &want).ok());
    EXPECT_LE(worst_row_error(logits[i], want), kBf16RelTol) << "sequence " << i;
  }
}

}  // namespace
}  // namespace mnemo

namespace mnemo {
namespace {

// The bounded policy on the GPU (local window + memory partial, merged by LSE) against the CPU's:
// dense memory and sparse memory, prefill chunks across the window boundary, then decode.
void expect_bounded_matches_cpu(ModelOptions options, uint32_t seed) {
  options.positions = PositionPolicy::kBounded;
  options.bounded_window = 256;
  ModelOptions gpu_options = options;
  gpu_options.device = Device::cuda(0);
  auto gpu = load(kTinyModel, gpu_options);
  auto cpu = load(kTinyModel, options);
  ASSERT_TRUE(gpu && cpu);
  const std::vector<int32_t> tokens = testing_util::random_tokens(1230, seed, 4096);
  const auto got = chunks_then_decode(*gpu, tokens, 1200), want = chunks_then_decode(*cpu, tokens, 1200);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, worst_row_error(got[i], want[i]));
  std::printf("[ stats    ] bounded%s CUDA vs CPU: worst row rel err %.3g\n", options.sparse ? " sparse" : "", worst);
  EXPECT_LE(worst, kBf16RelTol);
}

TEST(CudaBoundedModel, DenseMemoryMatchesCpu) {
  SKIP_WITHOUT_GPU();
  expect_bounded_matches_cpu({}, 41);
}

TEST(CudaBoundedModel, SparseMemoryMatchesCpu) {
  SKIP_WITHOUT_GPU();
  ModelOptions o;
  o.sparse = small_sparse(4);
  expect_bounded_matches_cpu(o, 42);
}

}  // namespace
}  // namespace mnemo
