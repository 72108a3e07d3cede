// Per-element math shared by the CPU reference and the CUDA kernels.
//
// Every function here is `DQ_HD` (host and device) and free of library calls, so the CPU backend
// runs exactly the code the kernels run and the CPU tests cover both. Later stages add rounding,
// clamping, the MSE scale candidates and the nibble order here; nothing else may duplicate them.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DQ_HD __host__ __device__ __forceinline__
#else
#define DQ_HD inline
#endif

namespace duquant::elementwise {

DQ_HD float f32_from_bits(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

DQ_HD std::uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

// bfloat16 is the upper half of an IEEE binary32: widening is exact.
DQ_HD float bf16_to_f32(std::uint16_t h) { return f32_from_bits(static_cast<std::uint32_t>(h) << 16); }

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, zeros, Inf, NaN payloads).
//   binary16: s eeeee mmmmmmmmmm        binary32: s eeeeeeee mmmmmmmmmmmmmmmmmmmmmmm
DQ_HD float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // Inf / NaN
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));  // 127 - 15 = 112
  if (mant == 0) return f32_from_bits(sign);                                       // +-0
  // Subnormal: shift the mantissa up until its leading 1 reaches the implicit-bit position.
  std::uint32_t e = 113u;  // exponent of 2^-14, the subnormal scale, before normalising
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return f32_from_bits(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

// binary32 -> bfloat16 with round-to-nearest-even (NaN stays a quiet NaN).
DQ_HD std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t bits = f32_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

}  // namespace duquant::elementwise
