#include "formats/dtype.hpp"

#include <array>
#include <bit>
#include <cstring>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"

static_assert(std::endian::native == std::endian::little,
              "duquant reads little-endian files by copying bytes: a big-endian host needs byte swaps");

namespace duquant::formats {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  unsigned bits;
};

constexpr std::array<DTypeInfo, 20> kDTypes{{
    {DType::BOOL, "BOOL", 8},       {DType::F4, "F4", 4},           {DType::F6_E2M3, "F6_E2M3", 6},
    {DType::F6_E3M2, "F6_E3M2", 6}, {DType::U8, "U8", 8},           {DType::I8, "I8", 8},
    {DType::F8_E5M2, "F8_E5M2", 8}, {DType::F8_E4M3, "F8_E4M3", 8}, {DType::F8_E8M0, "F8_E8M0", 8},
    {DType::I16, "I16", 16},        {DType::U16, "U16", 16},        {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},      {DType::I32, "I32", 32},        {DType::U32, "U32", 32},
    {DType::F32, "F32", 32},        {DType::F64, "F64", 64},        {DType::I64, "I64", 64},
    {DType::U64, "U64", 64},        {DType::C64, "C64", 64},
}};

const DTypeInfo& info(DType dtype) { return kDTypes[static_cast<std::size_t>(dtype)]; }

}  // namespace

std::string_view dtype_name(DType dtype) noexcept { return info(dtype).name; }

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

unsigned dtype_bits(DType dtype) noexcept { return info(dtype).bits; }

bool converts_to_f32(DType dtype) noexcept {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
}

void convert_to_f32(DType dtype, const std::byte* src, std::uint64_t count, float* dst) {
  // memcpy of each element: mapped data may sit at any alignment (the header length is free).
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, count * sizeof(float)); return;
    case DType::BF16:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = elementwise::bf16_to_f32(h);
      }
      return;
    case DType::F16:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = elementwise::f16_to_f32(h);
      }
      return;
    default:
      fail(ErrorKind::internal, "convert_to_f32 called with dtype {}, which is not a float type", dtype_name(dtype));
  }
}

void convert_from_f32(DType dtype, const float* src, std::uint64_t count, std::byte* dst) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, count * sizeof(float)); return;
    case DType::BF16:
    case DType::F16:
      for (std::uint64_t i = 0; i < count; ++i) {
        const std::uint16_t h =
            dtype == DType::BF16 ? elementwise::f32_to_bf16(src[i]) : elementwise::f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    default:
      fail(ErrorKind::internal, "convert_from_f32 called with dtype {}, which is not a float type", dtype_name(dtype));
  }
}

float round_to_dtype(DType dtype, float v) {
  switch (dtype) {
    case DType::BF16: return elementwise::bf16_to_f32(elementwise::f32_to_bf16(v));
    case DType::F16: return elementwise::f16_to_f32(elementwise::f32_to_f16(v));
    default: return v;
  }
}

}  // namespace duquant::formats
