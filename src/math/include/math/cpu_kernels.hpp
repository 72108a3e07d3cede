// The CPU's hot loops, compiled once per instruction-set level (base/cpu_features.hpp) and chosen
// at run time, so one binary uses AVX2 or AVX-512 where the CPU has them and runs on any x86-64.
// Every level returns the same bits: the loops keep each sum's order (lanes side by side are
// independent sums, or maxima, which are exact), and nothing is fused (-ffp-contract=off, no FMA).
#pragma once

#include <cstdint>

#include "base/cpu_features.hpp"

namespace duquant::simd {

struct Kernels {
  CpuLevel level;
  // max over c < n of |row[c] − t·other[c]|, the product rounded and then the difference (as
  // `row − t·other` computed elementwise); 0 for n = 0. A NaN is skipped as std::max skips it.
  float (*shifted_row_max_abs)(const float* row, const float* other, float t, std::int64_t n);
  // out[c] = row[c] − t·other[c] for c < n (the product rounded, then the difference); `out` may be `row`.
  void (*subtract_scaled)(const float* row, const float* other, float t, std::int64_t n, float* out);
  // dst[c] = double(src[c]) for c < n.
  void (*widen)(const float* src, std::int64_t n, double* dst);
  // max over c < n of |w[c]| (the same NaN rule).
  float (*row_max_abs)(const float* w, std::int64_t n);
  // Σ over r < rows, in order, of elementwise::sampled_row_error(w + r·cols, cols, row_max[r], bits).
  double (*sampled_rows_error)(const float* w, std::int64_t rows, std::int64_t cols, const float* row_max, int bits);
  // out[k] = the squared error of the row `w` of n values under scales[k], k < count, summed in
  // the order of elementwise.hpp (kErrorLanes float lanes flushed into double every kErrorFlush).
  void (*row_errors)(const float* w, std::int64_t n, const float* scales, int count, int bits, double* out);
  // q[c] = elementwise::quantize_code(w[c], s, −qmax−1, qmax) for c < n.
  void (*quantize_row)(const float* w, std::int64_t n, float s, int bits, std::int8_t* q);
  // Four input rows side by side, x4[j·4 + r] (r < 4, j < n): for each o < outs,
  // y[o·4 + r] = Σ_{j<n} x4[j·4 + r] · double(w[o·ldw + j]), each sum from 0 in the order of j.
  void (*dot4_f32)(const double* x4, std::int64_t n, const float* w, std::int64_t ldw, std::int64_t outs, double* y);
  // g[i·s + j] += T[i][j] for i, j < s, where T[i][j] = Σ_{kk<k} a[kk·lda + i] · a[kk·lda + j], each
  // sum from +0 in the order of kk (the order of Eigen's product kernel for one depth block).
  // Rows of `a` are read up to column roundup(s, 16) (those beyond s are ignored): the caller
  // keeps them readable. `g` must be symmetric; it stays so, bit for bit.
  void (*gram_add)(const double* a, std::int64_t k, std::int64_t s, std::int64_t lda, double* g);
  // out[r·ldo + c] = Σ_{k<K} A[r·lda + k] · B[k·ldb + c] for r < R, c < C (float, all row-major),
  // each sum in the order Eigen's float product kernel (SSE2) gives that element — sequential
  // from 0 for all but the last C mod 8 columns (kernels/kernels_body.inc) — so the rotated
  // weights keep the bytes packs had, now whatever the CPU's caches or the thread count.
  void (*product_f32)(const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* out, std::int64_t ldo,
                      std::int64_t rows, std::int64_t cols, std::int64_t depth);
  // The same with int8 codes for w.
  void (*dot4_i8)(const double* x4, std::int64_t n, const std::int8_t* q, std::int64_t ldq, std::int64_t outs,
                  double* y);
};

// The kernels of the active level (active_cpu_level()).
const Kernels& kernels();
// The kernels of `level`, which the CPU must run (supported_cpu_levels()).
const Kernels& kernels_for(CpuLevel level);

}  // namespace duquant::simd
