// Host side of the CUDA stage-1 and top-k tests (GPU and CPU-simulated): random queries and bf16
// compressed keys, the CPU references (attention/select.h) fed the same bf16-rounded values, and the
// comparisons: block scores within fp32 rounding; top-k on identical scores identical to
// select_topk_cpu (ties planted on purpose); the whole pipeline identical except where the CPU's own
// scores tie within that rounding at the selection boundary (counted and reported, never hidden).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "attention/sparse_params.h"

namespace mnemo::test {

struct SelectCase {
  std::string name;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::vector<int> q_index;  // stream index of each query; kv_len = max + 1
  bool approx = true;        // tier-2 LSE
  SparseParams sparse;       // kernel_size/stride, block_size, init_blocks, window_size, topk
};
inline void PrintTo(const SelectCase& c, std::ostream* os) { *os << c.name; }

struct SelectData {
  int64_t kv_len = 0, num_blocks = 0, n1 = 0, n2 = 0;
  std::vector<uint16_t> q;             // [num_q, H, D] bf16 bits
  std::vector<uint16_t> ck1, ck2;      // [Hkv, n, D] bf16 bits (tier 1, tier 2)
  std::vector<float> q_f, ck1_f, ck2_f;  // the same values as floats
  std::vector<int32_t> q_index32;
  std::vector<int64_t> q_index64;
  float softmax_scale = 0;
};

SelectData make_select_data(const SelectCase& c, uint32_t seed);
// select.h's CPU stage 1 on the bf16-rounded inputs: [num_q, Hkv, num_blocks].
std::vector<float> cpu_block_scores(const SelectCase& c, const SelectData& d);
// select_topk_cpu on the given scores: ids [num_q, Hkv, max_selected] and counts [num_q, Hkv].
void cpu_topk(const SelectCase& c, const SelectData& d, const std::vector<float>& scores, std::vector<int32_t>* ids,
              std::vector<int32_t>* counts);
// Overwrites scores with planted exact ties, NaN, ±0 and ±inf (top-k's awkward inputs).
void plant_ties(std::vector<float>* scores, uint32_t seed);

// |got − want| <= 1e-4 |want| + 1e-6 per element; NaN never passes.
::testing::AssertionResult check_scores(const SelectCase& c, const std::vector<float>& got,
                                        const std::vector<float>& want, double* max_rel_err);
::testing::AssertionResult check_ids_equal(const SelectCase& c, const std::vector<int32_t>& got,
                                           const std::vector<int32_t>& want, const std::vector<int32_t>& got_n,
                                           const std::vector<int32_t>& want_n);
// Pipeline rule: per row the same count; a block in one selection and not the other must have a CPU
// score within 1e-4 relative (+1e-6) of the row's boundary score (the lowest CPU score chosen). Returns
// the number of such excused blocks in *excused.
::testing::AssertionResult check_ids_near(const SelectCase& c, const SelectData& d, const std::vector<float>& cpu_scores,
                                          const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                                          int64_t* excused);

}  // namespace mnemo::test
