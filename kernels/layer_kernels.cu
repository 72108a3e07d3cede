// The CUDA kernels of one layer's math (layer_kernels.hpp). Compiled with --fmad=false: no
// multiply-add is fused, so every float operation rounds exactly as the CPU's does and the shared
// functions of duquant/elementwise.hpp give the same bits on both.
#include "kernels/layer_kernels.hpp"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <cstdint>

#include "base/elementwise.hpp"

namespace duquant::kernels {
namespace ew = elementwise;
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

unsigned grid_for(std::int64_t count, unsigned threads = kThreads) {
  const std::int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1
                                          : (blocks > 1048576 ? 1048576 : blocks));  // grid-stride loops cover the rest
}

__device__ std::int64_t thread_index() { return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ std::int64_t thread_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

// ---- channel energies -------------------------------------------------------------------------

__global__ void column_energy_kernel(const float* w, std::int64_t rows, std::int64_t cols, double* sums,
                                     float* energy) {
  for (std::int64_t c = thread_index(); c < cols; c += thread_stride()) {
    double sum = 0;
    for (std::int64_t r = 0; r < rows; ++r) sum = ew::energy_add(sum, w[r * cols + c]);  // rows in order, as the CPU
    sums[c] = sum;
    energy[c] = ew::energy_mean(sum, rows);
  }
}

// One block: the mean of the energies summed in column order by one thread (as the CPU), then the
// smoothing in parallel.
__global__ void smooth_energy_kernel(std::int64_t cols, float lambda, float* energy) {
  __shared__ float mean;
  if (threadIdx.x == 0) {
    double total = 0;
    for (std::int64_t c = 0; c < cols; ++c) total += energy[c];
    mean = static_cast<float>(total / static_cast<double>(cols > 1 ? cols : 1));
  }
  __syncthreads();
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    energy[c] = ew::smoothed_energy(energy[c], mean, lambda);
}

// ---- permutation ------------------------------------------------------------------------------

__global__ void iota_kernel(std::int64_t n, std::int64_t* out) {
  for (std::int64_t i = thread_index(); i < n; i += thread_stride()) out[i] = i;
}

__global__ void zigzag_kernel(const std::int64_t* order, std::int64_t n, std::int64_t* perm) {
  for (std::int64_t k = thread_index(); k < n; k += thread_stride()) perm[k] = order[ew::zigzag_rank(k, n)];
}

// The scratch of the sort: sorted keys, the indices before and after, CUB's temporary storage.
struct SortScratch {
  float* keys_out;
  std::int64_t* values_in;
  std::int64_t* values_out;
  void* temp;
  std::size_t temp_bytes;
};

std::size_t align_up(std::size_t n) { return (n + 255) / 256 * 256; }

std::size_t cub_temp_bytes(std::int64_t cols, cudaError_t& status) {
  std::size_t bytes = 0;
  status = cub::DeviceRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const std::int64_t*>(nullptr), static_cast<std::int64_t*>(nullptr), static_cast<int>(cols));
  return bytes;
}

SortScratch carve(void* scratch, std::int64_t cols, cudaError_t& status) {
  auto* base = static_cast<unsigned char*>(scratch);
  const auto n = static_cast<std::size_t>(cols);
  SortScratch s{};
  std::size_t at = 0;
  s.keys_out = reinterpret_cast<float*>(base + at);
  at += align_up(n * sizeof(float));
  s.values_in = reinterpret_cast<std::int64_t*>(base + at);
  at += align_up(n * sizeof(std::int64_t));
  s.values_out = reinterpret_cast<std::int64_t*>(base + at);
  at += align_up(n * sizeof(std::int64_t));
  s.temp = base + at;
  s.temp_bytes = cub_temp_bytes(cols, status);
  return s;
}

// ---- transforms -------------------------------------------------------------------------------

__global__ void gather_columns_kernel(const float* w, std::int64_t rows, std::int64_t cols, const std::int64_t* perm,
                                      float* out) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = thread_index(); i < n; i += thread_stride()) {
    const std::int64_t r = i / cols, c = i - r * cols;
    out[i] = w[r * cols + perm[c]];
  }
}

__global__ void to_double_kernel(const float* in, std::int64_t n, double* out) {
  for (std::int64_t i = thread_index(); i < n; i += thread_stride()) out[i] = in[i];
}

// One thread per (matrix, output column j): the eigenvector of the (n-1-j)-th ascending eigenvalue,
// its sign fixed by elementwise::largest_magnitude_index, written as column j of a row-major matrix.
__global__ void canonical_rotations_kernel(const double* vectors, int n, std::int64_t batch, float* rotations) {
  const std::int64_t total = batch * n;
  for (std::int64_t t = thread_index(); t < total; t += thread_stride()) {
    const std::int64_t m = t / n;
    const int j = static_cast<int>(t - m * n);
    const double* v = vectors + m * n * n + static_cast<std::int64_t>(n - 1 - j) * n;  // column-major: contiguous
    const bool flip = v[ew::largest_magnitude_index(v, n, 1)] < 0;
    float* r = rotations + m * n * n;
    for (int i = 0; i < n; ++i) r[static_cast<std::int64_t>(i) * n + j] = static_cast<float>(flip ? -v[i] : v[i]);
  }
}

// ---- reductions -------------------------------------------------------------------------------

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// One warp per row (max is exact in any order).
__global__ void reference_weight_scale_kernel(const float* m, std::int64_t rows, std::int64_t cols, float* out) {
  const std::int64_t warps = thread_stride() / 32;
  for (std::int64_t r = thread_index() / 32; r < rows; r += warps) {
    float v = 0;
    for (std::int64_t c = threadIdx.x % 32; c < cols; c += 32) v = fmaxf(v, fabsf(m[r * cols + c]));
    v = warp_max(v);
    if (threadIdx.x % 32 == 0) out[r] = ew::reference_weight_scale(v);
  }
}

// ---- sign choice of the output rotations ------------------------------------------------------

// The block's sum of its rows' sampled errors, in row order (as the CPU), by thread 0.
__device__ double ordered_sum(const double* v, std::int64_t n) {
  double total = 0;
  for (std::int64_t i = 0; i < n; ++i) total += v[i];
  return total;
}

__global__ void choose_signs_kernel(const float* w_in, float* current, std::int64_t rows, std::int64_t cols,
                                    int block_out, float* r_full, float* r_tail, int bits, float* sampled, float* trial,
                                    float* row_max, float* trial_max, double* row_err) {
  const std::int64_t b = blockIdx.x;
  const std::int64_t r0 = b * block_out;
  const std::int64_t s = rows - r0 < block_out ? rows - r0 : block_out;
  float* u = (s == block_out) ? r_full + b * block_out * block_out : r_tail;
  const std::int64_t stride = ew::sign_search_stride(cols), picked = ew::sign_search_picked(cols);
  float* cur = current + r0 * cols;
  float* cs = sampled + r0 * picked;
  float* ts = trial + r0 * picked;
  float* rmax = row_max + r0;
  float* tmax = trial_max + r0;
  double* rerr = row_err + r0;
  const float* w_rows = w_in + r0 * cols;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int warps = static_cast<int>(blockDim.x / 32);
  __shared__ double error;
  __shared__ bool accept;

  for (std::int64_t x = threadIdx.x; x < s * picked; x += blockDim.x) {
    const std::int64_t i = x / picked, c = x - i * picked;
    cs[x] = cur[i * cols + c * stride];
  }
  for (std::int64_t i = warp; i < s; i += warps) {
    float m = 0;
    for (std::int64_t c = lane; c < cols; c += 32) m = fmaxf(m, fabsf(cur[i * cols + c]));
    m = warp_max(m);
    if (lane == 0) rmax[i] = m;
  }
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < s; i += blockDim.x)
    rerr[i] = ew::sampled_row_error(cs + i * picked, picked, rmax[i], bits);
  __syncthreads();
  if (threadIdx.x == 0) error = ordered_sum(rerr, s);
  __syncthreads();

  for (std::int64_t k = 0; k < s; ++k) {
    // Negating column k of U changes U·rows by −2 U[:,k] rows[k,:]: the trial's row maxima and its
    // sampled rows, each element rounded as the CPU's (2u)·x then a subtraction.
    const float* xk = w_rows + k * cols;
    for (std::int64_t i = warp; i < s; i += warps) {
      const float u2 = 2.0f * u[i * s + k];
      float m = 0;
      for (std::int64_t c = lane; c < cols; c += 32)
        m = fmaxf(m, fabsf(__fsub_rn(cur[i * cols + c], __fmul_rn(u2, xk[c]))));
      m = warp_max(m);
      if (lane == 0) tmax[i] = m;
    }
    for (std::int64_t x = threadIdx.x; x < s * picked; x += blockDim.x) {
      const std::int64_t i = x / picked, c = x - i * picked;
      ts[x] = __fsub_rn(cs[x], __fmul_rn(2.0f * u[i * s + k], xk[c * stride]));
    }
    __syncthreads();
    for (std::int64_t i = threadIdx.x; i < s; i += blockDim.x)
      rerr[i] = ew::sampled_row_error(ts + i * picked, picked, tmax[i], bits);
    __syncthreads();
    if (threadIdx.x == 0) {
      const double e = ordered_sum(rerr, s);
      accept = e < error;  // strict, as the CPU: a flip must lower the error
      if (accept) error = e;
    }
    __syncthreads();
    if (accept) {
      for (std::int64_t x = threadIdx.x; x < s * cols; x += blockDim.x) {
        const std::int64_t i = x / cols, c = x - i * cols;
        cur[x] = __fsub_rn(cur[x], __fmul_rn(2.0f * u[i * s + k], xk[c]));
      }
      for (std::int64_t x = threadIdx.x; x < s * picked; x += blockDim.x) cs[x] = ts[x];
      for (std::int64_t i = threadIdx.x; i < s; i += blockDim.x) rmax[i] = tmax[i];
      __syncthreads();  // every use of column k is done before it flips
      for (std::int64_t i = threadIdx.x; i < s; i += blockDim.x) u[i * s + k] = -u[i * s + k];
    }
    __syncthreads();
  }
}

// ---- MSE scale search and codes ---------------------------------------------------------------

// kErrorLanes threads per row (a lane group inside a warp): lane j sums chunk by chunk the errors
// of its columns (elementwise::error_lane_sum), every thread of the group adds the lanes to its
// double total in lane order, then the tail, so all of them hold the CPU's total bit for bit.
__device__ double group_row_error(const float* w, std::int64_t cols, int lane, float s, float lo, float hi) {
  constexpr int kLanes = ew::kErrorLanes;
  double total = 0;
  for (std::int64_t begin = 0; begin + kLanes <= cols; begin += ew::kErrorFlush) {
    const float mine = ew::error_lane_sum(w, begin, ew::error_chunk_end(begin, cols), lane, s, lo, hi);
    for (int j = 0; j < kLanes; ++j) total += __shfl_sync(kFullMask, mine, j, kLanes);
  }
  for (std::int64_t c = cols / kLanes * kLanes; c < cols; ++c) total += ew::squared_error(w[c], s, lo, hi);
  return total;
}

__global__ void quantize_rows_kernel(const float* w_all, std::int64_t rows, std::int64_t cols, int bits, bool rtn,
                                     float* scales, std::int8_t* codes, std::uint8_t* packed, double* row_err) {
  constexpr int kLanes = ew::kErrorLanes;
  const int lane = static_cast<int>(threadIdx.x % kLanes);
  const std::int64_t groups = thread_stride() / kLanes;
  // Every thread of a warp runs the same number of iterations (shuffles need the whole warp): rows
  // past the end compute on row 0 and write nothing.
  const std::int64_t first = thread_index() / kLanes;
  const std::int64_t iterations = (rows + groups - 1) / groups;
  const float hi = static_cast<float>(ew::qmax(bits)), lo = -hi - 1.0f;
  for (std::int64_t it = 0; it < iterations; ++it) {
    const std::int64_t r = first + it * groups;
    const bool real = r < rows;
    const float* w = w_all + (real ? r : 0) * cols;
    float m = 0;
    for (std::int64_t c = lane; c < cols; c += kLanes) m = fmaxf(m, fabsf(w[c]));
    for (int offset = kLanes / 2; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, offset, kLanes));
    const float base = ew::base_scale(m, bits);
    float best_scale = base;
    double best_error = 0;
    const int candidates = rtn ? 1 : ew::kScaleCandidates;
    for (int k = 0; k < candidates; ++k) {
      const float s = rtn ? base : base / ew::scale_alpha(k);
      const double e = group_row_error(w, cols, lane, s, lo, hi);
      if (k == 0 || e < best_error) {  // strict: the first smallest wins
        best_error = e;
        best_scale = s;
      }
    }
    if (!real) continue;
    if (lane == 0) {
      scales[r] = best_scale;
      row_err[r] = best_error;
    }
    if (rtn) continue;
    if (packed != nullptr) {
      const std::int64_t bytes = ew::nibble_row_bytes(cols);
      for (std::int64_t k = lane; k < bytes; k += kLanes) {
        const int even = static_cast<int>(ew::quantize_code(w[2 * k], best_scale, lo, hi));
        const int odd = 2 * k + 1 < cols ? static_cast<int>(ew::quantize_code(w[2 * k + 1], best_scale, lo, hi)) : 0;
        packed[r * bytes + k] = ew::pack_nibbles(even, odd);
      }
    } else {
      for (std::int64_t c = lane; c < cols; c += kLanes)
        codes[r * cols + c] = static_cast<std::int8_t>(ew::quantize_code(w[c], best_scale, lo, hi));
    }
  }
}

// ---- calibration ------------------------------------------------------------------------------

__global__ void activation_transform_kernel(const float* x, std::int64_t rows, std::int64_t cols,
                                            const std::int64_t* perm, const float* smooth, int block,
                                            const float* r_full, const float* r_tail, float* abs_t) {
  const std::int64_t n = rows * cols;
  for (std::int64_t t = thread_index(); t < n; t += thread_stride()) {
    const std::int64_t r = t / cols, j = t - r * cols;
    const std::int64_t b = j / block, off = b * block;
    const std::int64_t s = cols - off < block ? cols - off : block;
    const float* rot = s == block ? r_full + b * block * block : r_tail;
    const float* xr = x + r * cols;
    const auto inputs = [xr, perm, smooth, off](long long k) {
      const std::int64_t src = perm[off + k];
      return ew::activation_input(xr[src], smooth, src);
    };
    abs_t[j * rows + r] = fabsf(ew::transformed_activation(inputs, rot, s, j - off));
  }
}

__global__ void segment_offsets_kernel(std::int64_t segments, std::int64_t length, int* offsets) {
  for (std::int64_t i = thread_index(); i <= segments; i += thread_stride()) offsets[i] = static_cast<int>(i * length);
}

__global__ void percentile_kernel(const float* sorted, std::int64_t rows, std::int64_t cols, double q, float* out) {
  for (std::int64_t j = thread_index(); j < cols; j += thread_stride()) {
    const double pos = q * static_cast<double>(rows - 1);  // as quantile_linear
    const auto lo = static_cast<std::int64_t>(floor(pos));
    const std::int64_t hi = lo + 1 < rows - 1 ? lo + 1 : rows - 1;
    const double v_lo = sorted[j * rows + lo], v_hi = sorted[j * rows + hi];
    const float p = ew::quantile_interpolate(v_lo, hi == lo ? v_lo : v_hi, pos, lo);
    out[j] = p < 1e-6f ? 1e-6f : p;  // std::max(p, 1e-6f), as the CPU (a NaN stays NaN)
  }
}

std::size_t segmented_temp_bytes(std::int64_t rows, std::int64_t cols, cudaError_t& status) {
  std::size_t bytes = 0;
  status = cub::DeviceSegmentedRadixSort::SortKeys(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr), static_cast<int>(rows * cols),
      static_cast<int>(cols), static_cast<const int*>(nullptr), static_cast<const int*>(nullptr));
  return bytes;
}

}  // namespace

void launch_activation_transform(const float* x, std::int64_t rows, std::int64_t cols, const std::int64_t* perm,
                                 const float* smooth, int block, const float* r_full, const float* r_tail, float* abs_t,
                                 cudaStream_t stream) {
  activation_transform_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(x, rows, cols, perm, smooth, block,
                                                                              r_full, r_tail, abs_t);
}

std::size_t percentile_scratch_bytes(std::int64_t rows, std::int64_t cols, cudaError_t& status) {
  const auto n = static_cast<std::size_t>(rows * cols);
  return align_up(n * sizeof(float)) + align_up(static_cast<std::size_t>(cols + 1) * sizeof(int)) +
         align_up(segmented_temp_bytes(rows, cols, status));
}

cudaError_t launch_channel_percentiles(const float* abs_t, std::int64_t rows, std::int64_t cols, double q,
                                       void* scratch, float* out, cudaStream_t stream) {
  auto* base = static_cast<unsigned char*>(scratch);
  const auto n = static_cast<std::size_t>(rows * cols);
  auto* sorted = reinterpret_cast<float*>(base);
  auto* offsets = reinterpret_cast<int*>(base + align_up(n * sizeof(float)));
  void* temp = base + align_up(n * sizeof(float)) + align_up(static_cast<std::size_t>(cols + 1) * sizeof(int));
  cudaError_t status = cudaSuccess;
  std::size_t temp_bytes = segmented_temp_bytes(rows, cols, status);
  if (status != cudaSuccess) return status;
  segment_offsets_kernel<<<grid_for(cols + 1), kThreads, 0, stream>>>(cols, rows, offsets);
  status = cub::DeviceSegmentedRadixSort::SortKeys(temp, temp_bytes, abs_t, sorted, static_cast<int>(n),
                                                   static_cast<int>(cols), offsets, offsets + 1, 0,
                                                   static_cast<int>(sizeof(float) * 8), stream);
  if (status != cudaSuccess) return status;
  percentile_kernel<<<grid_for(cols), kThreads, 0, stream>>>(sorted, rows, cols, q, out);
  return cudaSuccess;
}

void launch_channel_energy(const float* w, std::int64_t rows, std::int64_t cols, double lambda, double* sums,
                           float* energy, cudaStream_t stream) {
  column_energy_kernel<<<grid_for(cols), kThreads, 0, stream>>>(w, rows, cols, sums, energy);
  // The CPU's test, on the double, then the float32 lambda.
  if (lambda > 0) smooth_energy_kernel<<<1, kThreads, 0, stream>>>(cols, static_cast<float>(lambda), energy);
}

std::size_t zigzag_scratch_bytes(std::int64_t cols, cudaError_t& status) {
  const auto n = static_cast<std::size_t>(cols);
  return align_up(n * sizeof(float)) + 2 * align_up(n * sizeof(std::int64_t)) + align_up(cub_temp_bytes(cols, status));
}

cudaError_t launch_zigzag_permutation(const float* energy, std::int64_t cols, void* scratch, std::int64_t* perm,
                                      cudaStream_t stream) {
  cudaError_t status = cudaSuccess;
  SortScratch s = carve(scratch, cols, status);
  if (status != cudaSuccess) return status;
  iota_kernel<<<grid_for(cols), kThreads, 0, stream>>>(cols, s.values_in);
  // Radix sort is stable: equal energies keep the lower channel index first, as std::stable_sort.
  status =
      cub::DeviceRadixSort::SortPairsDescending(s.temp, s.temp_bytes, energy, s.keys_out, s.values_in, s.values_out,
                                                static_cast<int>(cols), 0, static_cast<int>(sizeof(float) * 8), stream);
  if (status != cudaSuccess) return status;
  zigzag_kernel<<<grid_for(cols), kThreads, 0, stream>>>(s.values_out, cols, perm);
  return cudaSuccess;
}

void launch_identity(std::int64_t cols, std::int64_t* perm, cudaStream_t stream) {
  iota_kernel<<<grid_for(cols), kThreads, 0, stream>>>(cols, perm);
}

void launch_gather_columns(const float* w, std::int64_t rows, std::int64_t cols, const std::int64_t* perm, float* out,
                           cudaStream_t stream) {
  gather_columns_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(w, rows, cols, perm, out);
}

void launch_to_double(const float* in, std::int64_t count, double* out, cudaStream_t stream) {
  to_double_kernel<<<grid_for(count), kThreads, 0, stream>>>(in, count, out);
}

void launch_canonical_rotations(const double* vectors, int n, std::int64_t batch, float* rotations,
                                cudaStream_t stream) {
  canonical_rotations_kernel<<<grid_for(batch * n), kThreads, 0, stream>>>(vectors, n, batch, rotations);
}

void launch_reference_weight_scale(const float* m, std::int64_t rows, std::int64_t cols, float* out,
                                   cudaStream_t stream) {
  reference_weight_scale_kernel<<<grid_for(rows * 32), kThreads, 0, stream>>>(m, rows, cols, out);
}

void launch_choose_signs(const float* w_in, float* current, std::int64_t rows, std::int64_t cols, int block_out,
                         float* r_full, float* r_tail, int bits, float* sampled, float* trial, float* row_max,
                         float* trial_max, double* row_err, cudaStream_t stream) {
  const std::int64_t blocks = (rows + block_out - 1) / block_out;
  choose_signs_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      w_in, current, rows, cols, block_out, r_full, r_tail, bits, sampled, trial, row_max, trial_max, row_err);
}

void launch_quantize_rows(const float* w, std::int64_t rows, std::int64_t cols, int bits, bool rtn, float* scales,
                          std::int8_t* codes, std::uint8_t* packed, double* row_err, cudaStream_t stream) {
  quantize_rows_kernel<<<grid_for(rows * ew::kErrorLanes), kThreads, 0, stream>>>(w, rows, cols, bits, rtn, scales,
                                                                                  codes, packed, row_err);
}

}  // namespace duquant::kernels
