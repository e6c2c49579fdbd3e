// Host side of the CUDA stage-2 sparse attention tests (GPU and CPU-simulated): random selections over
// an AttnData (tests/cuda/attention_ref.h), the float64 and naive-bf16 references over exactly the
// selected keys, the CPU op (attention/sparse.h) as a cross-check, and the per-element comparison
// (check_attention's rule; rows with an empty selection must be exactly out 0, lse -inf).
#pragma once

#include <cstdint>
#include <vector>

#include "tests/cuda/attention_ref.h"

namespace mnemo::test {

struct Selection {
  int max_selected = 0;
  std::vector<int32_t> ids;  // [total_q, num_kv_heads, max_selected], ascending, -1 padded
};

// Random selections: per (query, kv head) about `density` of the blocks up to the query's own block,
// the own block usually in, a few rows empty, and some -1 entries between ids (the contract skips them
// anywhere). full: every block up to the own block (sparse must then equal dense).
Selection make_selection(const AttnCase& c, const AttnData& d, uint32_t seed, double density, bool full);

AttnRef sparse_reference(const AttnCase& c, const AttnData& d, const Selection& sel);

::testing::AssertionResult check_sparse(const AttnCase& c, const AttnData& d, const Selection& sel,
                                        const AttnRef& ref, const std::vector<uint16_t>& out,
                                        const std::vector<float>& lse, CheckStats* stats);

}  // namespace mnemo::test
