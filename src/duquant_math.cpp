#include "duquant/duquant_math.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "duquant/elementwise.hpp"
#include "duquant/error.hpp"

namespace duquant {

std::int64_t block_count(std::int64_t n, std::int64_t block) { return (n + block - 1) / block; }

std::int64_t block_width(std::int64_t n, std::int64_t block, std::int64_t b) {
  return std::min(block, n - b * block);
}

std::vector<float> channel_energy(const WeightView& w, double lambda_smooth) {
  std::vector<double> sum(static_cast<std::size_t>(w.cols), 0.0);
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const float* row = w.data + r * w.cols;
    for (std::int64_t c = 0; c < w.cols; ++c) sum[c] += static_cast<double>(row[c]) * row[c];
  }
  std::vector<float> e(sum.size());
  double total = 0;
  for (std::size_t c = 0; c < e.size(); ++c) {
    e[c] = static_cast<float>(sum[c] / static_cast<double>(std::max<std::int64_t>(w.rows, 1)));
    total += e[c];
  }
  if (lambda_smooth > 0) {
    const float lam = static_cast<float>(lambda_smooth);
    const float mean = static_cast<float>(total / static_cast<double>(std::max<std::size_t>(e.size(), 1)));
    for (float& v : e) v = (1.0f - lam) * v + lam * mean;
  }
  return e;
}

std::vector<std::int64_t> zigzag_permutation(std::span<const float> energy) {
  const auto n = static_cast<std::int64_t>(energy.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return energy[a] > energy[b]; });
  std::vector<std::int64_t> perm(order.size());
  for (std::int64_t k = 0; k < n; ++k) perm[k] = order[elementwise::zigzag_rank(k, n)];
  return perm;
}

MatrixF eigen_rotation(const Eigen::MatrixXd& gram, Eigen::VectorXd* eigenvalues) {
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram);
  DQ_CHECK(solver.info() == Eigen::Success, numeric, "eigen-decomposition of a {}x{} Gram matrix did not converge",
           gram.rows(), gram.cols());
  const Eigen::Index n = gram.rows();
  MatrixF r(n, n);
  if (eigenvalues) eigenvalues->resize(n);
  for (Eigen::Index j = 0; j < n; ++j) {
    const Eigen::Index src = n - 1 - j;  // Eigen sorts ascending
    Eigen::VectorXd v = solver.eigenvectors().col(src);
    Eigen::Index largest = 0;
    for (Eigen::Index i = 1; i < n; ++i)
      if (std::abs(v[i]) > std::abs(v[largest])) largest = i;
    if (v[largest] < 0) v = -v;
    r.col(j) = v.cast<float>();
    if (eigenvalues) (*eigenvalues)[j] = solver.eigenvalues()[src];
  }
  return r;
}

LayerTransform compute_transform(const WeightView& w, const QuantConfig& q) {
  LayerTransform t;
  if (q.permute) {
    t.perm = zigzag_permutation(channel_energy(w, q.lambda_smooth));
  } else {
    t.perm.resize(static_cast<std::size_t>(w.cols));
    std::iota(t.perm.begin(), t.perm.end(), 0);
  }
  const std::int64_t nb = block_count(w.cols, q.block);
  t.r_in.resize(static_cast<std::size_t>(nb));
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t s = block_width(w.cols, q.block, b);
    Eigen::MatrixXd cols(w.rows, s);
    for (std::int64_t r = 0; r < w.rows; ++r)
      for (std::int64_t c = 0; c < s; ++c) cols(r, c) = w.at(r, t.perm[b * q.block + c]);
    t.r_in[b] = eigen_rotation(cols.transpose() * cols);
  }
  if (q.row_rot != RowRot::off) {
    const std::int64_t nbo = block_count(w.rows, q.block_out);
    t.r_out.resize(static_cast<std::size_t>(nbo));
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t b = 0; b < nbo; ++b) {
      const std::int64_t s = block_width(w.rows, q.block_out, b);
      const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> rows(
          w.data + b * q.block_out * w.cols, s, w.cols);
      const Eigen::MatrixXd rd = rows.cast<double>();
      t.r_out[b] = eigen_rotation(rd * rd.transpose());
    }
  }
  return t;
}

MatrixF apply_input_transform(const WeightView& w, const LayerTransform& t, std::int64_t block) {
  MatrixF out(w.rows, w.cols);
  const std::int64_t nb = static_cast<std::int64_t>(t.r_in.size());
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t s = block_width(w.cols, block, b);
    MatrixF cols(w.rows, s);
    for (std::int64_t r = 0; r < w.rows; ++r)
      for (std::int64_t c = 0; c < s; ++c) cols(r, c) = w.at(r, t.perm[b * block + c]);
    out.middleCols(b * block, s).noalias() = cols * t.r_in[b];
  }
  return out;
}

void apply_output_rotation(MatrixF& w_t, const LayerTransform& t, std::int64_t block_out) {
  const std::int64_t nbo = static_cast<std::int64_t>(t.r_out.size());
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = 0; b < nbo; ++b) {
    const std::int64_t s = block_width(w_t.rows(), block_out, b);
    const MatrixF rows = w_t.middleRows(b * block_out, s);
    w_t.middleRows(b * block_out, s).noalias() = t.r_out[b] * rows;
  }
}

std::vector<float> reference_weight_scale(const MatrixF& m) {
  std::vector<float> s(static_cast<std::size_t>(m.rows()));
  for (Eigen::Index r = 0; r < m.rows(); ++r) s[r] = elementwise::reference_weight_scale(m.row(r).cwiseAbs().maxCoeff());
  return s;
}

QuantizedRows quantize_rows(const MatrixF& w_t, int bits) {
  const Eigen::Index rows = w_t.rows(), cols = w_t.cols();
  QuantizedRows out;
  out.scales.resize(static_cast<std::size_t>(rows));
  out.codes.resize(static_cast<std::size_t>(rows * cols));
  std::vector<double> row_error(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static)
  for (Eigen::Index r = 0; r < rows; ++r) {
    const float* w = w_t.data() + r * cols;
    float max_abs = 0;
    for (Eigen::Index c = 0; c < cols; ++c) max_abs = std::max(max_abs, std::abs(w[c]));
    const float base = elementwise::base_scale(max_abs, bits);
    float best_scale = base;
    double best = 0;
    for (int k = 0; k < elementwise::kScaleCandidates; ++k) {
      const float s = base / elementwise::scale_alpha(k);
      double err = 0;
      for (Eigen::Index c = 0; c < cols; ++c) err += elementwise::squared_error(w[c], s, bits);
      if (k == 0 || err < best) {
        best = err;
        best_scale = s;
      }
    }
    out.scales[r] = best_scale;
    std::int8_t* q = out.codes.data() + r * cols;
    for (Eigen::Index c = 0; c < cols; ++c) q[c] = static_cast<std::int8_t>(elementwise::quantize(w[c], best_scale, bits));
    row_error[r] = best;
  }
  for (double e : row_error) out.squared_error += e;  // fixed order: deterministic for any thread count
  return out;
}

double rtn_squared_error(const WeightView& w, int bits) {
  std::vector<double> row_error(static_cast<std::size_t>(w.rows));
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const float* row = w.data + r * w.cols;
    float max_abs = 0;
    for (std::int64_t c = 0; c < w.cols; ++c) max_abs = std::max(max_abs, std::abs(row[c]));
    const float s = elementwise::base_scale(max_abs, bits);
    double e = 0;
    for (std::int64_t c = 0; c < w.cols; ++c) e += elementwise::squared_error(row[c], s, bits);
    row_error[r] = e;
  }
  double total = 0;
  for (double e : row_error) total += e;
  return total;
}

}  // namespace duquant
