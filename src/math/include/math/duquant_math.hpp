// The DuQuant transform of one linear layer, CPU reference (reference sections 3 and 4).
//
//   energy e_j = mean_i W_ij^2, smoothed: (1-λ) e + λ mean(e)
//   perm       zigzag over channels sorted by descending energy (ties: lower index first)
//   Rin_b      eigenvectors of Wb^T Wb, Wb = W[:, perm[block b]]  (descending eigenvalues)
//   Rout_b     eigenvectors of Wr Wr^T, Wr = W[rows of block b, :] (original W)
//   W_t        = Rout_b · (W[:, perm] · Rin_b)   (row blocks after column blocks)
//
// Gram matrices are formed and eigen-decomposed in double precision; each eigenvector's sign is
// fixed so that its entry of largest magnitude is positive (the first such entry on ties), which
// makes packs deterministic. Where a block has more columns than the matrix has rows (O < B), the
// eigenvectors still form a complete orthonormal basis (the reference pads with zero columns).
// Rotations are stored in float32 and are orthogonal to within 1e-5.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <span>
#include <vector>

#include "config/quant_config.hpp"

namespace duquant {

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A row-major [rows, cols] float32 matrix viewed without copying.
struct WeightView {
  const float* data = nullptr;
  std::int64_t rows = 0;  // O
  std::int64_t cols = 0;  // I
  float at(std::int64_t r, std::int64_t c) const { return data[r * cols + c]; }
};

// Blocks of width `block` over `n` (the last one shorter): their count, and block b's width.
std::int64_t block_count(std::int64_t n, std::int64_t block);
std::int64_t block_width(std::int64_t n, std::int64_t block, std::int64_t b);

// Smoothed channel energies in float32, as the reference computes them.
std::vector<float> channel_energy(const WeightView& w, double lambda_smooth);
// The zigzag permutation of channels ordered by descending energy.
std::vector<std::int64_t> zigzag_permutation(std::span<const float> energy);

// Eigenvectors of a symmetric matrix as the columns of a float32 matrix, by descending
// eigenvalue, signs canonical. `eigenvalues` (optional) receives them, descending.
MatrixF eigen_rotation(const Eigen::MatrixXd& gram, Eigen::VectorXd* eigenvalues = nullptr);

struct LayerTransform {
  std::vector<std::int64_t> perm;  // identity when permutation is off
  std::vector<MatrixF> r_in;       // one per input block, width x width
  std::vector<MatrixF> r_out;      // one per output block (empty when row_rot is 0)
};

// Computes perm, Rin and Rout for `w` under `q` (block, block_out, permute, row_rot, lambda).
// When `permuted` is given it receives W[:, perm], which the Gram matrices were built from.
LayerTransform compute_transform(const WeightView& w, const QuantConfig& q, MatrixF* permuted = nullptr);

// W[:, perm] with each column block multiplied by its Rin: the matrix the reference's
// weight_scale is taken from.
MatrixF apply_input_transform(const WeightView& w, const LayerTransform& t, std::int64_t block);
// In place: multiplies each column block of W[:, perm] by its Rin (the fast path of
// apply_input_transform when W[:, perm] is at hand).
void rotate_column_blocks(MatrixF& permuted, const LayerTransform& t, std::int64_t block);
// Chooses the sign of each output-rotation column (an eigenvector, defined only up to sign) to
// lower the quantization error: per row block, one greedy pass over the columns in order, keeping a
// flip of column k when it strictly lowers the block's MSE-searched error at `bits`. `w_in` is W'
// = W[:, perm]·Rin (before the row rotations). Deterministic: blocks are independent and each pass
// is sequential. On the fixtures this lowers the weight error 3-18 % below canonical signs.
void choose_row_rotation_signs(const MatrixF& w_in, LayerTransform& t, std::int64_t block_out, int bits);
// Multiplies each row block of `w_t` in place by its Rout (no-op when there are none).
void apply_output_rotation(MatrixF& w_t, const LayerTransform& t, std::int64_t block_out);

// Per-row max |w| / 7 (floored), the reference's weight_scale.
std::vector<float> reference_weight_scale(const MatrixF& w_in_rotated);

// The runtime's per-row MSE scale search and the resulting codes (row-major [O, I]).
struct QuantizedRows {
  std::vector<float> scales;       // [O]
  std::vector<std::int8_t> codes;  // [O * I], each in [-qmax-1, qmax]
  double squared_error = 0;        // sum over all elements of (q*s - w)^2
};
QuantizedRows quantize_rows(const MatrixF& w_t, int bits);

// Plain per-row round to nearest with scale max|row| / qmax and no transform: the baseline the
// manifest compares DuQuant with. Returns the sum of squared errors.
double rtn_squared_error(const WeightView& w, int bits);

}  // namespace duquant
