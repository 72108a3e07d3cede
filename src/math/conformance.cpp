#include "math/conformance.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "duquant/error.hpp"
#include "math/calibration.hpp"
#include "math/cpu_kernels.hpp"

namespace duquant {
namespace {

// SplitMix64 (Steele, Lea, Flood 2014): output n of the stream seeded with s is mix(s + (n+1)·γ).
constexpr std::uint64_t kGamma = 0x9E3779B97F4A7C15ull;

constexpr std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t n) {
  std::uint64_t z = seed + (n + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Offsets of consecutive square blocks whose widths must add up to `n`; checks each is square.
std::vector<std::int64_t> block_offsets(const std::vector<MatrixF>& blocks, std::int64_t n, const char* what) {
  std::vector<std::int64_t> off;
  std::int64_t at = 0;
  for (const MatrixF& r : blocks) {
    DQ_CHECK(r.rows() == r.cols() && r.rows() > 0, format, "conformance: a {} block is {}x{}, not square", what,
             r.rows(), r.cols());
    off.push_back(at);
    at += r.rows();
  }
  DQ_CHECK(at == n, format, "conformance: {} blocks cover {} of {} features", what, at, n);
  return off;
}

// v[blk] ← v[blk] · R (transpose = false) or v[blk] · Rᵀ (transpose = true), per block, in double.
void rotate_blocks(std::vector<double>& v, const std::vector<MatrixF>& blocks, const std::vector<std::int64_t>& off,
                   bool transpose) {
  std::vector<double> tmp;
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    const MatrixF& r = blocks[b];
    const std::int64_t s = r.rows(), o = off[b];
    tmp.assign(static_cast<std::size_t>(s), 0.0);
    for (std::int64_t c = 0; c < s; ++c) {
      double acc = 0;
      for (std::int64_t k = 0; k < s; ++k) acc += v[o + k] * static_cast<double>(transpose ? r(c, k) : r(k, c));
      tmp[c] = acc;
    }
    std::copy(tmp.begin(), tmp.end(), v.begin() + o);
  }
}

// p[r·outs + o] = Σ_j x[r·n + j] · double(w[o·n + j]) for every row r < rows and output o < outs,
// each sum from 0 in the order of j (the kernels take four rows side by side). Parallel over the
// outputs; every sum is the same whichever thread computes it.
template <typename T, typename Dot>
std::vector<double> row_products(std::span<const double> x, std::int64_t rows, std::int64_t n, const T* w,
                                 std::int64_t outs, Dot dot) {
  std::vector<double> p(static_cast<std::size_t>(rows * outs));
  std::vector<double> x4(static_cast<std::size_t>(n * 4));
  std::vector<double> y4(static_cast<std::size_t>(outs * 4));
  constexpr std::int64_t kChunk = 64;  // outputs per task
  const std::int64_t chunks = (outs + kChunk - 1) / kChunk;
  for (std::int64_t g = 0; g < rows; g += 4) {
    const std::int64_t in_group = std::min<std::int64_t>(4, rows - g);
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t r = 0; r < 4; ++r) x4[j * 4 + r] = r < in_group ? x[(g + r) * n + j] : 0.0;
#pragma omp parallel for schedule(static) if (outs * n * 4 >= (1 << 20))
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t o0 = c * kChunk, count = std::min(kChunk, outs - o0);
      dot(x4.data(), n, w + o0 * n, n, count, y4.data() + o0 * 4);
    }
    for (std::int64_t r = 0; r < in_group; ++r)
      for (std::int64_t o = 0; o < outs; ++o) p[(g + r) * outs + o] = y4[o * 4 + r];
  }
  return p;
}

}  // namespace

std::vector<double> rows_times_transpose(std::span<const double> x, std::int64_t rows, std::int64_t n, const float* w,
                                         std::int64_t outs) {
  DQ_CHECK(rows >= 0 && n >= 0 && outs >= 0 && static_cast<std::int64_t>(x.size()) == rows * n, internal,
           "rows_times_transpose: {} values for [{}, {}]", x.size(), rows, n);
  return row_products(x, rows, n, w, outs, simd::kernels().dot4_f32);
}

std::vector<float> conformance_inputs(std::int64_t rows, std::int64_t in_features) {
  DQ_CHECK(rows >= 0 && in_features >= 0, internal, "conformance_inputs: negative shape [{}, {}]", rows, in_features);
  const std::int64_t n = rows * in_features;
  std::vector<float> x(static_cast<std::size_t>(n));
  constexpr double kTwoPow53 = 9007199254740992.0;
  for (std::int64_t k = 0; k < n; ++k) {
    const auto i = static_cast<std::uint64_t>(k);
    // u1 in (0, 1] (never 0, so the logarithm is finite), u2 in [0, 1).
    const double u1 = static_cast<double>((splitmix64_at(kConformanceSeed, 2 * i) >> 11) + 1) / kTwoPow53;
    const double u2 = static_cast<double>(splitmix64_at(kConformanceSeed, 2 * i + 1) >> 11) / kTwoPow53;
    x[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  }
  return x;
}

std::vector<float> conformance_reference_output(std::span<const float> x, std::int64_t rows, const WeightView& w,
                                                std::span<const float> bias) {
  const std::int64_t o_n = w.rows, i_n = w.cols;
  DQ_CHECK(rows >= 0 && static_cast<std::int64_t>(x.size()) == rows * i_n, format,
           "conformance: {} input values for [{}, {}]", x.size(), rows, i_n);
  DQ_CHECK(bias.empty() || static_cast<std::int64_t>(bias.size()) == o_n, format,
           "conformance: bias of {} for {} outputs", bias.size(), o_n);
  const std::vector<double> xd(x.begin(), x.end());
  const std::vector<double> p = row_products(xd, rows, i_n, w.data, o_n, simd::kernels().dot4_f32);
  std::vector<float> y(static_cast<std::size_t>(rows * o_n));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < o_n; ++o) {
      double acc = p[r * o_n + o];
      if (!bias.empty()) acc += static_cast<double>(bias[o]);
      y[r * o_n + o] = static_cast<float>(acc);
    }
  return y;
}

std::vector<float> conformance_pack_output(std::span<const float> x, std::int64_t rows, std::int64_t out_features,
                                           std::int64_t in_features, std::span<const std::int64_t> perm,
                                           const std::vector<MatrixF>& r_in, std::span<const std::int8_t> codes,
                                           std::span<const float> scales, const std::vector<MatrixF>& r_out,
                                           RowRot row_rot, std::span<const float> bias, const ActivationContract& act) {
  const std::int64_t o_n = out_features, i_n = in_features;
  DQ_CHECK(rows >= 0 && o_n >= 0 && i_n >= 0 && static_cast<std::int64_t>(x.size()) == rows * i_n, format,
           "conformance: {} input values for [{}, {}]", x.size(), rows, i_n);
  DQ_CHECK(static_cast<std::int64_t>(codes.size()) == o_n * i_n && static_cast<std::int64_t>(scales.size()) == o_n,
           format, "conformance: {} codes and {} scales for a [{}, {}] weight", codes.size(), scales.size(), o_n, i_n);
  DQ_CHECK(bias.empty() || static_cast<std::int64_t>(bias.size()) == o_n, format,
           "conformance: bias of {} for {} outputs", bias.size(), o_n);
  DQ_CHECK(perm.empty() || static_cast<std::int64_t>(perm.size()) == i_n, format,
           "conformance: perm of {} for {} inputs", perm.size(), i_n);
  for (std::int64_t p : perm) DQ_CHECK(p >= 0 && p < i_n, format, "conformance: perm entry {} outside [0, {})", p, i_n);
  const std::vector<std::int64_t> in_off = block_offsets(r_in, i_n, "R_in");
  DQ_CHECK((row_rot == RowRot::off) == r_out.empty(), format, "conformance: {} output rotations with row_rot {}",
           r_out.size(), row_rot_name(row_rot));
  const std::vector<std::int64_t> out_off =
      r_out.empty() ? std::vector<std::int64_t>{} : block_offsets(r_out, o_n, "R_out");

  // x_t = x[:, perm] · Rin (per block), kept in double; with an activation contract, as the
  // calibrated runtime computes it (float32, smoothed and fake-quantized).
  std::vector<double> xt(static_cast<std::size_t>(rows * i_n));
  if (!act.empty()) {
    DQ_CHECK(act.act_scale.empty() || static_cast<std::int64_t>(act.act_scale.size()) == i_n, format,
             "conformance: act_scale of {} for {} inputs", act.act_scale.size(), i_n);
    std::vector<float> xf = transform_activations(x, rows, i_n, perm, r_in, act.smooth);
    if (!act.act_scale.empty()) fake_quantize_activations(xf, rows, act.act_scale, act.abits);
    std::copy(xf.begin(), xf.end(), xt.begin());
  }
  for (std::int64_t r = 0; r < rows && act.empty(); ++r) {
    std::vector<double> v(static_cast<std::size_t>(i_n));
    for (std::int64_t j = 0; j < i_n; ++j) v[j] = x[r * i_n + (perm.empty() ? j : perm[j])];
    rotate_blocks(v, r_in, in_off, false);
    std::copy(v.begin(), v.end(), xt.begin() + r * i_n);
  }
  // y_t[r, o] = Σ_j x_t[r, j] · q[o, j] · s[o]; q·s is exact in double, s is applied after the sum.
  std::vector<double> yt = row_products(xt, rows, i_n, codes.data(), o_n, simd::kernels().dot4_i8);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < o_n; ++o) yt[r * o_n + o] *= static_cast<double>(scales[o]);
  std::vector<double> b(bias.begin(), bias.end());
  if (row_rot == RowRot::restore) {
    for (std::int64_t r = 0; r < rows; ++r) {
      std::vector<double> v(yt.begin() + r * o_n, yt.begin() + (r + 1) * o_n);
      rotate_blocks(v, r_out, out_off, false);
      std::copy(v.begin(), v.end(), yt.begin() + r * o_n);
    }
  } else if (row_rot == RowRot::propagate && !b.empty()) {
    rotate_blocks(b, r_out, out_off, true);  // the bias in the rotated basis: b · Routᵀ
  }
  std::vector<float> y(yt.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < o_n; ++o)
      y[r * o_n + o] = static_cast<float>(yt[r * o_n + o] + (b.empty() ? 0.0 : b[o]));
  return y;
}

}  // namespace duquant
