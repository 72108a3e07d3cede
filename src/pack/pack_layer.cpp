#include "pack/pack_layer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "formats/digest.hpp"
#include "formats/npz.hpp"
#include "math/calibration.hpp"
#include "math/conformance.hpp"
#include "math/duquant_math.hpp"
#include "math/smoothing.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace {

using formats::TensorSpec;

void append(std::string& out, const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); }

// Square blocks stacked into [count, width, width]; a shorter last block is padded with identity.
void append_stacked(std::string& out, const std::vector<MatrixF>& blocks, std::int64_t width) {
  MatrixF padded(width, width);
  for (const MatrixF& r : blocks) {
    padded.setIdentity();
    padded.topLeftCorner(r.rows(), r.cols()) = r;
    append(out, padded.data(), sizeof(float) * static_cast<std::size_t>(width * width));
  }
}

// test_x, test_y_fp and test_y_q (docs/pack-format.md, "Conformance vectors"), from the values
// exactly as the pack stores them; their error figures go to `quality`. `x` holds the inputs
// (kConformanceRows rows); y_fp uses the checkpoint's own weight `w_fp`.
void append_conformance(std::string& out, LayerQuality& quality, std::span<const float> bias,
                        const std::vector<float>& x, const WeightView& w_fp, const LayerTransform& t,
                        std::span<const std::int8_t> codes, std::span<const float> scales, const QuantConfig& q,
                        const ActivationContract& act) {
  const std::vector<float> y_fp = conformance_reference_output(x, kConformanceRows, w_fp, bias);
  const std::span<const std::int64_t> perm =
      q.permute ? std::span<const std::int64_t>(t.perm) : std::span<const std::int64_t>();
  const std::vector<float> y_q = conformance_pack_output(x, kConformanceRows, w_fp.rows, w_fp.cols, perm, t.r_in, codes,
                                                         scales, t.r_out, q.row_rot, bias, act);
  for (std::size_t k = 0; k < y_fp.size(); ++k) {
    const double d = static_cast<double>(y_q[k]) - static_cast<double>(y_fp[k]);
    quality.conformance_fp2 += static_cast<double>(y_fp[k]) * static_cast<double>(y_fp[k]);
    quality.conformance_err2 += d * d;
  }
  for (const auto* v : {&x, &y_fp, &y_q}) append(out, v->data(), v->size() * sizeof(float));
}

// Rows `take` of a [rows, cols] call, appended to `dst`.
void append_rows(std::vector<float>& dst, const std::vector<float>& call, std::int64_t cols,
                 const std::vector<std::int64_t>& take) {
  for (std::int64_t r : take) dst.insert(dst.end(), call.begin() + r * cols, call.begin() + (r + 1) * cols);
}

// `n` evenly spaced row indices of a call of `rows` rows (repeating rows when it has fewer).
std::vector<std::int64_t> spaced_rows(std::int64_t rows, std::int64_t n) {
  std::vector<std::int64_t> out;
  for (std::int64_t k = 0; k < n; ++k) out.push_back(rows >= n ? k * rows / n : k % rows);
  return out;
}

// The calls a layer's calibration reads: the first calib_steps, then up to kHeldOutCalls more.
struct CallPlan {
  std::size_t steps = 0, held_out = 0;
};
CallPlan plan_calls(const LayerCalibration& c, int calib_steps) {
  CallPlan p;
  const std::size_t n = c.calls->size();
  p.steps = std::min(n, static_cast<std::size_t>(calib_steps));
  p.held_out = std::min(n - p.steps, static_cast<std::size_t>(kHeldOutCalls));
  return p;
}

void write_file_atomic(const std::filesystem::path& path, const std::string& bytes) {
  formats::AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

void hash_floats(Xxh128& h, const std::vector<float>& v) { h.update(std::as_bytes(std::span(v.data(), v.size()))); }

}  // namespace

std::string calibration_input_digest(const LayerCalibration& c, int calib_steps) {
  DQ_CHECK(c.has_calls(), internal, "calibration digest of a layer without calls");
  const CallPlan p = plan_calls(c, calib_steps);
  Xxh128 h;
  std::vector<float> x;
  for (std::size_t k = 0; k < p.steps + p.held_out; ++k) {
    c.dump->read(c.name, (*c.calls)[k], x);
    hash_floats(h, x);
  }
  hash_floats(h, c.smooth);
  return h.hex();
}

void check_packable_call(const formats::CalibDump& dump, const std::string& layer, const formats::DumpCall& call,
                         std::span<const float> x) {
  const std::ptrdiff_t k = first_unpackable_activation(x);
  if (k < 0) return;
  const auto cols = std::max<std::uint64_t>(call.cols, 1);
  fail(ErrorKind::numeric,
       "{}: layer '{}' call {} [{}, {}] is {}; activations beyond +-{:g} cannot be packed (float32 "
       "products with the weights would overflow, and the pack would not verify)",
       dump.path().string(), layer, call.name, static_cast<std::uint64_t>(k) / cols,
       static_cast<std::uint64_t>(k) % cols, x[static_cast<std::size_t>(k)],
       static_cast<double>(kLargestActivationMagnitude));
}

LayerInput load_layer_input(const formats::Checkpoint& ckpt, const SelectedLayer& selected,
                            const LayerCalibration& calib) {
  const LinearLayer& layer = *selected.layer;
  LayerInput in;
  {  // One read of the mapped file: the digest and the floats come from the same bytes, whatever
     // the file does meanwhile (a rewrite in place during the pack, restored before --resume).
    const std::vector<std::byte> raw = copy_tensor_bytes(ckpt, *layer.weight);
    in.weight_xxh128 = xxh128_hex(raw);
    in.weights = weight_from_bytes(layer, raw);
  }
  if (layer.bias) {
    in.bias_bytes = copy_tensor_bytes(ckpt, *layer.bias);
    in.bias_xxh128 = xxh128_hex(in.bias_bytes);
    in.bias.resize(layer.bias->numel);
    formats::convert_to_f32(layer.bias->dtype, in.bias_bytes.data(), layer.bias->numel, in.bias.data());
    for (std::size_t k = 0; k < in.bias.size(); ++k)
      if (!std::isfinite(in.bias[k]))
        fail(ErrorKind::numeric, "layer '{}': bias [{}] is {} (stage: reading the bias; shape [{}])", layer.name, k,
             in.bias[k], in.bias.size());
  }
  in.rows = static_cast<std::int64_t>(layer.out_features);
  in.cols = static_cast<std::int64_t>(layer.in_features);
  const bool smoothed = !calib.smooth.empty();
  DQ_CHECK(!smoothed || (calib.has_calls() && static_cast<std::int64_t>(calib.smooth.size()) == in.cols), internal,
           "layer '{}': smoothing scale of {} without calibration calls", layer.name, calib.smooth.size());
  // With smoothing the pack is computed from W·diag(s), rounded to the checkpoint's dtype.
  if (smoothed) in.smoothed = smoothed_weight(in.weights, in.rows, in.cols, calib.smooth, layer.weight->dtype);
  return in;
}

PackedLayer pack_layer(const formats::Checkpoint& ckpt, const SelectedLayer& selected, const QuantConfig& q,
                       const std::filesystem::path& npz_path, const LayerCalibration& calib, LayerEngine* engine) {
  const LayerInput in = load_layer_input(ckpt, selected, calib);
  const LayerMath math = engine ? engine->compute(in.packed_view(), q, selected.wbits, selected.layer->name)
                                : compute_layer_math(in.packed_view(), q, selected.wbits);
  return finish_layer(selected, q, npz_path, calib, in, math, engine);
}

namespace {

std::span<const std::int64_t> used_perm(const QuantConfig& q, const LayerTransform& t) {
  return q.permute ? std::span<const std::int64_t>(t.perm) : std::span<const std::int64_t>();
}

// The engine's results must have the layer's sizes before anything is written from them.
void check_math_sizes(const SelectedLayer& selected, const LayerInput& in, const LayerMath& math) {
  const std::int64_t rows = in.rows, cols = in.cols;
  const LayerTransform& t = math.t;
  const QuantizedRows& quant = math.quant;
  DQ_CHECK(static_cast<std::int64_t>(quant.scales.size()) == rows &&
               static_cast<std::int64_t>(math.weight_scale.size()) == rows &&
               static_cast<std::int64_t>(t.perm.size()) == cols &&
               (math.packed.empty() ? static_cast<std::int64_t>(quant.codes.size()) == rows * cols
                                    : code_storage(selected.wbits).nibbles &&
                                          math.packed.size() == code_storage(selected.wbits).bytes(rows, cols)),
           internal, "layer '{}': the compute backend returned {} scales, {} codes, {} packed bytes for [{}, {}]",
           selected.layer->name, quant.scales.size(), quant.codes.size(), math.packed.size(), rows, cols);
}

}  // namespace

LayerActivations calibrate_layer(const SelectedLayer& selected, const QuantConfig& q, const LayerCalibration& calib,
                                 const LayerInput& in, const LayerTransform& t, LayerEngine* engine) {
  const LinearLayer& layer = *selected.layer;
  const std::int64_t rows = in.rows, cols = in.cols;
  LayerActivations out;
  if (!calib.has_calls()) {
    out.test_x = conformance_inputs(kConformanceRows, cols);
    return out;
  }
  const CallPlan plan = plan_calls(calib, q.calib_steps);
  CalibrationFigures& f = out.figures;
  Xxh128 h;
  ActivationCalibrator calibrator(cols, q.act_pct, q.abits);
  std::vector<float> x;
  for (std::size_t k = 0; k < plan.steps + plan.held_out; ++k) {
    const formats::DumpCall& call = (*calib.calls)[k];
    DQ_CHECK(call.cols == layer.in_features, format,
             "{}: layer '{}' call {} has width {}, the layer's weight [{}, {}] reads {}", calib.dump->path().string(),
             calib.name, call.name, call.cols, rows, cols, cols);
    calib.dump->read(calib.name, call, x);
    check_packable_call(*calib.dump, calib.name, call, x);  // the rule verify applies to test_x and act_scale
    hash_floats(h, x);
    const auto n = static_cast<std::int64_t>(call.rows);
    if (k < plan.steps) {
      std::vector<float> p;
      if (engine != nullptr && engine->call_percentiles(x, n, t, calib.smooth, calibrator.quantile(), layer.name, p))
        calibrator.add_percentiles(p);
      else
        calibrator.add_call(transform_activations(x, n, cols, used_perm(q, t), t.r_in, calib.smooth), n);
      f.tokens += call.rows;
    } else {
      append_rows(out.held_x, x, cols, spaced_rows(n, std::min(n, kHeldOutRowsPerCall)));
      ++f.held_out_calls;
    }
    if (k == (plan.held_out > 0 ? plan.steps : 0)) append_rows(out.test_x, x, cols, spaced_rows(n, kConformanceRows));
  }
  hash_floats(h, calib.smooth);
  f.steps = calibrator.steps();
  f.input_xxh128 = h.hex();
  out.act_scale = calibrator.act_scale();
  return out;
}

void write_layer_npz(const std::filesystem::path& npz_path, const LinearLayer& layer, const QuantConfig& q,
                     const LayerMath& math, const std::vector<float>& act_scale, const std::vector<float>& smooth) {
  const LayerTransform& t = math.t;
  // The runtime's npz, members in its order; then ours, which its loader ignores.
  formats::NpzWriter npz(npz_path);
  npz.add("weight_scale", formats::npy_f32({layer.out_features}, math.weight_scale));
  npz.add("meta", formats::npy_unicode_scalar(pack_meta_json(layer.in_features, layer.out_features, q)));
  if (q.permute) npz.add("perm", formats::npy_i64({layer.in_features}, t.perm));
  std::vector<std::int64_t> in_blocks, out_blocks;
  for (std::size_t b = 0; b < t.r_in.size(); ++b) {
    const auto s = static_cast<std::uint64_t>(t.r_in[b].rows());
    npz.add(fmt::format("Rin_{}", b), formats::npy_f32({s, s}, std::span(t.r_in[b].data(), s * s)));
    in_blocks.push_back(static_cast<std::int64_t>(b));
  }
  npz.add("R_in_blocks", formats::npy_i64({in_blocks.size()}, in_blocks));
  for (std::size_t b = 0; b < t.r_out.size(); ++b) {
    const auto s = static_cast<std::uint64_t>(t.r_out[b].rows());
    npz.add(fmt::format("Rout_{}", b), formats::npy_f32({s, s}, std::span(t.r_out[b].data(), s * s)));
    out_blocks.push_back(static_cast<std::int64_t>(b));
  }
  npz.add("R_out_blocks", formats::npy_i64({out_blocks.size()}, out_blocks));
  if (!act_scale.empty()) npz.add("act_scale", formats::npy_f32({layer.in_features}, act_scale));
  if (!smooth.empty()) npz.add("smooth_scale", formats::npy_f32({layer.in_features}, smooth));
  npz.commit();
}

LayerTensors layer_tensors(const SelectedLayer& selected, const QuantConfig& q, const LayerCalibration& calib,
                           const LayerInput& in, const LayerMath& math, const LayerActivations& acts) {
  const LinearLayer& layer = *selected.layer;
  const std::int64_t rows = in.rows, cols = in.cols;
  const LayerTransform& t = math.t;
  const QuantizedRows& quant = math.quant;
  const bool calibrated = calib.has_calls();
  const bool smoothed = !calib.smooth.empty();
  LayerTensors out;
  out.tensors = layer_tensor_specs(layer, selected.wbits, q, calibrated, smoothed);
  std::string& d = out.data;
  // The codes as stored (a device packs its codes itself), read back for the conformance output.
  const std::string stored = math.packed.empty() ? pack_codes(quant.codes, rows, cols, selected.wbits) : math.packed;
  d += stored;
  std::vector<std::int8_t>& stored_codes = out.stored_codes;
  stored_codes = unpack_codes(std::as_bytes(std::span(stored.data(), stored.size())), rows, cols, selected.wbits);
  append(d, quant.scales.data(), quant.scales.size() * sizeof(float));
  if (q.permute) append(d, t.perm.data(), t.perm.size() * sizeof(std::int64_t));
  append_stacked(d, t.r_in, q.block);
  if (q.row_rot != RowRot::off) append_stacked(d, t.r_out, q.block_out);
  if (layer.bias) append(d, in.bias_bytes.data(), in.bias_bytes.size());
  const ActivationContract contract{calib.smooth, acts.act_scale, q.abits};
  append_conformance(d, out.quality, in.bias, acts.test_x, in.checkpoint_view(), t, stored_codes, quant.scales, q,
                     contract);
  if (calibrated) append(d, acts.act_scale.data(), acts.act_scale.size() * sizeof(float));
  if (smoothed) append(d, calib.smooth.data(), calib.smooth.size() * sizeof(float));
  std::uint64_t expected = 0;
  for (const TensorSpec& s : out.tensors) expected += s.nbytes();
  DQ_CHECK(expected == d.size(), internal, "layer '{}': {} bytes of tensors produced, {} declared", layer.name,
           d.size(), expected);
  return out;
}

LayerErrors measure_layer(const QuantConfig& q, const LayerCalibration& calib, const LayerInput& in,
                          const LayerMath& math, const LayerActivations& acts,
                          std::span<const std::int8_t> stored_codes) {
  const std::int64_t rows = in.rows, cols = in.cols;
  const WeightView w_fp = in.checkpoint_view();
  const LayerTransform& t = math.t;
  LayerErrors out;
  // The output error users feel: held-out dumped rows through the whole contract against x Wᵀ + b.
  if (!acts.held_x.empty()) {
    const ActivationContract contract{calib.smooth, acts.act_scale, q.abits};
    const auto n = static_cast<std::int64_t>(acts.held_x.size()) / cols;
    const std::vector<float> y_fp = conformance_reference_output(acts.held_x, n, w_fp, in.bias);
    const std::vector<float> y_q =
        conformance_pack_output(acts.held_x, n, rows, cols, used_perm(q, t), t.r_in, stored_codes, math.quant.scales,
                                t.r_out, q.row_rot, in.bias, contract);
    for (std::size_t k = 0; k < y_fp.size(); ++k) {
      const double e = static_cast<double>(y_q[k]) - static_cast<double>(y_fp[k]);
      out.output_fp2 += static_cast<double>(y_fp[k]) * static_cast<double>(y_fp[k]);
      out.output_err2 += e * e;
    }
    out.held_out_rows = static_cast<std::uint64_t>(n);
  }
  // Weight error of the matrix packed (W·diag(s) with smoothing).
  const WeightView w = in.packed_view();
  for (std::int64_t k = 0; k < rows * cols; ++k) out.weight_norm2 += static_cast<double>(w.data[k]) * w.data[k];
  out.duquant_err2 = math.quant.squared_error;
  out.rtn_err2 = math.rtn_err2;
  return out;
}

PackedLayer finish_layer(const SelectedLayer& selected, const QuantConfig& q, const std::filesystem::path& npz_path,
                         const LayerCalibration& calib, const LayerInput& in, const LayerMath& math,
                         LayerEngine* engine) {
  check_math_sizes(selected, in, math);
  const LayerActivations acts = calibrate_layer(selected, q, calib, in, math.t, engine);
  if (math.source_npz.empty())
    write_layer_npz(npz_path, *selected.layer, q, math, acts.act_scale, calib.smooth);
  else  // an imported layer: the runtime's own npz, byte for byte (the math came from it)
    write_file_atomic(npz_path, math.source_npz);
  LayerTensors tensors = layer_tensors(selected, q, calib, in, math, acts);
  const LayerErrors errors = measure_layer(q, calib, in, math, acts, tensors.stored_codes);

  PackedLayer out;
  out.tensors = std::move(tensors.tensors);
  out.data = std::move(tensors.data);
  out.quality = tensors.quality;
  out.quality.weight_norm2 = errors.weight_norm2;
  out.quality.duquant_err2 = errors.duquant_err2;
  out.quality.rtn_err2 = errors.rtn_err2;
  out.calibration = acts.figures;
  out.calibration.held_out_rows = errors.held_out_rows;
  out.calibration.output_fp2 = errors.output_fp2;
  out.calibration.output_err2 = errors.output_err2;
  return out;
}

}  // namespace duquant
