#include "verify_checks.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "base/elementwise.hpp"
#include "math/calibration.hpp"
#include "math/conformance.hpp"
#include "math/cpu_kernels.hpp"
#include "select/layer_weights.hpp"
#include "select/selection.hpp"

namespace duquant::verify_detail {
namespace {

using MatrixD = Eigen::MatrixXd;

std::vector<MatrixF> matrices(const std::vector<std::pair<std::int64_t, MatrixF>>& blocks) {
  std::vector<MatrixF> out;
  for (const auto& [b, m] : blocks) out.push_back(m);
  return out;
}

double max_orthogonality_error(const MatrixF& r) {
  const MatrixD d = r.cast<double>();
  const MatrixD e = d.transpose() * d - MatrixD::Identity(d.cols(), d.cols());
  return e.cwiseAbs().maxCoeff();
}

bool all_finite(const MatrixF& m) { return m.allFinite(); }

// Expected index list 0..n-1 vs what the npz lists, and the Rin_/Rout_ members present.
bool check_blocks(const char* what, const std::vector<std::int64_t>& listed,
                  const std::vector<std::pair<std::int64_t, MatrixF>>& members, std::int64_t expected, Sink& sink) {
  // Sizes first, from the array the file holds: `expected` comes from meta and may be absurd, so
  // nothing is sized from it before it agrees with the list.
  if (expected < 0 || listed.size() != static_cast<std::uint64_t>(expected)) {
    sink.add(Level::fail, "rotation-blocks", "{}_blocks lists {} of the {} blocks {} (expected 0..{})", what,
             listed.size(), expected, fmt::format("[{}]", fmt::join(listed, ", ")), expected - 1);
    return false;
  }
  std::vector<std::int64_t> want(static_cast<std::size_t>(expected));
  for (std::int64_t k = 0; k < expected; ++k) want[static_cast<std::size_t>(k)] = k;
  std::vector<std::int64_t> present;
  for (const auto& [b, m] : members) present.push_back(b);
  const std::string member_prefix = std::string(what) == "R_in" ? "Rin_" : "Rout_";
  if (listed != want) {
    sink.add(Level::fail, "rotation-blocks", "{}_blocks lists {} of the {} blocks {} (expected 0..{})", what,
             listed.size(), expected, fmt::format("[{}]", fmt::join(listed, ", ")), expected - 1);
    return false;
  }
  if (present != want) {
    std::vector<std::int64_t> missing, extra;
    std::set_difference(want.begin(), want.end(), present.begin(), present.end(), std::back_inserter(missing));
    std::set_difference(present.begin(), present.end(), want.begin(), want.end(), std::back_inserter(extra));
    sink.add(Level::fail, "rotation-blocks", "{} blocks listed; members {}* missing [{}], unexpected [{}]", expected,
             member_prefix, fmt::join(missing, ", "), fmt::join(extra, ", "));
    return false;
  }
  return true;
}

bool check_rotations(const char* prefix, const std::vector<std::pair<std::int64_t, MatrixF>>& blocks, std::int64_t n,
                     std::int64_t block, Sink& sink, double& worst) {
  bool usable = true;
  for (const auto& [b, r] : blocks) {
    const std::int64_t s = block_width(n, block, b);
    if (r.rows() != s || r.cols() != s) {
      sink.add(Level::fail, "shape",
               "{}{} has shape ({}, {}); block {} of a width-{} dimension in blocks of {} is {} wide", prefix, b,
               r.rows(), r.cols(), b, n, block, s);
      usable = false;
      continue;
    }
    if (!all_finite(r)) {
      sink.add(Level::fail, "rotation", "{}{} holds NaN or Inf", prefix, b);
      usable = false;
      continue;
    }
    const double e = max_orthogonality_error(r);
    worst = std::max(worst, e);
    if (e > kOrthogonalityTolerance) {
      sink.add(Level::fail, "rotation", "{}{} is not orthogonal: max |RᵀR − I| = {:.3g} > {:.0e}", prefix, b, e,
               kOrthogonalityTolerance);
      usable = false;
    }
  }
  return usable;
}

// ‖offdiag(RᵀGR)‖_F / ‖G‖_F: how far R is from diagonalising the Gram matrix G.
double eigenbasis_residual(const MatrixD& g, const MatrixF& r) {
  const MatrixD rd = r.cast<double>();
  MatrixD m = rd.transpose() * g * rd;
  m.diagonal().setZero();
  const double gn = g.norm();
  return gn > 0 ? m.norm() / gn : 0.0;
}

MatrixD column_block_gram(const WeightView& w, const std::vector<std::int64_t>& perm, std::int64_t c0, std::int64_t s) {
  // 256 rows at a time through the pack's Gram kernel (a figure compared with a tolerance).
  const simd::Kernels& kern = simd::kernels();
  constexpr std::int64_t kTile = 256;
  const std::int64_t lda = (s + 15) / 16 * 16;  // the kernel reads whole groups of 16 columns
  std::vector<double> tile(static_cast<std::size_t>(kTile * lda), 0.0);
  MatrixD g = MatrixD::Zero(s, s);
  for (std::int64_t r0 = 0; r0 < w.rows; r0 += kTile) {
    const std::int64_t n = std::min(kTile, w.rows - r0);
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t c = 0; c < s; ++c) tile[r * lda + c] = w.at(r0 + r, perm[static_cast<std::size_t>(c0 + c)]);
    kern.gram_add(tile.data(), n, s, lda, g.data());
  }
  return g;
}

MatrixD row_block_gram(const WeightView& w, std::int64_t r0, std::int64_t s) {
  MatrixD wr(s, w.cols);
  for (std::int64_t r = 0; r < s; ++r)
    for (std::int64_t c = 0; c < w.cols; ++c) wr(r, c) = w.at(r0 + r, c);
  return wr * wr.transpose();
}

std::vector<std::int64_t> perm_or_identity(const NpzLayer& npz, std::int64_t n) {
  if (npz.has_perm) return npz.perm;
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (std::int64_t k = 0; k < n; ++k) p[static_cast<std::size_t>(k)] = k;
  return p;
}

// x · mᵀ in double for a float32 matrix (rows_times_transpose: no double copy of m).
MatrixD times_transpose(const MatrixD& x, const float* m, std::int64_t rows, std::int64_t cols) {
  std::vector<double> xr(static_cast<std::size_t>(x.rows() * cols));
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    for (std::int64_t j = 0; j < cols; ++j) xr[static_cast<std::size_t>(r * cols + j)] = x(r, j);
  const std::vector<double> p = rows_times_transpose(xr, x.rows(), cols, m, rows);
  MatrixD y(x.rows(), rows);
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    for (std::int64_t o = 0; o < rows; ++o) y(r, o) = p[static_cast<std::size_t>(r * rows + o)];
  return y;
}

// y = x Wᵀ through the pack's transform with the exact (unquantized) weight: x[:, perm]·Rin,
// times W_tᵀ, then ·Rout per row block. Double sums.
MatrixD transformed_output(const MatrixD& x, const WeightView& w, const std::vector<std::int64_t>& perm,
                           const std::vector<MatrixF>& r_in, const std::vector<MatrixF>& r_out, std::int64_t block,
                           std::int64_t block_out) {
  LayerTransform t;
  t.perm = perm;
  t.r_in = r_in;
  t.r_out = r_out;
  MatrixF w_t = apply_input_transform(w, t, block);
  apply_output_rotation(w_t, t, block_out);
  MatrixD xt(x.rows(), x.cols());
  for (Eigen::Index c = 0; c < x.cols(); ++c) xt.col(c) = x.col(perm[static_cast<std::size_t>(c)]);
  Eigen::Index c0 = 0;
  for (const MatrixF& r : r_in) {
    xt.middleCols(c0, r.rows()) = (xt.middleCols(c0, r.rows()) * r.cast<double>()).eval();
    c0 += r.rows();
  }
  MatrixD y = times_transpose(xt, w_t.data(), w_t.rows(), w_t.cols());
  Eigen::Index r0 = 0;
  for (const MatrixF& r : r_out) {
    y.middleCols(r0, r.rows()) = (y.middleCols(r0, r.rows()) * r.cast<double>()).eval();
    r0 += r.rows();
  }
  return y;
}

double relative_error(const MatrixF& w_hat, const WeightView& w) {
  double num = 0, den = 0;
  for (std::int64_t r = 0; r < w.rows; ++r)
    for (std::int64_t c = 0; c < w.cols; ++c) {
      const double d = static_cast<double>(w_hat(r, c)) - w.at(r, c);
      num += d * d;
      den += static_cast<double>(w.at(r, c)) * w.at(r, c);
    }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

// max |a − b| / max |b| (0 when both vanish).
double max_relative_difference(std::span<const float> a, std::span<const float> b) {
  double diff = 0, scale = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    if (!std::isfinite(a[k]) || !std::isfinite(b[k])) return INFINITY;
    diff = std::max(diff, std::abs(static_cast<double>(a[k]) - b[k]));
    scale = std::max(scale, std::abs(static_cast<double>(b[k])));
  }
  return scale > 0 ? diff / scale : diff;
}

double pack_rel_error(const NpzLayer& npz, const QuantizedLayerTensors* q, const WeightView& w, int wbits) {
  return relative_error(q != nullptr ? dequantized_original_basis(*q) : runtime_quantized_original_basis(w, npz, wbits),
                        w);
}

}  // namespace

bool Sink::failed(const char* reason) const {
  return std::any_of(v.findings.begin(), v.findings.end(),
                     [&](const Finding& f) { return f.level == Level::fail && f.reason == reason; });
}

PermComparison compare_permutations(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b,
                                    const std::vector<float>* energy) {
  PermComparison c;
  for (std::size_t k = 0; k < a.size() && k < b.size(); ++k) {
    if (a[k] == b[k]) continue;
    if (c.differing++ == 0) c.first = k;
    if (energy == nullptr) {
      c.ties_only = false;
      continue;
    }
    const double ea = (*energy)[static_cast<std::size_t>(a[k])], eb = (*energy)[static_cast<std::size_t>(b[k])];
    if (std::abs(ea - eb) > kEnergyTieTolerance * std::max(std::abs(ea), std::abs(eb))) c.ties_only = false;
  }
  if (a.size() != b.size()) c.ties_only = false;
  return c;
}

bool check_npz_structure(const NpzLayer& npz, const Expectation& e, Sink& sink) {
  const PackMeta& m = npz.meta;
  // meta against the manifest and the checkpoint.
  if (e.entry != nullptr) {
    const ManifestLayer& l = *e.entry;
    if (m.in_features != l.in_features || m.out_features != l.out_features)
      sink.add(Level::fail, "meta", "meta says {} -> {} features, the manifest's shape is [{}, {}]", m.in_features,
               m.out_features, l.out_features, l.in_features);
    if (m.block_size != l.block || m.block_out_size != l.block_out)
      sink.add(Level::fail, "meta", "meta says block_size {} / block_out_size {}, the manifest says {} / {}",
               m.block_size, m.block_out_size, l.block, l.block_out);
  }
  if (e.manifest != nullptr) {
    const QuantConfig& q = e.manifest->config.quant;
    if (m.enable_permute != q.permute)
      sink.add(Level::fail, "meta", "meta says enable_permute {}, the manifest's configuration {}", m.enable_permute,
               q.permute);
    if (m.lambda_smooth != q.lambda_smooth)
      sink.add(Level::fail, "meta", "meta says lambda_smooth {}, the manifest's configuration {}", m.lambda_smooth,
               q.lambda_smooth);
  }
  if (e.in_features && (m.in_features != *e.in_features || m.out_features != *e.out_features))
    sink.add(Level::fail, "meta", "meta says {} -> {} features, the checkpoint's weight is [{}, {}]", m.in_features,
             m.out_features, *e.out_features, *e.in_features);

  // Sane bounds before anything is sized from meta (a crafted meta may ask for 2^40 features).
  if (m.in_features > kMaxLayerWidth || m.out_features > kMaxLayerWidth ||
      static_cast<std::uint64_t>(m.block_size) > kMaxLayerWidth ||
      static_cast<std::uint64_t>(m.block_out_size) > kMaxLayerWidth) {
    sink.add(Level::fail, "meta",
             "meta says in_features {}, out_features {}, block_size {}, block_out_size {}: more than the {} a layer "
             "may have",
             m.in_features, m.out_features, m.block_size, m.block_out_size, kMaxLayerWidth);
    return false;
  }
  const auto in = static_cast<std::int64_t>(m.in_features), out = static_cast<std::int64_t>(m.out_features);
  bool usable = true;

  // Members: the runtime's set, plus extras it ignores.
  static const std::set<std::string> known = {"weight_scale", "meta",      "perm",        "R_in_blocks",
                                              "R_out_blocks", "act_scale", "smooth_scale"};
  for (const std::string& k : npz.members) {
    if (known.count(k) || k.rfind("Rin_", 0) == 0 || k.rfind("Rout_", 0) == 0) continue;
    sink.add(Level::warn, "members", "unexpected member '{}' (the runtime ignores it)", k);
  }
  if (m.enable_permute != npz.has_perm) {
    sink.add(Level::fail, "members", "meta says enable_permute {} but the member 'perm' is {}", m.enable_permute,
             npz.has_perm ? "present" : "absent");
    usable = false;
  }

  // weight_scale: [O], finite, > 0.
  if (npz.weight_scale_shape != std::vector<std::uint64_t>{m.out_features}) {
    sink.add(Level::fail, "shape", "weight_scale has {} values in {} dimension(s); expected ({},)",
             npz.weight_scale.size(), npz.weight_scale_shape.size(), m.out_features);
  } else {
    for (std::size_t r = 0; r < npz.weight_scale.size(); ++r) {
      const float s = npz.weight_scale[r];
      if (!std::isfinite(s) || !(s > 0)) {
        sink.add(Level::fail, "weight-scale", "weight_scale[{}] is {} (must be finite and > 0)", r, s);
        break;
      }
    }
  }

  // perm: a permutation of 0..I-1.
  if (npz.has_perm) {
    if (npz.perm.size() != m.in_features) {
      sink.add(Level::fail, "perm", "perm has {} entries; in_features is {}", npz.perm.size(), in);
      usable = false;
    } else {
      std::vector<std::int64_t> seen(static_cast<std::size_t>(in), -1);
      for (std::size_t k = 0; k < npz.perm.size() && usable; ++k) {
        const std::int64_t v = npz.perm[k];
        if (v < 0 || v >= in) {
          sink.add(Level::fail, "perm", "perm[{}] = {} is outside 0..{}", k, v, in - 1);
          usable = false;
        } else if (seen[static_cast<std::size_t>(v)] >= 0) {
          sink.add(Level::fail, "perm", "perm is not a permutation: {} appears at positions {} and {}", v,
                   seen[static_cast<std::size_t>(v)], k);
          usable = false;
        } else {
          seen[static_cast<std::size_t>(v)] = static_cast<std::int64_t>(k);
        }
      }
    }
  }

  // Rotations: complete block lists, right shapes, orthogonal.
  double worst = 0;
  if (!check_blocks("R_in", npz.r_in_blocks, npz.r_in, block_count(in, m.block_size), sink))
    usable = false;
  else if (!check_rotations("Rin_", npz.r_in, in, m.block_size, sink, worst))
    usable = false;
  const bool no_row_rot = e.manifest != nullptr && e.manifest->config.quant.row_rot == RowRot::off;
  if (npz.r_out_blocks.empty() && npz.r_out.empty()) {
    if (e.manifest != nullptr && !no_row_rot)
      sink.add(Level::fail, "rotation-blocks", "no output rotations, but the manifest's row_rot is {}",
               row_rot_name(e.manifest->config.quant.row_rot));
  } else if (no_row_rot) {
    sink.add(Level::fail, "rotation-blocks", "{} output rotations, but the manifest's row_rot is 0", npz.r_out.size());
  } else if (!check_blocks("R_out", npz.r_out_blocks, npz.r_out, block_count(out, m.block_out_size), sink)) {
    usable = false;
  } else if (!check_rotations("Rout_", npz.r_out, out, m.block_out_size, sink, worst)) {
    usable = false;
  }
  sink.v.numbers["max_orthogonality_error"] = worst;

  // Calibration members: [I], finite, positive (act_scale is floored at 1e-6 by construction).
  for (auto [key, shape, values] : {std::tuple{"act_scale", &npz.act_scale_shape, &npz.act_scale},
                                    std::tuple{"smooth_scale", &npz.smooth_scale_shape, &npz.smooth_scale}}) {
    if (shape->empty() && values->empty()) continue;
    if (*shape != std::vector<std::uint64_t>{m.in_features}) {
      sink.add(Level::fail, "calibration", "{} has {} values in {} dimension(s); expected ({},)", key, values->size(),
               shape->size(), m.in_features);
      usable = false;
      continue;
    }
    for (std::size_t j = 0; j < values->size(); ++j)
      if (!(std::isfinite((*values)[j]) && (*values)[j] > 0)) {
        sink.add(Level::fail, "calibration", "{}[{}] is {}; scales must be finite and positive", key, j, (*values)[j]);
        usable = false;
        break;
      }
    // act_scale is a percentile of activations over qmax: pack's rule for activations bounds it too.
    if (key == std::string_view("act_scale") && usable)
      if (const std::ptrdiff_t j = first_unpackable_activation(*values); j >= 0) {
        sink.add(Level::fail, "calibration",
                 "act_scale[{}] is {}; activations beyond +-{:g} are not packed (pack refuses "
                 "them, exit 6)",
                 j, (*values)[static_cast<std::size_t>(j)], static_cast<double>(kLargestActivationMagnitude));
        usable = false;
      }
  }
  if (!npz.smooth_scale.empty()) {
    if (npz.act_scale.empty()) sink.add(Level::fail, "calibration", "smooth_scale without act_scale");
    if (e.entry != nullptr && e.entry->folded)  // made for its folded checkpoint: judged against a checkpoint
      sink.add(Level::info, "smooth-scale",
               "made with --fold-smoothing: the Python runtime loads it with the folded checkpoint (1/s in its norms)");
    else
      sink.add(Level::warn, "smooth-scale",
               "smooth_scale is ignored by the Python runtime, and no folded checkpoint was written for this pack "
               "(pack again with --fold-smoothing)");
  }
  if (e.entry != nullptr && e.entry->calibrated != !npz.act_scale.empty())
    sink.add(Level::fail, "calibration", "the manifest says the layer is {}calibrated, the npz {} act_scale",
             e.entry->calibrated ? "" : "not ", npz.act_scale.empty() ? "has no" : "has");
  if (e.entry != nullptr && e.entry->smoothed != !npz.smooth_scale.empty())
    sink.add(Level::fail, "calibration", "the manifest says the layer is {}smoothed, the npz {} smooth_scale",
             e.entry->smoothed ? "" : "not ", npz.smooth_scale.empty() ? "has no" : "has");
  return usable;
}

void check_quantized(const QuantizedLayerTensors& q, const NpzLayer& npz, RowRot row_rot, int abits, Sink& sink) {
  if (q.out_features != npz.meta.out_features || q.in_features != npz.meta.in_features) {
    sink.add(Level::fail, "quantized", "quantized tensors are [{}, {}], meta says [{}, {}]", q.out_features,
             q.in_features, npz.meta.out_features, npz.meta.in_features);
    return;
  }
  const int hi = elementwise::qmax(q.bits), lo = -hi - 1;
  for (std::size_t k = 0; k < q.codes.size(); ++k) {
    if (q.codes[k] < lo || q.codes[k] > hi) {
      sink.add(Level::fail, "codes", "qweight [{}, {}] = {} is outside [{}, {}] for {} bits", k / q.in_features,
               k % q.in_features, q.codes[k], lo, hi, q.bits);
      break;
    }
  }
  for (std::size_t r = 0; r < q.scales.size(); ++r) {
    if (!std::isfinite(q.scales[r]) || !(q.scales[r] > 0)) {
      sink.add(Level::fail, "scales", "scales[{}] is {} (must be finite and > 0)", r, q.scales[r]);
      break;
    }
  }
  // The same perm and rotations as the npz, bit for bit.
  if (npz.has_perm != !q.perm.empty() || (npz.has_perm && npz.perm != q.perm))
    sink.add(Level::fail, "quantized-npz", "perm in quantized.safetensors differs from the npz's");
  auto same_blocks = [](const std::vector<MatrixF>& a, const std::vector<std::pair<std::int64_t, MatrixF>>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t k = 0; k < a.size(); ++k) {
      const MatrixF& m = b[k].second;
      if (a[k].rows() != m.rows() || a[k].cols() != m.cols() ||
          std::memcmp(a[k].data(), m.data(), sizeof(float) * static_cast<std::size_t>(m.size())) != 0)
        return false;
    }
    return true;
  };
  if (!same_blocks(q.r_in, npz.r_in))
    sink.add(Level::fail, "quantized-npz", "R_in in quantized.safetensors differs from the npz's Rin_*");
  if (!same_blocks(q.r_out, npz.r_out))
    sink.add(Level::fail, "quantized-npz", "R_out in quantized.safetensors differs from the npz's Rout_*");

  if (q.act_scale != npz.act_scale)
    sink.add(Level::fail, "quantized-npz", "act_scale in quantized.safetensors ({} values) differs from the npz's ({})",
             q.act_scale.size(), npz.act_scale.size());
  if (q.smooth_scale != npz.smooth_scale)
    sink.add(Level::fail, "quantized-npz",
             "smooth_scale in quantized.safetensors ({} values) differs from the npz's ({})", q.smooth_scale.size(),
             npz.smooth_scale.size());

  if (q.test_x.empty()) {
    sink.add(Level::warn, "conformance", "no conformance vectors (test_x, test_y_fp, test_y_q)");
    return;
  }
  if (const std::ptrdiff_t j = first_unpackable_activation(q.test_x); j >= 0) {  // pack's rule for activations
    sink.add(Level::fail, "conformance",
             "test_x[{}] is {}; activations beyond +-{:g} are not packed (pack refuses them, "
             "exit 6)",
             j, q.test_x[static_cast<std::size_t>(j)], static_cast<double>(kLargestActivationMagnitude));
    return;
  }
  const auto rows = static_cast<std::int64_t>(q.test_rows);
  // Calibrated packs take their conformance inputs from the dump.
  if (q.act_scale.empty() && conformance_inputs(rows, static_cast<std::int64_t>(q.in_features)) != q.test_x)
    sink.add(Level::warn, "conformance", "test_x is not duquant's deterministic input (recomputing from it anyway)");
  if (sink.failed("codes") || sink.failed("scales") || sink.failed("quantized-npz") || sink.failed("calibration"))
    return;
  const std::vector<float> y = conformance_pack_output(
      q.test_x, rows, static_cast<std::int64_t>(q.out_features), static_cast<std::int64_t>(q.in_features), q.perm,
      q.r_in, q.codes, q.scales, q.r_out, row_rot, q.bias, ActivationContract{q.smooth_scale, q.act_scale, abits});
  const double d = max_relative_difference(y, q.test_y_q);
  sink.v.numbers["test_y_q_max_rel_diff"] = d;
  if (!(d <= kConformanceTolerance))
    sink.add(Level::fail, "conformance",
             "test_y_q differs from the output recomputed from the pack: max |Δ|/max|y| = {:.3g} > {:.0e}", d,
             kConformanceTolerance);
}

void check_against_checkpoint(const NpzLayer& npz, const QuantizedLayerTensors* q, const Expectation& e,
                              const CheckpointFacts& ck, int wbits, Sink& sink) {
  const WeightView& w = ck.w;
  const PackMeta& m = npz.meta;
  bool digest_known = false;
  if (e.entry != nullptr) {
    digest_known = true;
    if (e.entry->weight_xxh128 != ck.weight_digest && !ck.folded) {
      sink.add(Level::fail, "stale", "the pack was made from another weight: manifest digest {}{}, checkpoint's {}",
               e.entry->weight_xxh128,
               e.entry->folded_weight_xxh128.empty() ? "" : fmt::format(" (folded: {})", e.entry->folded_weight_xxh128),
               ck.weight_digest);
      return;
    }
    if (e.entry->folded && !ck.folded)
      sink.add(Level::warn, "needs-folded",
               "this is the original checkpoint: the pack needs its --fold-smoothing checkpoint (the runtime ignores "
               "smooth_scale; with the folded norms and weights it reproduces the pack)");
  }
  // perm and rotations must fit this weight (for packs without digests, the staleness test).
  const char* misfit = digest_known ? "fit" : "stale";
  const std::vector<float> energy = channel_energy(w, m.lambda_smooth);
  const std::vector<std::int64_t> perm = perm_or_identity(npz, w.cols);
  if (npz.has_perm) {
    const PermComparison c = compare_permutations(npz.perm, zigzag_permutation(energy), &energy);
    sink.v.numbers["perm_positions_differing"] = c.differing;
    if (!c.ties_only) {
      sink.add(Level::fail, misfit,
               "perm is not the zigzag order of this weight's channel energies: {} positions differ "
               "(first at {}) between channels of different energy",
               c.differing, c.first);
      return;
    }
  }
  // Blocks are checked in parallel; the maximum does not depend on the order.
  const auto nin = static_cast<std::int64_t>(npz.r_in.size()), nout = static_cast<std::int64_t>(npz.r_out.size());
  std::vector<double> residual(static_cast<std::size_t>(nin + nout));
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t k = 0; k < nin + nout; ++k) {
    if (k < nin) {
      const MatrixF& r = npz.r_in[static_cast<std::size_t>(k)].second;
      residual[static_cast<std::size_t>(k)] =
          eigenbasis_residual(column_block_gram(w, perm, k * m.block_size, r.rows()), r);
    } else {
      const MatrixF& r = npz.r_out[static_cast<std::size_t>(k - nin)].second;
      residual[static_cast<std::size_t>(k)] =
          eigenbasis_residual(row_block_gram(w, (k - nin) * m.block_out_size, r.rows()), r);
    }
  }
  const double worst = residual.empty() ? 0.0 : *std::max_element(residual.begin(), residual.end());
  sink.v.numbers["eigenbasis_residual"] = worst;
  if (worst > kEigenbasisTolerance) {
    sink.add(Level::fail, misfit,
             "the rotations are not eigenvectors of this weight's Gram matrices: residual {:.3g} > {:.0e}", worst,
             kEigenbasisTolerance);
    return;
  }

  // The transform is exact without quantization.
  const auto rows = kConformanceRows;
  const std::vector<float> xf = conformance_inputs(rows, w.cols);
  MatrixD x(rows, w.cols);
  for (std::int64_t k = 0; k < rows * w.cols; ++k) x(k / w.cols, k % w.cols) = xf[static_cast<std::size_t>(k)];
  const MatrixD y0 = times_transpose(x, w.data, w.rows, w.cols);
  const MatrixD y1 =
      transformed_output(x, w, perm, matrices(npz.r_in), matrices(npz.r_out), m.block_size, m.block_out_size);
  const double y0n = y0.norm();
  const double transform_error = y0n > 0 ? (y1 - y0).norm() / y0n : (y1 - y0).norm();
  sink.v.numbers["transform_rel_error"] = transform_error;
  if (!(transform_error <= kTransformTolerance))
    sink.add(Level::fail, "transform", "the transform is not exact: ‖y_pack − x Wᵀ‖/‖x Wᵀ‖ = {:.3g} > {:.0e}",
             transform_error, kTransformTolerance);

  // Quality: what the codes (or the runtime's quantization, for npz-only packs) cost.
  const double rel = pack_rel_error(npz, q, w, wbits);
  sink.v.numbers["rel_fro_error"] = rel;
  if (e.entry != nullptr && q != nullptr) {
    if (!e.entry->duquant_rel_error) {
      if (rel > kQualityFloor)
        sink.add(Level::fail, "quality", "the manifest claims no quality figure; recomputed rel. error {:.6g}", rel);
    } else {
      const double claimed = *e.entry->duquant_rel_error;
      sink.v.numbers["claimed_rel_fro_error"] = claimed;
      if (!(std::abs(rel - claimed) <= kQualityTolerance * claimed + kQualityFloor))
        sink.add(Level::fail, "quality", "the manifest claims rel. error {:.6g}; the pack's codes give {:.6g}", claimed,
                 rel);
    }
    // The round-to-nearest baseline the manifest compares with.
    double norm2 = 0;
    for (std::int64_t k = 0; k < w.rows * w.cols; ++k) norm2 += static_cast<double>(w.data[k]) * w.data[k];
    const double rtn = norm2 > 0 ? std::sqrt(rtn_squared_error(w, wbits) / norm2) : 0.0;
    sink.v.numbers["rtn_rel_fro_error"] = rtn;
    const double claimed_rtn = e.entry->rtn_rel_error.value_or(-1.0);
    if (!(std::abs(rtn - claimed_rtn) <= kQualityTolerance * rtn + 1e-9))
      sink.add(Level::fail, "quality", "the manifest claims a round-to-nearest rel. error of {:.6g}; recomputed {:.6g}",
               claimed_rtn, rtn);
  }
  // test_y_fp from the checkpoint: x·Wᵀ + b of the original weight, which a folded checkpoint holds
  // only as W·diag(s) rounded to its dtype.
  if (ck.folded && q != nullptr && !q->test_x.empty())
    sink.add(Level::info, "conformance",
             "test_y_fp is x·Wᵀ + b of the original weight: checked against the original "
             "checkpoint, not the folded one");
  if (!ck.folded && q != nullptr && !q->test_x.empty()) {
    const std::vector<float> y =
        conformance_reference_output(q->test_x, static_cast<std::int64_t>(q->test_rows), ck.w_fp, ck.bias);
    const double d = max_relative_difference(y, q->test_y_fp);
    sink.v.numbers["test_y_fp_max_rel_diff"] = d;
    if (!(d <= kConformanceTolerance))
      sink.add(Level::fail, "conformance", "test_y_fp differs from x Wᵀ + b of the checkpoint: max |Δ|/max|y| = {:.3g}",
               d);
  }
}

void check_against_reference(const NpzLayer& ours, const QuantizedLayerTensors* q, const NpzLayer& ref,
                             const CheckpointFacts* ck, int wbits, Sink& sink) {
  const PackMeta &a = ours.meta, &b = ref.meta;
  if (!ours.smooth_scale.empty()) {
    sink.add(
        Level::info, "reference-smoothed",
        "the layer is smoothed: its transform is computed from W·diag(s), so it is not compared with the reference's");
    return;
  }
  if (a.in_features != b.in_features || a.out_features != b.out_features || a.block_size != b.block_size ||
      a.block_out_size != b.block_out_size || a.enable_permute != b.enable_permute ||
      a.lambda_smooth != b.lambda_smooth) {
    sink.add(Level::fail, "reference-meta", "meta differs: ours {}, the reference's {}", ours.meta_text, ref.meta_text);
    return;
  }
  std::vector<float> energy;
  if (ck != nullptr) energy = channel_energy(ck->w, a.lambda_smooth);
  const auto in = static_cast<std::int64_t>(a.in_features);
  const std::vector<std::int64_t> pa = perm_or_identity(ours, in), pb = perm_or_identity(ref, in);
  const PermComparison pc = compare_permutations(pa, pb, ck != nullptr ? &energy : nullptr);
  sink.v.numbers["reference_perm_positions_differing"] = pc.differing;
  if (pc.differing > 0) {
    if (ck == nullptr)
      sink.add(Level::warn, "reference-perm",
               "perm differs from the reference's at {} positions (first {}); give --checkpoint "
               "to tell ties from errors",
               pc.differing, pc.first);
    else if (!pc.ties_only)
      sink.add(Level::fail, "reference-perm",
               "perm differs from the reference's at {} positions (first {}) between "
               "channels of different energy",
               pc.differing, pc.first);
  }
  // Rotations: every reference column lies in the eigenspace of our matching column. An input
  // block is compared only where both packs hold the same channels in it (rows aligned through both
  // perms); where ties put other channels in it, each pack is judged by its own block instead.
  double worst = 0;
  bool mixing_unconfirmed = false;
  std::size_t tie_blocks = 0, unsettled_blocks = 0;
  auto compare = [&](const char* prefix, const std::vector<std::pair<std::int64_t, MatrixF>>& ra,
                     const std::vector<std::pair<std::int64_t, MatrixF>>& rb, bool rows) {
    std::int64_t start = 0;
    for (std::size_t k = 0; k < ra.size() && k < rb.size(); ++k) {
      const MatrixF& x = ra[k].second;
      MatrixF y = rb[k].second;
      if (x.rows() != y.rows() || x.cols() != y.cols()) {
        sink.add(Level::fail, "reference-rotation", "{}{} is {}x{}, the reference's {}x{}", prefix, ra[k].first,
                 x.rows(), x.cols(), y.rows(), y.cols());
        continue;
      }
      const Eigen::Index s = x.rows();
      if (!rows && start + s <= in) {
        const auto first = static_cast<std::size_t>(start), last = first + static_cast<std::size_t>(s);
        const std::vector<std::int64_t> ours_ch(pa.begin() + first, pa.begin() + last),
            ref_ch(pb.begin() + first, pb.begin() + last);
        if (ours_ch != ref_ch) {
          std::vector<std::int64_t> sa = ours_ch, sb = ref_ch;
          std::sort(sa.begin(), sa.end());
          std::sort(sb.begin(), sb.end());
          if (sa == sb) {  // the same channels in another order: put the reference's rows in ours
            MatrixF aligned(s, s);
            for (Eigen::Index i = 0; i < s; ++i) {
              const auto at =
                  std::find(ref_ch.begin(), ref_ch.end(), ours_ch[static_cast<std::size_t>(i)]) - ref_ch.begin();
              aligned.row(i) = y.row(static_cast<Eigen::Index>(at));
            }
            y = aligned;
          } else {  // other channels: only the checkpoint can tell whether the reference's block is right
            if (ck == nullptr) {
              ++unsettled_blocks;
            } else if (pc.ties_only) {
              const double r = eigenbasis_residual(column_block_gram(ck->w, pb, start, s), y);
              if (r > kEigenbasisTolerance)
                sink.add(Level::fail, "reference-rotation",
                         "the reference's {}{} does not diagonalise its own block's "
                         "Gram matrix: residual {:.3g} > {:.0e}",
                         prefix, rb[k].first, r, kEigenbasisTolerance);
              else
                ++tie_blocks;
            }
            start += s;
            continue;
          }
        }
      }
      const MatrixD mm = x.cast<double>().transpose() * y.cast<double>();
      std::vector<int> cluster(static_cast<std::size_t>(s));
      std::vector<double> allowed(static_cast<std::size_t>(s), kSubspaceTolerance);
      bool have_clusters = false;
      if (ck != nullptr) {
        const MatrixD g = rows ? row_block_gram(ck->w, start, s) : column_block_gram(ck->w, pa, start, s);
        Eigen::VectorXd lambda;
        eigen_rotation(g, &lambda);
        const double top = std::max(lambda(0), 0.0);
        int id = 0;
        for (Eigen::Index i = 0; i < s; ++i) {
          if (i > 0 && lambda(i - 1) - lambda(i) > kEigenGapTolerance * top) ++id;
          cluster[static_cast<std::size_t>(i)] = id;
        }
        // The gap of each column to the eigenvalues outside its cluster sets its tolerance.
        for (Eigen::Index j = 0; j < s; ++j) {
          double gap = std::numeric_limits<double>::infinity();
          for (Eigen::Index i = 0; i < s; ++i)
            if (cluster[static_cast<std::size_t>(i)] != cluster[static_cast<std::size_t>(j)])
              gap = std::min(gap, std::abs(lambda(i) - lambda(j)));
          const double angle = gap > 0 ? kRotationNoise * top / gap : 1.0;
          allowed[static_cast<std::size_t>(j)] = std::clamp(angle * angle, kSubspaceFloor, kSubspaceTolerance);
        }
        have_clusters = true;
      }
      for (Eigen::Index j = 0; j < s; ++j) {
        if (y.col(j).norm() < 0.5) continue;  // the reference's zero padding where O < block
        double mass = 0;
        if (have_clusters) {
          for (Eigen::Index i = 0; i < s; ++i)
            if (cluster[static_cast<std::size_t>(i)] == cluster[static_cast<std::size_t>(j)])
              mass += mm(i, j) * mm(i, j);
        } else {
          mass = mm(j, j) * mm(j, j);
          if (1 - mass > kSubspaceTolerance) {
            mixing_unconfirmed = true;
            continue;
          }
        }
        worst = std::max(worst, 1 - mass);
        const double tol = allowed[static_cast<std::size_t>(j)];
        if (1 - mass > tol) {
          sink.add(Level::fail, "reference-rotation",
                   "{}{} column {} is not in the reference's eigenspace: 1 − Σcos² = {:.3g} > {:.2g}", prefix,
                   ra[k].first, j, 1 - mass, tol);
          break;
        }
      }
      start += s;
    }
    if (ra.size() != rb.size())
      sink.add(Level::fail, "reference-rotation", "{} {} blocks, the reference has {}", prefix, ra.size(), rb.size());
  };
  compare("Rin_", ours.r_in, ref.r_in, false);
  compare("Rout_", ours.r_out, ref.r_out, true);
  sink.v.numbers["reference_rotation_max_misfit"] = worst;
  if (mixing_unconfirmed)
    sink.add(Level::warn, "reference-rotation",
             "some rotation columns mix with their neighbours; give --checkpoint to "
             "confirm their eigenvalues are repeated");
  sink.v.numbers["reference_blocks_equivalent_by_ties"] = tie_blocks;
  if (tie_blocks > 0)
    sink.add(Level::info, "equivalent-by-ties",
             "{} input block{} hold{} other channels than the reference's because "
             "channels of equal energy were ordered otherwise; each block diagonalises its own Gram matrix",
             tie_blocks, tie_blocks == 1 ? "" : "s", tie_blocks == 1 ? "s" : "");
  if (unsettled_blocks > 0)
    sink.add(Level::warn, "reference-rotation",
             "{} input block{} hold{} other channels than the reference's: only "
             "--checkpoint can tell whether that comes from channels of equal energy",
             unsettled_blocks, unsettled_blocks == 1 ? "" : "s", unsettled_blocks == 1 ? "s" : "");
  if (ck == nullptr) return;
  const double ours_err = pack_rel_error(ours, q, ck->w, wbits);
  const double ref_err = relative_error(runtime_quantized_original_basis(ck->w, ref, wbits), ck->w);
  sink.v.numbers["reference_rel_fro_error"] = ref_err;
  sink.v.numbers["ours_rel_fro_error"] = ours_err;
  if (!(ours_err <= ref_err * kReferenceQualityFactor))
    sink.add(Level::fail, "reference-quality", "quantization error {:.6g} is worse than the reference's {:.6g} × {}",
             ours_err, ref_err, kReferenceQualityFactor);
}

}  // namespace duquant::verify_detail
