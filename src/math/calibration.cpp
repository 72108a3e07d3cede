#include "math/calibration.hpp"

#include <algorithm>
#include <cmath>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"

namespace duquant {
namespace {
// Below this many multiply-adds a parallel region costs more than it saves (threads waking and
// meeting at the barrier for every call of a small layer).
constexpr std::int64_t kParallelWork = std::int64_t{1} << 20;
}  // namespace

float quantile_linear(std::span<float> values, double q) {
  DQ_CHECK(!values.empty(), internal, "quantile of no values");
  DQ_CHECK(q >= 0.0 && q <= 1.0, internal, "quantile {} outside [0, 1]", q);
  const auto n = static_cast<std::int64_t>(values.size());
  const double pos = q * static_cast<double>(n - 1);
  const auto lo = static_cast<std::int64_t>(std::floor(pos));
  const std::int64_t hi = std::min(lo + 1, n - 1);
  std::nth_element(values.begin(), values.begin() + lo, values.end());
  const double v_lo = values[static_cast<std::size_t>(lo)];
  // After nth_element everything past `lo` is >= values[lo]: the next rank is their minimum.
  const double v_hi = hi == lo ? v_lo : *std::min_element(values.begin() + lo + 1, values.end());
  return elementwise::quantile_interpolate(v_lo, v_hi, pos, lo);
}

std::vector<float> transform_activations(std::span<const float> x, std::int64_t rows, std::int64_t in_features,
                                         std::span<const std::int64_t> perm, const std::vector<MatrixF>& r_in,
                                         std::span<const float> smooth) {
  const std::int64_t n = in_features;
  DQ_CHECK(rows >= 0 && n >= 1 && static_cast<std::int64_t>(x.size()) == rows * n, internal,
           "activations: {} values for [{}, {}]", x.size(), rows, n);
  DQ_CHECK(perm.empty() || static_cast<std::int64_t>(perm.size()) == n, format, "activations: perm of {} for {} inputs",
           perm.size(), n);
  DQ_CHECK(smooth.empty() || static_cast<std::int64_t>(smooth.size()) == n, format,
           "activations: smooth_scale of {} for {} inputs", smooth.size(), n);
  for (std::int64_t p : perm) DQ_CHECK(p >= 0 && p < n, format, "activations: perm entry {} outside [0, {})", p, n);
  std::int64_t covered = 0;
  for (const MatrixF& r : r_in) {
    DQ_CHECK(r.rows() == r.cols() && r.rows() >= 1, format, "activations: Rin block of shape [{}, {}]", r.rows(),
             r.cols());
    covered += r.rows();
  }
  DQ_CHECK(covered == n, format, "activations: Rin blocks cover {} of {} inputs", covered, n);

  std::vector<float> out(x.size());
  std::int64_t widest = 1;
  for (const MatrixF& r : r_in) widest = std::max<std::int64_t>(widest, r.rows());
#pragma omp parallel if (rows * n * widest >= kParallelWork)
  {
    std::vector<double> v(static_cast<std::size_t>(n));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * n;
      const float* s_data = smooth.empty() ? nullptr : smooth.data();
      for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t src = perm.empty() ? j : perm[j];
        v[j] = elementwise::activation_input(xr[src], s_data, src);
      }
      float* yr = out.data() + r * n;
      std::int64_t off = 0;
      for (const MatrixF& rot : r_in) {
        const std::int64_t s = rot.rows();
        const double* vb = v.data() + off;
        const auto inputs = [vb](long long k) { return vb[k]; };
        for (std::int64_t c = 0; c < s; ++c)
          yr[off + c] = elementwise::transformed_activation(inputs, rot.data(), s, c);
        off += s;
      }
    }
  }
  return out;
}

void fake_quantize_activations(std::span<float> x_t, std::int64_t rows, std::span<const float> act_scale, int abits) {
  const auto n = static_cast<std::int64_t>(act_scale.size());
  DQ_CHECK(abits >= 2 && abits <= 16, internal, "activation bits {} outside 2-16", abits);
  DQ_CHECK(static_cast<std::int64_t>(x_t.size()) == rows * n, format,
           "activations: {} values for [{}, {}] with {} scales", x_t.size(), rows, n, act_scale.size());
  const auto hi = static_cast<float>(elementwise::qmax(abits));
  const float lo = -hi - 1.0f;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < n; ++j) {
      float& v = x_t[static_cast<std::size_t>(r * n + j)];
      v = elementwise::quantize_code(v, act_scale[j], lo, hi) * act_scale[j];
    }
}

ActivationCalibrator::ActivationCalibrator(std::int64_t in_features, double act_pct, int abits)
    : in_features_(in_features),
      q_(act_pct / 100.0),
      abits_(abits),
      running_(static_cast<std::size_t>(in_features), 0.0f) {
  DQ_CHECK(in_features >= 1, internal, "calibration of a layer with {} inputs", in_features);
  DQ_CHECK(act_pct > 0 && act_pct <= 100, usage, "--act-pct {} outside (0, 100]", act_pct);
  DQ_CHECK(abits >= 2 && abits <= 16, usage, "--abits {} outside 2-16", abits);
}

void ActivationCalibrator::add_percentiles(std::span<const float> p) {
  DQ_CHECK(static_cast<std::int64_t>(p.size()) == in_features_, internal, "calibration: {} percentiles for {} inputs",
           p.size(), in_features_);
  for (std::size_t j = 0; j < p.size(); ++j) running_[j] = std::max(running_[j], p[j]);
  ++steps_;
}

std::vector<float> call_percentiles(std::span<const float> x_t, std::int64_t rows, std::int64_t in_features, double q) {
  const std::int64_t n = in_features;
  DQ_CHECK(rows >= 1 && static_cast<std::int64_t>(x_t.size()) == rows * n, internal,
           "calibration: {} values for [{}, {}]", x_t.size(), rows, n);
  std::vector<float> out(static_cast<std::size_t>(n));
#pragma omp parallel if (rows * n >= kParallelWork / 16)
  {
    std::vector<float> column(static_cast<std::size_t>(rows));
#pragma omp for schedule(static)
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t r = 0; r < rows; ++r) column[static_cast<std::size_t>(r)] = std::fabs(x_t[r * n + j]);
      out[static_cast<std::size_t>(j)] = std::max(quantile_linear(column, q), 1e-6f);
    }
  }
  return out;
}

void ActivationCalibrator::add_call(std::span<const float> x_t, std::int64_t rows) {
  const std::int64_t n = in_features_;
  add_percentiles(call_percentiles(x_t, rows, n, q_));
}

std::vector<float> ActivationCalibrator::act_scale() const {
  DQ_CHECK(steps_ > 0, internal, "activation scales requested before any calibration call");
  const auto qm = static_cast<float>(elementwise::qmax(abits_));
  std::vector<float> s(running_.size());
  for (std::size_t j = 0; j < s.size(); ++j) s[j] = std::max(running_[j] / qm, 1e-6f);
  return s;
}

}  // namespace duquant
