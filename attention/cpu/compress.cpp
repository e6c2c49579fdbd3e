// CPU reference of incremental key compression (see attention/compress.h).
//
// Each new window is summed token by token in index order (fp32, rotated on the fly when a RopeTable is
// given), then scaled by 1 / kernel_size. Windows are independent, so they run in parallel; a
// window's value does not depend on which call computed it.
#include <algorithm>
#include <vector>

#include "attention/compress.h"

namespace mnemo {

CompressedKeys::CompressedKeys(int num_kv_heads, int head_dim, int kernel_size, int kernel_stride)
    : num_kv_heads_(num_kv_heads), head_dim_(head_dim), kernel_size_(kernel_size), kernel_stride_(kernel_stride) {}

void CompressedKeys::reserve(int64_t windows) {
  if (windows <= capacity_) return;
  const int64_t cap = std::max<int64_t>({windows, capacity_ * 2, 64});
  std::vector<float> grown(static_cast<size_t>(num_kv_heads_ * cap * head_dim_));
  for (int g = 0; g < num_kv_heads_; ++g) {
    const float* src = data_.data() + g * capacity_ * head_dim_;
    std::copy(src, src + num_compressed_ * head_dim_, grown.data() + g * cap * head_dim_);
  }
  data_ = std::move(grown);
  capacity_ = cap;
}

CompressedKeysView CompressedKeys::view() const {
  CompressedKeysView v;
  v.keys = data_.data();
  v.head_stride = capacity_ * head_dim_;
  v.num_compressed = num_compressed_;
  v.num_kv_heads = num_kv_heads_;
  v.head_dim = head_dim_;
  v.kernel_size = kernel_size_;
  v.kernel_stride = kernel_stride_;
  return v;
}

Status CompressedKeys::append_block(const PagedKv& kv, int64_t num_tokens, const RopeTable* key_rope) {
  if (kernel_size_ <= 0 || kernel_stride_ <= 0 || kernel_stride_ > kernel_size_) {
    return invalid_argument("compressed keys: need 0 < kernel_stride <= kernel_size, got kernel_size ",
                            kernel_size_, ", kernel_stride ", kernel_stride_);
  }
  if (!kv.arena || !kv.block_table) return invalid_argument("compressed keys: kv.arena and kv.block_table must be set");
  if (kv.num_kv_heads != num_kv_heads_ || kv.head_dim != head_dim_) {
    return invalid_argument("compressed keys: kv (num_kv_heads, head_dim): expected (", num_kv_heads_, ", ",
                            head_dim_, "), got (", kv.num_kv_heads, ", ", kv.head_dim, ")");
  }
  if (num_tokens < num_tokens_ || num_tokens > kv.kv_len) {
    return invalid_argument("compressed keys: num_tokens ", num_tokens, ": expected in [", num_tokens_,
                            " (already seen), kv_len = ", kv.kv_len, "]");
  }
  const int rotated = key_rope ? 1 : 0;
  if (rotated_ >= 0 && rotated != rotated_) {
    return invalid_argument("compressed keys: key_rope ", rotated ? "given" : "null",
                            ", but earlier windows were computed ", rotated_ ? "rotated" : "un-rotated");
  }
  if (key_rope && (key_rope->rope().head_dim() != head_dim_ || key_rope->size() < num_tokens)) {
    return invalid_argument("compressed keys: key_rope must have head_dim ", head_dim_, " and cover ", num_tokens,
                            " positions; has head_dim ", key_rope->rope().head_dim(), ", ", key_rope->size(),
                            " positions");
  }
  const int64_t total = num_windows(num_tokens, kernel_size_, kernel_stride_);
  const int64_t first = num_compressed_;
  reserve(total);
  const int64_t d = head_dim_;
  const int64_t bt = kv.block_tokens;
  const float inv = 1.0f / static_cast<float>(kernel_size_);
#pragma omp parallel if ((total - first) * num_kv_heads_ > 8)
  {
    std::vector<float> sum(static_cast<size_t>(d)), row(static_cast<size_t>(d));
#pragma omp for collapse(2) schedule(static)
    for (int g = 0; g < num_kv_heads_; ++g) {
      for (int64_t j = first; j < total; ++j) {
        std::fill(sum.begin(), sum.end(), 0.0f);
        const int64_t t0 = j * kernel_stride_;
        for (int64_t t = t0; t < t0 + kernel_size_; ++t) {
          const float* k = kv.k_block(t / bt, g) + (t % bt) * d;  // the window may straddle blocks
          const float* src = k;
          if (key_rope) {
            std::copy(k, k + d, row.data());
            key_rope->apply(t, row.data());
            src = row.data();
          }
          for (int64_t e = 0; e < d; ++e) sum[e] += src[e];
        }
        float* dst = data_.data() + (g * capacity_ + j) * d;
        for (int64_t e = 0; e < d; ++e) dst[e] = sum[e] * inv;
      }
    }
  }
  num_compressed_ = total;
  num_tokens_ = num_tokens;
  rotated_ = rotated;
  return Status::Ok();
}

}  // namespace mnemo
