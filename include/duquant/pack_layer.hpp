// Packing one selected layer: the DuQuant transform, the reference npz, and the layer's tensors
// for quantized.safetensors, plus its quality figures.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "duquant/quant_config.hpp"
#include "duquant/selection.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant {

struct LayerQuality {
  double weight_norm2 = 0;   // ||W||_F^2
  double duquant_err2 = 0;   // ||W - dequant(pack)||_F^2 (measured in the rotated basis: equal, the transforms are orthogonal)
  double rtn_err2 = 0;       // the same for plain per-row round to nearest
  // The conformance vectors (conformance.hpp), summed in double over the stored float32 values:
  double conformance_fp2 = 0;   // ||test_y_fp||^2
  double conformance_err2 = 0;  // ||test_y_q - test_y_fp||^2
};

struct PackedLayer {
  std::vector<formats::TensorSpec> tensors;  // in quantized.safetensors order
  std::string data;                          // their bytes, back to back
  LayerQuality quality;
};

// Tensors a layer contributes to quantized.safetensors (known before packing: the header is
// written first): L.qweight, L.scales, L.perm (if permuting), L.R_in, L.R_out (unless row_rot is
// 0), L.bias (if any, in its stored dtype), then the conformance vectors L.test_x [4, I],
// L.test_y_fp [4, O] and L.test_y_q [4, O] (F32).
std::vector<formats::TensorSpec> layer_tensor_specs(const LinearLayer& layer, int wbits, const QuantConfig& q);

// Converts the layer's weight to float32 and checks it: NaN or Inf is duquant::Error (numeric)
// naming the layer and the first bad [row, column].
std::vector<float> load_weight(const formats::Checkpoint& ckpt, const LinearLayer& layer);

// Packs the layer: writes `npz_path` (atomically) and returns its safetensors tensors.
PackedLayer pack_layer(const formats::Checkpoint& ckpt, const SelectedLayer& selected, const QuantConfig& q,
                       const std::filesystem::path& npz_path);

}  // namespace duquant
