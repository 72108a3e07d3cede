// choose_row_rotation_signs: only signs change, the rotations stay exact, the quantization error
// drops on the fixture's real layers, and the choice does not depend on the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>

#include "pack/pack_test_util.hpp"

namespace duquant::test {
namespace {

struct Prepared {
  MatrixF w_in;  // W[:, perm]·Rin
  LayerTransform t;
};

Prepared prepare(const WeightView& w, const QuantConfig& q) {
  Prepared p;
  p.t = compute_transform(w, q, &p.w_in);
  rotate_column_blocks(p.w_in, p.t, q.block);
  return p;
}

double quantization_error(const Prepared& p, const LayerTransform& t, std::int64_t block_out, int bits) {
  MatrixF w_t = p.w_in;
  apply_output_rotation(w_t, t, block_out);
  return quantize_rows(w_t, bits).squared_error;
}

TEST(RowSigns, FixtureLayersOnlySignsChangeAndErrorDrops) {
  const auto ckpt = formats::Checkpoint::open(tiny_checkpoint());
  const auto all = find_linear_layers(ckpt);
  for (const ReferenceConfig& config : reference_configs()) {
    for (const int bits : {4, 8}) {
      double canonical_total = 0, chosen_total = 0;
      int flipped = 0;
      for (const LinearLayer* layer : expert_layers(all)) {
        const std::vector<float> weights = load_weight(ckpt, *layer);
        const WeightView w{weights.data(), static_cast<std::int64_t>(layer->out_features),
                           static_cast<std::int64_t>(layer->in_features)};
        const Prepared p = prepare(w, config.quant);
        LayerTransform chosen = p.t;
        choose_row_rotation_signs(p.w_in, chosen, config.quant.block_out, bits);
        ASSERT_EQ(chosen.r_out.size(), p.t.r_out.size());
        for (std::size_t b = 0; b < chosen.r_out.size(); ++b) {
          for (Eigen::Index k = 0; k < chosen.r_out[b].cols(); ++k) {
            const bool same = chosen.r_out[b].col(k) == p.t.r_out[b].col(k);
            const bool negated = chosen.r_out[b].col(k) == (-p.t.r_out[b].col(k)).eval();
            ASSERT_TRUE(same || negated) << layer->name << " block " << b << " column " << k;
            flipped += negated ? 1 : 0;
          }
        }
        const double canonical = quantization_error(p, p.t, config.quant.block_out, bits);
        const double chosen_error = quantization_error(p, chosen, config.quant.block_out, bits);
        // The ranking uses sampled columns and 1/s: a layer may lose a little, never much.
        EXPECT_LE(chosen_error, canonical * 1.01) << config.name << " W" << bits << " " << layer->name;
        canonical_total += canonical;
        chosen_total += chosen_error;
      }
      EXPECT_GT(flipped, 0) << config.name;
      std::printf(
          "%s W%d: squared error %.6g with canonical signs, %.6g with chosen signs (%.1f %% lower), %d columns "
          "negated\n",
          config.name.c_str(), bits, canonical_total, chosen_total, 100 * (1 - chosen_total / canonical_total),
          flipped);
      EXPECT_LT(chosen_total, canonical_total * (bits == 4 ? 0.9 : 0.99)) << config.name << " W" << bits;
    }
  }
}

TEST(RowSigns, SameChoiceWithOneOrTwoThreadsAndOddWidths) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (const auto& [rows, cols, block_out] : {std::tuple{37, 53, 8}, std::tuple{20, 600, 16}, std::tuple{5, 9, 8}}) {
    std::vector<float> weights(static_cast<std::size_t>(rows * cols));
    for (float& v : weights) v = normal(rng) * (rng() % 17 == 0 ? 8.0f : 1.0f);
    const WeightView w{weights.data(), rows, cols};
    QuantConfig q;
    q.block = 16;
    q.block_out = block_out;
    const Prepared p = prepare(w, q);
    LayerTransform one = p.t, two = p.t;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    choose_row_rotation_signs(p.w_in, one, block_out, 4);
    omp_set_num_threads(2);
    choose_row_rotation_signs(p.w_in, two, block_out, 4);
    omp_set_num_threads(saved);
    for (std::size_t b = 0; b < one.r_out.size(); ++b) {
      EXPECT_EQ(one.r_out[b], two.r_out[b]) << rows << "x" << cols << " block " << b;
      const MatrixF& r = one.r_out[b];
      const double ortho =
          (r.transpose().cast<double>() * r.cast<double>() - Eigen::MatrixXd::Identity(r.cols(), r.cols()))
              .cwiseAbs()
              .maxCoeff();
      EXPECT_LT(ortho, 1e-5);
    }
  }
}

TEST(RowSigns, NoRowRotationIsANoOp) {
  std::vector<float> weights(64 * 32, 0.5f);
  const WeightView w{weights.data(), 64, 32};
  QuantConfig q;
  q.row_rot = RowRot::off;
  const Prepared p = prepare(w, q);
  LayerTransform t = p.t;
  ASSERT_TRUE(t.r_out.empty());
  choose_row_rotation_signs(p.w_in, t, q.block_out, 4);
  EXPECT_TRUE(t.r_out.empty());
}

}  // namespace
}  // namespace duquant::test
