// Element types and the scalar conversions between them.
//
// bf16 and f16 are stored as raw 16-bit patterns (no CUDA types here, so the CPU build stands alone).
// float -> bf16/f16 rounds to nearest even, as PyTorch and CUDA's __float2bfloat16 do, so weights and
// KV converted on either backend are bit-identical.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace mnemo {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kU8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "f32", "f16", "bf16", "i32", "i64", "u8"
// Parses mnemo's names and safetensors' ("F32", "BF16", ...); false when unknown.
bool parse_dtype(std::string_view name, DType* out);

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t{h} << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);

// Converts `n` elements of `src_dtype` at `src` into floats at `dst`. Supports f32, f16, bf16.
void convert_to_f32(const void* src, DType src_dtype, float* dst, size_t n);
// Converts `n` floats into `dst_dtype` (f32, f16, bf16).
void convert_from_f32(const float* src, void* dst, DType dst_dtype, size_t n);

}  // namespace mnemo
