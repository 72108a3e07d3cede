// Activation calibration against the runtime's golden values (../shared/fixtures): the activation
// transform reproduces the golden x_t and the activation scales reproduce `…|calib|act_scale_a8_p99.9`
// (120 tokens, 99.9th percentile, 8 bits), from the reference packs' rotations and from ours; the
// quantile matches torch.quantile's linear interpolation on hand-made cases; the running value is
// the max over calls; activation fake-quantization rounds half to even and clamps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "duquant/error.hpp"
#include "math/calibration.hpp"
#include "pack/pack_test_util.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace {

using formats::NpzFile;

// Named tolerances, measured. x_t: the golden was computed in float32 by torch (sums in another
// order); ours are double sums rounded once. The scales are the 99.9th percentile interpolated
// between the two largest |x_t| of a channel, so they inherit x_t's relative error.
constexpr double kXtRel = 2e-6;     // max |x_t - golden| / max |golden| per layer
constexpr double kScaleRel = 5e-6;  // max |act_scale - golden| / golden per channel (seen: 2.4e-6)

std::vector<float> golden_vector(const NpzFile& g, const std::string& key) {
  return formats::npy_to_f32(g.at(key), key);
}

class CalibGolden : public ::testing::TestWithParam<test::ReferenceConfig> {};

TEST_P(CalibGolden, ActivationScalesReproduceTheRuntime) {
  const auto ckpt = formats::Checkpoint::open(test::tiny_checkpoint());
  const auto linears = find_linear_layers(ckpt);
  const auto layers = test::expert_layers(linears);
  ASSERT_EQ(layers.size(), 14u);
  const NpzFile golden = NpzFile::open(test::fixtures() / ("openpi-pack-" + GetParam().name + ".golden.npz"));
  const QuantConfig& q = GetParam().quant;
  double worst_xt = 0, worst_ref = 0, worst_ours = 0;
  for (const LinearLayer* l : layers) {
    const auto i_n = static_cast<std::int64_t>(l->in_features);
    const auto& xa = golden.at(l->name + "|calib|x");
    ASSERT_EQ(xa.shape.size(), 3u);
    ASSERT_EQ(xa.shape[2], l->in_features);
    const std::vector<float> x = golden_vector(golden, l->name + "|calib|x");
    const std::vector<float> xt_golden = golden_vector(golden, l->name + "|calib|x_t");
    const std::vector<float> scale_golden = golden_vector(golden, l->name + "|calib|act_scale_a8_p99.9");
    const auto rows = static_cast<std::int64_t>(xa.shape[0] * xa.shape[1]);  // one call, leading dims flattened
    ASSERT_EQ(rows, 120);

    // With the reference pack's own rotations: x_t and the scales.
    const NpzFile ref = NpzFile::open(test::fixtures() / ("openpi-pack-" + GetParam().name) / pack_file_name(l->name));
    const LayerTransform t_ref = test::npz_transform(ref, i_n);
    const std::vector<float> xt = transform_activations(x, rows, i_n, t_ref.perm, t_ref.r_in, {});
    float g_max = 0;
    for (float v : xt_golden) g_max = std::max(g_max, std::fabs(v));
    double d_max = 0;
    for (std::size_t k = 0; k < xt.size(); ++k) d_max = std::max(d_max, std::fabs(double(xt[k]) - xt_golden[k]));
    worst_xt = std::max(worst_xt, d_max / g_max);
    EXPECT_LE(d_max, kXtRel * g_max) << l->name;

    ActivationCalibrator cal(i_n, q.act_pct, 8);
    cal.add_call(xt, rows);
    const std::vector<float> s_ref = cal.act_scale();
    ASSERT_EQ(s_ref.size(), scale_golden.size());
    for (std::size_t j = 0; j < s_ref.size(); ++j) {
      const double rel = std::fabs(double(s_ref[j]) - scale_golden[j]) / scale_golden[j];
      worst_ref = std::max(worst_ref, rel);
      EXPECT_LE(rel, kScaleRel) << l->name << " channel " << j;
    }

    // With our own transform. Column signs do not change |x_t|; but where channel energies tie, our
    // permutation may group other channels into a block (an equally valid pack, see
    // test_pack_fixtures), so this comparison is only made without permutation.
    if (q.permute) continue;
    const std::vector<float> w = load_weight(ckpt, *l);
    const LayerTransform t_ours =
        compute_transform(WeightView{w.data(), static_cast<std::int64_t>(l->out_features), i_n}, q);
    ActivationCalibrator ours(i_n, q.act_pct, 8);
    ours.add_call(transform_activations(x, rows, i_n, t_ours.perm, t_ours.r_in, {}), rows);
    const std::vector<float> s_ours = ours.act_scale();
    for (std::size_t j = 0; j < s_ours.size(); ++j) {
      const double rel = std::fabs(double(s_ours[j]) - scale_golden[j]) / scale_golden[j];
      worst_ours = std::max(worst_ours, rel);
      EXPECT_LE(rel, 1e-4) << l->name << " channel " << j;  // through our rotations (seen: 3.2e-5)
    }
  }
  std::printf("[%s] worst x_t rel %.3g, act_scale rel %.3g (reference rotations)", GetParam().name.c_str(), worst_xt,
              worst_ref);
  if (!q.permute) std::printf(", %.3g (our rotations)", worst_ours);
  std::printf("\n");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CalibGolden, ::testing::ValuesIn(test::reference_configs()), [](const auto& info) {
  std::string n = info.param.name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

TEST(Quantile, LinearInterpolationAsTorch) {
  // torch.quantile(torch.tensor([...]), q, interpolation="linear") values, by hand:
  std::vector<float> v{3, 1, 2, 4};  // sorted 1 2 3 4; pos = q * 3
  EXPECT_FLOAT_EQ(quantile_linear(v, 0.0), 1.0f);
  v = {3, 1, 2, 4};
  EXPECT_FLOAT_EQ(quantile_linear(v, 1.0), 4.0f);
  v = {3, 1, 2, 4};
  EXPECT_FLOAT_EQ(quantile_linear(v, 0.5), 2.5f);  // pos 1.5
  v = {3, 1, 2, 4};
  EXPECT_FLOAT_EQ(quantile_linear(v, 0.9), 3.7f);  // pos 2.7: 3 + 0.7
  v = {5};
  EXPECT_FLOAT_EQ(quantile_linear(v, 0.999), 5.0f);
  v = {7, 7, 7, 1};
  EXPECT_FLOAT_EQ(quantile_linear(v, 0.5), 7.0f);  // pos 1.5 between two 7s
  // 1000 values 0..999 shuffled: the 99.9th percentile is at pos 998.001.
  std::vector<float> big(1000);
  for (int k = 0; k < 1000; ++k) big[static_cast<std::size_t>(k)] = static_cast<float>(k);
  std::shuffle(big.begin(), big.end(), std::mt19937(7));
  EXPECT_NEAR(quantile_linear(big, 0.999), 998.001, 1e-4);
}

TEST(Calibrator, RunningMaxOverCallsAndFloors) {
  // Two channels, two calls of 2 rows; q = 1 (100th percentile) gives the max |x|.
  ActivationCalibrator cal(2, 100.0, 8);
  const std::vector<float> a{1.0f, -0.0f, -3.0f, 0.0f};  // channel 1 all zero: floored at 1e-6
  const std::vector<float> b{2.0f, 0.0f, -2.5f, 0.0f};
  cal.add_call(a, 2);
  cal.add_call(b, 2);
  EXPECT_EQ(cal.steps(), 2);
  const auto s = cal.act_scale();
  EXPECT_FLOAT_EQ(s[0], 3.0f / 127.0f);  // max over calls of per-call maxima (3 then 2.5)
  EXPECT_FLOAT_EQ(s[1], 1e-6f);          // max(1e-6 / 127, 1e-6)
  ActivationCalibrator four(1, 100.0, 4);
  const std::vector<float> c{0.7f};
  four.add_call(c, 1);
  EXPECT_FLOAT_EQ(four.act_scale()[0], 0.1f);  // qmax(4) = 7
}

TEST(Calibrator, RejectsBadSettings) {
  EXPECT_THROW(ActivationCalibrator(4, 0.0, 8), Error);
  EXPECT_THROW(ActivationCalibrator(4, 100.5, 8), Error);
  EXPECT_THROW(ActivationCalibrator(4, 99.9, 1), Error);
  ActivationCalibrator cal(4, 99.9, 8);
  EXPECT_THROW((void)cal.act_scale(), Error);  // no call yet
  const std::vector<float> x(7, 1.0f);
  EXPECT_THROW(cal.add_call(x, 2), Error);  // 7 values for [2, 4]
}

TEST(ActivationQuant, RoundsHalfToEvenAndClamps) {
  std::vector<float> x{0.25f, 0.75f, -0.25f, 1000.0f, -1000.0f, 0.5f};
  const std::vector<float> s{0.5f, 0.5f, 0.5f, 1.0f, 1.0f, 1.0f};
  fake_quantize_activations(x, 1, s, 8);
  EXPECT_EQ(x[0], 0.0f);     // 0.5 -> 0 (half to even)
  EXPECT_EQ(x[1], 1.0f);     // 1.5 -> 2, times 0.5
  EXPECT_EQ(x[2], -0.0f);    // -0.5 -> -0
  EXPECT_EQ(x[3], 127.0f);   // clamped to qmax
  EXPECT_EQ(x[4], -128.0f);  // clamped to -qmax-1
  EXPECT_EQ(x[5], 0.0f);     // 0.5 -> 0
}

TEST(ActivationTransform, SmoothingDividesBeforeThePermutation) {
  // Identity rotations: x_t = (x / s)[:, perm].
  const std::vector<float> x{2, 4, 6};
  const std::vector<float> s{2, 4, 3};
  const std::vector<std::int64_t> perm{2, 0, 1};
  std::vector<MatrixF> r(1, MatrixF::Identity(3, 3));
  const auto xt = transform_activations(x, 1, 3, perm, r, s);
  EXPECT_EQ(xt, (std::vector<float>{2, 1, 1}));
  EXPECT_THROW(transform_activations(x, 1, 3, std::vector<std::int64_t>{0, 1, 3}, r, {}), Error);
  std::vector<MatrixF> short_blocks(1, MatrixF::Identity(2, 2));
  EXPECT_THROW(transform_activations(x, 1, 3, perm, short_blocks, {}), Error);
}

}  // namespace
}  // namespace duquant
