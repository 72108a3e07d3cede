// The CUDA engine: a layer's math on one device (docs/cuda-backend.md). Host code (compiled by the
// C++ compiler) that drives cuBLAS, cuSOLVER and the kernels of layer_kernels.cu on one stream.
#include "kernels/cuda_layer_engine.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <span>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/layer_kernels.hpp"
#include "packfmt/layout.hpp"

namespace duquant::kernels {
namespace {

// Blocks of width `block` over n: `full` of them, then a shorter `tail` (0 when none).
struct Blocks {
  std::int64_t block = 0, full = 0, tail = 0;
  std::int64_t count() const { return full + (tail > 0 ? 1 : 0); }
};
Blocks blocks_of(std::int64_t n, std::int64_t block) { return {block, n / block, n % block}; }

int as_int(std::int64_t v, const Stage& stage) {
  if (v < 0 || v > INT_MAX)
    fail(ErrorKind::device, "{}: {} exceeds the 32-bit sizes of cuBLAS and cuSOLVER", stage.text(), v);
  return static_cast<int>(v);
}

// Symmetric Gram matrices and their rotations for one side of the layer (the input's column
// blocks or the output's row blocks): full blocks batched, the tail block on its own.
struct BlockSet {
  DeviceBuffer<double> gram_full, gram_tail, eig_full, eig_tail;
  DeviceBuffer<float> rot_full, rot_tail;
};

class CudaEngine final : public LayerEngine {
 public:
  explicit CudaEngine(int device) : device_(device) {
    const Stage s{nullptr, "setting up the device"};
    try {
      check(cudaSetDevice(device_), s);
      check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), s);
      check(cublasCreate(&blas_), s);
      check(cublasSetStream(blas_, stream_), s);
      // No TF32 or other reduced-precision paths: float GEMMs accumulate in float, as the CPU.
      check(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), s);
      check(cusolverDnCreate(&solver_), s);
      check(cusolverDnSetStream(solver_, stream_), s);
      check(cusolverDnCreateSyevjInfo(&syevj_), s);
      // The tolerance stays cuSOLVER's default, machine accuracy.
      check(cusolverDnXsyevjSetMaxSweeps(syevj_, 100), s);
      check(cusolverDnXsyevjSetSortEig(syevj_, 1), s);  // ascending, as syevBatched
      check(cusolverDnCreateParams(&params_), s);
    } catch (...) {
      release();  // a throwing constructor runs no destructor
      throw;
    }
  }
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;
  ~CudaEngine() override { release(); }

  std::string name() const override { return "cuda:" + std::to_string(device_); }

  LayerMath compute(const WeightView& w, const QuantConfig& q, int bits, const std::string& layer) override {
    const Unwind unwind(*this);
    layer_ = &layer;
    check(cudaSetDevice(device_), at("selecting the device"));
    const std::int64_t rows = w.rows, cols = w.cols, n = rows * cols;
    as_int(rows, at("the layer's rows"));
    as_int(cols, at("the layer's columns"));
    DQ_CHECK(rows > 0 && cols > 0 && q.block > 0 && q.block_out > 0 && bits >= 2 && bits <= 8, internal,
             "layer '{}': CUDA engine asked for [{}, {}], block {}/{}, {} bits", layer, rows, cols, q.block,
             q.block_out, bits);
    const bool row_rot = q.row_rot != RowRot::off;
    const Blocks in_blocks = blocks_of(cols, q.block), out_blocks = blocks_of(rows, q.block_out);

    // The weight: one host-to-device copy through pinned memory.
    float* d_w = w_.reserve(static_cast<std::size_t>(n), at("allocating the weight"));
    float* staging = staging_.reserve(static_cast<std::size_t>(n), at("allocating pinned staging memory"));
    std::memcpy(staging, w.data, static_cast<std::size_t>(n) * sizeof(float));
    check(cudaMemcpyAsync(d_w, staging, static_cast<std::size_t>(n) * sizeof(float), cudaMemcpyHostToDevice, stream_),
          at("copying the weight to the device"));

    // Permutation: channel energies, a stable radix sort, the zigzag.
    std::int64_t* d_perm = perm_.reserve(static_cast<std::size_t>(cols), at("allocating the permutation"));
    if (q.permute) {
      float* d_energy = energy_.reserve(static_cast<std::size_t>(cols), at("allocating the energies"));
      double* d_sums = sums_.reserve(static_cast<std::size_t>(cols), at("allocating the energies"));
      launch_channel_energy(d_w, rows, cols, q.lambda_smooth, d_sums, d_energy, stream_);
      launched("channel energies");
      zigzag(d_energy, cols, d_perm);
    } else {
      launch_identity(cols, d_perm, stream_);
      launched("the identity permutation");
    }
    float* d_wperm = wperm_.reserve(static_cast<std::size_t>(n), at("allocating W[:, perm]"));
    launch_gather_columns(d_w, rows, cols, d_perm, d_wperm, stream_);
    launched("permuting the columns");

    // Gram matrices in double, eigenvectors by cuSOLVER, canonical float32 rotations.
    double* d_dbl = dbl_.reserve(static_cast<std::size_t>(n), at("allocating the double-precision weight"));
    if (row_rot) {
      launch_to_double(d_w, n, d_dbl, stream_);
      launched("widening the weight to double");
      output_grams(d_dbl, rows, cols, out_blocks);
      rotations(out_, out_blocks, "the output rotations");
    }
    launch_to_double(d_wperm, n, d_dbl, stream_);
    launched("widening W[:, perm] to double");
    input_grams(d_dbl, rows, cols, in_blocks);
    rotations(in_, in_blocks, "the input rotations");

    // W' = W[:, perm]·Rin, the reference's weight_scale, the signs of Rout, W_t = Rout·W'.
    float* d_wprime = wprime_.reserve(static_cast<std::size_t>(n), at("allocating W'"));
    rotate_columns(d_wperm, rows, cols, in_blocks, d_wprime);
    float* d_wscale = wscale_.reserve(static_cast<std::size_t>(rows), at("allocating weight_scale"));
    launch_reference_weight_scale(d_wprime, rows, cols, d_wscale, stream_);
    launched("the reference weight_scale");
    const float* d_wt = d_wprime;
    if (row_rot) {
      float* d_cur = cur_.reserve(static_cast<std::size_t>(n), at("allocating W_t"));
      rotate_rows(d_wprime, rows, cols, out_blocks, d_cur);
      const std::int64_t picked = elementwise::sign_search_picked(cols);
      const auto sp = static_cast<std::size_t>(rows * picked);
      launch_choose_signs(d_wprime, d_cur, rows, cols, q.block_out, out_.rot_full.get(), out_.rot_tail.get(), bits,
                          sampled_.reserve(sp, at("allocating the sign search")),
                          trial_.reserve(sp, at("allocating the sign search")),
                          rowmax_.reserve(static_cast<std::size_t>(rows), at("allocating the sign search")),
                          trialmax_.reserve(static_cast<std::size_t>(rows), at("allocating the sign search")),
                          rowerr_.reserve(static_cast<std::size_t>(rows), at("allocating the sign search")), stream_);
      launched("choosing the signs of the output rotations");
      rotate_rows(d_wprime, rows, cols, out_blocks, d_cur);
      d_wt = d_cur;
    }

    // The MSE scale search and codes; the round-to-nearest baseline on the weight itself.
    const CodeStorage storage = code_storage(bits);
    const bool nibbles = storage.nibbles;
    const auto code_bytes =
        static_cast<std::int64_t>(storage.bytes(static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)));
    float* d_scales = scales_.reserve(static_cast<std::size_t>(2 * rows), at("allocating the scales"));
    std::uint8_t* d_codes = codes_.reserve(static_cast<std::size_t>(code_bytes), at("allocating the codes"));
    double* d_err = err_.reserve(static_cast<std::size_t>(2 * rows), at("allocating the row errors"));
    launch_quantize_rows(d_wt, rows, cols, bits, false, d_scales,
                         nibbles ? nullptr : reinterpret_cast<std::int8_t*>(d_codes), nibbles ? d_codes : nullptr,
                         d_err, stream_);
    launched("the MSE scale search and codes");
    launch_quantize_rows(d_w, rows, cols, bits, true, d_scales + rows, nullptr, nullptr, d_err + rows, stream_);
    launched("the round-to-nearest baseline");

    // Results, copied back once.
    LayerMath m;
    m.t.perm.resize(static_cast<std::size_t>(cols));
    download(m.t.perm.data(), d_perm, m.t.perm.size());
    m.t.r_in = host_rotations(in_, in_blocks);
    if (row_rot) m.t.r_out = host_rotations(out_, out_blocks);
    m.weight_scale.resize(static_cast<std::size_t>(rows));
    download(m.weight_scale.data(), d_wscale, m.weight_scale.size());
    m.quant.scales.resize(static_cast<std::size_t>(rows));
    download(m.quant.scales.data(), d_scales, m.quant.scales.size());
    if (nibbles) {
      m.packed.resize(static_cast<std::size_t>(code_bytes));
      download(m.packed.data(), d_codes, m.packed.size());
    } else {
      m.quant.codes.resize(static_cast<std::size_t>(n));
      download(m.quant.codes.data(), d_codes, m.quant.codes.size());
    }
    std::vector<double> errors(static_cast<std::size_t>(2 * rows));
    download(errors.data(), d_err, errors.size());
    check(cudaStreamSynchronize(stream_), at("finishing the layer"));
    for (std::int64_t r = 0; r < rows; ++r) m.quant.squared_error += errors[r];  // in row order, as the CPU
    for (std::int64_t r = 0; r < rows; ++r) m.rtn_err2 += errors[rows + r];
    return m;
  }

  bool call_percentiles(std::span<const float> x, std::int64_t rows, const LayerTransform& t,
                        std::span<const float> smooth, double q, const std::string& layer,
                        std::vector<float>& out) override {
    const auto cols = static_cast<std::int64_t>(t.perm.size());
    if (rows < 1 || cols < 1 || rows * cols > INT_MAX || t.r_in.empty()) return false;  // CUB's 32-bit item count
    const std::int64_t block = t.r_in.front().rows();
    const Blocks b = blocks_of(cols, block);
    if (static_cast<std::int64_t>(t.r_in.size()) != b.count() || static_cast<std::int64_t>(x.size()) != rows * cols ||
        (!smooth.empty() && static_cast<std::int64_t>(smooth.size()) != cols))
      return false;
    for (std::int64_t k = 0; k < b.count(); ++k) {  // the layout the kernel reads: full blocks, then the tail
      const MatrixF& r = t.r_in[static_cast<std::size_t>(k)];
      const std::int64_t width = k < b.full ? block : b.tail;
      if (r.rows() != width || r.cols() != width) return false;
    }
    const Unwind unwind(*this);
    layer_ = &layer;
    check(cudaSetDevice(device_), at("selecting the device"));
    const Stage s = at("calibration: the activation transform");
    const auto n = static_cast<std::size_t>(rows * cols);
    float* d_x = calib_x_.reserve(n, s);
    upload(d_x, x.data(), n);
    std::int64_t* d_perm = perm_.reserve(static_cast<std::size_t>(cols), s);
    upload(d_perm, t.perm.data(), t.perm.size());
    const float* d_smooth = nullptr;
    if (!smooth.empty()) {
      float* d = energy_.reserve(smooth.size(), s);
      upload(d, smooth.data(), smooth.size());
      d_smooth = d;
    }
    float* d_full = calib_rot_.reserve(static_cast<std::size_t>(b.count() * block * block), s);
    for (std::int64_t k = 0; k < b.count(); ++k) {
      const MatrixF& r = t.r_in[static_cast<std::size_t>(k)];
      upload(d_full + k * block * block, r.data(), static_cast<std::size_t>(r.size()));
    }
    const float* d_tail = d_full + b.full * block * block;  // the tail block, b.tail² values, follows the full ones
    float* d_abs = wperm_.reserve(n, s);
    launch_activation_transform(d_x, rows, cols, d_perm, d_smooth, static_cast<int>(block), d_full, d_tail, d_abs,
                                stream_);
    launched("calibration: the activation transform");
    const Stage p = at("calibration: per-channel percentiles (CUB DeviceSegmentedRadixSort)");
    cudaError_t status = cudaSuccess;
    const std::size_t bytes = percentile_scratch_bytes(rows, cols, status);
    check(status, p);
    float* d_out = wscale_.reserve(static_cast<std::size_t>(cols), p);
    check(launch_channel_percentiles(d_abs, rows, cols, q, sort_.reserve(bytes, p), d_out, stream_), p);
    check(cudaGetLastError(), p);
    out.resize(static_cast<std::size_t>(cols));
    download(out.data(), d_out, out.size());
    check(cudaStreamSynchronize(stream_), p);
    return true;
  }

  // Test seams (cuda_layer_engine.hpp).
  std::vector<float> energy_only(const WeightView& w, double lambda) {
    const Unwind unwind(*this);
    const std::string name = "(test)";
    layer_ = &name;
    check(cudaSetDevice(device_), at("selecting the device"));
    const std::int64_t n = w.rows * w.cols;
    float* d_w = w_.reserve(static_cast<std::size_t>(n), at("allocating"));
    upload(d_w, w.data, static_cast<std::size_t>(n));
    float* d_energy = energy_.reserve(static_cast<std::size_t>(w.cols), at("allocating"));
    launch_channel_energy(d_w, w.rows, w.cols, lambda,
                          sums_.reserve(static_cast<std::size_t>(w.cols), at("allocating")), d_energy, stream_);
    launched("channel energies");
    std::vector<float> e(static_cast<std::size_t>(w.cols));
    download(e.data(), d_energy, e.size());
    check(cudaStreamSynchronize(stream_), at("finishing"));
    return e;
  }
  std::vector<std::int64_t> zigzag_only(const std::vector<float>& energy) {
    const Unwind unwind(*this);
    const std::string name = "(test)";
    layer_ = &name;
    check(cudaSetDevice(device_), at("selecting the device"));
    const auto cols = static_cast<std::int64_t>(energy.size());
    as_int(cols, at("the channels"));
    float* d_energy = energy_.reserve(energy.size(), at("allocating"));
    upload(d_energy, energy.data(), energy.size());
    std::int64_t* d_perm = perm_.reserve(energy.size(), at("allocating"));
    zigzag(d_energy, cols, d_perm);
    std::vector<std::int64_t> perm(energy.size());
    download(perm.data(), d_perm, perm.size());
    check(cudaStreamSynchronize(stream_), at("finishing"));
    return perm;
  }
  QuantizedRows quantize_only(const MatrixF& w_t, int bits, std::string* packed_out) {
    const Unwind unwind(*this);
    const std::string name = "(test)";
    layer_ = &name;
    check(cudaSetDevice(device_), at("selecting the device"));
    const std::int64_t rows = w_t.rows(), cols = w_t.cols(), n = rows * cols;
    float* d_w = w_.reserve(static_cast<std::size_t>(n), at("allocating"));
    upload(d_w, w_t.data(), static_cast<std::size_t>(n));
    const CodeStorage storage = code_storage(bits);
    const bool nibbles = storage.nibbles;
    const auto code_bytes =
        static_cast<std::int64_t>(storage.bytes(static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)));
    float* d_scales = scales_.reserve(static_cast<std::size_t>(rows), at("allocating"));
    std::uint8_t* d_codes = codes_.reserve(static_cast<std::size_t>(code_bytes), at("allocating"));
    double* d_err = err_.reserve(static_cast<std::size_t>(rows), at("allocating"));
    launch_quantize_rows(d_w, rows, cols, bits, false, d_scales,
                         nibbles ? nullptr : reinterpret_cast<std::int8_t*>(d_codes), nibbles ? d_codes : nullptr,
                         d_err, stream_);
    launched("the MSE scale search and codes");
    QuantizedRows out;
    out.scales.resize(static_cast<std::size_t>(rows));
    download(out.scales.data(), d_scales, out.scales.size());
    std::string bytes(static_cast<std::size_t>(code_bytes), '\0');
    download(bytes.data(), d_codes, bytes.size());
    std::vector<double> errors(static_cast<std::size_t>(rows));
    download(errors.data(), d_err, errors.size());
    check(cudaStreamSynchronize(stream_), at("finishing"));
    for (double e : errors) out.squared_error += e;
    out.codes = unpack_codes(std::as_bytes(std::span(bytes.data(), bytes.size())), rows, cols, bits);
    if (packed_out && nibbles) *packed_out = std::move(bytes);
    return out;
  }

 private:
  // On every way out of a computation: the stream drained (nothing queued may still read the
  // staging memory or write results when the next layer starts) and no dangling layer name.
  struct Unwind {
    CudaEngine& e;
    explicit Unwind(CudaEngine& engine) : e(engine) {}
    Unwind(const Unwind&) = delete;
    Unwind& operator=(const Unwind&) = delete;
    ~Unwind() {
      if (e.stream_) cudaStreamSynchronize(e.stream_);
      e.layer_ = nullptr;
    }
  };

  void release() noexcept {
    cudaSetDevice(device_);
    if (params_) cusolverDnDestroyParams(params_);
    if (syevj_) cusolverDnDestroySyevjInfo(syevj_);
    if (solver_) cusolverDnDestroy(solver_);
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
    params_ = nullptr;
    syevj_ = nullptr;
    solver_ = nullptr;
    blas_ = nullptr;
    stream_ = nullptr;
  }

  Stage at(const char* what) const { return Stage{layer_, what}; }

  void zigzag(const float* d_energy, std::int64_t cols, std::int64_t* d_perm) {
    const Stage s = at("sorting the channels (CUB DeviceRadixSort, zigzag)");
    cudaError_t status = cudaSuccess;
    const std::size_t bytes = zigzag_scratch_bytes(cols, status);
    check(status, s);
    check(launch_zigzag_permutation(d_energy, cols, sort_.reserve(bytes, s), d_perm, stream_), s);
    check(cudaGetLastError(), s);
  }
  void launched(const char* what) { check(cudaGetLastError(), at(what)); }

  template <typename T, typename U>
  void download(T* host, const U* device, std::size_t count) {
    check(cudaMemcpyAsync(host, device, count * sizeof(T), cudaMemcpyDeviceToHost, stream_),
          at("copying results back"));
  }
  template <typename T>
  void upload(T* device, const T* host, std::size_t count) {
    check(cudaMemcpyAsync(device, host, count * sizeof(T), cudaMemcpyHostToDevice, stream_),
          at("copying to the device"));
  }

  // Gram_b = Xb^T Xb of the column blocks of row-major X [rows, cols] (column-major: X^T, lda cols).
  void input_grams(const double* x, std::int64_t rows, std::int64_t cols, const Blocks& b) {
    const double one = 1, zero = 0;
    const Stage s = at("the Gram matrices of the input blocks (cublasDgemmStridedBatched)");
    const int bw = as_int(b.block, s), k = as_int(rows, s), ld = as_int(cols, s);
    if (b.full > 0) {
      double* g = in_.gram_full.reserve(static_cast<std::size_t>(b.full * b.block * b.block), s);
      check(cublasDgemmStridedBatched(blas_, CUBLAS_OP_N, CUBLAS_OP_T, bw, bw, k, &one, x, ld, b.block, x, ld, b.block,
                                      &zero, g, bw, b.block * b.block, as_int(b.full, s)),
            s);
    }
    if (b.tail > 0) {
      const int tw = as_int(b.tail, s);
      double* g = in_.gram_tail.reserve(static_cast<std::size_t>(b.tail * b.tail), s);
      const double* xt = x + b.full * b.block;
      check(cublasDgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, tw, tw, k, &one, xt, ld, xt, ld, &zero, g, tw), s);
    }
  }

  // Gram_b = Wr Wr^T of the row blocks of the original W (column-major: columns of W^T).
  void output_grams(const double* x, std::int64_t rows, std::int64_t cols, const Blocks& b) {
    const double one = 1, zero = 0;
    const Stage s = at("the Gram matrices of the output blocks (cublasDgemmStridedBatched)");
    (void)rows;
    const int bw = as_int(b.block, s), k = as_int(cols, s), ld = as_int(cols, s);
    if (b.full > 0) {
      double* g = out_.gram_full.reserve(static_cast<std::size_t>(b.full * b.block * b.block), s);
      check(cublasDgemmStridedBatched(blas_, CUBLAS_OP_T, CUBLAS_OP_N, bw, bw, k, &one, x, ld, b.block * cols, x, ld,
                                      b.block * cols, &zero, g, bw, b.block * b.block, as_int(b.full, s)),
            s);
    }
    if (b.tail > 0) {
      const int tw = as_int(b.tail, s);
      double* g = out_.gram_tail.reserve(static_cast<std::size_t>(b.tail * b.tail), s);
      const double* xt = x + b.full * b.block * cols;
      check(cublasDgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, tw, tw, k, &one, xt, ld, xt, ld, &zero, g, tw), s);
    }
  }

  // Eigenvectors of `batch` symmetric n×n matrices in place (ascending eigenvalues): the batched
  // Jacobi solver up to its size limit of 32, the batched QR-based syevBatched beyond.
  // Matrices [first, first + batch64) of the layer's `total` blocks, in chunks small enough for
  // cuSOLVER's 32-bit bound on n·n·batch.
  void eigen(double* a, double* w, std::int64_t n64, std::int64_t batch64, std::int64_t first, std::int64_t total,
             const char* what) {
    const std::int64_t chunk = std::max<std::int64_t>(1, INT_MAX / (n64 * n64));
    for (std::int64_t k = 0; k < batch64; k += chunk)
      eigen_chunk(a + k * n64 * n64, w + k * n64, n64, std::min(chunk, batch64 - k), first + k, total, what);
  }

  void eigen_chunk(double* a, double* w, std::int64_t n64, std::int64_t batch64, std::int64_t first, std::int64_t total,
                   const char* what) {
    const Stage s = at(what);
    const int n = as_int(n64, s), batch = as_int(batch64, s);
    int* d_info = info_.reserve(static_cast<std::size_t>(batch), s);
    if (n <= 32) {
      int lwork = 0;
      check(cusolverDnDsyevjBatched_bufferSize(solver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n, w,
                                               &lwork, syevj_, batch),
            s);
      double* work = work_.reserve(static_cast<std::size_t>(lwork), s);
      check(cusolverDnDsyevjBatched(solver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n, w, work, lwork,
                                    d_info, syevj_, batch),
            s);
    } else {
      std::size_t device_bytes = 0, host_bytes = 0;
      check(cusolverDnXsyevBatched_bufferSize(solver_, params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                                              CUDA_R_64F, a, n, CUDA_R_64F, w, CUDA_R_64F, &device_bytes, &host_bytes,
                                              batch),
            s);
      double* work = work_.reserve((device_bytes + sizeof(double) - 1) / sizeof(double), s);
      host_work_.resize(host_bytes);
      check(cusolverDnXsyevBatched(solver_, params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a,
                                   n, CUDA_R_64F, w, CUDA_R_64F, work, device_bytes,
                                   host_bytes ? host_work_.data() : nullptr, host_bytes, d_info, batch),
            s);
    }
    std::vector<int> info(static_cast<std::size_t>(batch));
    download(info.data(), d_info, info.size());
    check(cudaStreamSynchronize(stream_), s);
    for (int k = 0; k < batch; ++k)
      if (info[static_cast<std::size_t>(k)] != 0)
        fail(ErrorKind::numeric,
             "layer '{}': {}: block {} of {} ({}x{} Gram matrix) did not converge (cuSOLVER info {})", *layer_, what,
             first + k, total, n, n, info[static_cast<std::size_t>(k)]);
  }

  void rotations(BlockSet& set, const Blocks& b, const char* what) {
    const Stage s = at(what);
    if (b.full > 0) {
      double* w = set.eig_full.reserve(static_cast<std::size_t>(b.full * b.block), s);
      eigen(set.gram_full.get(), w, b.block, b.full, 0, b.count(), what);
      float* r = set.rot_full.reserve(static_cast<std::size_t>(b.full * b.block * b.block), s);
      launch_canonical_rotations(set.gram_full.get(), static_cast<int>(b.block), b.full, r, stream_);
      launched(what);
    }
    if (b.tail > 0) {
      double* w = set.eig_tail.reserve(static_cast<std::size_t>(b.tail), s);
      eigen(set.gram_tail.get(), w, b.tail, 1, b.full, b.count(), what);
      float* r = set.rot_tail.reserve(static_cast<std::size_t>(b.tail * b.tail), s);
      launch_canonical_rotations(set.gram_tail.get(), static_cast<int>(b.tail), 1, r, stream_);
      launched(what);
    }
  }

  std::vector<MatrixF> host_rotations(const BlockSet& set, const Blocks& b) {
    std::vector<MatrixF> out;
    out.reserve(static_cast<std::size_t>(b.count()));  // the copies target these matrices' storage
    for (std::int64_t k = 0; k < b.full; ++k) {
      out.emplace_back(b.block, b.block);
      download(out.back().data(), set.rot_full.get() + k * b.block * b.block,
               static_cast<std::size_t>(b.block * b.block));
    }
    if (b.tail > 0) {
      out.emplace_back(b.tail, b.tail);
      download(out.back().data(), set.rot_tail.get(), static_cast<std::size_t>(b.tail * b.tail));
    }
    return out;
  }

  // Y[:, block] = X[:, block]·Rin_b. Column-major: Y^T_b = Rin_b^T X^T_b, and a row-major Rin read
  // column-major is Rin^T.
  void rotate_columns(const float* x, std::int64_t rows, std::int64_t cols, const Blocks& b, float* y) {
    const float one = 1, zero = 0;
    const Stage s = at("rotating the column blocks (cublasSgemmStridedBatched)");
    const int bw = as_int(b.block, s), n = as_int(rows, s), ld = as_int(cols, s);
    if (b.full > 0)
      check(cublasSgemmStridedBatched(blas_, CUBLAS_OP_N, CUBLAS_OP_N, bw, n, bw, &one, in_.rot_full.get(), bw,
                                      b.block * b.block, x, ld, b.block, &zero, y, ld, b.block, as_int(b.full, s)),
            s);
    if (b.tail > 0) {
      const int tw = as_int(b.tail, s);
      const std::int64_t off = b.full * b.block;
      check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, tw, n, tw, &one, in_.rot_tail.get(), tw, x + off, ld, &zero,
                        y + off, ld),
            s);
    }
  }

  // Y_b = Rout_b·X_b over row blocks. Column-major: Y_b^T = X_b^T Rout_b^T.
  void rotate_rows(const float* x, std::int64_t rows, std::int64_t cols, const Blocks& b, float* y) {
    const float one = 1, zero = 0;
    const Stage s = at("rotating the row blocks (cublasSgemmStridedBatched)");
    (void)rows;
    const int bw = as_int(b.block, s), m = as_int(cols, s), ld = as_int(cols, s);
    if (b.full > 0)
      check(cublasSgemmStridedBatched(blas_, CUBLAS_OP_N, CUBLAS_OP_N, m, bw, bw, &one, x, ld, b.block * cols,
                                      out_.rot_full.get(), bw, b.block * b.block, &zero, y, ld, b.block * cols,
                                      as_int(b.full, s)),
            s);
    if (b.tail > 0) {
      const int tw = as_int(b.tail, s);
      const std::int64_t off = b.full * b.block * cols;
      check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, m, tw, tw, &one, x + off, ld, out_.rot_tail.get(), tw, &zero,
                        y + off, ld),
            s);
    }
  }

  int device_;
  const std::string* layer_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  syevjInfo_t syevj_ = nullptr;
  cusolverDnParams_t params_ = nullptr;
  PinnedBuffer<float> staging_;
  DeviceBuffer<float> w_, wperm_, wprime_, cur_, energy_, wscale_, scales_, sampled_, trial_, rowmax_, trialmax_;
  DeviceBuffer<float> calib_x_, calib_rot_;
  DeviceBuffer<double> sums_, dbl_, work_, err_, rowerr_;
  DeviceBuffer<std::int64_t> perm_;
  DeviceBuffer<std::uint8_t> codes_;
  DeviceBuffer<unsigned char> sort_;
  DeviceBuffer<int> info_;
  std::vector<unsigned char> host_work_;
  BlockSet in_, out_;
};

}  // namespace

std::unique_ptr<LayerEngine> make_cuda_engine(int device) { return std::make_unique<CudaEngine>(device); }

std::vector<float> cuda_channel_energy(int device, const WeightView& w, double lambda_smooth) {
  return CudaEngine(device).energy_only(w, lambda_smooth);
}

std::vector<std::int64_t> cuda_zigzag_permutation(int device, const std::vector<float>& energy) {
  return CudaEngine(device).zigzag_only(energy);
}

QuantizedRows cuda_quantize_rows(int device, const MatrixF& w_t, int bits, std::string* packed) {
  return CudaEngine(device).quantize_only(w_t, bits, packed);
}

}  // namespace duquant::kernels
