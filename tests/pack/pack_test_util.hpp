// Helpers of the pack tests: fixture layers, reference packs, and sign alignment of rotations.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <string>
#include <vector>

#include "common/test_paths.hpp"
#include "formats/npz.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "math/duquant_math.hpp"
#include "pack/pack_layer.hpp"
#include "packfmt/layout.hpp"
#include "select/linear_layers.hpp"

namespace duquant::test {

struct ReferenceConfig {
  std::string name;  // fixture folder suffix
  QuantConfig quant;
};

inline std::vector<ReferenceConfig> reference_configs() {
  QuantConfig b16;  // the runtime's defaults
  QuantConfig b32 = b16;
  b32.block = 32;
  b32.block_out = 16;
  QuantConfig b8 = b16;
  b8.block = b8.block_out = 8;
  b8.permute = false;
  b8.lambda_smooth = 0.0;
  return {{"b16", b16}, {"b32-out16", b32}, {"b8-noperm-ls0", b8}};
}

inline const char* kExpertScope = "paligemma_with_expert.gemma_expert.model.";

// The 14 action-expert linears of the fixture checkpoint, in module order.
inline std::vector<const LinearLayer*> expert_layers(const std::vector<LinearLayer>& all) {
  std::vector<const LinearLayer*> out;
  for (const auto& l : all)
    if (l.name.rfind(kExpertScope, 0) == 0 && l.name.find("layernorm") == std::string::npos) out.push_back(&l);
  return out;
}

inline MatrixF npz_matrix(const formats::NpzFile& npz, const std::string& key) {
  const formats::NpyArray& a = npz.at(key);
  const std::vector<float> v = formats::npy_to_f32(a, key);
  EXPECT_EQ(a.shape.size(), 2u) << key;
  MatrixF m(static_cast<Eigen::Index>(a.shape[0]), static_cast<Eigen::Index>(a.shape[1]));
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

// Reads perm and rotations of a pack npz into a LayerTransform.
inline LayerTransform npz_transform(const formats::NpzFile& npz, std::int64_t in_features) {
  LayerTransform t;
  if (npz.contains("perm")) {
    t.perm = formats::npy_to_i64(npz.at("perm"), "perm");
  } else {
    for (std::int64_t i = 0; i < in_features; ++i) t.perm.push_back(i);
  }
  for (std::int64_t b : formats::npy_to_i64(npz.at("R_in_blocks"), "R_in_blocks"))
    t.r_in.push_back(npz_matrix(npz, "Rin_" + std::to_string(b)));
  for (std::int64_t b : formats::npy_to_i64(npz.at("R_out_blocks"), "R_out_blocks"))
    t.r_out.push_back(npz_matrix(npz, "Rout_" + std::to_string(b)));
  return t;
}

// Eigenvalues of the Gram matrix a rotation diagonalises, descending: Wb^T Wb for input block b.
inline Eigen::VectorXd gram_eigenvalues(const Eigen::MatrixXd& gram) {
  Eigen::VectorXd ev = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(gram).eigenvalues().reverse();
  return ev;
}

// Compares rotation `ours` with `ref` column by column: where the eigenvalue is distinct
// (relative gap > 1e-4 to its neighbours), the columns must be equal up to sign within `tol`;
// groups of repeated eigenvalues must span the same subspace (equal projectors within `tol`).
// Returns the signs (+1/-1) that align our distinct columns with the reference's (0 elsewhere).
inline std::vector<int> compare_rotation(const MatrixF& ours, const MatrixF& ref, const Eigen::VectorXd& ev, double tol,
                                         const std::string& what) {
  const Eigen::Index n = ref.cols();
  std::vector<int> signs(static_cast<std::size_t>(n), 0);
  const double scale = std::max(ev.cwiseAbs().maxCoeff(), 1e-30);
  Eigen::Index start = 0;
  while (start < n) {
    Eigen::Index end = start + 1;
    while (end < n && std::abs(ev[end - 1] - ev[end]) <= 1e-4 * scale) ++end;
    if (end - start == 1) {
      const double dot = ours.col(start).cast<double>().dot(ref.col(start).cast<double>());
      EXPECT_NEAR(std::abs(dot), 1.0, tol) << what << " column " << start;
      signs[start] = dot < 0 ? -1 : 1;
    } else {
      const Eigen::MatrixXd a = ours.middleCols(start, end - start).cast<double>();
      const Eigen::MatrixXd b = ref.middleCols(start, end - start).cast<double>();
      const double diff = (a * a.transpose() - b * b.transpose()).cwiseAbs().maxCoeff();
      EXPECT_LT(diff, tol) << what << " eigenspace of columns " << start << ".." << end - 1;
    }
    start = end;
  }
  return signs;
}

}  // namespace duquant::test
