// Static activation scales from calibration calls (docs/calibration.md).
//
// Per layer and per call: x (the layer's input, [tokens, I]) is divided by the smoothing scale when
// there is one, transformed exactly as the runtime does (x_t = x[:, perm], then each column block
// times its Rin), and each channel's `act_pct` percentile of |x_t| is taken with linear
// interpolation (as torch.quantile) and clamped at 1e-6; the running value is the element-wise max
// over the first `calib_steps` calls. Finally act_scale = max(p / qmax(abits), 1e-6).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "math/duquant_math.hpp"

namespace duquant {

// The largest |activation| that is packed: every value of a calibration call pack reads (the
// calibration and held-out calls, which become the conformance input test_x) and so every
// act_scale. Above it, float32 products with the weights and their sums of squares can overflow,
// and the pack's own conformance vectors would not verify. One rule for both sides: pack refuses a
// larger value (exit 6, naming the layer, the call and [row, column]); verify FAILs a test_x or an
// act_scale beyond it. So what pack writes, verify accepts.
inline constexpr float kLargestActivationMagnitude = 1e8f;
// The index of the first value that is not finite or whose magnitude is above
// kLargestActivationMagnitude; -1 when every value is packable.
inline std::ptrdiff_t first_unpackable_activation(std::span<const float> values) noexcept {
  for (std::size_t k = 0; k < values.size(); ++k)
    if (!(std::fabs(values[k]) <= kLargestActivationMagnitude)) return static_cast<std::ptrdiff_t>(k);
  return -1;
}

// The q-quantile (0 ≤ q ≤ 1) of `values` with linear interpolation between the two closest ranks,
// as torch.quantile(..., interpolation="linear"): position q·(n−1), computed in double. Reorders
// `values` (selection, not a full sort). `values` must not be empty.
float quantile_linear(std::span<float> values, double q);

// x_t = (x / smooth)[:, perm] with every column block multiplied by its Rin, [rows, I] row-major.
// Each element is one sum in double over the block, rounded to float32 once. `perm` and `smooth`
// may be empty (identity, no smoothing).
std::vector<float> transform_activations(std::span<const float> x, std::int64_t rows, std::int64_t in_features,
                                         std::span<const std::int64_t> perm, const std::vector<MatrixF>& r_in,
                                         std::span<const float> smooth);

// Fake-quantizes transformed activations in place: round-half-even(x_t / s_a) clamped to
// [−qmax−1, qmax], times s_a (float32, a true division), per channel.
void fake_quantize_activations(std::span<float> x_t, std::int64_t rows, std::span<const float> act_scale, int abits);

// One call's statistic: per channel, the q-quantile (0 < q ≤ 1) of |x_t| over the rows, clamped
// at 1e-6 (x_t: [rows, I] transformed activations).
std::vector<float> call_percentiles(std::span<const float> x_t, std::int64_t rows, std::int64_t in_features, double q);

// The running calibration statistics of one layer.
class ActivationCalibrator {
 public:
  ActivationCalibrator(std::int64_t in_features, double act_pct, int abits);
  // One call's transformed activations, [rows, I].
  void add_call(std::span<const float> x_t, std::int64_t rows);
  // One call's call_percentiles (computed elsewhere, e.g. on a device).
  void add_percentiles(std::span<const float> p);
  double quantile() const { return q_; }
  int steps() const { return steps_; }
  // max(p / qmax(abits), 1e-6) per channel; requires at least one call.
  std::vector<float> act_scale() const;

 private:
  std::int64_t in_features_;
  double q_;
  int abits_;
  int steps_ = 0;
  std::vector<float> running_;  // element-wise max over calls of max(percentile, 1e-6)
};

}  // namespace duquant
