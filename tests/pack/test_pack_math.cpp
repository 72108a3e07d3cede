// The CPU reference math of one layer: zigzag order, canonical eigen rotations (orthogonal in
// float32 within 1e-5, deterministic signs, complete bases when O < block), exact transforms
// without quantization, the MSE search's rounding and clamping, and degenerate layers.
#include <gtest/gtest.h>

#include <random>

#include "base/elementwise.hpp"
#include "math/duquant_math.hpp"

namespace duquant {
namespace {

constexpr double kOrthoTol = 1e-5;

std::vector<float> random_weight(std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = n(rng);
  for (std::int64_t r = 0; r < rows; ++r) w[r * cols + 3 % cols] *= 20.0f;  // an outlier channel
  return w;
}

double max_ortho_error(const MatrixF& r) {
  return (r.cast<double>().transpose() * r.cast<double>() - Eigen::MatrixXd::Identity(r.rows(), r.cols()))
      .cwiseAbs()
      .maxCoeff();
}

TEST(Zigzag, TakesFromBothEndsAlternately) {
  const std::vector<float> e{5, 1, 4, 2, 3};  // descending order: 0, 2, 4, 3, 1
  EXPECT_EQ(zigzag_permutation(e), (std::vector<std::int64_t>{0, 1, 2, 3, 4}));
  const std::vector<float> f{1, 2, 3, 4, 5, 6};  // order 5 4 3 2 1 0 -> 5 0 4 1 3 2
  EXPECT_EQ(zigzag_permutation(f), (std::vector<std::int64_t>{5, 0, 4, 1, 3, 2}));
  const std::vector<float> ties{1, 1, 1};  // equal energies: lower index first
  EXPECT_EQ(zigzag_permutation(ties), (std::vector<std::int64_t>{0, 2, 1}));
}

TEST(ChannelEnergy, SmoothingMovesTowardTheMean) {
  const std::vector<float> w{1, 0, 3, 0};  // 2 rows x 2 cols: energies 5, 0
  const WeightView v{w.data(), 2, 2};
  const auto e0 = channel_energy(v, 0.0);
  EXPECT_FLOAT_EQ(e0[0], 5.0f);
  EXPECT_FLOAT_EQ(e0[1], 0.0f);
  const auto e = channel_energy(v, 0.2);
  EXPECT_FLOAT_EQ(e[0], 0.8f * 5 + 0.2f * 2.5f);
  EXPECT_FLOAT_EQ(e[1], 0.2f * 2.5f);
}

TEST(EigenRotation, OrthogonalDescendingWithCanonicalSigns) {
  const auto w = random_weight(40, 16, 1);
  Eigen::MatrixXd m = Eigen::Map<const Eigen::Matrix<float, -1, -1, Eigen::RowMajor>>(w.data(), 40, 16).cast<double>();
  Eigen::VectorXd ev;
  const MatrixF r = eigen_rotation(m.transpose() * m, &ev);
  EXPECT_LT(max_ortho_error(r), kOrthoTol);
  for (Eigen::Index j = 1; j < ev.size(); ++j) EXPECT_GE(ev[j - 1], ev[j]);
  for (Eigen::Index j = 0; j < r.cols(); ++j) {
    Eigen::Index big = 0;
    r.col(j).cwiseAbs().maxCoeff(&big);
    EXPECT_GT(r(big, j), 0.0f) << "column " << j;
  }
  // Flipping the sign of the input basis does not change the canonical output.
  const MatrixF again = eigen_rotation((-m).transpose() * (-m));
  EXPECT_EQ(r, again);
}

TEST(EigenRotation, CompleteBasisWhenFewerRowsThanBlock) {
  const auto w = random_weight(5, 16, 2);  // rank 5 Gram of size 16
  Eigen::MatrixXd m = Eigen::Map<const Eigen::Matrix<float, -1, -1, Eigen::RowMajor>>(w.data(), 5, 16).cast<double>();
  const MatrixF r = eigen_rotation(m.transpose() * m);
  EXPECT_LT(max_ortho_error(r), kOrthoTol);
}

struct Shape {
  std::int64_t rows, cols, block, block_out;
};

class ExactTransform : public ::testing::TestWithParam<Shape> {};

// Without quantization y = x W^T is reproduced: (x P Rin) (Rout W P Rin)^T Rout = x W^T.
TEST_P(ExactTransform, ReproducesXWt) {
  const Shape s = GetParam();
  const auto w = random_weight(s.rows, s.cols, 3);
  const WeightView view{w.data(), s.rows, s.cols};
  QuantConfig q;
  q.block = static_cast<int>(s.block);
  q.block_out = static_cast<int>(s.block_out);
  const LayerTransform t = compute_transform(view, q);
  for (const auto& r : t.r_in) EXPECT_LT(max_ortho_error(r), kOrthoTol);
  for (const auto& r : t.r_out) EXPECT_LT(max_ortho_error(r), kOrthoTol);
  MatrixF w_t = apply_input_transform(view, t, q.block);
  apply_output_rotation(w_t, t, q.block_out);

  std::mt19937 rng(4);
  std::normal_distribution<float> n;
  const std::int64_t tokens = 7;
  MatrixF x(tokens, s.cols);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
  MatrixF x_t(tokens, s.cols);
  for (std::int64_t c = 0; c < s.cols; ++c) x_t.col(c) = x.col(t.perm[c]);
  for (std::size_t b = 0; b < t.r_in.size(); ++b) {
    const auto width = t.r_in[b].rows();
    const MatrixF blk = x_t.middleCols(static_cast<Eigen::Index>(b) * q.block, width);
    x_t.middleCols(static_cast<Eigen::Index>(b) * q.block, width) = blk * t.r_in[b];
  }
  MatrixF y = x_t * w_t.transpose();
  for (std::size_t b = 0; b < t.r_out.size(); ++b) {
    const auto width = t.r_out[b].rows();
    const MatrixF blk = y.middleCols(static_cast<Eigen::Index>(b) * q.block_out, width);
    y.middleCols(static_cast<Eigen::Index>(b) * q.block_out, width) = blk * t.r_out[b];
  }
  const MatrixF expected = x * Eigen::Map<const MatrixF>(w.data(), s.rows, s.cols).transpose();
  EXPECT_LT((y - expected).cwiseAbs().maxCoeff(), 1e-4 * expected.cwiseAbs().maxCoeff());
}

INSTANTIATE_TEST_SUITE_P(Shapes, ExactTransform,
                         ::testing::Values(Shape{64, 64, 16, 16}, Shape{48, 40, 16, 16}, Shape{10, 37, 8, 4},
                                           Shape{16, 64, 32, 16}, Shape{5, 24, 16, 16}, Shape{33, 7, 128, 1}));

TEST(Quantize, RoundsHalfToEvenAndClamps) {
  EXPECT_EQ(elementwise::quantize(2.5f, 1.0f, 4), 2);
  EXPECT_EQ(elementwise::quantize(3.5f, 1.0f, 4), 4);
  EXPECT_EQ(elementwise::quantize(-2.5f, 1.0f, 4), -2);
  EXPECT_EQ(elementwise::quantize(-0.5f, 1.0f, 4), 0);
  EXPECT_EQ(elementwise::quantize(100.0f, 1.0f, 4), 7);
  EXPECT_EQ(elementwise::quantize(-100.0f, 1.0f, 4), -8);
  EXPECT_EQ(elementwise::quantize(-1000.0f, 1.0f, 8), -128);
  for (float x = -300.0f; x <= 300.0f; x += 0.25f) EXPECT_EQ(elementwise::round_half_even(x), std::nearbyint(x)) << x;
}

TEST(Quantize, NibblesHoldEvenColumnLowOddColumnHigh) {
  const unsigned char b = elementwise::pack_nibbles(-8, 7);
  EXPECT_EQ(b, 0xf0);
  EXPECT_EQ(elementwise::unpack_low(b), -8);
  EXPECT_EQ(elementwise::unpack_high(b), 7);
  EXPECT_EQ(elementwise::pack_nibbles(1, -1), 0x79);
}

TEST(Quantize, MseSearchPicksTheFirstBestCandidate) {
  // A row of equal values: alpha 1 (scale max/7) is exact; 0.5 and 0.75 are not.
  MatrixF w(1, 4);
  w << 0.7f, -0.7f, 0.7f, 0.7f;
  const QuantizedRows q = quantize_rows(w, 4);
  EXPECT_EQ(q.scales[0], 0.7f / 7.0f);
  EXPECT_EQ(q.codes[0], 7);
  EXPECT_EQ(q.codes[1], -7);
  EXPECT_EQ(q.squared_error, 0.0);
}

TEST(Quantize, ZeroRowsAndLayersDoNotDivideByZero) {
  const std::vector<float> w(8 * 16, 0.0f);
  const WeightView view{w.data(), 8, 16};
  const LayerTransform t = compute_transform(view, QuantConfig{});
  for (const auto& r : t.r_in) EXPECT_LT(max_ortho_error(r), kOrthoTol);
  MatrixF w_t = apply_input_transform(view, t, 16);
  apply_output_rotation(w_t, t, 16);
  const QuantizedRows q = quantize_rows(w_t, 4);
  for (float s : q.scales) EXPECT_EQ(s, 1e-8f / 0.5f);  // the floored base, first candidate (all tie at 0)
  for (auto c : q.codes) EXPECT_EQ(c, 0);
  EXPECT_EQ(rtn_squared_error(view, 4), 0.0);
}

}  // namespace
}  // namespace duquant
