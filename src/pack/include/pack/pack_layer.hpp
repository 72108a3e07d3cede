// Packing one selected layer: the DuQuant transform, the reference npz, and the layer's tensors
// for quantized.safetensors, plus its quality figures.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "config/quant_config.hpp"
#include "engine/layer_engine.hpp"
#include "formats/calib_dump.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"
#include "math/calibration.hpp"
#include "select/layer_weights.hpp"
#include "select/selection.hpp"

namespace duquant {

struct LayerQuality {
  double weight_norm2 = 0;  // ||W||_F^2
  double duquant_err2 =
      0;  // ||W - dequant(pack)||_F^2 (measured in the rotated basis: equal, the transforms are orthogonal)
  double rtn_err2 = 0;  // the same for plain per-row round to nearest
  // The conformance vectors (conformance.hpp), summed in double over the stored float32 values:
  double conformance_fp2 = 0;   // ||test_y_fp||^2
  double conformance_err2 = 0;  // ||test_y_q - test_y_fp||^2
};

// A layer's calibration input (docs/calibration.md). Without calls the layer is packed as before:
// no act_scale, synthetic conformance inputs.
struct LayerCalibration {
  const formats::CalibDump* dump = nullptr;
  std::string name;                                       // the layer's group in the dump
  const std::vector<formats::DumpCall>* calls = nullptr;  // null: the layer is not in the dump
  std::vector<float> smooth;                              // empty: no smoothing
  bool has_calls() const { return dump != nullptr && calls != nullptr && !calls->empty(); }
};

// At most this many calls after the first calib_steps are held out to measure the output error,
// with at most kHeldOutRowsPerCall evenly spaced rows of each.
inline constexpr int kHeldOutCalls = 4;
inline constexpr std::int64_t kHeldOutRowsPerCall = 16;

// duquant::Error (numeric) naming the dump, the layer, the call and the first [row, column] of `x`
// (one call as read, row-major with `call.cols` columns) that first_unpackable_activation finds.
void check_packable_call(const formats::CalibDump& dump, const std::string& layer, const formats::DumpCall& call,
                         std::span<const float> x);

// What calibration measured for a layer.
struct CalibrationFigures {
  int steps = 0;             // calls the act_scale was taken over
  std::uint64_t tokens = 0;  // rows of those calls
  int held_out_calls = 0;
  std::uint64_t held_out_rows = 0;
  double output_fp2 = 0;     // ||y_fp||^2 over the held-out rows
  double output_err2 = 0;    // ||y_q - y_fp||^2, the pack's contract with quantized activations
  std::string input_xxh128;  // digest of every dump value read and of the smoothing scale
};

// Reads the calls a layer's calibration uses and returns their digest (CalibrationFigures::input_xxh128)
// without computing anything else: how --resume recognises a finished layer.
std::string calibration_input_digest(const LayerCalibration& c, int calib_steps);

struct PackedLayer {
  std::vector<formats::TensorSpec> tensors;  // in quantized.safetensors order
  std::string data;                          // their bytes, back to back
  LayerQuality quality;
  CalibrationFigures calibration;  // steps == 0 without calibration
};

// A layer's weight and bias, read once from the checkpoint: the digests and the floats come from
// the same copy of the stored bytes (the digests identify the layer for --resume). The weight is
// packed from the checkpoint's values in float32 or, with smoothing, from W·diag(s) rounded to
// the checkpoint's dtype (the matrix the transform is computed from).
struct LayerInput {
  std::vector<float> weights;
  std::string weight_xxh128;
  std::vector<std::byte> bias_bytes;  // as stored; empty without a bias
  std::vector<float> bias;
  std::string bias_xxh128 = "none";
  std::vector<float> smoothed;  // empty without smoothing
  std::int64_t rows = 0, cols = 0;
  WeightView checkpoint_view() const { return {weights.data(), rows, cols}; }
  WeightView packed_view() const { return {smoothed.empty() ? weights.data() : smoothed.data(), rows, cols}; }
};
LayerInput load_layer_input(const formats::Checkpoint& ckpt, const SelectedLayer& selected,
                            const LayerCalibration& calibration = {});

// finish_layer's four steps: calibrate -> npz -> tensors -> measure.

// What calibrate_layer takes from the dump: act_scale over the first calib_steps calls, rows of
// the held-out calls after them, and the conformance inputs (rows of the first held-out call, else
// of the first call; synthetic inputs without calls).
struct LayerActivations {
  CalibrationFigures figures;    // steps, tokens, held_out_calls, input_xxh128; steps == 0 without calls
  std::vector<float> act_scale;  // [in_features]; empty without calls
  std::vector<float> test_x;     // [kConformanceRows, in_features]
  std::vector<float> held_x;     // [held-out rows, in_features]
};
// Reads and checks the layer's calls (width, values beyond kLargestActivationMagnitude). `engine`
// (the one that computed `t`, or null for the CPU) may compute the calls' percentiles.
LayerActivations calibrate_layer(const SelectedLayer& selected, const QuantConfig& q,
                                 const LayerCalibration& calibration, const LayerInput& input, const LayerTransform& t,
                                 LayerEngine* engine = nullptr);

// Writes the runtime's npz (atomically): its members in the runtime's order, then `act_scale` and
// `smooth_scale` when not empty.
void write_layer_npz(const std::filesystem::path& npz_path, const LinearLayer& layer, const QuantConfig& q,
                     const LayerMath& math, const std::vector<float>& act_scale, const std::vector<float>& smooth);

// The layer's tensors of quantized.safetensors (layer_tensor_specs) and their bytes, with the
// conformance vectors computed from the values as stored.
struct LayerTensors {
  std::vector<formats::TensorSpec> tensors;
  std::string data;                       // their bytes, back to back
  std::vector<std::int8_t> stored_codes;  // the codes as stored, read back ([out, in], row-major)
  LayerQuality quality;                   // the conformance figures only
};
LayerTensors layer_tensors(const SelectedLayer& selected, const QuantConfig& q, const LayerCalibration& calibration,
                           const LayerInput& input, const LayerMath& math, const LayerActivations& activations);

// The layer's errors: of the matrix packed (W·diag(s) with smoothing) and, with held-out rows, of
// the output through the whole contract against x Wᵀ + b.
struct LayerErrors {
  double weight_norm2 = 0, duquant_err2 = 0, rtn_err2 = 0;
  std::uint64_t held_out_rows = 0;
  double output_fp2 = 0, output_err2 = 0;
};
LayerErrors measure_layer(const QuantConfig& q, const LayerCalibration& calibration, const LayerInput& input,
                          const LayerMath& math, const LayerActivations& activations,
                          std::span<const std::int8_t> stored_codes);

// The four steps above: writes `npz_path` (atomically) from the computed `math` and returns the
// layer's safetensors tensors with its figures. With calibration calls the npz gains `act_scale`
// (and `smooth_scale` with smoothing) after the reference members, the conformance inputs are
// dumped rows and the output error is measured.
// `engine` (the one that computed `math`, or null) may compute the calibration calls' statistics.
PackedLayer finish_layer(const SelectedLayer& selected, const QuantConfig& q, const std::filesystem::path& npz_path,
                         const LayerCalibration& calibration, const LayerInput& input, const LayerMath& math,
                         LayerEngine* engine = nullptr);

// load_layer_input, the engine's compute (the CPU reference when `engine` is null), finish_layer.
PackedLayer pack_layer(const formats::Checkpoint& ckpt, const SelectedLayer& selected, const QuantConfig& q,
                       const std::filesystem::path& npz_path, const LayerCalibration& calibration = {},
                       LayerEngine* engine = nullptr);

}  // namespace duquant
