// Per-element math shared by the CPU reference and the CUDA kernels.
//
// Every function here is `DQ_HD` (host and device) and free of library calls, so the CPU backend
// runs exactly the code the kernels run and the CPU tests cover both. Later stages add rounding,
// clamping, the MSE scale candidates and the nibble order here; nothing else may duplicate them.
#pragma once

#include <cmath>
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
  if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (mant << 13));       // Inf / NaN
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

// binary32 -> IEEE binary16 with round-to-nearest-even: |f| ≥ 65520 (halfway past the largest
// half, 65504) becomes ±Inf, magnitudes down to 2^-25 become subnormals (exactly 2^-25 is a tie
// and rounds to ±0), NaN becomes a quiet NaN keeping the sign and the top 10 payload bits.
DQ_HD std::uint16_t f32_to_f16(float f) {
  const std::uint32_t bits = f32_to_bits(f);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));  // NaN
  if (mag >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // ≥ 65520 (incl. Inf): ±Inf
  if (mag >= 0x38800000u) {
    // Normal: rebias the exponent (127 - 15 = 112) and drop 13 mantissa bits, rounding to nearest
    // even; a carry out of the mantissa correctly bumps the exponent (at most to 0x7bff + 1 = Inf,
    // excluded above).
    const std::uint32_t rebased = mag - (112u << 23);
    const std::uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | ((rebased + rounding) >> 13));
  }
  if (mag <= 0x33000000u) return sign;  // ≤ 2^-25: rounds to ±0 (2^-25 itself is a tie, to even)
  // Subnormal result: the value is significand · 2^(e - 150) = (significand >> (126 - e)) units of
  // 2^-24; shift 14..24. A result of 0x400 is the smallest normal, encoded correctly as is.
  const std::uint32_t e = mag >> 23;
  const std::uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;
  std::uint32_t q = significand >> shift;
  const std::uint32_t rem = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u) != 0)) ++q;
  return static_cast<std::uint16_t>(sign | q);
}

}  // namespace duquant::elementwise

// ---------------------------------------------------------------------------------------------
// Quantization: symmetric, per output row, as the runtime does it (reference section 4).

namespace duquant::elementwise {

// Largest code of a signed `bits`-bit integer: 7 for 4 bits, 127 for 8 bits.
DQ_HD int qmax(int bits) { return (1 << (bits - 1)) - 1; }

// Scale candidates of the MSE search: base / alpha, in this order; the first smallest error wins.
inline constexpr int kScaleCandidates = 5;
DQ_HD float scale_alpha(int k) {
  constexpr float alphas[kScaleCandidates] = {0.5f, 0.75f, 1.0f, 1.25f, 1.5f};
  return alphas[k];
}

// The MSE search's base scale of a row: max(max|w| / qmax, 1e-8), in float32 as the runtime.
DQ_HD float base_scale(float max_abs, int bits) {
  const float s = max_abs / static_cast<float>(qmax(bits));
  return s > 1e-8f ? s : 1e-8f;
}

// The reference's weight_scale member: max(max|w|, 1e-8) / 7, whatever the weight bits.
DQ_HD float reference_weight_scale(float max_abs) { return (max_abs > 1e-8f ? max_abs : 1e-8f) / 7.0f; }

// Round half to even (torch.round) without a library call, so loops vectorize: adding and then
// subtracting 1.5 * 2^23 leaves no fraction bits, and IEEE addition rounds ties to even. Exact for
// |x| < 2^22; larger floats are returned as they are (every caller clamps far below that).
// Must not be compiled with -ffast-math (which would fold the two additions).
DQ_HD float round_half_even(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (x < 4194304.0f && x > -4194304.0f) ? (x + magic) - magic : x;
}

// The code of one value as a float: clamp(round_half_even(w / s), lo, hi), with a true division
// (lo = -qmax-1, hi = qmax). The magic-number rounding needs no range check here: any |x| too
// large for it to round exactly still lands beyond the clamp on the correct side. Branch-free,
// so loops over it vectorize.
DQ_HD float quantize_code(float w, float s, float lo, float hi) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float r = (w / s + magic) - magic;
  const float c = r < lo ? lo : r;
  return c > hi ? hi : c;
}

// Code of one value: clamp(round_half_even(w / s), -qmax-1, qmax), with a true division.
DQ_HD int quantize(float w, float s, int bits) {
  const float hi = static_cast<float>(qmax(bits));
  return static_cast<int>(quantize_code(w, s, -hi - 1.0f, hi));
}

// Squared error of one value quantized with scale s: (q*s - w)^2 in float32, as the runtime.
DQ_HD float squared_error(float w, float s, float lo, float hi) {
  const float d = quantize_code(w, s, lo, hi) * s - w;
  return d * d;
}

// The same squared error with the division replaced by a multiplication by 1/s: cheaper, and
// within one rounding step of squared_error. Used only to rank choices (the signs of the output
// rotations), never for the codes written.
DQ_HD float squared_error_recip(float w, float inv_s, float s, float lo, float hi) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float r = (w * inv_s + magic) - magic;
  const float c = r < lo ? lo : r;
  const float d = (c > hi ? hi : c) * s - w;
  return d * d;
}

// quantized.safetensors stores 4-bit codes two per byte, q + 8 in each nibble:
//   byte k of a row:  bit 7..4 = code of column 2k+1 (+8)   bit 3..0 = code of column 2k (+8)
// An odd last column leaves the high nibble at 8 (code 0).
DQ_HD constexpr long long nibble_row_bytes(long long cols) { return (cols + 1) / 2; }  // bytes of a row of `cols` codes
DQ_HD unsigned char pack_nibbles(int code_even, int code_odd) {
  return static_cast<unsigned char>(((code_odd + 8) << 4) | (code_even + 8));
}
DQ_HD int unpack_low(unsigned char byte) { return (byte & 0x0f) - 8; }
DQ_HD int unpack_high(unsigned char byte) { return (byte >> 4) - 8; }

// Zigzag: position k of the permutation takes the channel order[k / 2] (even k) or
// order[n - 1 - k / 2] (odd k), where `order` lists channels by descending energy.
DQ_HD long long zigzag_rank(long long k, long long n) { return (k % 2 == 0) ? k / 2 : n - 1 - k / 2; }

// ---------------------------------------------------------------------------------------------
// Channel energies (reference section 3): e_j = mean_i W_ij^2, smoothed (1-λ) e + λ mean(e).
//
// Each column's sum of squares runs over the rows in order, in double. A product of two floats is
// exact in double, so the sum is the same with or without fused multiply-add: a GPU thread that
// walks its column top to bottom gets the CPU's bits.
DQ_HD double energy_add(double sum, float w) { return sum + static_cast<double>(w) * static_cast<double>(w); }
// The column's mean square in float32: float(sum / rows) (rows floored at 1).
DQ_HD float energy_mean(double sum, long long rows) {
  return static_cast<float>(sum / static_cast<double>(rows > 1 ? rows : 1));
}
// The smoothed energy in float32; `mean` is float(Σ_j e_j / n) with the sum in double, in column order.
DQ_HD float smoothed_energy(float e, float mean, float lambda) { return (1.0f - lambda) * e + lambda * mean; }

// ---------------------------------------------------------------------------------------------
// Eigenvector signs: each rotation column is fixed so that its entry of largest magnitude is
// positive. This is the index of that entry among v[0], v[stride], ..., v[(n-1)·stride]: the first
// one on ties.
DQ_HD int largest_magnitude_index(const double* v, int n, long long stride) {
  int largest = 0;
  double best = v[0] < 0 ? -v[0] : v[0];
  for (int i = 1; i < n; ++i) {
    const double a = v[i * stride] < 0 ? -v[i * stride] : v[i * stride];
    if (a > best) {
      best = a;
      largest = i;
    }
  }
  return largest;
}

// ---------------------------------------------------------------------------------------------
// Calibration (docs/calibration.md): the activation transform and the per-channel percentile.
//
// One input of the transform: x / s as a float32 division (as a runtime dividing its float32
// activations), widened to double; without smoothing x itself.
DQ_HD double activation_input(float x, const float* smooth, long long channel) {
  return smooth ? static_cast<double>(x / smooth[channel]) : static_cast<double>(x);
}
// Output c of one Rin block (row-major s×s): Σ_k v(k)·Rin[k, c] in double, k in order, rounded to
// float32 once; v(k) is the block's k-th activation_input (the CPU passes them precomputed, a GPU
// thread computes them on the fly). Every product of two float32 values is exact in double, so
// fused multiply-add gives the same sum.
template <typename Inputs>
DQ_HD float transformed_activation(const Inputs& v, const float* rot, long long s, long long c) {
  double acc = 0;
  for (long long k = 0; k < s; ++k) acc += v(k) * static_cast<double>(rot[k * s + c]);
  return static_cast<float>(acc);
}
// torch.quantile's linear interpolation between the values of ranks floor(pos) and the next:
// lo + (hi - lo) · (pos - floor(pos)), in double, rounded to float32.
DQ_HD float quantile_interpolate(double lo, double hi, double pos, long long lo_rank) {
  return static_cast<float>(lo + (hi - lo) * (pos - static_cast<double>(lo_rank)));
}

// ---------------------------------------------------------------------------------------------
// The order of the MSE search's error sums, which both backends follow so that they choose the
// same scale from the same row bit for bit:
//   the row is cut into chunks of kErrorFlush columns (the last chunk ends at the last multiple of
//   kErrorLanes); within a chunk, lane j (0..kErrorLanes-1) sums in float32 the errors of columns
//   begin+j, begin+j+kErrorLanes, ...; at the end of the chunk the lanes are added to a double total
//   in lane order; the columns past the last multiple of kErrorLanes are added to the total one by
//   one. The CPU runs the lanes side by side (vector registers), a GPU as kErrorLanes threads.
inline constexpr int kErrorLanes = 8;
inline constexpr long long kErrorFlush = 512;

// End of the chunk that starts at `begin` (a multiple of kErrorFlush) in a row of n columns.
DQ_HD long long error_chunk_end(long long begin, long long n) {
  const long long end = begin + kErrorFlush < n ? begin + kErrorFlush : n;
  return end / kErrorLanes * kErrorLanes;
}

// Lane `lane`'s float32 sum over the chunk [begin, end) for scale s.
DQ_HD float error_lane_sum(const float* w, long long begin, long long end, int lane, float s, float lo, float hi) {
  float sum = 0.0f;
  for (long long c = begin + lane; c < end; c += kErrorLanes) sum += squared_error(w[c], s, lo, hi);
  return sum;
}

// The sign search ranks its choices on at most kSignSearchColumns columns of each row, every
// sign_search_stride-th column from the first.
inline constexpr long long kSignSearchColumns = 256;
DQ_HD long long sign_search_stride(long long cols) { return (cols + kSignSearchColumns - 1) / kSignSearchColumns; }
DQ_HD long long sign_search_picked(long long cols) {
  const long long stride = sign_search_stride(cols);
  return (cols + stride - 1) / stride;
}

// The sign search's error of one sampled row (a ranking figure, never written): the smallest over
// the MSE candidates of the summed squared_error_recip, the scale taken from the full row's maximum
// `row_max`. Lanes as above without flushing (a sampled row is short), then the tail one by one.
DQ_HD double sampled_row_error(const float* w, long long cols, float row_max, int bits) {
  constexpr int kC = kScaleCandidates;
  const float hi = static_cast<float>(qmax(bits)), lo = -hi - 1.0f;
  const float base = base_scale(row_max, bits);
  float s[kC], inv[kC];
  for (int k = 0; k < kC; ++k) {
    s[k] = base / scale_alpha(k);
    inv[k] = 1.0f / s[k];
  }
  float lane[kC][kErrorLanes] = {};
  long long c = 0;
  for (; c + kErrorLanes <= cols; c += kErrorLanes)
    for (int k = 0; k < kC; ++k)
      for (int j = 0; j < kErrorLanes; ++j) lane[k][j] += squared_error_recip(w[c + j], inv[k], s[k], lo, hi);
  double best = 0;
  for (int k = 0; k < kC; ++k) {
    double err = 0;
    for (int j = 0; j < kErrorLanes; ++j) err += lane[k][j];
    for (long long t = c; t < cols; ++t) err += squared_error_recip(w[t], inv[k], s[k], lo, hi);
    if (k == 0 || err < best) best = err;
  }
  return best;
}

}  // namespace duquant::elementwise
