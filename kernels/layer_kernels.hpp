// The CUDA kernels of one layer's math, launched on a stream with device pointers. Each kernel's
// per-element work is a function of duquant/elementwise.hpp, the code the CPU reference runs.
// Matrices are row-major float32 [rows, cols] unless said otherwise; sizes are 64-bit.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace duquant::kernels {

// energy[c] = the reference's smoothed channel energy of column c (bit for bit the CPU's).
// `sums` holds `cols` doubles of scratch.
void launch_channel_energy(const float* w, std::int64_t rows, std::int64_t cols, double lambda, double* sums,
                           float* energy, cudaStream_t stream);

// Bytes of scratch launch_zigzag_permutation needs for `cols` channels (CUB's status in `status`).
std::size_t zigzag_scratch_bytes(std::int64_t cols, cudaError_t& status);
// perm = the zigzag over channels sorted by descending energy, ties by lower index (a stable radix
// sort); `scratch` holds zigzag_scratch_bytes(cols) bytes. Returns CUB's status.
cudaError_t launch_zigzag_permutation(const float* energy, std::int64_t cols, void* scratch, std::int64_t* perm,
                                      cudaStream_t stream);
void launch_identity(std::int64_t cols, std::int64_t* perm, cudaStream_t stream);

// out = w[:, perm]
void launch_gather_columns(const float* w, std::int64_t rows, std::int64_t cols, const std::int64_t* perm, float* out,
                           cudaStream_t stream);
void launch_to_double(const float* in, std::int64_t count, double* out, cudaStream_t stream);

// `batch` column-major n×n eigenvector matrices with ascending eigenvalues (cuSOLVER's output) ->
// row-major float32 rotations with the columns by descending eigenvalue and canonical signs.
void launch_canonical_rotations(const double* vectors, int n, std::int64_t batch, float* rotations,
                                cudaStream_t stream);

// out[r] = the reference's weight_scale of row r: max(max|m[r, :]|, 1e-8) / 7.
void launch_reference_weight_scale(const float* m, std::int64_t rows, std::int64_t cols, float* out,
                                   cudaStream_t stream);

// The sign choice of the output rotations (duquant_math.hpp, choose_row_rotation_signs), one CUDA
// block per row block. `w_in` = W' = W[:, perm]·Rin; `current` holds Rout·W' for the canonical
// signs on entry (it is updated as signs flip); `r_full` the full blocks [n_full][bo][bo], `r_tail`
// the shorter last block. Scratch: `sampled` and `trial` rows × sign_search_picked(cols) floats,
// `row_max` and `trial_max` rows floats, `row_err` rows doubles.
void launch_choose_signs(const float* w_in, float* current, std::int64_t rows, std::int64_t cols, int block_out,
                         float* r_full, float* r_tail, int bits, float* sampled, float* trial, float* row_max,
                         float* trial_max, double* row_err, cudaStream_t stream);

// The runtime's MSE scale search per row (quantize_rows), summing in elementwise.hpp's lane order:
// scales[r], row_err[r] (the chosen candidate's summed error) and the codes, as int8 [rows, cols]
// (`codes`, 5-8 bits) or packed two per byte [rows, ceil(cols/2)] (`packed`, 2-4 bits). With
// `rtn` the only candidate is the base scale and no codes are written (rtn_squared_error).
void launch_quantize_rows(const float* w, std::int64_t rows, std::int64_t cols, int bits, bool rtn, float* scales,
                          std::int8_t* codes, std::uint8_t* packed, double* row_err, cudaStream_t stream);

// Calibration. |x_t| of one call, transposed ([cols][rows], channel-major), x_t the activation
// transform of x [rows, cols] with perm, the Rin blocks (`r_full` [n_full][block][block], `r_tail`)
// and the smoothing scale (null: none), each element by elementwise::transformed_activation.
void launch_activation_transform(const float* x, std::int64_t rows, std::int64_t cols, const std::int64_t* perm,
                                 const float* smooth, int block, const float* r_full, const float* r_tail, float* abs_t,
                                 cudaStream_t stream);
// Bytes of scratch launch_channel_percentiles needs (CUB's status in `status`).
std::size_t percentile_scratch_bytes(std::int64_t rows, std::int64_t cols, cudaError_t& status);
// out[j] = max(q-quantile of channel j's |x_t| (torch.quantile, linear), 1e-6): each channel's rows
// sorted (CUB segmented radix sort) and elementwise::quantile_interpolate. Returns CUB's status.
cudaError_t launch_channel_percentiles(const float* abs_t, std::int64_t rows, std::int64_t cols, double q,
                                       void* scratch, float* out, cudaStream_t stream);

}  // namespace duquant::kernels
