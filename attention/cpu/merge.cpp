// CPU reference of the LSE merge of two partial attentions (see attention/merge.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/merge.h"

namespace mnemo {

Status validate(const AttentionMergeParams& p) {
  if (!p.out_a || !p.lse_a || !p.out_b || !p.lse_b || !p.out) {
    return invalid_argument("attention merge: out_a, lse_a, out_b, lse_b and out must be set");
  }
  if (p.num_rows < 0 || p.head_dim <= 0) {
    return invalid_argument("attention merge: num_rows must be >= 0 and head_dim positive, got ", p.num_rows, ", ",
                            p.head_dim);
  }
  return Status::Ok();
}

Status merge_attention_cpu(const AttentionMergeParams& p) {
  MNEMO_RETURN_IF_ERROR(validate(p));
  const int64_t d = p.head_dim;
#pragma omp parallel for schedule(static) if (p.num_rows > 64)
  for (int64_t r = 0; r < p.num_rows; ++r) {
    const float la = p.lse_a[r], lb = p.lse_b[r];
    const float* a = p.out_a + r * d;
    const float* b = p.out_b + r * d;
    float* out = p.out + r * d;
    const float m = std::max(la, lb);
    if (m == -std::numeric_limits<float>::infinity()) {  // both empty; also keeps (−inf) − (−inf) out
      std::fill(out, out + d, 0.0f);
      if (p.lse) p.lse[r] = m;
      continue;
    }
    const float wa = std::exp(la - m), wb = std::exp(lb - m);  // exp(−inf) = 0 for an empty side
    const float sum = wa + wb;
    const float ca = wa / sum, cb = wb / sum;
    // An empty side's out is skipped, not multiplied by 0: it may be NaN.
    for (int64_t e = 0; e < d; ++e) {
      const float va = ca > 0.0f ? ca * a[e] : 0.0f;
      const float vb = cb > 0.0f ? cb * b[e] : 0.0f;
      out[e] = va + vb;
    }
    if (p.lse) p.lse[r] = m + std::log(sum);
  }
  return Status::Ok();
}

}  // namespace mnemo
