// The per-element functions both backends share (duquant/elementwise.hpp), and the order in which
// the CUDA kernels apply them, run here on the CPU: each check below replays what a kernel's
// threads do (one thread per column, a group of kErrorLanes threads per row, one thread per
// eigenvector) with the very functions the kernel calls, and requires the CPU reference's bits.
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/elementwise.hpp"
#include "math/calibration.hpp"
#include "math/duquant_math.hpp"

namespace duquant {
namespace {

namespace ew = elementwise;

std::uint32_t bits_of(float f) { return ew::f32_to_bits(f); }
std::uint64_t bits_of(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// Weights with a spread of magnitudes (heavy-tailed rows and columns), as real layers have.
MatrixF random_matrix(std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.2f, 3.0f);
  std::vector<float> col_scale(static_cast<std::size_t>(cols));
  for (float& s : col_scale) s = u(rng) * u(rng);
  MatrixF m(rows, cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float row_scale = u(rng);
    for (std::int64_t c = 0; c < cols; ++c)
      m(r, c) = g(rng) * row_scale * col_scale[static_cast<std::size_t>(c)] * 0.02f;
  }
  return m;
}

// ---- channel energies: column_energy_kernel + smooth_energy_kernel ---------------------------

std::vector<float> energy_as_the_kernel(const MatrixF& w, double lambda) {
  const std::int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> e(static_cast<std::size_t>(cols));
  for (std::int64_t c = 0; c < cols; ++c) {  // one thread per column, down the rows
    double sum = 0;
    for (std::int64_t r = 0; r < rows; ++r) sum = ew::energy_add(sum, w(r, c));
    e[static_cast<std::size_t>(c)] = ew::energy_mean(sum, rows);
  }
  if (lambda > 0) {
    double total = 0;
    for (float v : e) total += v;
    const float mean = static_cast<float>(total / static_cast<double>(cols));
    for (float& v : e) v = ew::smoothed_energy(v, mean, static_cast<float>(lambda));
  }
  return e;
}

TEST(SharedElementwise, ChannelEnergyColumnWalkGivesTheCpuBits) {
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{1, 1}, {3, 17}, {64, 128}, {257, 96}}) {
    const MatrixF w = random_matrix(rows, cols, 11u + static_cast<unsigned>(rows));
    for (double lambda : {0.0, 0.15, 1.0}) {
      const std::vector<float> cpu = channel_energy({w.data(), rows, cols}, lambda);
      const std::vector<float> kernel = energy_as_the_kernel(w, lambda);
      ASSERT_EQ(cpu.size(), kernel.size());
      for (std::size_t c = 0; c < cpu.size(); ++c)
        ASSERT_EQ(bits_of(cpu[c]), bits_of(kernel[c]))
            << rows << "x" << cols << " lambda " << lambda << " column " << c;
    }
  }
}

TEST(SharedElementwise, EnergyTermIsTheSameWithFusedMultiplyAdd) {
  // A float product is exact in double, so a device that fuses the multiply-add gets the same sum.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3e4f, 3e4f);
  double plain = 0, fused = 0;
  for (int i = 0; i < 100000; ++i) {
    const float w = u(rng) * std::pow(2.0f, static_cast<float>(i % 60 - 30));
    plain = ew::energy_add(plain, w);
    fused = std::fma(static_cast<double>(w), static_cast<double>(w), fused);
    ASSERT_EQ(bits_of(plain), bits_of(fused)) << "step " << i;
  }
}

// ---- permutation: the stable sort's tie rule ----------------------------------------------------

TEST(SharedElementwise, ZigzagKeepsTheLowerChannelFirstOnTies) {
  // What the device's stable radix sort (descending) must reproduce: equal energies in index order.
  const std::vector<float> energy = {1, 3, 3, 2, 3, 1, 0, 2};
  // descending, ties by index: 1 2 4 3 7 0 5 6
  const std::vector<std::int64_t> order = {1, 2, 4, 3, 7, 0, 5, 6};
  const std::vector<std::int64_t> perm = zigzag_permutation(energy);
  ASSERT_EQ(perm.size(), order.size());
  for (std::int64_t k = 0; k < 8; ++k) EXPECT_EQ(perm[k], order[ew::zigzag_rank(k, 8)]) << k;
  EXPECT_EQ(perm, (std::vector<std::int64_t>{1, 6, 2, 5, 4, 0, 3, 7}));
}

// ---- eigenvector signs: canonical_rotations_kernel ----------------------------------------------

TEST(SharedElementwise, LargestMagnitudeIndexTakesTheFirstOnTies) {
  const double v[] = {0.5, -0.7, 0.7, 0.1};
  EXPECT_EQ(ew::largest_magnitude_index(v, 4, 1), 1);
  const double strided[] = {0.1, 9, -0.3, 9, 0.3, 9};  // every other entry
  EXPECT_EQ(ew::largest_magnitude_index(strided, 3, 2), 1);
  const double one[] = {-2};
  EXPECT_EQ(ew::largest_magnitude_index(one, 1, 1), 0);
}

TEST(SharedElementwise, CanonicalRotationFromAscendingColumnMajorVectors) {
  // The kernel reads cuSOLVER's layout (column-major, ascending eigenvalues) and writes the CPU's
  // (row-major, descending, largest entry positive). Replay it on Eigen's vectors.
  const MatrixF x = random_matrix(40, 12, 3);
  const Eigen::MatrixXd gram = x.cast<double>().transpose() * x.cast<double>();
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram);
  const Eigen::MatrixXd& vectors = solver.eigenvectors();  // column-major, ascending
  const int n = 12;
  MatrixF kernel(n, n);
  for (int j = 0; j < n; ++j) {
    const double* v = vectors.data() + static_cast<std::ptrdiff_t>(n - 1 - j) * n;
    const bool flip = v[ew::largest_magnitude_index(v, n, 1)] < 0;
    for (int i = 0; i < n; ++i) kernel(i, j) = static_cast<float>(flip ? -v[i] : v[i]);
  }
  const MatrixF cpu = eigen_rotation(gram);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) ASSERT_EQ(bits_of(cpu(i, j)), bits_of(kernel(i, j))) << i << "," << j;
}

// ---- MSE scale search: quantize_rows_kernel -----------------------------------------------------

struct KernelRow {
  float scale = 0;
  double error = 0;
  std::vector<std::int8_t> codes;
};

// One row as a group of kErrorLanes threads computes it: the lanes' maxima, then per candidate the
// chunked lane sums added in lane order (what __shfl_sync hands every thread), then the tail.
KernelRow row_as_the_kernel(const float* w, std::int64_t cols, int bits, bool rtn) {
  constexpr int kLanes = ew::kErrorLanes;
  const float hi = static_cast<float>(ew::qmax(bits)), lo = -hi - 1.0f;
  float lane_max[kLanes] = {};
  for (int j = 0; j < kLanes; ++j)
    for (std::int64_t c = j; c < cols; c += kLanes) lane_max[j] = std::fmax(lane_max[j], std::fabs(w[c]));
  float m = 0;
  for (float v : lane_max) m = std::fmax(m, v);
  const float base = ew::base_scale(m, bits);
  KernelRow out;
  out.scale = base;
  const int candidates = rtn ? 1 : ew::kScaleCandidates;
  for (int k = 0; k < candidates; ++k) {
    const float s = rtn ? base : base / ew::scale_alpha(k);
    double total = 0;
    for (std::int64_t begin = 0; begin + kLanes <= cols; begin += ew::kErrorFlush) {
      float lanes[kLanes];
      for (int j = 0; j < kLanes; ++j)
        lanes[j] = ew::error_lane_sum(w, begin, ew::error_chunk_end(begin, cols), j, s, lo, hi);
      for (int j = 0; j < kLanes; ++j) total += lanes[j];
    }
    for (std::int64_t c = cols / kLanes * kLanes; c < cols; ++c) total += ew::squared_error(w[c], s, lo, hi);
    if (k == 0 || total < out.error) {
      out.error = total;
      out.scale = s;
    }
  }
  for (std::int64_t c = 0; !rtn && c < cols; ++c)
    out.codes.push_back(static_cast<std::int8_t>(ew::quantize_code(w[c], out.scale, lo, hi)));
  return out;
}

class LaneOrder : public ::testing::TestWithParam<std::tuple<std::int64_t, int>> {};

TEST_P(LaneOrder, ReproducesQuantizeRowsBitForBit) {
  const auto [cols, bits] = GetParam();
  const std::int64_t rows = 9;
  const MatrixF w = random_matrix(rows, cols, static_cast<unsigned>(cols * 10 + bits));
  const QuantizedRows cpu = quantize_rows(w, bits);
  double total = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const KernelRow k = row_as_the_kernel(w.data() + r * cols, cols, bits, false);
    ASSERT_EQ(bits_of(k.scale), bits_of(cpu.scales[static_cast<std::size_t>(r)])) << "row " << r;
    for (std::int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(k.codes[c], cpu.codes[r * cols + c]) << "row " << r << " col " << c;
    total += k.error;  // rows in order, as the engine sums them
  }
  EXPECT_EQ(bits_of(total), bits_of(cpu.squared_error));

  double rtn = 0;
  for (std::int64_t r = 0; r < rows; ++r) rtn += row_as_the_kernel(w.data() + r * cols, cols, bits, true).error;
  EXPECT_EQ(bits_of(rtn), bits_of(rtn_squared_error({w.data(), rows, cols}, bits)));
}

// Widths around the lane (8) and chunk (512) boundaries, odd widths, a single column.
INSTANTIATE_TEST_SUITE_P(Widths, LaneOrder,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 7, 8, 9, 63, 511, 512, 513, 520, 1031,
                                                                            2048),
                                            ::testing::Values(2, 3, 4, 8)));

TEST(SharedElementwise, ErrorChunksCoverEachColumnOnce) {
  for (std::int64_t cols : {0, 5, 8, 512, 513, 1024, 1029}) {
    std::vector<int> seen(static_cast<std::size_t>(cols), 0);
    for (std::int64_t begin = 0; begin + ew::kErrorLanes <= cols; begin += ew::kErrorFlush)
      for (int j = 0; j < ew::kErrorLanes; ++j)
        for (std::int64_t c = begin + j; c < ew::error_chunk_end(begin, cols); c += ew::kErrorLanes)
          ++seen[static_cast<std::size_t>(c)];
    for (std::int64_t c = cols / ew::kErrorLanes * ew::kErrorLanes; c < cols; ++c) ++seen[static_cast<std::size_t>(c)];
    for (std::int64_t c = 0; c < cols; ++c) ASSERT_EQ(seen[static_cast<std::size_t>(c)], 1) << cols << " column " << c;
  }
}

// ---- 4-bit packing: the kernel writes byte k from columns 2k and 2k+1 ------------------------------

TEST(SharedElementwise, NibblesRoundTripEveryCodePair) {
  for (int even = -8; even <= 7; ++even)
    for (int odd = -8; odd <= 7; ++odd) {
      const unsigned char byte = ew::pack_nibbles(even, odd);
      ASSERT_EQ(ew::unpack_low(byte), even);
      ASSERT_EQ(ew::unpack_high(byte), odd);
    }
  EXPECT_EQ(ew::pack_nibbles(0, 0), 0x88);  // an odd width's missing last column packs as code 0
}

// ---- sign search: the sampled error of a row ----------------------------------------------------

TEST(SharedElementwise, SampledRowErrorIsTheBestCandidatesSummedError) {
  const MatrixF w = random_matrix(4, 203, 9);
  for (int bits : {4, 8}) {
    const float hi = static_cast<float>(ew::qmax(bits)), lo = -hi - 1.0f;
    for (Eigen::Index r = 0; r < w.rows(); ++r) {
      const float* row = w.data() + r * w.cols();
      const float m = w.row(r).cwiseAbs().maxCoeff();
      double best = INFINITY;
      for (int k = 0; k < ew::kScaleCandidates; ++k) {
        const float s = ew::base_scale(m, bits) / ew::scale_alpha(k);
        double e = 0;
        for (Eigen::Index c = 0; c < w.cols(); ++c) e += ew::squared_error(row[c], s, lo, hi);
        best = std::min(best, e);
      }
      // Multiplying by 1/s and summing in float lanes: a ranking figure within float rounding.
      EXPECT_NEAR(ew::sampled_row_error(row, w.cols(), m, bits), best, 1e-4 * best) << "row " << r << " bits " << bits;
    }
  }
}

TEST(SharedElementwise, SignSearchSamplesAtMost256Columns) {
  for (long long cols : {1LL, 255LL, 256LL, 257LL, 2048LL, 16384LL, 16385LL}) {
    const long long stride = ew::sign_search_stride(cols), picked = ew::sign_search_picked(cols);
    EXPECT_LE(picked, ew::kSignSearchColumns) << cols;
    EXPECT_LT((picked - 1) * stride, cols) << cols;  // the last sampled column exists
    EXPECT_GE(picked * stride, cols) << cols;        // and no column past it is left unsampled
  }
}

// ---- calibration: activation_transform_kernel and percentile_kernel -------------------------------

TEST(SharedElementwise, ActivationTransformPerElementGivesTheCpuBits) {
  // One thread per output element, its block's inputs computed on the fly (perm, x / s).
  const std::int64_t rows = 13, cols = 45, block = 16;  // two full blocks and a tail of 13
  const MatrixF x = random_matrix(rows, cols, 21);
  std::vector<std::int64_t> perm(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) perm[j] = (j * 7) % cols;  // 7 is prime to 45
  std::vector<float> smooth(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) smooth[j] = 0.5f + 0.03f * static_cast<float>(j);
  std::vector<MatrixF> r_in;
  for (std::int64_t b = 0; b * block < cols; ++b) {
    const std::int64_t s = std::min(block, cols - b * block);
    const MatrixF g = random_matrix(s + 3, s, 30u + static_cast<unsigned>(b));
    r_in.push_back(eigen_rotation(g.cast<double>().transpose() * g.cast<double>()));
  }
  for (bool smoothed : {false, true}) {
    const std::span<const float> sm = smoothed ? std::span<const float>(smooth) : std::span<const float>();
    const std::vector<float> cpu =
        transform_activations({x.data(), static_cast<std::size_t>(x.size())}, rows, cols, perm, r_in, sm);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) {
        const std::int64_t b = j / block, off = b * block;
        const MatrixF& rot = r_in[static_cast<std::size_t>(b)];
        const float* xr = x.data() + r * cols;
        const float* sp = smoothed ? smooth.data() : nullptr;
        const auto inputs = [&](long long k) { return ew::activation_input(xr[perm[off + k]], sp, perm[off + k]); };
        const float kernel = ew::transformed_activation(inputs, rot.data(), rot.rows(), j - off);
        ASSERT_EQ(bits_of(kernel), bits_of(cpu[r * cols + j]))
            << "row " << r << " channel " << j << (smoothed ? " smoothed" : "");
      }
  }
}

TEST(SharedElementwise, PercentileFromSortedRanksGivesTheCpuBits) {
  // The kernel reads ranks floor(pos) and the next from a fully sorted channel; the CPU selects them.
  for (std::int64_t rows : {1, 2, 7, 256, 1001}) {
    const MatrixF x = random_matrix(rows, 6, static_cast<unsigned>(rows));
    for (double q : {0.5, 0.9, 0.999, 1.0}) {
      const std::vector<float> cpu = call_percentiles({x.data(), static_cast<std::size_t>(x.size())}, rows, 6, q);
      for (std::int64_t j = 0; j < 6; ++j) {
        std::vector<float> sorted;
        for (std::int64_t r = 0; r < rows; ++r) sorted.push_back(std::fabs(x(r, j)));
        std::sort(sorted.begin(), sorted.end());
        const double pos = q * static_cast<double>(rows - 1);
        const auto lo = static_cast<std::int64_t>(std::floor(pos));
        const std::int64_t hi = std::min(lo + 1, rows - 1);
        const float p = ew::quantile_interpolate(sorted[lo], hi == lo ? sorted[lo] : sorted[hi], pos, lo);
        ASSERT_EQ(bits_of(std::max(p, 1e-6f)), bits_of(cpu[j])) << rows << " rows, q " << q << ", channel " << j;
      }
    }
  }
}

TEST(SharedElementwise, ActivationProductsAreExactSoFusedSumsAgree) {
  const MatrixF a = random_matrix(1, 4096, 77), b = random_matrix(1, 4096, 78);
  double plain = 0, fused = 0;
  for (Eigen::Index k = 0; k < a.cols(); ++k) {
    const double v = ew::activation_input(a(0, k), nullptr, 0);
    plain += v * static_cast<double>(b(0, k));
    fused = std::fma(v, static_cast<double>(b(0, k)), fused);
    ASSERT_EQ(bits_of(plain), bits_of(fused)) << k;
  }
}

}  // namespace
}  // namespace duquant
