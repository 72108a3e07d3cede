// Conformance vectors: a small golden case per layer that any runtime can test itself against
// (docs/pack-format.md, "Conformance vectors").
//
//   L.test_x     [n, I] float32   deterministic inputs (conformance_inputs)
//   L.test_y_fp  [n, O] float32   x Wᵀ + b with the checkpoint's weight and bias
//   L.test_y_q   [n, O] float32   the pack's contract: x_t = x[:, perm] · Rin (per block),
//                                 y_t = x_t · (codes × scales)ᵀ, then by row_rot mode:
//                                 restore: y = y_t · Rout (per row block) + b;  0: y = y_t + b;
//                                 propagate: y = y_t + b · Routᵀ (per row block, the rotated basis)
// All sums are taken in double and rounded to float32 once at the end, so the values do not depend
// on summation order or thread count.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "duquant/duquant_math.hpp"

namespace duquant {

inline constexpr std::int64_t kConformanceRows = 4;

// Deterministic inputs [rows, in_features], row-major: standard normal values from a fixed
// counter-based generator, rounded to float32 (the same for every layer of that width).
std::vector<float> conformance_inputs(std::int64_t rows, std::int64_t in_features);

// x Wᵀ + b, [rows, O]. `bias` may be empty.
std::vector<float> conformance_reference_output(std::span<const float> x, std::int64_t rows, const WeightView& w,
                                                std::span<const float> bias);

// What a pack defines for input x: see the header comment. `perm` may be empty (identity);
// `r_out` is empty when row_rot is 0. Rotation blocks are at their true widths.
std::vector<float> conformance_pack_output(std::span<const float> x, std::int64_t rows, std::int64_t out_features,
                                           std::int64_t in_features, std::span<const std::int64_t> perm,
                                           const std::vector<MatrixF>& r_in, std::span<const std::int8_t> codes,
                                           std::span<const float> scales, const std::vector<MatrixF>& r_out,
                                           RowRot row_rot, std::span<const float> bias);

}  // namespace duquant
