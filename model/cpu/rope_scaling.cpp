#include <cmath>

#include "model/rope_scaling.h"

namespace mnemo {

bool rope_depends_on_length(const ModelConfig& config) {
  return config.rope_scaling.type == RopeScalingType::kDynamic ||
         config.rope_scaling.type == RopeScalingType::kLongRope;
}

Result<Rope> make_rope(const ModelConfig& config, int64_t seq_len) {
  const int64_t dim = config.head_dim;
  const int64_t half = dim / 2;
  const RopeScaling& rs = config.rope_scaling;
  double base = config.rope_theta;
  if (rs.type == RopeScalingType::kDynamic && seq_len > config.max_position_embeddings) {
    // transformers' dynamic NTK: the base grows with the sequence once past the trained length.
    const double ratio = rs.factor * static_cast<double>(seq_len) / static_cast<double>(config.max_position_embeddings);
    base *= std::pow(ratio - (rs.factor - 1.0), static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  Rope rope;
  rope.inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // f32 exponent as transformers (arange(0, dim, 2).float() / dim), power in double.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(dim);
    rope.inv_freq[i] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(expo)));
  }
  switch (rs.type) {
    case RopeScalingType::kNone:
    case RopeScalingType::kDynamic:
      break;
    case RopeScalingType::kLinear:
      for (float& f : rope.inv_freq) f = static_cast<float>(f / rs.factor);
      break;
    case RopeScalingType::kLlama3: {
      const double old_len = static_cast<double>(rs.original_max_position_embeddings);
      const double low_wavelen = old_len / rs.low_freq_factor;
      const double high_wavelen = old_len / rs.high_freq_factor;
      for (float& f : rope.inv_freq) {
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > low_wavelen) {
          f = static_cast<float>(f / rs.factor);
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
          f = static_cast<float>((1.0 - smooth) * f / rs.factor + smooth * f);
        }
      }
      break;
    }
    case RopeScalingType::kLongRope: {
      const double orig = static_cast<double>(rs.original_max_position_embeddings);
      const bool use_long = static_cast<double>(seq_len) > orig;
      const std::vector<double>& ext = use_long ? rs.long_factor : rs.short_factor;
      if (static_cast<int64_t>(ext.size()) != half) {
        return invalid_argument("rope_scaling longrope: ", use_long ? "long_factor" : "short_factor",
                                " has ", ext.size(), " entries, expected head_dim/2 = ", half);
      }
      for (int64_t i = 0; i < half; ++i) rope.inv_freq[i] = static_cast<float>(rope.inv_freq[i] / ext[i]);
      const double factor = static_cast<double>(config.max_position_embeddings) / orig;
      if (rs.attention_factor) {
        rope.scale = static_cast<float>(*rs.attention_factor);
      } else if (factor > 1.0) {
        rope.scale = static_cast<float>(std::sqrt(1.0 + std::log(factor) / std::log(orig)));
      }
      break;
    }
    case RopeScalingType::kYarn:
      return unimplemented("rope_scaling type 'yarn' is not supported yet");
  }
  return rope;
}

}  // namespace mnemo
