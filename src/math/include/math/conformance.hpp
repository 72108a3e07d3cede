// Conformance vectors: a small golden case per layer that any runtime can test itself against
// (docs/pack-format.md, "Conformance vectors").
//
//   L.test_x     [n, I] float32   deterministic inputs (conformance_inputs)
//   L.test_y_fp  [n, O] float32   x Wᵀ + b with the checkpoint's weight and bias
//   L.test_y_q   [n, O] float32   the pack's contract: x_t = x[:, perm] · Rin (per block),
//                                 y_t = x_t · (codes × scales)ᵀ, then by row_rot mode:
//                                 restore: y = y_t · Rout (per row block) + b;  0: y = y_t + b;
//                                 propagate: y = y_t + b · Routᵀ (per row block, the rotated basis)
// All sums are taken in double and rounded to float32 once at the end; each output element is one
// sum in a fixed order, so the values do not depend on the thread count. Shapes and indices are
// checked (duquant::Error, kind format): the functions also run on pack files that are read back.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "math/duquant_math.hpp"

namespace duquant {

inline constexpr std::int64_t kConformanceRows = 4;
// Seed of the input generator: the ASCII bytes of "duquant" followed by a zero byte.
inline constexpr std::uint64_t kConformanceSeed = 0x6475717561'6E7400ull;

// Deterministic inputs [rows, in_features], row-major: standard normal values, rounded to float32
// (the same for every layer of that width). Element k (= r·in_features + c) takes outputs 2k and
// 2k+1 of the standard SplitMix64 stream seeded with kConformanceSeed (output n = mix(seed +
// (n+1)·0x9E3779B97F4A7C15)), u1 = ((out_2k >> 11) + 1)·2⁻⁵³ in (0, 1], u2 = (out_2k+1 >> 11)·2⁻⁵³,
// and is sqrt(−2 ln u1)·cos(2π u2) computed in double (Box–Muller, first output only).
std::vector<float> conformance_inputs(std::int64_t rows, std::int64_t in_features);

// p[r·outs + o] = Σ_j x[r·n + j] · double(w[o·n + j]) for r < rows, o < outs: each sum from 0 in
// the order of j (math/cpu_kernels.hpp's dot4_f32, four rows side by side), parallel over the
// outputs; every sum is the same whichever thread computes it.
std::vector<double> rows_times_transpose(std::span<const double> x, std::int64_t rows, std::int64_t n, const float* w,
                                         std::int64_t outs);

// x Wᵀ + b, [rows, O]. `bias` may be empty.
std::vector<float> conformance_reference_output(std::span<const float> x, std::int64_t rows, const WeightView& w,
                                                std::span<const float> bias);

// What a pack defines for input x: see the header comment. `perm` may be empty (identity);
// `r_out` is empty exactly when row_rot is 0. Rotation blocks are at their true widths (consecutive,
// covering in_features / out_features). `codes` are unpacked, row-major [O, I]; codes × scales is
// exact in double and each row's scale is applied after its sum.
// The activation side of the contract of a calibrated pack (docs/calibration.md): x is divided by
// `smooth` (when not empty) before the transform, x_t is computed as calibration.hpp's
// transform_activations does (rounded to float32) and, when `act_scale` is not empty,
// fake-quantized with it at `abits`; the weight side then proceeds from those float32 values.
struct ActivationContract {
  std::span<const float> smooth;
  std::span<const float> act_scale;
  int abits = 8;
  bool empty() const { return smooth.empty() && act_scale.empty(); }
};

std::vector<float> conformance_pack_output(std::span<const float> x, std::int64_t rows, std::int64_t out_features,
                                           std::int64_t in_features, std::span<const std::int64_t> perm,
                                           const std::vector<MatrixF>& r_in, std::span<const std::int8_t> codes,
                                           std::span<const float> scales, const std::vector<MatrixF>& r_out,
                                           RowRot row_rot, std::span<const float> bias,
                                           const ActivationContract& activations = {});

}  // namespace duquant
