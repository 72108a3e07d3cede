// The CUDA engine against the CPU reference (docs/cuda-backend.md, "Tolerances"): stage by stage
// where the result is defined bit for bit (energies, permutation, the MSE search and codes from the
// same transformed weight, the nibble packing), and whole layers where cuSOLVER's eigenvectors and
// cuBLAS's sums make rotations and scales agree within tolerances: synthetic layers of every block
// size 8-128, odd widths, fewer rows than a block, 4 and 8 bits, and the fixture's layers.
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>

#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "engine/layer_engine.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/cuda_layer_engine.hpp"
#include "math/calibration.hpp"
#include "math/duquant_math.hpp"
#include "pack/pack_layer.hpp"
#include "packfmt/layout.hpp"
#include "select/linear_layers.hpp"

namespace duquant {
namespace {

MatrixF random_matrix(std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::uniform_real_distribution<float> u(0.3f, 3.0f);
  std::vector<float> col(static_cast<std::size_t>(cols));
  for (float& s : col) s = u(rng) * u(rng);
  MatrixF m(rows, cols);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) m(r, c) = g(rng) * col[static_cast<std::size_t>(c)];
  return m;
}

TEST(GpuEngine, WithoutADeviceTheEngineRefusesWithADeviceError) {
  std::string why;
  if (kernels::device_count(why) > 0) GTEST_SKIP() << "a CUDA device is present";
  try {
    auto engine = kernels::make_cuda_engine(0);
    FAIL() << "an engine was made without a device";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::device);
    EXPECT_NE(std::string(e.what()).find("setting up the device"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

TEST(GpuEngine, ChannelEnergyAndZigzagAreTheCpuBits) {
  DQ_REQUIRE_GPU();
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{1, 1}, {5, 33}, {300, 129}, {64, 2048}}) {
    const MatrixF w = random_matrix(rows, cols, 7u + static_cast<unsigned>(cols));
    const WeightView v{w.data(), rows, cols};
    for (double lambda : {0.0, 0.15}) {
      const std::vector<float> cpu = channel_energy(v, lambda);
      const std::vector<float> gpu = kernels::cuda_channel_energy(0, v, lambda);
      ASSERT_EQ(gpu.size(), cpu.size());
      for (std::size_t c = 0; c < cpu.size(); ++c)
        ASSERT_EQ(elementwise::f32_to_bits(gpu[c]), elementwise::f32_to_bits(cpu[c]))
            << rows << "x" << cols << " c" << c;
      EXPECT_EQ(kernels::cuda_zigzag_permutation(0, cpu), zigzag_permutation(cpu));
    }
  }
  const std::vector<float> ties = {1, 3, 3, 2, 3, 1, 0, 2, 3, 3};  // the stable sort's tie rule
  EXPECT_EQ(kernels::cuda_zigzag_permutation(0, ties), zigzag_permutation(ties));
}

TEST(GpuEngine, QuantizeRowsFromTheSameWeightIsTheCpuBits) {
  DQ_REQUIRE_GPU();
  for (std::int64_t cols : {1, 7, 9, 511, 513, 2051}) {
    const MatrixF w = random_matrix(37, cols, static_cast<unsigned>(cols));
    for (int bits : {2, 3, 4, 5, 8}) {
      const QuantizedRows cpu = quantize_rows(w, bits);
      std::string packed;
      const QuantizedRows gpu = kernels::cuda_quantize_rows(0, w, bits, &packed);
      ASSERT_EQ(gpu.scales.size(), cpu.scales.size());
      for (std::size_t r = 0; r < cpu.scales.size(); ++r)
        ASSERT_EQ(elementwise::f32_to_bits(gpu.scales[r]), elementwise::f32_to_bits(cpu.scales[r]))
            << cols << " row " << r;
      ASSERT_EQ(gpu.codes, cpu.codes) << cols << " columns, " << bits << " bits";
      EXPECT_EQ(gpu.squared_error, cpu.squared_error);
      // The device packs nibbles itself: the bytes the CPU's pass packs from the same codes.
      if (code_storage(bits).nibbles) {
        ASSERT_EQ(packed, pack_codes(cpu.codes, 37, cols, bits)) << cols << " columns";
      }
    }
  }
}

// Whole layers: the documented tolerances.
void expect_equivalent(const LayerMath& cpu, const LayerMath& gpu, const MatrixF& w, const QuantConfig& q, int bits,
                       const std::string& what) {
  const std::int64_t rows = w.rows(), cols = w.cols();
  ASSERT_EQ(gpu.t.perm, cpu.t.perm) << what;  // bit for bit
  ASSERT_EQ(gpu.t.r_in.size(), cpu.t.r_in.size()) << what;
  ASSERT_EQ(gpu.t.r_out.size(), cpu.t.r_out.size()) << what;
  // Rotations: orthogonal to 1e-5 and, column by column where the eigenvalue is distinct, the
  // same eigenvector (|cos| within 1e-4; Rin's signs are canonical on both, Rout's are chosen).
  auto compare = [&](const MatrixF& a, const MatrixF& b, const Eigen::MatrixXd& gram, bool signs,
                     const std::string& where) {
    ASSERT_EQ(a.rows(), b.rows()) << where;
    const Eigen::MatrixXd ad = a.cast<double>();
    EXPECT_LT((ad.transpose() * ad - Eigen::MatrixXd::Identity(a.rows(), a.rows())).cwiseAbs().maxCoeff(), 1e-5)
        << where;
    const Eigen::VectorXd ev = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(gram).eigenvalues().reverse();
    const double scale = std::max(ev.cwiseAbs().maxCoeff(), 1e-30);
    for (Eigen::Index j = 0; j < a.cols(); ++j) {
      const bool distinct =
          (j == 0 || ev[j - 1] - ev[j] > 1e-3 * scale) && (j + 1 == a.cols() || ev[j] - ev[j + 1] > 1e-3 * scale);
      if (!distinct) continue;
      const double dot = ad.col(j).dot(b.col(j).cast<double>());
      EXPECT_NEAR(signs ? dot : std::abs(dot), 1.0, 1e-4) << where << " column " << j;
    }
  };
  MatrixF permuted(rows, cols);
  for (std::int64_t c = 0; c < cols; ++c) permuted.col(c) = w.col(cpu.t.perm[static_cast<std::size_t>(c)]);
  for (std::size_t b = 0; b < cpu.t.r_in.size(); ++b) {
    const std::int64_t s = block_width(cols, q.block, static_cast<std::int64_t>(b));
    const Eigen::MatrixXd x = permuted.middleCols(static_cast<Eigen::Index>(b) * q.block, s).cast<double>();
    compare(gpu.t.r_in[b], cpu.t.r_in[b], x.transpose() * x, true, what + " Rin_" + std::to_string(b));
  }
  // Rows whose output rotation is unique up to signs: where a block's Gram matrix has a repeated
  // eigenvalue (rank-deficient when the layer has fewer columns than the block has rows), any basis
  // of that eigenspace is as right as another, the rotated rows differ and so do their codes; those
  // rows are held to the quantization error alone.
  std::vector<bool> comparable(static_cast<std::size_t>(rows), true);
  for (std::size_t b = 0; b < cpu.t.r_out.size(); ++b) {
    const std::int64_t s = block_width(rows, q.block_out, static_cast<std::int64_t>(b));
    const Eigen::MatrixXd x = w.middleRows(static_cast<Eigen::Index>(b) * q.block_out, s).cast<double>();
    const Eigen::MatrixXd gram = x * x.transpose();
    compare(gpu.t.r_out[b], cpu.t.r_out[b], gram, false, what + " Rout_" + std::to_string(b));
    const Eigen::VectorXd ev = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(gram).eigenvalues();
    const double scale = std::max(ev.cwiseAbs().maxCoeff(), 1e-30);
    bool unique = true;
    for (Eigen::Index j = 1; j < ev.size(); ++j) unique = unique && ev[j] - ev[j - 1] > 1e-3 * scale;
    if (!unique)
      for (std::int64_t r = static_cast<std::int64_t>(b) * q.block_out;
           r < static_cast<std::int64_t>(b) * q.block_out + s; ++r)
        comparable[static_cast<std::size_t>(r)] = false;
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    EXPECT_NEAR(gpu.weight_scale[r], cpu.weight_scale[r], 1e-5 * cpu.weight_scale[r]) << what << " weight_scale " << r;
  }
  // The quantization error and the baseline: the same figure within 1e-3 (the sign choice may
  // break a near-tie the other way on one block), and within rounding of the weight's energy where
  // the error is itself rounding (a one-column layer: every row is one value, quantized exactly).
  const double energy = w.cast<double>().squaredNorm();
  EXPECT_NEAR(gpu.quant.squared_error, cpu.quant.squared_error, 1e-3 * cpu.quant.squared_error + 1e-12 * energy)
      << what;
  EXPECT_EQ(gpu.rtn_err2, cpu.rtn_err2) << what;  // same input, same order: bit for bit
  // Codes of the comparable rows: at most 1 % differ (elements at a rounding tie, rows whose
  // candidate was a near-tie).
  std::vector<std::int8_t> codes = gpu.quant.codes;
  if (!gpu.packed.empty())
    codes = unpack_codes(std::as_bytes(std::span(gpu.packed.data(), gpu.packed.size())), rows, cols, bits);
  ASSERT_EQ(codes.size(), cpu.quant.codes.size()) << what;
  std::size_t differ = 0, compared = 0;
  for (std::size_t k = 0; k < codes.size(); ++k) {
    if (q.row_rot != RowRot::off && !comparable[k / static_cast<std::size_t>(cols)]) continue;
    ++compared;
    differ += codes[k] != cpu.quant.codes[k];
  }
  EXPECT_LE(static_cast<double>(differ), 0.01 * static_cast<double>(compared))
      << what << ": " << differ << " of " << compared << " compared codes differ";
  (void)bits;
}

struct Shape {
  std::int64_t rows, cols;
  int block, block_out;
};

class GpuLayers : public ::testing::TestWithParam<std::tuple<Shape, int>> {};

TEST_P(GpuLayers, MatchTheCpuWithinTheTolerances) {
  DQ_REQUIRE_GPU();
  const auto [shape, bits] = GetParam();
  const MatrixF w = random_matrix(shape.rows, shape.cols, static_cast<unsigned>(shape.rows * 31 + shape.cols + bits));
  auto engine = kernels::make_cuda_engine(0);
  for (RowRot rr : {RowRot::restore, RowRot::off})
    for (bool permute : {true, false}) {
      QuantConfig q;
      q.block = shape.block;
      q.block_out = shape.block_out;
      q.row_rot = rr;
      q.permute = permute;
      const WeightView v{w.data(), shape.rows, shape.cols};
      const std::string what = std::to_string(shape.rows) + "x" + std::to_string(shape.cols) + " b" +
                               std::to_string(shape.block) + "/" + std::to_string(shape.block_out) + " W" +
                               std::to_string(bits) + (permute ? " perm" : "") +
                               (rr == RowRot::off ? " row_rot=0" : "");
      expect_equivalent(compute_layer_math(v, q, bits), engine->compute(v, q, bits, what), w, q, bits, what);
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuLayers,
                         ::testing::Combine(::testing::Values(Shape{64, 128, 8, 8}, Shape{96, 256, 16, 16},
                                                              Shape{128, 320, 32, 16}, Shape{256, 512, 64, 64},
                                                              Shape{256, 384, 128, 128},  // the syevBatched path
                                                              Shape{77, 203, 16, 32},     // odd widths, tail blocks
                                                              Shape{5, 96, 32, 16},       // O < block
                                                              Shape{130, 1, 8, 8}),       // a single column
                                            ::testing::Values(4, 8)),
                         [](const ::testing::TestParamInfo<GpuLayers::ParamType>& info) {
                           const Shape& s = std::get<0>(info.param);
                           return std::to_string(s.rows) + "x" + std::to_string(s.cols) + "_b" +
                                  std::to_string(s.block) + "_bo" + std::to_string(s.block_out) + "_W" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(GpuEngine, CalibrationPercentilesAreTheCpuBits) {
  DQ_REQUIRE_GPU();
  // From the same perm and rotations the device's activation transform and percentiles are exact.
  for (const auto& [rows, cols, block] :
       std::vector<std::tuple<int, int, int>>{{1, 8, 8}, {64, 45, 16}, {300, 256, 32}, {33, 200, 64}}) {
    const MatrixF w = random_matrix(96, cols, static_cast<unsigned>(cols));
    QuantConfig q;
    q.block = block;
    const LayerTransform t = compute_transform({w.data(), 96, cols}, q);
    const MatrixF x = random_matrix(rows, cols, static_cast<unsigned>(rows + 5));
    std::vector<float> smooth(static_cast<std::size_t>(cols));
    for (int j = 0; j < cols; ++j) smooth[static_cast<std::size_t>(j)] = 0.25f + 0.01f * static_cast<float>(j);
    auto engine = kernels::make_cuda_engine(0);
    for (bool smoothed : {false, true})
      for (double quantile : {0.5, 0.999, 1.0}) {
        const std::span<const float> sm = smoothed ? std::span<const float>(smooth) : std::span<const float>();
        const std::span<const float> xs(x.data(), static_cast<std::size_t>(x.size()));
        const std::vector<float> cpu =
            call_percentiles(transform_activations(xs, rows, cols, t.perm, t.r_in, sm), rows, cols, quantile);
        std::vector<float> gpu;
        ASSERT_TRUE(engine->call_percentiles(xs, rows, t, sm, quantile, "(test)", gpu));
        ASSERT_EQ(gpu.size(), cpu.size());
        for (std::size_t j = 0; j < cpu.size(); ++j)
          ASSERT_EQ(elementwise::f32_to_bits(gpu[j]), elementwise::f32_to_bits(cpu[j]))
              << rows << "x" << cols << " channel " << j;
      }
  }
}

TEST(GpuEngine, FixtureLayersMatchTheCpu) {
  DQ_REQUIRE_GPU();
  const formats::Checkpoint ckpt = formats::Checkpoint::open(test::tiny_checkpoint());
  const std::vector<LinearLayer> linears = find_linear_layers(ckpt);
  auto engine = kernels::make_cuda_engine(0);
  int checked = 0;
  for (const LinearLayer& l : linears) {
    if (l.name.find("gemma_expert") == std::string::npos || l.name.find("layernorm") != std::string::npos) continue;
    const SelectedLayer sel{&l, 4};
    const LayerInput in = load_layer_input(ckpt, sel);
    const QuantConfig q;
    const MatrixF w = Eigen::Map<const MatrixF>(in.weights.data(), in.rows, in.cols);
    expect_equivalent(compute_layer_math(in.packed_view(), q, 4), engine->compute(in.packed_view(), q, 4, l.name), w, q,
                      4, l.name);
    ++checked;
  }
  EXPECT_EQ(checked, 14);
}

}  // namespace
}  // namespace duquant
