#include "math/duquant_math.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <omp.h>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "math/cpu_kernels.hpp"

namespace duquant {

std::int64_t block_count(std::int64_t n, std::int64_t block) { return (n + block - 1) / block; }

std::int64_t block_width(std::int64_t n, std::int64_t block, std::int64_t b) { return std::min(block, n - b * block); }

std::vector<float> channel_energy(const WeightView& w, double lambda_smooth) {
  // Row by row for the cache; each column's sum still runs over the rows in order (elementwise.hpp).
  std::vector<double> sum(static_cast<std::size_t>(w.cols), 0.0);
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const float* row = w.data + r * w.cols;
    for (std::int64_t c = 0; c < w.cols; ++c) sum[c] = elementwise::energy_add(sum[c], row[c]);
  }
  std::vector<float> e(sum.size());
  double total = 0;
  for (std::size_t c = 0; c < e.size(); ++c) {
    e[c] = elementwise::energy_mean(sum[c], w.rows);
    total += e[c];
  }
  if (lambda_smooth > 0) {
    const float lam = static_cast<float>(lambda_smooth);
    const float mean = static_cast<float>(total / static_cast<double>(std::max<std::size_t>(e.size(), 1)));
    for (float& v : e) v = elementwise::smoothed_energy(v, mean, lam);
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
    if (v[elementwise::largest_magnitude_index(v.data(), static_cast<int>(n), 1)] < 0) v = -v;
    r.col(j) = v.cast<float>();
    if (eigenvalues) (*eigenvalues)[j] = solver.eigenvalues()[src];
  }
  return r;
}

namespace {

// Below about this many multiply-adds a parallel region costs more than it saves: waking the team
// and, worse, its threads spinning after it while the pack's other threads want the cores (tiny
// layers on a loaded 2-core machine: 30-40 ms per layer, nearly all in libgomp's spin). Every
// region below gives the same result on one thread as on many, so the `if` changes no output.
constexpr std::int64_t kParallelWork = std::int64_t{1} << 18;

// `blocks` eigen solves of width up to `width` (each about width^3).
bool worth_parallel_blocks(std::int64_t blocks, std::int64_t width) {
  return blocks > 1 && blocks * width * width * width >= kParallelWork;
}

std::int64_t round_up(std::int64_t n, std::int64_t m) { return (n + m - 1) / m * m; }

// The depth blocks of the row-block Gram products: the blocking Eigen's product chose for them on
// a CPU with a 32 KB L1 data cache (GeneralBlockPanelKernel.h, one thread, double, 4x4 kernel:
// at most 504 deep, the last block as large as possible) — the bytes packs had before this kernel
// — now fixed whatever the CPU's caches or the thread count.
std::int64_t gram_depth_block(std::int64_t depth) {
  constexpr std::int64_t kMax = 504, kPeel = 8;
  if (depth <= kMax) return depth;
  const std::int64_t rest = depth % kMax;
  return rest == 0 ? kMax : kMax - kPeel * ((kMax - 1 - rest) / (kPeel * (depth / kMax + 1)));
}

// G = R·Rᵀ of the s rows at `rows` (each `cols` long), in double: Σ over the columns in depth
// blocks (gram_depth_block), each block's sums from 0 in column order, added to G in order.
Eigen::MatrixXd row_block_gram(const simd::Kernels& kern, const float* rows, std::int64_t s, std::int64_t cols) {
  Eigen::MatrixXd g = Eigen::MatrixXd::Zero(s, s);
  const std::int64_t kc = gram_depth_block(cols), lda = round_up(s, 16);
  std::vector<double> block(static_cast<std::size_t>(std::max<std::int64_t>(kc, 1) * lda), 0.0);
  for (std::int64_t k0 = 0; k0 < cols; k0 += kc) {
    const std::int64_t n = std::min(kc, cols - k0);
    for (std::int64_t i = 0; i < s; ++i) {  // row by row: rows far apart would share cache sets
      const float* src = rows + i * cols + k0;
      for (std::int64_t kk = 0; kk < n; ++kk) block[kk * lda + i] = static_cast<double>(src[kk]);
    }
    kern.gram_add(block.data(), n, s, lda, g.data());
  }
  return g;
}

// W[:, perm] in one pass over the rows (each row gathered while it is in cache).
MatrixF permute_columns(const WeightView& w, const std::vector<std::int64_t>& perm) {
  MatrixF out(w.rows, w.cols);
#pragma omp parallel for schedule(static) if (w.rows * w.cols >= kParallelWork)
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const float* src = w.data + r * w.cols;
    float* dst = out.data() + r * w.cols;
    for (std::int64_t c = 0; c < w.cols; ++c) dst[c] = src[perm[c]];
  }
  return out;
}

}  // namespace

LayerTransform compute_transform(const WeightView& w, const QuantConfig& q, MatrixF* permuted_out) {
  LayerTransform t;
  if (q.permute) {
    t.perm = zigzag_permutation(channel_energy(w, q.lambda_smooth));
  } else {
    t.perm.resize(static_cast<std::size_t>(w.cols));
    std::iota(t.perm.begin(), t.perm.end(), 0);
  }
  const std::int64_t nb = block_count(w.cols, q.block);
  t.r_in.resize(static_cast<std::size_t>(nb));
  {
    MatrixF permuted = permute_columns(w, t.perm);
    // Gram matrices of all column blocks. Each thread takes a contiguous range of blocks and walks
    // the rows in tiles, converting only its columns of each tile to double: memory is read row
    // segment by row segment instead of column by column. Every Gram sums the same tiles in the
    // same order whichever thread computes it, so the result does not depend on the thread count.
    std::vector<Eigen::MatrixXd> grams(static_cast<std::size_t>(nb));
    const simd::Kernels& kern = simd::kernels();
#pragma omp parallel if (nb > 1 && w.rows * w.cols * q.block >= kParallelWork)
    {
      const int threads = omp_get_num_threads(), me = omp_get_thread_num();
      const std::int64_t b0 = nb * me / threads, b1 = nb * (me + 1) / threads;
      if (b0 < b1) {
        const std::int64_t c0 = b0 * q.block, c1 = std::min<std::int64_t>(w.cols, b1 * q.block);
        for (std::int64_t b = b0; b < b1; ++b) {
          const std::int64_t s = block_width(w.cols, q.block, b);
          grams[b] = Eigen::MatrixXd::Zero(s, s);
        }
        constexpr std::int64_t kTile = 256;
        const std::int64_t width = c1 - c0;
        // gram_add reads whole groups of 16 columns from a block's start: the last row's may run
        // past the tile, into zeros.
        std::vector<double> tile(static_cast<std::size_t>(kTile * width + round_up(q.block, 16)), 0.0);
        for (std::int64_t r0 = 0; r0 < w.rows; r0 += kTile) {
          const std::int64_t rows = std::min(kTile, w.rows - r0);
          for (std::int64_t r = 0; r < rows; ++r) {
            const float* src = permuted.data() + (r0 + r) * w.cols + c0;
            kern.widen(src, width, tile.data() + r * width);
          }
          for (std::int64_t b = b0; b < b1; ++b)
            kern.gram_add(tile.data() + (b * q.block - c0), rows, block_width(w.cols, q.block, b), width,
                          grams[b].data());
        }
      }
    }
#pragma omp parallel for schedule(dynamic) if (worth_parallel_blocks(nb, q.block))
    for (std::int64_t b = 0; b < nb; ++b) t.r_in[b] = eigen_rotation(grams[b]);
    if (permuted_out != nullptr) *permuted_out = std::move(permuted);
  }
  if (q.row_rot != RowRot::off) {
    const simd::Kernels& kern = simd::kernels();
    const std::int64_t nbo = block_count(w.rows, q.block_out);
    t.r_out.resize(static_cast<std::size_t>(nbo));
#pragma omp parallel for schedule(dynamic) if (nbo > 1 && nbo * q.block_out * q.block_out * (w.cols + q.block_out) >= \
                                                              kParallelWork)
    for (std::int64_t b = 0; b < nbo; ++b) {
      const std::int64_t s = block_width(w.rows, q.block_out, b);
      t.r_out[b] = eigen_rotation(row_block_gram(kern, w.data + b * q.block_out * w.cols, s, w.cols));
    }
  }
  return t;
}

void rotate_column_blocks(MatrixF& permuted, const LayerTransform& t, std::int64_t block) {
  const std::int64_t nb = static_cast<std::int64_t>(t.r_in.size());
  const std::int64_t rows = permuted.rows(), cols = permuted.cols();
  // As for the Gram matrices: each thread a contiguous range of blocks, rows in tiles kept in
  // cache; every output row of a block is the same product whichever thread computes it.
#pragma omp parallel if (nb > 1 && rows * cols * block >= kParallelWork)
  {
    const int threads = omp_get_num_threads(), me = omp_get_thread_num();
    const std::int64_t b0 = nb * me / threads, b1 = nb * (me + 1) / threads;
    constexpr std::int64_t kTile = 256;
    const simd::Kernels& kern = simd::kernels();
    std::vector<float> rotated(static_cast<std::size_t>(kTile * std::min(block, std::max<std::int64_t>(cols, 1))));
    for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
      const std::int64_t n = std::min(kTile, rows - r0);
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t s = block_width(cols, block, b);
        float* x = permuted.data() + r0 * cols + b * block;
        kern.product_f32(x, cols, t.r_in[b].data(), s, rotated.data(), s, n, s, s);
        for (std::int64_t r = 0; r < n; ++r) std::copy_n(rotated.data() + r * s, s, x + r * cols);
      }
    }
  }
}

MatrixF apply_input_transform(const WeightView& w, const LayerTransform& t, std::int64_t block) {
  MatrixF out = permute_columns(w, t.perm);
  rotate_column_blocks(out, t, block);
  return out;
}

void apply_output_rotation(MatrixF& w_t, const LayerTransform& t, std::int64_t block_out) {
  const simd::Kernels& kern = simd::kernels();
  const std::int64_t nbo = static_cast<std::int64_t>(t.r_out.size());
#pragma omp parallel for schedule(dynamic) if (nbo > 1 && w_t.rows() * w_t.cols() * block_out >= kParallelWork)
  for (std::int64_t b = 0; b < nbo; ++b) {
    const std::int64_t s = block_width(w_t.rows(), block_out, b);
    const MatrixF rows = w_t.middleRows(b * block_out, s);
    kern.product_f32(t.r_out[b].data(), s, rows.data(), w_t.cols(), w_t.data() + b * block_out * w_t.cols(), w_t.cols(),
                     s, w_t.cols(), s);
  }
}

std::vector<float> reference_weight_scale(const MatrixF& m) {
  std::vector<float> s(static_cast<std::size_t>(m.rows()));
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    s[r] = elementwise::reference_weight_scale(m.row(r).cwiseAbs().maxCoeff());
  return s;
}

namespace {}  // namespace

QuantizedRows quantize_rows(const MatrixF& w_t, int bits) {
  const simd::Kernels& kern = simd::kernels();
  const Eigen::Index rows = w_t.rows(), cols = w_t.cols();
  QuantizedRows out;
  out.scales.resize(static_cast<std::size_t>(rows));
  out.codes.resize(static_cast<std::size_t>(rows * cols));
  std::vector<double> row_error(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static) if (rows * cols * elementwise::kScaleCandidates >= kParallelWork)
  for (Eigen::Index r = 0; r < rows; ++r) {
    const float* w = w_t.data() + r * cols;
    const float base = elementwise::base_scale(kern.row_max_abs(w, cols), bits);
    float scales[elementwise::kScaleCandidates];
    double errors[elementwise::kScaleCandidates];
    for (int k = 0; k < elementwise::kScaleCandidates; ++k) scales[k] = base / elementwise::scale_alpha(k);
    kern.row_errors(w, cols, scales, elementwise::kScaleCandidates, bits, errors);
    int best = 0;
    for (int k = 1; k < elementwise::kScaleCandidates; ++k)
      if (errors[k] < errors[best]) best = k;  // strict: the first smallest wins
    const float s = scales[best];
    out.scales[r] = s;
    kern.quantize_row(w, cols, s, bits, out.codes.data() + r * cols);
    row_error[r] = errors[best];
  }
  for (double e : row_error) out.squared_error += e;  // fixed order: deterministic for any thread count
  return out;
}

double rtn_squared_error(const WeightView& w, int bits) {
  const simd::Kernels& kern = simd::kernels();
  std::vector<double> row_error(static_cast<std::size_t>(w.rows));
#pragma omp parallel for schedule(static) if (w.rows * w.cols >= kParallelWork)
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const float* row = w.data + r * w.cols;
    const float s = elementwise::base_scale(kern.row_max_abs(row, w.cols), bits);
    kern.row_errors(row, w.cols, &s, 1, bits, &row_error[r]);
  }
  double total = 0;
  for (double e : row_error) total += e;
  return total;
}

}  // namespace duquant

namespace duquant {
namespace {

// Sign choices are ranked on at most elementwise::kSignSearchColumns columns of each row (evenly
// strided), with each row's scale taken from its full maximum: the ranking costs
// O(rows * kSignSearchColumns) per trial instead of O(rows * cols).

// The rows' maxima of |m|, into `out`.
void row_maxima(const simd::Kernels& kern, const MatrixF& m, std::vector<float>& out) {
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    out[static_cast<std::size_t>(r)] = kern.row_max_abs(m.data() + r * m.cols(), m.cols());
}

// The quantization error of the rows of `sampled` (columns picked from the full rows) under the
// runtime's per-row MSE scale search, the scale of row r coming from `row_max[r]`, summed over the
// rows in order (elementwise::sampled_row_error: a fixed order, deterministic). For ranking only.
double sampled_quantization_error(const simd::Kernels& kern, const MatrixF& sampled, const float* row_max, int bits) {
  return kern.sampled_rows_error(sampled.data(), sampled.rows(), sampled.cols(), row_max, bits);
}

}  // namespace

void choose_row_rotation_signs(const MatrixF& w_in, LayerTransform& t, std::int64_t block_out, int bits) {
  const auto nbo = static_cast<std::int64_t>(t.r_out.size());
  const std::int64_t cols = w_in.cols();
  const std::int64_t stride = elementwise::sign_search_stride(cols);
  const std::int64_t picked = elementwise::sign_search_picked(cols);
  const simd::Kernels& kern = simd::kernels();
#pragma omp parallel for schedule(dynamic) if (nbo > 1 && nbo * block_out * block_out * cols >= kParallelWork)
  for (std::int64_t b = 0; b < nbo; ++b) {
    MatrixF& u = t.r_out[static_cast<std::size_t>(b)];
    const Eigen::Index s = u.rows();
    const MatrixF rows = w_in.middleRows(b * block_out, s);
    MatrixF rows_sampled(s, picked);
    for (std::int64_t c = 0; c < picked; ++c) rows_sampled.col(c) = rows.col(c * stride);
    MatrixF current(s, cols), current_sampled(s, picked), trial_sampled(s, picked);
    kern.product_f32(u.data(), s, rows.data(), cols, current.data(), cols, s, cols, s);
    kern.product_f32(u.data(), s, rows_sampled.data(), picked, current_sampled.data(), picked, s, picked, s);
    std::vector<float> row_max(static_cast<std::size_t>(s)), trial_max(static_cast<std::size_t>(s));
    std::vector<float> step(static_cast<std::size_t>(s));
    row_maxima(kern, current, row_max);
    double error = sampled_quantization_error(kern, current_sampled, row_max.data(), bits);
    for (Eigen::Index k = 0; k < s; ++k) {
      // Negating column k of U changes U·rows by −2 U[:,k] rows[k,:]. The trial's full rows are
      // needed only for their maxima: those are taken without forming the trial, and the rows
      // change in place only when the trial is kept (the same floats either way).
      // The trial's error is the sum over its rows in order of non-negative figures, so its
      // partial sums never decrease: once one reaches the error to beat, the trial is rejected
      // without measuring the remaining rows (the decision, and so every output, is unchanged).
      const float* rk = rows.data() + k * cols;
      const float* rsk = rows_sampled.data() + k * picked;
      double e = 0;
      for (Eigen::Index r = 0; r < s && e < error; ++r) {
        const auto ri = static_cast<std::size_t>(r);
        step[ri] = 2.0f * u(r, k);
        trial_max[ri] = kern.shifted_row_max_abs(current.data() + r * cols, rk, step[ri], cols);
        const float* cur = current_sampled.data() + r * picked;
        float* trial = trial_sampled.data() + r * picked;
        kern.subtract_scaled(cur, rsk, step[ri], picked, trial);
        e += kern.sampled_rows_error(trial, 1, picked, &trial_max[ri], bits);
      }
      if (e < error) {
        u.col(k) = -u.col(k);
        for (Eigen::Index r = 0; r < s; ++r)
          kern.subtract_scaled(current.data() + r * cols, rk, step[static_cast<std::size_t>(r)], cols,
                               current.data() + r * cols);
        current_sampled.swap(trial_sampled);
        row_max.swap(trial_max);
        error = e;
      }
    }
  }
}

}  // namespace duquant
