// The element types of the safetensors format, and conversion of the float ones to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace duquant::formats {

// Every dtype the safetensors format defines. Only F32, F16 and BF16 convert to float32 (and so
// can be quantized); the others are recognised, listed and carried, never converted.
enum class DType : std::uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64,
  C64,
};

// The format's spelling ("BF16"), and the reverse (nullopt for a name the format does not define).
std::string_view dtype_name(DType dtype) noexcept;
std::optional<DType> parse_dtype(std::string_view name) noexcept;
// Bits per element: 4 for F4, 6 for the F6 types, 8..64 for the rest.
unsigned dtype_bits(DType dtype) noexcept;
// True for F32, F16 and BF16: the dtypes a layer may be stored in to be quantized.
bool converts_to_f32(DType dtype) noexcept;

// Converts `count` little-endian elements at `src` (any alignment) to float32.
// `dtype` must satisfy converts_to_f32; `src` must hold count * dtype_bits / 8 bytes.
void convert_to_f32(DType dtype, const std::byte* src, std::uint64_t count, float* dst);
// The other way: `count` float32 values encoded as little-endian `dtype` elements at `dst` (any
// alignment), rounded to nearest even; `dtype` must satisfy converts_to_f32.
void convert_from_f32(DType dtype, const float* src, std::uint64_t count, std::byte* dst);
// `v` rounded to `dtype` (F32, F16, BF16) and back: what a value becomes once stored.
float round_to_dtype(DType dtype, float v);

}  // namespace duquant::formats
