// dtype names and bit widths, and the element conversions of include/duquant/elementwise.hpp:
// f16/bf16 -> f32 on all 65,536 inputs and f32 -> bf16 rounding, held to Eigen's half/bfloat16.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/dtype.hpp"

namespace {

using duquant::formats::DType;
namespace ew = duquant::elementwise;

std::uint32_t bits_of(float f) { return ew::f32_to_bits(f); }

// Equal bit for bit, except that any NaN equals any NaN of the same sign (payloads may differ).
::testing::AssertionResult same_float(float expected, float actual) {
  if (std::isnan(expected) && std::isnan(actual) && std::signbit(expected) == std::signbit(actual))
    return ::testing::AssertionSuccess();
  if (bits_of(expected) == bits_of(actual)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected " << expected << " (0x" << std::hex << bits_of(expected) << ") got "
                                       << actual << " (0x" << bits_of(actual) << ")";
}

struct NamedDType {
  DType dtype;
  const char* name;
  unsigned bits;
};

// The safetensors format's 20 dtypes, as its specification spells them.
const std::vector<NamedDType> kAll{
    {DType::BOOL, "BOOL", 8},       {DType::F4, "F4", 4},           {DType::F6_E2M3, "F6_E2M3", 6},
    {DType::F6_E3M2, "F6_E3M2", 6}, {DType::U8, "U8", 8},           {DType::I8, "I8", 8},
    {DType::F8_E5M2, "F8_E5M2", 8}, {DType::F8_E4M3, "F8_E4M3", 8}, {DType::F8_E8M0, "F8_E8M0", 8},
    {DType::I16, "I16", 16},        {DType::U16, "U16", 16},        {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},      {DType::I32, "I32", 32},        {DType::U32, "U32", 32},
    {DType::F32, "F32", 32},        {DType::F64, "F64", 64},        {DType::I64, "I64", 64},
    {DType::U64, "U64", 64},        {DType::C64, "C64", 64},
};

TEST(DtypeNames, AllTwentyRoundTrip) {
  ASSERT_EQ(kAll.size(), 20u);
  std::set<std::string> names;
  for (const auto& d : kAll) {
    SCOPED_TRACE(d.name);
    EXPECT_EQ(duquant::formats::dtype_name(d.dtype), d.name);
    EXPECT_EQ(duquant::formats::dtype_bits(d.dtype), d.bits);
    const auto parsed = duquant::formats::parse_dtype(d.name);
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, d.dtype);
    names.insert(d.name);
  }
  EXPECT_EQ(names.size(), 20u);
}

TEST(DtypeNames, UnknownSpellingsAreRejected) {
  for (const char* name : {"", "f32", "FP32", "F128", "BF16 ", " F16", "F8", "C128", "float32", "I4"})
    EXPECT_FALSE(duquant::formats::parse_dtype(name).has_value()) << "'" << name << "'";
}

TEST(DtypeNames, OnlyF32F16Bf16ConvertToF32) {
  for (const auto& d : kAll) {
    const bool expected = d.dtype == DType::F32 || d.dtype == DType::F16 || d.dtype == DType::BF16;
    EXPECT_EQ(duquant::formats::converts_to_f32(d.dtype), expected) << d.name;
  }
}

TEST(DtypeF16, KnownValues) {
  EXPECT_EQ(ew::f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(ew::f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(ew::f16_to_f32(0x7bff), 65504.0f);               // largest finite
  EXPECT_EQ(ew::f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(ew::f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(ew::f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(bits_of(ew::f16_to_f32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(ew::f16_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(ew::f16_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(ew::f16_to_f32(0x7c01)));
  EXPECT_EQ(bits_of(ew::f16_to_f32(0x7e00)), 0x7fc00000u);  // quiet NaN, payload kept in place
}

TEST(DtypeF16, AllInputsMatchEigenHalf) {
  int mismatches = 0;
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const Eigen::half e(Eigen::half_impl::raw_uint16_to_half(static_cast<std::uint16_t>(h)));
    const auto r = same_float(static_cast<float>(e), ew::f16_to_f32(static_cast<std::uint16_t>(h)));
    if (!r && ++mismatches <= 10) ADD_FAILURE() << "f16 0x" << std::hex << h << ": " << r.message();
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(DtypeBf16, AllInputsMatchEigenBfloat16) {
  int mismatches = 0;
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const Eigen::bfloat16 e(Eigen::bfloat16_impl::raw_uint16_to_bfloat16(static_cast<std::uint16_t>(h)));
    const float mine = ew::bf16_to_f32(static_cast<std::uint16_t>(h));
    const auto r = same_float(static_cast<float>(e), mine);
    if (!r && ++mismatches <= 10) ADD_FAILURE() << "bf16 0x" << std::hex << h << ": " << r.message();
    // Widening is exact: the float's upper half is the input, payloads and signs included.
    if (bits_of(mine) != h << 16 && ++mismatches <= 10) ADD_FAILURE() << "bf16 0x" << std::hex << h << " not exact";
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(DtypeBf16, RoundingKnownCases) {
  auto to_bf16 = [](std::uint32_t f) { return ew::f32_to_bf16(ew::f32_from_bits(f)); };
  EXPECT_EQ(to_bf16(0x3f800000u), 0x3f80);  // 1.0 exact
  EXPECT_EQ(to_bf16(0x3f807fffu), 0x3f80);  // below half: down
  EXPECT_EQ(to_bf16(0x3f808000u), 0x3f80);  // tie, 0x3f80 even: stays
  EXPECT_EQ(to_bf16(0x3f818000u), 0x3f82);  // tie, 0x3f81 odd: up to even
  EXPECT_EQ(to_bf16(0x3f808001u), 0x3f81);  // above half: up
  EXPECT_EQ(to_bf16(0xbf818000u), 0xbf82);  // negative tie: magnitude to even
  EXPECT_EQ(to_bf16(0x7f7fffffu), 0x7f80);  // FLT_MAX overflows to +Inf
  EXPECT_EQ(to_bf16(0xff7fffffu), 0xff80);  // -FLT_MAX to -Inf
  EXPECT_EQ(to_bf16(0x7f7f7fffu), 0x7f7f);  // just below the overflow tie: largest finite bf16
  EXPECT_EQ(to_bf16(0x7f800000u), 0x7f80);  // Inf stays Inf
  EXPECT_EQ(to_bf16(0x00000001u), 0x0000);  // smallest subnormal rounds to +0
  EXPECT_EQ(to_bf16(0x80000000u), 0x8000);  // -0 keeps its sign
  EXPECT_EQ(to_bf16(0x00008000u), 0x0000);  // subnormal tie to even (0)
  EXPECT_EQ(to_bf16(0x00018000u), 0x0002);  // subnormal tie to even (up)
}

TEST(DtypeBf16, NanStaysNan) {
  // Payload only in the low half: truncation alone would give Inf.
  for (std::uint32_t f : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0xffffffffu, 0x7f80ffffu}) {
    const std::uint16_t b = ew::f32_to_bf16(ew::f32_from_bits(f));
    EXPECT_TRUE(std::isnan(ew::bf16_to_f32(b))) << std::hex << f << " -> " << b;
    EXPECT_EQ(b & 0x8000u, (f >> 16) & 0x8000u) << std::hex << f;
  }
}

TEST(DtypeBf16, RoundingMatchesEigen) {
  // Every upper half with the low halves where rounding decides, then random floats.
  std::vector<std::uint32_t> inputs;
  for (std::uint32_t hi = 0; hi <= 0xffff; ++hi)
    for (std::uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xc000u, 0xffffu})
      inputs.push_back(hi << 16 | lo);
  std::mt19937 rng(20240611);
  for (int i = 0; i < (1 << 20); ++i) inputs.push_back(static_cast<std::uint32_t>(rng()));

  int mismatches = 0;
  for (const std::uint32_t f : inputs) {
    const float x = ew::f32_from_bits(f);
    const std::uint16_t mine = ew::f32_to_bf16(x);
    const std::uint16_t eigen = Eigen::bfloat16(x).value;
    const bool ok =
        std::isnan(x) ? std::isnan(ew::bf16_to_f32(mine)) && (mine & 0x8000) == (eigen & 0x8000) : mine == eigen;
    if (!ok && ++mismatches <= 10)
      ADD_FAILURE() << "f32 0x" << std::hex << f << ": mine 0x" << mine << ", Eigen 0x" << eigen;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(DtypeConvert, ConvertToF32DecodesEachFloatType) {
  // Unaligned source: one byte of offset in front of every buffer.
  const unsigned char f32_bytes[] = {0xff, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc1};  // 1.0, -10.0
  const unsigned char f16_bytes[] = {0xff, 0x00, 0x3c, 0x00, 0xc5, 0x01, 0x00};              // 1.0, -5.0, 2^-24
  const unsigned char bf16_bytes[] = {0xff, 0x80, 0x3f, 0x20, 0xc1};                         // 1.0, -10.0
  float out[3] = {};
  duquant::formats::convert_to_f32(DType::F32, reinterpret_cast<const std::byte*>(f32_bytes + 1), 2, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -10.0f);
  duquant::formats::convert_to_f32(DType::F16, reinterpret_cast<const std::byte*>(f16_bytes + 1), 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -5.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));
  duquant::formats::convert_to_f32(DType::BF16, reinterpret_cast<const std::byte*>(bf16_bytes + 1), 2, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -10.0f);
}

TEST(DtypeConvert, NonFloatDtypeIsAnInternalError) {
  const std::byte src[4] = {};
  float out[1];
  try {
    duquant::formats::convert_to_f32(DType::I32, src, 1, out);
    FAIL() << "no error";
  } catch (const duquant::Error& e) {
    EXPECT_EQ(e.kind(), duquant::ErrorKind::internal);
    EXPECT_NE(std::string(e.what()).find("dtype I32"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace duquant::formats {
namespace {

// convert_from_f32 stores what round_to_dtype says a value becomes, and convert_to_f32 reads it back:
// ties to even (1 + 2^-8 in BF16, 1 + 2^-11 in F16), overflow to infinity, subnormals, signed zero.
TEST(DtypeFromF32, StoresWhatRoundToDtypeSays) {
  const std::vector<float> values = {0.0f,           -0.0f,        1.0f,           1.00390625f,    1.01171875f,
                                     1.00048828125f, -3.14159265f, 65504.0f,       65520.0f,       1e-6f,
                                     5.96e-8f,       3.0e38f,      -3.4028235e38f, 1.17549435e-38f};
  for (DType d : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<std::byte> bytes(values.size() * dtype_bits(d) / 8);
    convert_from_f32(d, values.data(), values.size(), bytes.data());
    std::vector<float> back(values.size());
    convert_to_f32(d, bytes.data(), values.size(), back.data());
    for (std::size_t i = 0; i < values.size(); ++i) {
      const float want = round_to_dtype(d, values[i]);
      EXPECT_EQ(std::bit_cast<std::uint32_t>(back[i]), std::bit_cast<std::uint32_t>(want))
          << dtype_name(d) << " " << values[i];
    }
  }
  EXPECT_EQ(round_to_dtype(DType::BF16, 1.00390625f), 1.0f);       // a tie: to even
  EXPECT_EQ(round_to_dtype(DType::BF16, 1.01171875f), 1.015625f);  // a tie: to even (up)
  EXPECT_EQ(round_to_dtype(DType::F16, 1.00048828125f), 1.0f);     // a tie: to even
  EXPECT_TRUE(std::isinf(round_to_dtype(DType::F16, 65520.0f)));   // past the largest F16
  EXPECT_EQ(round_to_dtype(DType::F16, 65504.0f), 65504.0f);
  EXPECT_THROW(convert_from_f32(DType::I8, values.data(), 1, std::vector<std::byte>(1).data()), Error);
}

}  // namespace
}  // namespace duquant::formats
