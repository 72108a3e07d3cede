// Every instruction-set level of the CPU kernels (math/cpu_kernels.hpp) gives the bits of the
// scalar level: each kernel on rows of awkward lengths, and whole layers (transform, signs, codes,
// scales, conformance outputs) of awkward shapes at 2 to 8 bits. Levels this CPU does not run are
// reported skipped, never passed.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "base/cpu_features.hpp"
#include "duquant/error.hpp"
#include "engine/layer_engine.hpp"
#include "math/conformance.hpp"
#include "math/cpu_kernels.hpp"

namespace duquant {
namespace {

const std::int64_t kLengths[] = {0,  1,  2,  3,   7,   8,   9,   15,  16,  17,   31,  33,
                                 63, 64, 65, 255, 256, 257, 511, 512, 513, 1031, 2049};

// Gaussian values with a few outliers, exact zeros, negative zeros and values on rounding ties.
std::vector<float> awkward_values(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t k = 0; k < n; ++k) {
    const auto u = rng() % 64;
    v[k] = u == 0   ? 12.0f * g(rng)
           : u == 1 ? 0.0f
           : u == 2 ? -0.0f
           : u == 3 ? 0.5f * static_cast<float>(rng() % 15)
                    : g(rng);
  }
  return v;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

class CpuLevels : public ::testing::TestWithParam<CpuLevel> {
 protected:
  void SetUp() override {
    if (GetParam() > detected_cpu_level()) GTEST_SKIP() << "this CPU does not run " << cpu_level_name(GetParam());
  }
  const simd::Kernels& level() const { return simd::kernels_for(GetParam()); }
  const simd::Kernels& reference() const { return simd::kernels_for(CpuLevel::scalar); }
};

TEST_P(CpuLevels, TheTableIsTheLevelAsked) { EXPECT_EQ(level().level, GetParam()); }

TEST_P(CpuLevels, RowMaximaMatchTheScalarLevel) {
  for (const std::int64_t n : kLengths) {
    const std::vector<float> row = awkward_values(n, 1 + static_cast<std::uint32_t>(n));
    const std::vector<float> other = awkward_values(n, 1000 + static_cast<std::uint32_t>(n));
    for (const float t : {0.0f, 1.0f, -0.37f, 2.0f * 0.1234567f}) {
      EXPECT_TRUE(same_bits(level().shifted_row_max_abs(row.data(), other.data(), t, n),
                            reference().shifted_row_max_abs(row.data(), other.data(), t, n)))
          << "n=" << n << " t=" << t;
    }
    EXPECT_TRUE(same_bits(level().row_max_abs(row.data(), n), reference().row_max_abs(row.data(), n))) << n;
  }
}

TEST_P(CpuLevels, ShiftedRowsAndWideningMatchTheScalarLevel) {
  for (const std::int64_t n : kLengths) {
    const std::vector<float> row = awkward_values(n, 41 + static_cast<std::uint32_t>(n));
    const std::vector<float> other = awkward_values(n, 42 + static_cast<std::uint32_t>(n));
    std::vector<float> a(row.size()), b(row.size()), in_place = row;
    level().subtract_scaled(row.data(), other.data(), -0.731f, n, a.data());
    reference().subtract_scaled(row.data(), other.data(), -0.731f, n, b.data());
    EXPECT_TRUE(same_bits(a, b)) << n;
    level().subtract_scaled(in_place.data(), other.data(), -0.731f, n, in_place.data());
    EXPECT_TRUE(same_bits(in_place, b)) << "in place, n=" << n;
    std::vector<double> wa(row.size()), wb(row.size());
    level().widen(row.data(), n, wa.data());
    reference().widen(row.data(), n, wb.data());
    EXPECT_TRUE(same_bits(wa, wb)) << n;
  }
}

TEST_P(CpuLevels, ScaleSearchAndCodesMatchTheScalarLevel) {
  for (const std::int64_t n : kLengths) {
    const std::vector<float> w = awkward_values(n, 7 + static_cast<std::uint32_t>(n));
    for (int bits = 2; bits <= 8; ++bits) {
      const float base = 1.3f / static_cast<float>((1 << (bits - 1)) - 1);
      const float scales[5] = {base, base / 1.05f, base / 1.1f, base * 0.8f, 0.5f};
      std::vector<double> a(5), b(5);
      level().row_errors(w.data(), n, scales, 5, bits, a.data());
      reference().row_errors(w.data(), n, scales, 5, bits, b.data());
      EXPECT_TRUE(same_bits(a, b)) << "n=" << n << " bits=" << bits;
      std::vector<std::int8_t> qa(static_cast<std::size_t>(n)), qb(static_cast<std::size_t>(n));
      level().quantize_row(w.data(), n, scales[1], bits, qa.data());
      reference().quantize_row(w.data(), n, scales[1], bits, qb.data());
      EXPECT_TRUE(same_bits(qa, qb)) << "n=" << n << " bits=" << bits;
    }
  }
}

TEST_P(CpuLevels, SampledErrorsMatchTheScalarLevel) {
  for (const std::int64_t cols : kLengths) {
    for (const std::int64_t rows : {1, 3, 16}) {
      const std::vector<float> w = awkward_values(rows * cols, 11 + static_cast<std::uint32_t>(cols));
      std::vector<float> row_max(static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r) row_max[r] = 0.25f + static_cast<float>(r);
      for (int bits = 2; bits <= 8; ++bits) {
        EXPECT_TRUE(same_bits(level().sampled_rows_error(w.data(), rows, cols, row_max.data(), bits),
                              reference().sampled_rows_error(w.data(), rows, cols, row_max.data(), bits)))
            << rows << "x" << cols << " bits=" << bits;
      }
    }
  }
}

TEST_P(CpuLevels, ProductsMatchTheScalarLevel) {
  for (const std::int64_t n : kLengths) {
    for (const std::int64_t outs : {0, 1, 3, 4, 5, 9}) {
      const std::int64_t ld = n + 3;
      const std::vector<float> xf = awkward_values(n * 4, 21 + static_cast<std::uint32_t>(n));
      std::vector<double> x(xf.size());  // full double mantissas: a fused multiply-add would round differently
      for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<double>(xf[k]) / 3.0;
      const std::vector<float> w = awkward_values(outs * ld, 22 + static_cast<std::uint32_t>(n));
      std::vector<std::int8_t> q(w.size());
      for (std::size_t k = 0; k < q.size(); ++k) q[k] = static_cast<std::int8_t>(static_cast<int>(w[k] * 3.0f) % 8);
      std::vector<double> a(static_cast<std::size_t>(outs * 4)), b(a.size());
      level().dot4_f32(x.data(), n, w.data(), ld, outs, a.data());
      reference().dot4_f32(x.data(), n, w.data(), ld, outs, b.data());
      EXPECT_TRUE(same_bits(a, b)) << "f32 n=" << n << " outs=" << outs;
      level().dot4_i8(x.data(), n, q.data(), ld, outs, a.data());
      reference().dot4_i8(x.data(), n, q.data(), ld, outs, b.data());
      EXPECT_TRUE(same_bits(a, b)) << "i8 n=" << n << " outs=" << outs;
    }
  }
}

TEST_P(CpuLevels, GramSumsMatchTheScalarLevelAndStaySymmetric) {
  for (const std::int64_t k : {1, 2, 7, 16, 100, 256}) {
    for (const std::int64_t s : {1, 2, 3, 5, 8, 15, 16, 17, 32, 33}) {
      const std::int64_t lda = (s + 15) / 16 * 16 + 5;  // readable beyond s, as the kernel requires
      const std::vector<float> af = awkward_values(k * lda, 31 + static_cast<std::uint32_t>(k * 40 + s));
      std::vector<double> a(af.size());
      for (std::size_t q = 0; q < a.size(); ++q) a[q] = static_cast<double>(af[q]) / 7.0;
      // A symmetric start, as the Gram of earlier tiles.
      std::vector<double> g0(static_cast<std::size_t>(s * s));
      for (std::int64_t i = 0; i < s; ++i)
        for (std::int64_t j = 0; j <= i; ++j) g0[i * s + j] = g0[j * s + i] = 0.25 * static_cast<double>(i + 2 * j);
      std::vector<double> ga = g0, gb = g0;
      level().gram_add(a.data(), k, s, lda, ga.data());
      reference().gram_add(a.data(), k, s, lda, gb.data());
      EXPECT_TRUE(same_bits(ga, gb)) << "k=" << k << " s=" << s;
      // Outside the rows Eigen's kernel sums in two halves (GramSumsAreEigensProduct), the plain
      // definition: each sum from 0 over kk in order, then added.
      const std::int64_t p4 = s / 4 * 4, p2 = s / 2 * 2;
      for (std::int64_t i = 0; i < s; ++i)
        for (std::int64_t j = 0; j < s; ++j) {
          ASSERT_TRUE(same_bits(ga[i * s + j], ga[j * s + i]));
          const std::int64_t lo = std::min(i, j), hi = std::max(i, j);
          if (k >= 8 && hi >= p4 && hi < p2 && lo < p4) continue;
          double t = 0;
          for (std::int64_t kk = 0; kk < k; ++kk) t += a[kk * lda + i] * a[kk * lda + j];
          ASSERT_TRUE(same_bits(gb[i * s + j], g0[i * s + j] + t)) << "k=" << k << " s=" << s << " " << i << "," << j;
        }
    }
  }
}

// The order gram_add defines is the one Eigen's product had (the bytes of packs before the kernel):
// XᵀX of k rows for every block width, against Eigen's own product, lower triangle bit for bit (what
// the eigen-solver reads). Depths up to 256 are one depth block on any CPU; sizes where Eigen uses
// its coefficient-wise product instead (k + 2s < 20) are left out.
TEST_P(CpuLevels, GramSumsAreEigensProduct) {
  for (const std::int64_t k : {8, 9, 16, 23, 100, 256}) {
    for (std::int64_t s = 1; s <= 33; ++s) {
      if (k + 2 * s < 20) continue;
      const std::int64_t lda = (s + 15) / 16 * 16;
      const std::vector<float> af = awkward_values(k * lda, 77 + static_cast<std::uint32_t>(k * 40 + s));
      Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(k, lda);
      for (std::int64_t q = 0; q < k * lda; ++q) x.data()[q] = static_cast<double>(af[q]) / 3.0;
      Eigen::MatrixXd want = Eigen::MatrixXd::Zero(s, s);
      const auto block = x.leftCols(s);
      want.noalias() += block.transpose() * block;
      Eigen::MatrixXd got = Eigen::MatrixXd::Zero(s, s);
      level().gram_add(x.data(), k, s, lda, got.data());
      for (std::int64_t i = 0; i < s; ++i)
        for (std::int64_t j = 0; j <= i; ++j)
          ASSERT_TRUE(same_bits(got(i, j), want(i, j))) << "k=" << k << " s=" << s << " [" << i << "," << j << "]";
    }
  }
}

// product_f32 is Eigen's float product bit for bit (the rotated weights packs had before the
// kernel): row-major A·B for awkward shapes, depths up to 100 (blocks up to 100 wide: one depth
// block on any CPU).
TEST_P(CpuLevels, FloatProductsAreEigensProduct) {
  using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 20, 23, 31, 33, 64, 130};
  std::uint32_t seed = 500;
  for (const std::int64_t depth : {1, 3, 4, 7, 8, 9, 12, 15, 16, 17, 32, 40, 64, 100})
    for (const std::int64_t rows : sizes)
      for (const std::int64_t cols : sizes) {
        // A 1x1 result is Eigen's dot product, whose order depends on the address of the data: the
        // kernel defines it as a sum in order (its only departure from the bytes packs had).
        if (rows == 1 && cols == 1) continue;
        const std::vector<float> av = awkward_values(rows * depth, ++seed), bv = awkward_values(depth * cols, ++seed);
        const RowF a = Eigen::Map<const RowF>(av.data(), rows, depth),
                   b = Eigen::Map<const RowF>(bv.data(), depth, cols);
        RowF want(rows, cols);
        want.noalias() = a * b;
        RowF got(rows, cols);
        level().product_f32(a.data(), depth, b.data(), cols, got.data(), cols, rows, cols, depth);
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t c = 0; c < cols; ++c)
            // Below Eigen's coefficient-wise threshold an all-zero sum's sign depends on the address.
            ASSERT_TRUE(depth + rows + cols < 20 ? got(r, c) == want(r, c) : same_bits(got(r, c), want(r, c)))
                << rows << "x" << depth << " * " << depth << "x" << cols << " at [" << r << "," << c
                << "]: " << got(r, c) << " vs " << want(r, c);
      }
}

// The whole layer, as `pack` computes it, at this level and at the scalar level.
struct LayerBits {
  LayerMath math;
  std::vector<float> y_fp, y_q;
};
LayerBits layer_at(CpuLevel level, const std::vector<float>& w, std::int64_t rows, std::int64_t cols,
                   const QuantConfig& q, int bits) {
  set_cpu_level(cpu_level_name(level), "test");
  LayerBits out;
  const WeightView view{w.data(), rows, cols};
  out.math = compute_layer_math(view, q, bits);
  const std::vector<float> x = conformance_inputs(5, cols);  // 5 rows: a full group of 4 and one more
  out.y_fp = conformance_reference_output(x, 5, view, {});
  const std::span<const std::int64_t> perm =
      q.permute ? std::span<const std::int64_t>(out.math.t.perm) : std::span<const std::int64_t>();
  out.y_q = conformance_pack_output(x, 5, rows, cols, perm, out.math.t.r_in, out.math.quant.codes,
                                    out.math.quant.scales, out.math.t.r_out, q.row_rot, {}, {});
  set_cpu_level("auto", "test");
  return out;
}

TEST_P(CpuLevels, LayersOfAwkwardShapesMatchTheScalarLevelAtEveryWidth) {
  struct Shape {
    std::int64_t rows, cols;
  };
  // Odd sizes, fewer outputs than a block, one column, one row, widths around the lane counts.
  const Shape shapes[] = {{1, 1}, {130, 1}, {1, 37}, {5, 40}, {17, 33}, {33, 17}, {48, 64}, {70, 100}, {24, 257}};
  std::uint32_t seed = 100;
  for (const Shape& s : shapes) {
    const std::vector<float> w = awkward_values(s.rows * s.cols, ++seed);
    for (int bits = 2; bits <= 8; ++bits) {
      for (const RowRot rot : {RowRot::restore, RowRot::propagate, RowRot::off}) {
        QuantConfig q;
        q.block = bits % 2 == 0 ? 16 : 8;
        q.block_out = bits == 3 ? 32 : 16;
        q.permute = bits != 5;
        q.row_rot = rot;
        SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " W" << bits << " " << row_rot_name(rot));
        const LayerBits a = layer_at(GetParam(), w, s.rows, s.cols, q, bits);
        const LayerBits b = layer_at(CpuLevel::scalar, w, s.rows, s.cols, q, bits);
        EXPECT_TRUE(same_bits(a.math.t.perm, b.math.t.perm));
        ASSERT_EQ(a.math.t.r_in.size(), b.math.t.r_in.size());
        for (std::size_t k = 0; k < a.math.t.r_in.size(); ++k) EXPECT_TRUE(a.math.t.r_in[k] == b.math.t.r_in[k]);
        ASSERT_EQ(a.math.t.r_out.size(), b.math.t.r_out.size());
        for (std::size_t k = 0; k < a.math.t.r_out.size(); ++k) EXPECT_TRUE(a.math.t.r_out[k] == b.math.t.r_out[k]);
        EXPECT_TRUE(same_bits(a.math.weight_scale, b.math.weight_scale));
        EXPECT_TRUE(same_bits(a.math.quant.scales, b.math.quant.scales));
        EXPECT_TRUE(same_bits(a.math.quant.codes, b.math.quant.codes));
        EXPECT_TRUE(same_bits(a.math.quant.squared_error, b.math.quant.squared_error));
        EXPECT_TRUE(same_bits(a.math.rtn_err2, b.math.rtn_err2));
        EXPECT_TRUE(same_bits(a.y_fp, b.y_fp));
        EXPECT_TRUE(same_bits(a.y_q, b.y_q));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, CpuLevels,
                         ::testing::Values(CpuLevel::scalar, CpuLevel::sse2, CpuLevel::avx2, CpuLevel::avx512),
                         [](const auto& info) { return std::string(cpu_level_name(info.param)); });

TEST(CpuFeatures, UnknownOrUnsupportedLevelsAreUsageErrors) {
  try {
    set_cpu_level("avx9", "--cpu-features");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("--cpu-features: unknown CPU level 'avx9'"), std::string::npos) << e.what();
  }
  if (detected_cpu_level() < CpuLevel::avx512) {
    EXPECT_THROW(set_cpu_level("avx512", "--cpu-features"), Error);
  }
  set_cpu_level("scalar", "test");
  EXPECT_EQ(active_cpu_level(), CpuLevel::scalar);
  set_cpu_level("auto", "test");
  EXPECT_EQ(active_cpu_level(), default_cpu_level());
  EXPECT_LE(default_cpu_level(), detected_cpu_level());
  EXPECT_EQ(supported_cpu_levels().front(), CpuLevel::scalar);
  EXPECT_EQ(supported_cpu_levels().back(), detected_cpu_level());
}

}  // namespace
}  // namespace duquant
